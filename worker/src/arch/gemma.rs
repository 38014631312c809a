//! Gemma: candle-transformers `models::gemma`. Embeddings are always tied.

use std::any::Any;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::gemma as candle_gemma;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{FixtureLayout, FixtureVariant, Geometry, TensorLayout, EOS};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};

pub struct Gemma;

impl Architecture for Gemma {
    fn name(&self) -> &'static str {
        "gemma"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["gemma"]
    }

    fn class_name(&self) -> &'static str {
        "GemmaForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
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
        let module = candle_gemma::Config {
            attention_bias: cfg.bool_or("attention_bias", false)?,
            head_dim: dims.head_dim,
            hidden_act: None,
            hidden_activation: Some(hidden_activation(cfg)?),
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_attention_heads: dims.num_heads,
            num_hidden_layers: dims.num_layers,
            num_key_value_heads: dims.num_kv_heads,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            vocab_size: dims.vocab_size,
            max_position_embeddings: dims.max_position_embeddings,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Gemma,
                dims,
                tie_word_embeddings,
                rope,
                window: Window::None,
            },
            module: Box::new(Config(module)),
        })
    }

    fn fixtures(&self) -> &'static [FixtureVariant] {
        &[FixtureVariant {
            id: "gemma",
            seed: 6,
            sliding_window: None,
            rope: None,
            description: "multi-query attention, head_dim 32, scaled embeddings",
        }]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 1,
            head_dim: Some(32),
            tied: true,
            add_bos: true,
            eos: EOS,
            extra_eos: None,
            chat_template: include_str!("chat_templates/gemma.jinja"),
        }
    }

    fn fixture_config(&self, geometry: &Geometry, _: Option<usize>) -> Value {
        json!({"hidden_act": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": geometry.head_dim, "attention_bias": false})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            norm_offset: true,
            // sqrt(hidden size 64): the scale of Gemma's embeddings in the residual stream.
            branch_gain: 8.0,
            ..TensorLayout::LLAMA
        }
    }
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
        Some(_) => model::activation(cfg, key, "gelu_pytorch_tanh"),
    }
}

#[derive(Debug)]
struct Config(candle_gemma::Config);

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(candle_gemma::Model::new(
            false, &self.0, vb,
        )?)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model(candle_gemma::Model);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.0.clear_kv_cache();
        Ok(())
    }
}
