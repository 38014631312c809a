//! Qwen2 and Qwen2.5 GGUF files: candle-transformers `models::quantized_qwen2`.
//!
//! Rotation of halves, as transformers does (llama.cpp leaves the weights as they are); q/k/v
//! biases; the embeddings serve as the output layer when `output.weight` is absent. The module
//! reads no rope dimension and applies no sliding window (the released Qwen2/2.5 models use
//! none).

use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Result as CandleResult, Tensor};
use candle_transformers::models::quantized_qwen2::ModelWeights;

use super::Quirks;
use crate::arch::Dims;

pub(super) const QUIRKS: Quirks = Quirks {
    table_positions: None,
    fixed_freq_base: None,
    reads_rope_dimension_count: false,
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
        ("attn_q.bias", vec![h]),
        ("attn_k.weight", vec![kv, h]),
        ("attn_k.bias", vec![kv]),
        ("attn_v.weight", vec![kv, h]),
        ("attn_v.bias", vec![kv]),
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
