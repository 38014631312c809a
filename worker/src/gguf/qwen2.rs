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

use super::format::{BlockTensor, GgufArchitecture, Quirks};
use crate::arch::qwen2::Qwen2;
use crate::backend::KvCache;
use crate::fast::Engine;
use crate::model::{Architecture, CausalLm, Dims};

pub struct GgufQwen2;

impl GgufArchitecture for GgufQwen2 {
    fn architecture(&self) -> &'static dyn Architecture {
        &Qwen2
    }

    fn quirks(&self) -> Quirks {
        Quirks {
            fixed_freq_base: None,
            reads_rope_dimension_count: false,
            ties_missing_output: true,
            reads_sliding_window: false,
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
            t("attn_q.weight", "self_attn.q_proj.weight", vec![h, h]),
            t("attn_q.bias", "self_attn.q_proj.bias", vec![h]),
            t("attn_k.weight", "self_attn.k_proj.weight", vec![kv, h]),
            t("attn_k.bias", "self_attn.k_proj.bias", vec![kv]),
            t("attn_v.weight", "self_attn.v_proj.weight", vec![kv, h]),
            t("attn_v.bias", "self_attn.v_proj.bias", vec![kv]),
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

    fn load(
        &self,
        content: Content,
        file: &mut File,
        device: &Device,
        _: Engine,
        _: KvCache,
    ) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(ModelWeights::from_gguf(
            content, file, device,
        )?)))
    }
}

struct Model(ModelWeights);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.0.clear_kv_cache();
        Ok(())
    }
}
