//! Qwen3: candle-transformers `models::qwen3`.
//!
//! The module refuses `use_sliding_window`; as for Qwen2, a window in use limits the context to
//! the window instead.

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3 as candle_qwen3;

use super::{ArchConfig, Architecture, Dims, ModuleConfig};
use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;

pub type Config = candle_qwen3::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 32768, Some(128))?;
    let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
    rope.expect_full_rotation(cfg)?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
    let window = super::qwen_window(cfg, &dims)?;
    let module = Config {
        vocab_size: dims.vocab_size,
        hidden_size: dims.hidden_size,
        intermediate_size: dims.intermediate_size,
        num_hidden_layers: dims.num_layers,
        num_attention_heads: dims.num_heads,
        head_dim: dims.head_dim,
        attention_bias: cfg.bool_or("attention_bias", false)?,
        num_key_value_heads: dims.num_kv_heads,
        max_position_embeddings: dims.max_position_embeddings,
        sliding_window: None,
        max_window_layers: dims.num_layers,
        tie_word_embeddings,
        rope_theta: rope.theta,
        rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        use_sliding_window: false,
        hidden_act: super::activation(cfg, "hidden_act", "silu")?,
    };
    Ok(ArchConfig {
        architecture: Architecture::Qwen3,
        dims,
        tie_word_embeddings,
        rope,
        window,
        module: ModuleConfig::Qwen3(module),
    })
}

pub struct Model(candle_qwen3::ModelForCausalLM);

impl Model {
    pub fn load(config: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        candle_qwen3::ModelForCausalLM::new(config, vb).map(Self)
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    pub fn reset(&mut self) {
        self.0.clear_kv_cache();
    }
}
