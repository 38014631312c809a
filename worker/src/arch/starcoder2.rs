//! StarCoder2: the worker's module derived from candle-transformers `models::starcoder2`
//! (`modules::starcoder2`), which applies the sliding window as transformers does.

use std::any::Any;

use candle_core::Result as CandleResult;
use candle_nn::VarBuilder;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{
    AttentionTensors, FixtureLayout, FixtureVariant, Geometry, MlpTensors, TensorLayout, ENDOFTEXT,
};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};
use crate::modules::starcoder2 as starcoder2_module;

pub struct Starcoder2;

impl Architecture for Starcoder2 {
    fn name(&self) -> &'static str {
        "starcoder2"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["starcoder2"]
    }

    fn class_name(&self) -> &'static str {
        "Starcoder2ForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 4096, None)?;
        dims.expect_derived_head_dim(cfg)?;
        let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
        rope.expect_full_rotation(cfg)?;
        let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", true)?;
        let sliding_window = cfg
            .opt_usize("sliding_window")?
            .filter(|size| *size < dims.max_position_embeddings);
        let module = starcoder2_module::Config {
            vocab_size: dims.vocab_size,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            num_key_value_heads: dims.num_kv_heads,
            hidden_act: model::activation(cfg, "hidden_act", "gelu_pytorch_tanh")?,
            max_position_embeddings: dims.max_position_embeddings,
            norm_epsilon: cfg.opt_positive_f64("norm_epsilon")?.unwrap_or(1e-5),
            rope_theta: rope.theta,
            use_bias: cfg.bool_or("use_bias", true)?,
            tie_word_embeddings,
            sliding_window,
        };
        let window = match sliding_window {
            Some(size) => Window::Applied {
                size,
                layers: vec![true; dims.num_layers],
            },
            None => Window::None,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Starcoder2,
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
                id: "starcoder2",
                seed: 6,
                sliding_window: None,
                rope: None,
                description: "LayerNorm, biases, GELU MLP, tied output",
            },
            FixtureVariant {
                id: "starcoder2-sw8",
                seed: 3,
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
            tied: true,
            add_bos: false,
            eos: ENDOFTEXT,
            extra_eos: None,
            chat_template: include_str!("chat_templates/starcoder2.jinja"),
        }
    }

    fn fixture_config(&self, _: &Geometry, sliding_window: Option<usize>) -> Value {
        json!({"hidden_act": "gelu_pytorch_tanh", "norm_epsilon": 1e-5, "use_bias": true, "sliding_window": sliding_window})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            layer_norm: true,
            attention: AttentionTensors {
                qkv_bias: true,
                output_bias: true,
                ..TensorLayout::LLAMA.attention
            },
            mlp: MlpTensors::UpDown {
                up: "c_fc",
                down: "c_proj",
            },
            ..TensorLayout::LLAMA
        }
    }
}

impl ModuleConfig for starcoder2_module::Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(starcoder2_module::Model::load(self, vb)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
