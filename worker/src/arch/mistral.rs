//! Mistral: candle-transformers `models::mistral`.
//!
//! The module's own mask is wrong for sliding windows (one token too wide, and absent while
//! decoding), so the worker embeds the tokens itself and passes its own mask to
//! `forward_embeds`.

use std::any::Any;

use candle_core::{DType, Device, Module, Result as CandleResult, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::mistral as candle_mistral;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fast::shape::default_inv_freq;
use crate::fast::{Heads, LlamaShape, QkvKind};
use crate::fixture::{FixtureLayout, FixtureVariant, Geometry, TensorLayout, EOS};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};
use crate::modules::mask;

pub struct Mistral;

impl Architecture for Mistral {
    fn name(&self) -> &'static str {
        "mistral"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["mistral"]
    }

    fn class_name(&self) -> &'static str {
        "MistralForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 4096 * 32, None)?;
        let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
        rope.expect_full_rotation(cfg)?;
        let hidden_act = model::activation(cfg, "hidden_act", "silu")?;
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
        let module = candle_mistral::Config {
            vocab_size: dims.vocab_size,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            head_dim: Some(dims.head_dim),
            num_key_value_heads: dims.num_kv_heads,
            hidden_act,
            max_position_embeddings: dims.max_position_embeddings,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            // The worker masks; the module's own window mask is never built.
            sliding_window: None,
            use_flash_attn: false,
        };
        let module = Config {
            window: match window {
                Window::Applied { size, .. } => Some(size),
                _ => None,
            },
            module,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Mistral,
                dims,
                tie_word_embeddings,
                rope,
                window,
            },
            module: Box::new(module),
        })
    }

    fn fixtures(&self) -> &'static [FixtureVariant] {
        &[
            FixtureVariant {
                id: "mistral",
                seed: 11,
                sliding_window: None,
                rope: None,
                description: "GQA, no window",
            },
            FixtureVariant {
                id: "mistral-sw8",
                seed: 5,
                sliding_window: Some(8),
                rope: None,
                description: "sliding window of 8 on every layer",
            },
        ]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 2,
            head_dim: None,
            tied: false,
            add_bos: true,
            eos: EOS,
            extra_eos: None,
            chat_template: include_str!("chat_templates/mistral.jinja"),
        }
    }

    fn fixture_config(&self, geometry: &Geometry, sliding_window: Option<usize>) -> Value {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "head_dim": geometry.head_dim, "sliding_window": sliding_window})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout::LLAMA
    }
}

/// candle's mistral settings and the window the worker's mask applies; the bench's baseline
/// builds candle's own module from them.
#[derive(Debug)]
pub struct Config {
    pub module: candle_mistral::Config,
    window: Option<usize>,
}

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model {
            window: self.window,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            model: candle_mistral::Model::new(&self.module, vb)?,
        }))
    }

    fn llama_shape(&self) -> Option<LlamaShape> {
        let c = &self.module;
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        (c.hidden_act == Activation::Silu).then(|| LlamaShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            layers: c.num_hidden_layers,
            heads: Heads {
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim,
            },
            rms_eps: c.rms_norm_eps,
            inv_freq: default_inv_freq(c.rope_theta, head_dim),
            max_positions: c.max_position_embeddings,
            tie_embeddings: false,
            window: self.window,
            qkv: QkvKind::Plain,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model {
    model: candle_mistral::Model,
    window: Option<usize>,
    device: Device,
    dtype: DType,
}

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        let (_, q_len) = ids.dims2()?;
        let mask = mask::causal(q_len, offset, self.window, &self.device, self.dtype)?;
        let embeds = self.model.embed_tokens().forward(ids)?;
        self.model.forward_embeds(&embeds, mask.as_ref(), offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.model.clear_kv_cache();
        Ok(())
    }
}
