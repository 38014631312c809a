//! Qwen3: candle-transformers `models::qwen3`.
//!
//! The module refuses `use_sliding_window`; as for Qwen2, a window in use limits the context to
//! the window instead.

use std::any::Any;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::qwen3 as candle_qwen3;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fast::shape::default_inv_freq;
use crate::fast::{Heads, LlamaShape, QkvKind};
use crate::fixture::{
    AttentionTensors, FixtureLayout, FixtureVariant, Geometry, TensorLayout, ENDOFTEXT, IM_END,
};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed};

pub struct Qwen3;

impl Architecture for Qwen3 {
    fn name(&self) -> &'static str {
        "qwen3"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["qwen3"]
    }

    fn class_name(&self) -> &'static str {
        "Qwen3ForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 32768, Some(128))?;
        let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
        rope.expect_full_rotation(cfg)?;
        let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
        let window = model::qwen_window(cfg, &dims)?;
        let module = candle_qwen3::Config {
            vocab_size: dims.vocab_size,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            head_dim: dims.head_dim,
            attention_bias: cfg.bool_or("attention_bias", false)?,
            num_key_value_heads: dims.num_kv_heads,
            max_position_embeddings: dims.max_position_embeddings,
            sliding_window: None,
            max_window_layers: dims.num_layers,
            tie_word_embeddings,
            rope_theta: rope.theta,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            use_sliding_window: false,
            hidden_act: model::activation(cfg, "hidden_act", "silu")?,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Qwen3,
                dims,
                tie_word_embeddings,
                rope,
                window,
            },
            module: Box::new(Config(module)),
        })
    }

    fn fixtures(&self) -> &'static [FixtureVariant] {
        &[FixtureVariant {
            id: "qwen3",
            seed: 1,
            sliding_window: None,
            rope: None,
            description: "q/k norms, head_dim 32 unlike hidden/heads, tied output",
        }]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 2,
            head_dim: Some(32),
            tied: true,
            add_bos: false,
            eos: ENDOFTEXT,
            extra_eos: Some(IM_END),
            chat_template: include_str!("chat_templates/qwen3.jinja"),
        }
    }

    fn fixture_config(&self, geometry: &Geometry, _: Option<usize>) -> Value {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "head_dim": geometry.head_dim, "attention_bias": false, "use_sliding_window": false, "sliding_window": null, "max_window_layers": geometry.layers})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            attention: AttentionTensors {
                qk_norm: true,
                ..TensorLayout::LLAMA.attention
            },
            ..TensorLayout::LLAMA
        }
    }
}

#[derive(Debug)]
struct Config(candle_qwen3::Config);

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(candle_qwen3::ModelForCausalLM::new(
            &self.0, vb,
        )?)))
    }

    fn llama_shape(&self) -> Option<LlamaShape> {
        let c = &self.0;
        (c.hidden_act == Activation::Silu && !c.attention_bias).then(|| LlamaShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            layers: c.num_hidden_layers,
            heads: Heads {
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
            rms_eps: c.rms_norm_eps,
            inv_freq: default_inv_freq(c.rope_theta, c.head_dim),
            max_positions: c.max_position_embeddings,
            tie_embeddings: c.tie_word_embeddings,
            window: None,
            qkv: QkvKind::Norm,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model(candle_qwen3::ModelForCausalLM);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.0.clear_kv_cache();
        Ok(())
    }
}
