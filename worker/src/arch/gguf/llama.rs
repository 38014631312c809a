//! Llama-family GGUF files (Llama 2/3, TinyLlama, Mistral): candle-transformers
//! `models::quantized_llama`.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that the interleaved rotary
//! embedding it applies to llama (and the module applies, `rope_i`) equals transformers' rotation
//! of halves on the original weights. The module's rotary tables cover 4096 positions, whatever
//! `llama.context_length` says.

use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Result as CandleResult, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use super::Quirks;
use crate::arch::Dims;

pub(super) const QUIRKS: Quirks = Quirks {
    table_positions: Some(MAX_SEQ_LEN),
    fixed_freq_base: None,
    reads_rope_dimension_count: true,
    ties_missing_output: true,
    reads_sliding_window: false,
};

/// The tensors of one block, with their shapes (rows first).
pub(super) fn layer_tensors(dims: &Dims) -> Vec<(&'static str, Vec<usize>)> {
    let (h, i) = (dims.hidden_size, dims.intermediate_size);
    let kv = dims.num_kv_heads * dims.head_dim;
    vec![
        ("attn_norm.weight", vec![h]),
        ("attn_q.weight", vec![h, h]),
        ("attn_k.weight", vec![kv, h]),
        ("attn_v.weight", vec![kv, h]),
        ("attn_output.weight", vec![h, h]),
        ("ffn_norm.weight", vec![h]),
        ("ffn_gate.weight", vec![i, h]),
        ("ffn_up.weight", vec![i, h]),
        ("ffn_down.weight", vec![h, i]),
    ]
}

pub struct Model(ModelWeights);

impl Model {
    pub fn load(content: Content, file: &mut File, device: &Device) -> CandleResult<Self> {
        ModelWeights::from_gguf(content, file, device).map(Self)
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    pub fn reset(&mut self) {
        self.0.clear_kv_cache();
    }
}
