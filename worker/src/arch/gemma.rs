//! Gemma: candle-transformers `models::gemma`. Embeddings are always tied.

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::gemma as candle_gemma;
use serde_json::json;

use super::{ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;

pub type Config = candle_gemma::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 8192, Some(256))?;
    let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
    rope.expect_full_rotation(cfg)?;
    cfg.expect(
        "use_bidirectional_attention",
        json!(false),
        "the worker generates causally",
    )?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", true)?;
    if !tie_word_embeddings {
        return Err(cfg.error(
            "tie_word_embeddings",
            "is false, but candle's gemma module always ties the output to the embeddings",
        ));
    }
    Ok(ArchConfig {
        architecture: Architecture::Gemma,
        module: ModuleConfig::Gemma(Config {
            attention_bias: cfg.bool_or("attention_bias", false)?,
            head_dim: dims.head_dim,
            hidden_act: None,
            hidden_activation: Some(hidden_activation(cfg)?),
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_attention_heads: dims.num_heads,
            num_hidden_layers: dims.num_layers,
            num_key_value_heads: dims.num_kv_heads,
            rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            vocab_size: dims.vocab_size,
            max_position_embeddings: dims.max_position_embeddings,
        }),
        dims,
        tie_word_embeddings,
        rope,
        window: Window::None,
    })
}

/// transformers 5.x semantics: `hidden_activation` when set, else `hidden_act`, where the legacy
/// value `gelu` of the released configs means the tanh approximation.
fn hidden_activation(cfg: &HfConfig) -> Result<candle_nn::Activation> {
    // Both keys are read: the one not used is the one transformers ignores too.
    let legacy = cfg.opt_str("hidden_act")?;
    let (key, name) = match cfg.opt_str("hidden_activation")? {
        Some(name) => ("hidden_activation", Some(name)),
        None => ("hidden_act", legacy),
    };
    match name {
        Some("gelu") | None => Ok(candle_nn::Activation::GeluPytorchTanh),
        Some(_) => super::activation(cfg, key, "gelu_pytorch_tanh"),
    }
}

pub struct Model(candle_gemma::Model);

impl Model {
    pub fn load(config: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        candle_gemma::Model::new(false, config, vb).map(Self)
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    pub fn reset(&mut self) {
        self.0.clear_kv_cache();
    }
}
