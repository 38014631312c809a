//! StableLM (StableLM-2, StableLM-3B-4E1T in transformers' format): candle-transformers
//! `models::stable_lm`.
//!
//! The module has no way to empty its KV cache, so a reset rebuilds it from the tensors already
//! on the device (no weight is read or uploaded again).

use std::any::Any;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_lm as candle_stablelm;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{
    AttentionTensors, FixtureLayout, FixtureVariant, Geometry, TensorLayout, ENDOFTEXT,
};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};

pub struct StableLm;

impl Architecture for StableLm {
    fn name(&self) -> &'static str {
        "stablelm"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["stablelm", "stable_lm"]
    }

    fn class_name(&self) -> &'static str {
        "StableLmForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
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
        let module: candle_stablelm::Config = model::module_config(
            cfg,
            json!({
                "vocab_size": dims.vocab_size,
                "intermediate_size": dims.intermediate_size,
                "hidden_size": dims.hidden_size,
                "num_hidden_layers": dims.num_layers,
                "num_attention_heads": dims.num_heads,
                "num_key_value_heads": dims.num_kv_heads,
                "hidden_act": model::activation(cfg, "hidden_act", "silu")?,
                "partial_rotary_factor": rope.partial_rotary_factor,
                "rope_theta": rope.theta,
                "max_position_embeddings": dims.max_position_embeddings,
                "layer_norm_eps": cfg.opt_positive_f64("layer_norm_eps")?.unwrap_or(1e-5),
                "use_cache": true,
                "use_qkv_bias": cfg.bool_or("use_qkv_bias", false)?,
                "use_flash_attn": false,
            }),
        )?;
        Ok(Parsed {
            config: ArchConfig {
                architecture: &StableLm,
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
            id: "stablelm",
            seed: 5,
            sliding_window: None,
            rope: None,
            description: "quarter rotary, q/k/v biases",
        }]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 2,
            head_dim: None,
            tied: false,
            add_bos: false,
            eos: ENDOFTEXT,
            extra_eos: None,
            chat_template: include_str!("chat_templates/stablelm.jinja"),
        }
    }

    fn fixture_config(&self, _: &Geometry, _: Option<usize>) -> Value {
        json!({"hidden_act": "silu", "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.25, "use_qkv_bias": true, "qk_layernorm": false, "use_parallel_residual": false})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            layer_norm: true,
            attention: AttentionTensors {
                qkv_bias: true,
                ..TensorLayout::LLAMA.attention
            },
            ..TensorLayout::LLAMA
        }
    }
}

#[derive(Debug)]
struct Config(candle_stablelm::Config);

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model {
            model: candle_stablelm::Model::new(&self.0, vb.clone())?,
            config: self.0.clone(),
            weights: vb,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model {
    model: candle_stablelm::Model,
    config: candle_stablelm::Config,
    weights: VarBuilder<'static>,
}

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.model.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.model = candle_stablelm::Model::new(&self.config, self.weights.clone())?;
        Ok(())
    }
}
