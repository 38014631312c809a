//! Gemma: the worker's module derived from candle-transformers `models::gemma2`
//! (`modules::gemma`), which computes the rotary tables in f32 as transformers does (candle's
//! `models::gemma` computes them in the model dtype). Embeddings are always tied.

use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{FixtureLayout, FixtureVariant, Geometry, TensorLayout, EOS};
use crate::model::{self, ArchConfig, Architecture, Dims, Parsed, Window};
use crate::modules::gemma as gemma_module;

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
                "is false, but Gemma ties the output to the embeddings",
            ));
        }
        let module = gemma_module::Config {
            attention_bias: cfg.bool_or("attention_bias", false)?,
            head_dim: dims.head_dim,
            hidden_activation: hidden_activation(cfg)?,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_attention_heads: dims.num_heads,
            num_hidden_layers: dims.num_layers,
            num_key_value_heads: dims.num_kv_heads,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            vocab_size: dims.vocab_size,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            query_pre_attn_scalar: dims.head_dim as f64,
            max_position_embeddings: dims.max_position_embeddings,
            window: None,
            output_norms: false,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Gemma,
                dims,
                tie_word_embeddings,
                rope,
                window: Window::None,
            },
            module: Box::new(module),
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
