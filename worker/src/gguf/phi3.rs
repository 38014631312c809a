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

use super::format::{BlockTensor, GgufArchitecture, Quirks};
use crate::arch::phi3::Phi3;
use crate::backend::KvCache;
use crate::fast::Engine;
use crate::model::{Architecture, CausalLm, Dims};

pub struct GgufPhi3;

impl GgufArchitecture for GgufPhi3 {
    fn architecture(&self) -> &'static dyn Architecture {
        &Phi3
    }

    fn quirks(&self) -> Quirks {
        Quirks {
            fixed_freq_base: Some(10_000.0),
            reads_rope_dimension_count: true,
            ties_missing_output: false,
            reads_sliding_window: true,
            interleaved_rope: false,
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
            t(
                "attn_qkv.weight",
                "self_attn.qkv_proj.weight",
                vec![h + 2 * kv, h],
            ),
            t("attn_output.weight", "self_attn.o_proj.weight", vec![h, h]),
            t(
                "ffn_norm.weight",
                "post_attention_layernorm.weight",
                vec![h],
            ),
            t("ffn_up.weight", "mlp.gate_up_proj.weight", vec![2 * i, h]),
            t("ffn_down.weight", "mlp.down_proj.weight", vec![h, i]),
        ]
    }

    fn load(
        &self,
        content: Content,
        file: &mut File,
        device: &Device,
        _: Engine,
        _: KvCache,
    ) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(ModelWeights::from_gguf(
            false, content, file, device,
        )?)))
    }
}

struct Model(ModelWeights);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    /// The module has no way to empty its cache from outside; it starts a new one itself when a
    /// forward starts at position 0, as every request of the worker does.
    fn reset(&mut self) -> CandleResult<()> {
        Ok(())
    }
}
