//! Llama-family GGUF files (Llama 2/3, TinyLlama, Mistral, SmolLM2): the worker's copy of
//! candle-transformers' `quantized_llama` (`modules::quantized_llama`), whose rotary tables cover
//! `llama.context_length`.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that the interleaved rotary
//! embedding it applies to llama (and the module applies, `rope_i`) equals transformers' rotation
//! of halves on the original weights.

use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Result as CandleResult, Tensor};

use super::format::{BlockTensor, GgufArchitecture, Quirks};
use crate::arch::llama::Llama;
use crate::backend::KvCache;
use crate::fast::Engine;
use crate::model::{Architecture, CausalLm, Dims};
use crate::modules::quantized_llama::QuantizedLlama;

pub struct GgufLlama;

impl GgufArchitecture for GgufLlama {
    fn architecture(&self) -> &'static dyn Architecture {
        &Llama
    }

    fn quirks(&self) -> Quirks {
        Quirks {
            fixed_freq_base: None,
            reads_rope_dimension_count: true,
            ties_missing_output: true,
            reads_sliding_window: false,
            interleaved_rope: true,
        }
    }

    fn block_tensors(&self, dims: &Dims) -> Vec<BlockTensor> {
        let (h, i) = (dims.hidden_size, dims.intermediate_size);
        let kv = dims.num_kv_heads * dims.head_dim;
        let t = |name, source, shape| BlockTensor {
            name,
            source,
            shape,
        };
        vec![
            t("attn_norm.weight", "input_layernorm.weight", vec![h]),
            t("attn_q.weight", "self_attn.q_proj.weight", vec![h, h]),
            t("attn_k.weight", "self_attn.k_proj.weight", vec![kv, h]),
            t("attn_v.weight", "self_attn.v_proj.weight", vec![kv, h]),
            t("attn_output.weight", "self_attn.o_proj.weight", vec![h, h]),
            t(
                "ffn_norm.weight",
                "post_attention_layernorm.weight",
                vec![h],
            ),
            t("ffn_gate.weight", "mlp.gate_proj.weight", vec![i, h]),
            t("ffn_up.weight", "mlp.up_proj.weight", vec![i, h]),
            t("ffn_down.weight", "mlp.down_proj.weight", vec![h, i]),
        ]
    }

    fn runs_cpu_kernels(&self) -> bool {
        true
    }

    fn holds_an_f16_kv_cache(&self) -> bool {
        true
    }

    fn load(
        &self,
        content: Content,
        file: &mut File,
        device: &Device,
        engine: Engine,
        kv_cache: KvCache,
    ) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(QuantizedLlama::from_gguf(
            content, file, device, engine, kv_cache,
        )?)))
    }
}

struct Model(QuantizedLlama);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.0.clear_kv_cache();
        Ok(())
    }
}
