//! Phi-1, Phi-1.5 and Phi-2: the worker's module derived from candle-transformers `models::phi`
//! (`modules::phi`).

use std::any::Any;

use candle_core::Result as CandleResult;
use candle_nn::VarBuilder;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{
    AttentionTensors, BlockNorms, FixtureLayout, FixtureVariant, Geometry, MlpTensors,
    TensorLayout, ENDOFTEXT, HEADS,
};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};
use crate::modules::phi as phi_module;

pub struct Phi;

impl Architecture for Phi {
    fn name(&self) -> &'static str {
        "phi"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["phi"]
    }

    fn class_name(&self) -> &'static str {
        "PhiForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 2048, None)?;
        dims.expect_derived_head_dim(cfg)?;
        let rope = cfg.rope(
            RopeDefaults {
                theta: 10_000.0,
                partial_rotary_factor: 0.5,
            },
            &[],
        )?;
        let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
        if tie_word_embeddings {
            return Err(cfg.error(
                "tie_word_embeddings",
                "is true, but phi has a separate lm_head with a bias",
            ));
        }
        let module = phi_module::Config {
            vocab_size: dims.vocab_size,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            num_key_value_heads: dims.num_kv_heads,
            hidden_act: model::activation(cfg, "hidden_act", "gelu_new")?,
            max_position_embeddings: dims.max_position_embeddings,
            layer_norm_eps: cfg.opt_positive_f64("layer_norm_eps")?.unwrap_or(1e-5),
            rope_theta: rope.theta,
            partial_rotary_factor: rope.partial_rotary_factor,
            qk_layernorm: cfg.bool_or("qk_layernorm", false)?,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Phi,
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
            id: "phi",
            seed: 4,
            sliding_window: None,
            rope: None,
            description: "partial rotary, parallel attention/MLP, biases",
        }]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: HEADS,
            head_dim: None,
            tied: false,
            add_bos: false,
            eos: ENDOFTEXT,
            extra_eos: None,
            chat_template: include_str!("chat_templates/phi.jinja"),
        }
    }

    fn fixture_config(&self, _: &Geometry, _: Option<usize>) -> Value {
        json!({"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.5, "qk_layernorm": false})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            layer_norm: true,
            final_norm: "model.final_layernorm",
            lm_head_bias: true,
            block_norms: BlockNorms::Parallel,
            attention: AttentionTensors {
                fused_qkv: false,
                qkv_bias: true,
                output: "dense",
                output_bias: true,
                qk_norm: false,
            },
            mlp: MlpTensors::UpDown {
                up: "fc1",
                down: "fc2",
            },
            ..TensorLayout::LLAMA
        }
    }
}

impl ModuleConfig for phi_module::Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(phi_module::Model::load(self, vb)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
