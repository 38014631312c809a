//! Phi-1, Phi-1.5 and Phi-2: candle-transformers `models::phi`.

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::phi as candle_phi;
use serde_json::json;

use super::{ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;

pub type Config = candle_phi::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 2048, None)?;
    dims.expect_derived_head_dim(cfg)?;
    let rope = cfg.rope(
        RopeDefaults {
            theta: 10_000.0,
            partial_rotary_factor: 0.5,
        },
        &[],
    )?;
    let hidden_act = super::activation(cfg, "hidden_act", "gelu_new")?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
    if tie_word_embeddings {
        return Err(cfg.error(
            "tie_word_embeddings",
            "is true, but candle's phi module always reads a separate lm_head",
        ));
    }
    // The module's fields are crate-private: it is built from its serde form.
    let module: Config = super::module_config(
        cfg,
        json!({
            "vocab_size": dims.vocab_size,
            "hidden_size": dims.hidden_size,
            "intermediate_size": dims.intermediate_size,
            "num_hidden_layers": dims.num_layers,
            "num_attention_heads": dims.num_heads,
            "num_key_value_heads": dims.num_kv_heads,
            "hidden_act": hidden_act,
            "max_position_embeddings": dims.max_position_embeddings,
            "layer_norm_eps": cfg.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
            "tie_word_embeddings": false,
            "rope_theta": rope.theta,
            "partial_rotary_factor": rope.partial_rotary_factor,
            "qk_layernorm": cfg.bool_or("qk_layernorm", false)?,
        }),
    )?;
    Ok(ArchConfig {
        architecture: Architecture::Phi,
        dims,
        tie_word_embeddings,
        rope,
        window: Window::None,
        module: ModuleConfig::Phi(module),
    })
}

pub struct Model(candle_phi::Model);

impl Model {
    pub fn load(config: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        candle_phi::Model::new(config, vb).map(Self)
    }

    /// The module tracks positions through its own cache, so `offset` is implied.
    pub fn forward(&mut self, ids: &Tensor, _offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids)
    }

    pub fn reset(&mut self) {
        self.0.clear_kv_cache();
    }
}
