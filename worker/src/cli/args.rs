//! The options several commands share.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use llm_worker_rbee::fast::Engine;
use llm_worker_rbee::{Backend, Dtype, KvCache, LoadOptions};

#[derive(Args)]
pub struct ModelArgs {
    /// Model folder: config.json, tokenizer.json, model.safetensors (or an index and shards),
    /// optionally generation_config.json, tokenizer_config.json and chat_template.jinja. Or a
    /// .gguf file, or a folder with one: its tokenizer and chat template come from its metadata
    /// unless a tokenizer.json (tokenizer_config.json) is beside it. Or the id of a model
    /// fetched and verified by `cargo xtask fetch-models`.
    #[arg(long, value_name = "DIR|FILE|ID")]
    pub model: PathBuf,
}

impl ModelArgs {
    /// The folder to load: the path given, or the verified folder of a fetched model's id.
    pub fn folder(&self) -> Result<PathBuf> {
        Ok(llm_worker_rbee::model_id::resolve(&self.model)?)
    }
}

#[derive(Args)]
pub struct DeviceArgs {
    /// Where to run; `cuda` and `metal` need a binary built with that cargo feature.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Device ordinal for cuda and metal.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub device: usize,
    /// Floating-point type for weights and activations. On CPU, bf16 is far slower than f32.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// The implementation to run: `candle` (candle's modules; everything) or `fast` (on CUDA
    /// fused kernels and a CUDA graph for the llama family from SafeTensors; on the CPU
    /// quantized kernels for llama-family GGUF files) [default: fast where it runs, else
    /// candle].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// The type of the KV cache: `activations` (the activations' type; f32 for GGUF files) or
    /// `f16` (half the memory, for llama-family GGUF files; keys and values rounded to f16 as
    /// they are written, as llama.cpp's default cache holds them).
    #[arg(long, value_enum, default_value_t = KvCache::Activations, value_name = "TYPE")]
    pub kv_cache: KvCache,
}

impl DeviceArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            backend: self.backend,
            device: self.device,
            dtype: self.dtype,
            engine: self.engine,
            kv_cache: self.kv_cache,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}
