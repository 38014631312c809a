//! Llama (Llama 2/3, TinyLlama): the settings of candle-transformers `models::llama`, run by the
//! worker's own copy of that module (`modules::llama`: the same arithmetic, fewer kernels).
//!
//! The module keeps its KV cache in a separate `Cache`; a request starts from a clone of the
//! empty cache made at load, which shares the rotary tables already on the device.

use std::any::Any;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as candle_llama;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults, RopeKind, RopeScaling};
use crate::error::Result;
use crate::fast::{Heads, LlamaShape, QkvKind};
use crate::fixture::{
    FixtureLayout, FixtureRope, FixtureVariant, Geometry, Llama3Scaling, TensorLayout, EOS,
};
use crate::model::{ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};
use crate::modules::llama as llama_module;

pub struct Llama;

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["llama"]
    }

    fn class_name(&self) -> &'static str {
        "LlamaForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 2048, None)?;
        dims.expect_derived_head_dim(cfg)?;
        cfg.expect("hidden_act", json!("silu"), "candle's llama MLP uses SiLU")?;
        cfg.expect(
            "attention_bias",
            json!(false),
            "candle's llama attention has no biases",
        )?;
        cfg.expect("mlp_bias", json!(false), "candle's llama MLP has no biases")?;
        let rope = cfg.rope(RopeDefaults::STANDARD, &[RopeKind::Llama3])?;
        rope.expect_full_rotation(cfg)?;
        let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
        let rope_scaling = match rope.scaling {
            RopeScaling::None => None,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => Some(candle_llama::Llama3RopeConfig {
                factor: factor as f32,
                low_freq_factor: low_freq_factor as f32,
                high_freq_factor: high_freq_factor as f32,
                original_max_position_embeddings,
                rope_type: candle_llama::Llama3RopeType::Llama3,
            }),
        };
        let module = candle_llama::Config {
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            vocab_size: dims.vocab_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            num_key_value_heads: dims.num_kv_heads,
            use_flash_attn: false,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling,
            max_position_embeddings: dims.max_position_embeddings,
            tie_word_embeddings,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Llama,
                dims,
                tie_word_embeddings,
                rope,
                window: Window::None,
            },
            module: Box::new(Config(module)),
        })
    }

    fn fixtures(&self) -> &'static [FixtureVariant] {
        &[
            FixtureVariant {
                id: "llama",
                seed: 9,
                sliding_window: None,
                rope: None,
                description: "GQA, BOS added, untied output",
            },
            FixtureVariant {
                id: "llama-rope",
                seed: 12,
                sliding_window: None,
                rope: Some(FixtureRope {
                    theta: 500_000.0,
                    llama3: Some(Llama3Scaling {
                        factor: 8.0,
                        low_freq_factor: 1.0,
                        high_freq_factor: 4.0,
                        original_max_position_embeddings: 32,
                    }),
                }),
                description: "transformers 5's rope_parameters: rope_theta 500000 and Llama 3's \
                              scaling (factor 8 over 32 original positions), as Llama 3.1",
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
            chat_template: include_str!("chat_templates/llama.jinja"),
        }
    }

    fn fixture_config(&self, _: &Geometry, _: Option<usize>) -> Value {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false, "mlp_bias": false})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout::LLAMA
    }
}

/// candle's llama settings; the bench's baseline builds candle's own module from them.
#[derive(Debug)]
pub struct Config(pub candle_llama::Config);

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        let empty_cache = llama_module::Cache::new(vb.dtype(), &self.0, vb.device())?;
        Ok(Box::new(Model {
            model: llama_module::Llama::load(vb, &self.0)?,
            cache: empty_cache.clone(),
            empty_cache,
        }))
    }

    fn llama_shape(&self) -> Option<LlamaShape> {
        let c = &self.0;
        Some(LlamaShape {
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
            inv_freq: llama_module::rope_frequencies(c),
            max_positions: c.max_position_embeddings,
            tie_embeddings: c.tie_word_embeddings,
            window: None,
            qkv: QkvKind::Plain,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model {
    model: llama_module::Llama,
    cache: llama_module::Cache,
    empty_cache: llama_module::Cache,
}

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.model.forward(ids, offset, &mut self.cache)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.cache = self.empty_cache.clone();
        Ok(())
    }
}
