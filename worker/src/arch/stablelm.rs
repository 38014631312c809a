//! StableLM (StableLM-2, StableLM-3B-4E1T in transformers' format): candle-transformers
//! `models::stable_lm`.
//!
//! The module has no way to empty its KV cache, so a reset rebuilds it from the tensors already
//! on the device (no weight is read or uploaded again).

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_lm as candle_stablelm;
use serde_json::json;

use super::{ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;

pub type Config = candle_stablelm::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 4096, None)?;
    dims.expect_derived_head_dim(cfg)?;
    let rope = cfg.rope(
        RopeDefaults {
            theta: 10_000.0,
            partial_rotary_factor: 0.25,
        },
        &[],
    )?;
    cfg.expect(
        "qk_layernorm",
        json!(false),
        "candle's stable_lm module has no per-head query/key norms",
    )?;
    cfg.expect(
        "use_parallel_residual",
        json!(false),
        "candle's stable_lm module applies attention and MLP in sequence",
    )?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
    if tie_word_embeddings {
        return Err(cfg.error(
            "tie_word_embeddings",
            "is true, but candle's stable_lm module always reads a separate lm_head",
        ));
    }
    // The module's fields are crate-private: it is built from its serde form.
    let module: Config = super::module_config(
        cfg,
        json!({
            "vocab_size": dims.vocab_size,
            "intermediate_size": dims.intermediate_size,
            "hidden_size": dims.hidden_size,
            "num_hidden_layers": dims.num_layers,
            "num_attention_heads": dims.num_heads,
            "num_key_value_heads": dims.num_kv_heads,
            "hidden_act": super::activation(cfg, "hidden_act", "silu")?,
            "partial_rotary_factor": rope.partial_rotary_factor,
            "rope_theta": rope.theta,
            "max_position_embeddings": dims.max_position_embeddings,
            "layer_norm_eps": cfg.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
            "use_cache": true,
            "use_qkv_bias": cfg.bool_or("use_qkv_bias", false)?,
            "use_flash_attn": false,
        }),
    )?;
    Ok(ArchConfig {
        architecture: Architecture::StableLm,
        dims,
        tie_word_embeddings,
        rope,
        window: Window::None,
        module: ModuleConfig::StableLm(module),
    })
}

pub struct Model {
    model: candle_stablelm::Model,
    config: Config,
    weights: VarBuilder<'static>,
}

impl Model {
    pub fn load(config: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        Ok(Self {
            model: candle_stablelm::Model::new(config, vb.clone())?,
            config: config.clone(),
            weights: vb,
        })
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.model.forward(ids, offset)
    }

    pub fn reset(&mut self) -> CandleResult<()> {
        self.model = candle_stablelm::Model::new(&self.config, self.weights.clone())?;
        Ok(())
    }
}
