//! Phi-3 and Phi-3.5: candle-transformers `models::phi3`.
//!
//! The module applies no sliding window: a checkpoint with one (Phi-3-mini-4k has 2047) runs
//! sequences up to the window, where the window masks nothing.

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::phi3 as candle_phi3;

use super::{ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;

pub type Config = candle_phi3::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 4096, None)?;
    dims.expect_derived_head_dim(cfg)?;
    // longrope (the 128k variants) is refused here: the module's version of it differs from
    // transformers'.
    let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
    let window = match cfg.opt_usize("sliding_window")? {
        Some(size) if size < dims.max_position_embeddings => Window::LimitsContext { size },
        _ => Window::None,
    };
    // Used by transformers only together with longrope, which is refused above.
    cfg.value("original_max_position_embeddings");
    let module = Config {
        vocab_size: dims.vocab_size,
        hidden_act: super::activation(cfg, "hidden_act", "silu")?,
        hidden_size: dims.hidden_size,
        intermediate_size: dims.intermediate_size,
        num_hidden_layers: dims.num_layers,
        num_attention_heads: dims.num_heads,
        num_key_value_heads: dims.num_kv_heads,
        rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
        rope_theta: rope.theta,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: dims.max_position_embeddings,
        original_max_position_embeddings: None,
        partial_rotary_factor: Some(rope.partial_rotary_factor).filter(|f| *f != 1.0),
        tie_word_embeddings,
    };
    Ok(ArchConfig {
        architecture: Architecture::Phi3,
        dims,
        tie_word_embeddings,
        rope,
        window,
        module: ModuleConfig::Phi3(module),
    })
}

pub struct Model(candle_phi3::Model);

impl Model {
    pub fn load(config: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        candle_phi3::Model::new(config, vb).map(Self)
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    pub fn reset(&mut self) {
        self.0.clear_kv_cache();
    }
}
