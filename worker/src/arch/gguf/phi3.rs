//! Phi-3 and Phi-3.5 GGUF files: candle-transformers `models::quantized_phi3`.
//!
//! Fused `attn_qkv` and `ffn_up` (gate rows, then up rows); rotation of halves. The module
//! always uses a rope base of 10000 and needs `output.weight`. It applies no sliding window: a
//! file with one (`phi3.attention.sliding_window`, 2047 in Phi-3-mini-4k) runs sequences up to
//! the window, where the window masks nothing. longrope (the 128k variants, with
//! `rope_factors_*` tensors) is refused by the tensor check.

use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Result as CandleResult, Tensor};
use candle_transformers::models::quantized_phi3::ModelWeights;

use super::Quirks;
use crate::arch::Dims;

pub(super) const QUIRKS: Quirks = Quirks {
    table_positions: None,
    fixed_freq_base: Some(10_000.0),
    reads_rope_dimension_count: true,
    ties_missing_output: false,
    reads_sliding_window: true,
};

/// The tensors of one block, with their shapes (rows first).
pub(super) fn layer_tensors(dims: &Dims) -> Vec<(&'static str, Vec<usize>)> {
    let (h, i) = (dims.hidden_size, dims.intermediate_size);
    let kv = dims.num_kv_heads * dims.head_dim;
    vec![
        ("attn_norm.weight", vec![h]),
        ("attn_qkv.weight", vec![h + 2 * kv, h]),
        ("attn_output.weight", vec![h, h]),
        ("ffn_norm.weight", vec![h]),
        ("ffn_up.weight", vec![2 * i, h]),
        ("ffn_down.weight", vec![h, i]),
    ]
}

pub struct Model(ModelWeights);

impl Model {
    pub fn load(content: Content, file: &mut File, device: &Device) -> CandleResult<Self> {
        ModelWeights::from_gguf(false, content, file, device).map(Self)
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    /// The module has no way to empty its cache from outside; it starts a new one itself when a
    /// forward starts at position 0, as every request of the worker does.
    pub fn reset(&mut self) {}
}
