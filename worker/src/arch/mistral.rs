//! Mistral: candle-transformers `models::mistral`.
//!
//! The module's own mask is wrong for sliding windows (one token too wide, and absent while
//! decoding), so the worker embeds the tokens itself and passes its own mask to
//! `forward_embeds`.

use candle_core::{DType, Device, Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::mistral as candle_mistral;

use super::{mask, ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;

pub type Config = candle_mistral::Config;

pub const HARMLESS_TENSORS: &[&str] = &[
    // Rotary frequencies saved by older transformers; recomputed from rope_theta.
    "rotary_emb.inv_freq",
];

pub fn parse(cfg: &HfConfig) -> Result<ArchConfig> {
    let dims = Dims::read(cfg, 4096 * 32, None)?;
    let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
    rope.expect_full_rotation(cfg)?;
    let hidden_act = super::activation(cfg, "hidden_act", "silu")?;
    let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
    if tie_word_embeddings {
        return Err(cfg.error(
            "tie_word_embeddings",
            "is true, but candle's mistral module always reads a separate lm_head",
        ));
    }
    let window = match cfg.opt_usize("sliding_window")? {
        Some(size) if size < dims.max_position_embeddings => Window::Applied {
            size,
            layers: vec![true; dims.num_layers],
        },
        _ => Window::None,
    };
    let module = Config {
        vocab_size: dims.vocab_size,
        hidden_size: dims.hidden_size,
        intermediate_size: dims.intermediate_size,
        num_hidden_layers: dims.num_layers,
        num_attention_heads: dims.num_heads,
        head_dim: Some(dims.head_dim),
        num_key_value_heads: dims.num_kv_heads,
        hidden_act,
        max_position_embeddings: dims.max_position_embeddings,
        rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: rope.theta,
        // The worker masks; the module's own window mask is never built.
        sliding_window: None,
        use_flash_attn: false,
    };
    Ok(ArchConfig {
        architecture: Architecture::Mistral,
        dims,
        tie_word_embeddings,
        rope,
        window,
        module: ModuleConfig::Mistral(module),
    })
}

pub struct Model {
    model: candle_mistral::Model,
    window: Option<usize>,
    device: Device,
    dtype: DType,
}

impl Model {
    pub fn load(config: &Config, window: &Window, vb: VarBuilder<'static>) -> CandleResult<Self> {
        Ok(Self {
            window: match window {
                Window::Applied { size, .. } => Some(*size),
                _ => None,
            },
            device: vb.device().clone(),
            dtype: vb.dtype(),
            model: candle_mistral::Model::new(config, vb)?,
        })
    }

    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        let (_, q_len) = ids.dims2()?;
        let mask = mask::causal(q_len, offset, self.window, &self.device, self.dtype)?;
        let embeds = self.model.embed_tokens().forward(ids)?;
        self.model.forward_embeds(&embeds, mask.as_ref(), offset)
    }

    pub fn reset(&mut self) {
        self.model.clear_kv_cache();
    }
}
