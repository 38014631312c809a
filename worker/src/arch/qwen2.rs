//! Qwen2 and Qwen2.5: candle-transformers `models::qwen2`.
//!
//! transformers applies `sliding_window` only when `use_sliding_window` is true (never in the
//! released Qwen2/2.5 checkpoints), and then only on some layers; the module always applies it
//! in its prefill mask. The worker gives the module a window as long as the context, so it masks
//! nothing, and limits the context to the window when one is really in use.

use std::any::Any;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::qwen2 as candle_qwen2;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fast::shape::default_inv_freq;
use crate::fast::{Heads, LlamaShape, QkvKind};
use crate::fixture::{
    AttentionTensors, FixtureLayout, FixtureVariant, Geometry, TensorLayout, ENDOFTEXT, IM_END,
};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed};

pub struct Qwen2;

impl Architecture for Qwen2 {
    fn name(&self) -> &'static str {
        "qwen2"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["qwen2"]
    }

    fn class_name(&self) -> &'static str {
        "Qwen2ForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 32768, None)?;
        dims.expect_derived_head_dim(cfg)?;
        let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
        rope.expect_full_rotation(cfg)?;
        let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
        let window = model::qwen_window(cfg, &dims)?;
        let module = candle_qwen2::Config {
            vocab_size: dims.vocab_size,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            num_key_value_heads: dims.num_kv_heads,
            max_position_embeddings: dims.max_position_embeddings,
            sliding_window: dims.max_position_embeddings,
            max_window_layers: dims.num_layers,
            tie_word_embeddings,
            rope_theta: rope.theta,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            use_sliding_window: false,
            hidden_act: model::activation(cfg, "hidden_act", "silu")?,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Qwen2,
                dims,
                tie_word_embeddings,
                rope,
                window,
            },
            module: Box::new(Config(module)),
        })
    }

    fn fixtures(&self) -> &'static [FixtureVariant] {
        &[
            FixtureVariant {
                id: "qwen2",
                seed: 0,
                sliding_window: None,
                rope: None,
                description: "GQA, q/k/v biases, tied output, two EOS ids",
            },
            FixtureVariant {
                id: "qwen2-sw8",
                seed: 3,
                sliding_window: Some(8),
                rope: None,
                description: "sliding_window 8 with use_sliding_window false, as the released \
                              Qwen2.5 configs: transformers ignores the window, candle's module \
                              would apply it",
            },
        ]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 2,
            head_dim: None,
            tied: true,
            add_bos: false,
            eos: ENDOFTEXT,
            extra_eos: Some(IM_END),
            chat_template: include_str!("chat_templates/qwen2.jinja"),
        }
    }

    fn fixture_config(&self, geometry: &Geometry, sliding_window: Option<usize>) -> Value {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "use_sliding_window": false, "sliding_window": sliding_window.unwrap_or(geometry.max_positions), "max_window_layers": geometry.layers})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            attention: AttentionTensors {
                qkv_bias: true,
                ..TensorLayout::LLAMA.attention
            },
            ..TensorLayout::LLAMA
        }
    }
}

/// candle's qwen2 settings; the bench's baseline builds candle's own module from them.
#[derive(Debug)]
pub struct Config(pub candle_qwen2::Config);

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(candle_qwen2::ModelForCausalLM::new(
            &self.0, vb,
        )?)))
    }

    fn llama_shape(&self) -> Option<LlamaShape> {
        let c = &self.0;
        (c.hidden_act == Activation::Silu).then(|| LlamaShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            layers: c.num_hidden_layers,
            heads: Heads {
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.hidden_size / c.num_attention_heads,
            },
            rms_eps: c.rms_norm_eps,
            inv_freq: default_inv_freq(c.rope_theta, c.hidden_size / c.num_attention_heads),
            max_positions: c.max_position_embeddings,
            tie_embeddings: c.tie_word_embeddings,
            // The window limits the context instead (`use_sliding_window` is false).
            window: None,
            qkv: QkvKind::Bias,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model(candle_qwen2::ModelForCausalLM);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.0.clear_kv_cache();
        Ok(())
    }
}
