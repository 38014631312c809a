//! Llama (Llama 2/3, TinyLlama): the settings of candle-transformers `models::llama`, run by the
//! worker's own copy of that module (`llama_module`: the same arithmetic, fewer kernels).
//!
//! The module keeps its KV cache in a separate `Cache`; a request starts from a clone of the
//! empty cache made at load, which shares the rotary tables already on the device.

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as candle_llama;
use serde_json::json;

use super::{llama_module, ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{HfConfig, RopeDefaults, RopeKind, RopeScaling};
use crate::error::Result;

pub type Config = candle_llama::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 2048, None)?;
    dims.expect_derived_head_dim(cfg)?;
    cfg.expect("hidden_act", json!("silu"), "candle's llama MLP uses SiLU")?;
    cfg.expect(
        "attention_bias",
        json!(false),
        "candle's llama attention has no biases",
    )?;
    cfg.expect("mlp_bias", json!(false), "candle's llama MLP has no biases")?;
    let rope = cfg.rope(RopeDefaults::STANDARD, &[RopeKind::Llama3])?;
    rope.expect_full_rotation(cfg)?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
    let rope_scaling = match rope.scaling {
        RopeScaling::None => None,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => Some(candle_llama::Llama3RopeConfig {
            factor: factor as f32,
            low_freq_factor: low_freq_factor as f32,
            high_freq_factor: high_freq_factor as f32,
            original_max_position_embeddings,
            rope_type: candle_llama::Llama3RopeType::Llama3,
        }),
    };
    let module = Config {
        hidden_size: dims.hidden_size,
        intermediate_size: dims.intermediate_size,
        vocab_size: dims.vocab_size,
        num_hidden_layers: dims.num_layers,
        num_attention_heads: dims.num_heads,
        num_key_value_heads: dims.num_kv_heads,
        use_flash_attn: false,
        rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: rope.theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling,
        max_position_embeddings: dims.max_position_embeddings,
        tie_word_embeddings,
    };
    Ok(ArchConfig {
        architecture: Architecture::Llama,
        dims,
        tie_word_embeddings,
        rope,
        window: Window::None,
        module: ModuleConfig::Llama(module),
    })
}

pub struct Model {
    model: llama_module::Llama,
    cache: llama_module::Cache,
    empty_cache: llama_module::Cache,
}

impl Model {
    pub fn load(config: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        let empty_cache = llama_module::Cache::new(vb.dtype(), config, vb.device())?;
        Ok(Self {
            model: llama_module::Llama::load(vb, config)?,
            cache: empty_cache.clone(),
            empty_cache,
        })
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.model.forward(ids, offset, &mut self.cache)
    }

    pub fn reset(&mut self) {
        self.cache = self.empty_cache.clone();
    }
}
