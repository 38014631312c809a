//! Gemma 2: the worker's module derived from candle-transformers `models::gemma2`
//! (`modules::gemma`), which applies the sliding window as transformers does.

use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{BlockNorms, FixtureLayout, FixtureVariant, Geometry, TensorLayout, EOS};
use crate::model::{self, ArchConfig, Architecture, Dims, Parsed, Window};
use crate::modules::gemma as gemma_module;

pub struct Gemma2;

impl Architecture for Gemma2 {
    fn name(&self) -> &'static str {
        "gemma2"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["gemma2"]
    }

    fn class_name(&self) -> &'static str {
        "Gemma2ForCausalLM"
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
                "is false, but Gemma 2 ties the output to the embeddings",
            ));
        }
        let layers = cfg
            .sliding_layers(dims.num_layers)?
            .unwrap_or_else(|| (0..dims.num_layers).map(|i| i % 2 == 0).collect());
        let window = match cfg.opt_usize("sliding_window")? {
            Some(size) if layers.contains(&true) && size < dims.max_position_embeddings => {
                Window::Applied { size, layers }
            }
            _ => Window::None,
        };
        let module = gemma_module::Config {
            attention_bias: cfg.bool_or("attention_bias", false)?,
            head_dim: dims.head_dim,
            hidden_activation: model::activation(cfg, "hidden_activation", "gelu_pytorch_tanh")?,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_attention_heads: dims.num_heads,
            num_hidden_layers: dims.num_layers,
            num_key_value_heads: dims.num_kv_heads,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope.theta,
            vocab_size: dims.vocab_size,
            final_logit_softcapping: cfg.opt_f64("final_logit_softcapping")?,
            attn_logit_softcapping: cfg.opt_f64("attn_logit_softcapping")?,
            query_pre_attn_scalar: cfg.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0),
            max_position_embeddings: dims.max_position_embeddings,
            window: match &window {
                Window::Applied { size, layers } => Some((*size, layers.clone())),
                _ => None,
            },
            output_norms: true,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Gemma2,
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
                id: "gemma2",
                seed: 0,
                sliding_window: None,
                rope: None,
                description: "soft-capping, query_pre_attn_scalar unlike head_dim",
            },
            FixtureVariant {
                id: "gemma2-sw8",
                seed: 1,
                sliding_window: Some(8),
                rope: None,
                description: "sliding window of 8 on every other layer",
            },
        ]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 2,
            head_dim: None,
            tied: true,
            add_bos: true,
            eos: EOS,
            extra_eos: None,
            chat_template: include_str!("chat_templates/gemma.jinja"),
        }
    }

    fn fixture_config(&self, geometry: &Geometry, sliding_window: Option<usize>) -> Value {
        json!({"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": geometry.head_dim, "attention_bias": false, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": sliding_window.unwrap_or(geometry.max_positions)})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            norm_offset: true,
            // Gemma 2 normalizes each branch before adding it to the residual stream, which
            // carries the embeddings scaled by sqrt(hidden); a large gain keeps the layers from
            // being drowned out (else the fixture degenerates into a bigram model).
            block_norms: BlockNorms::Sandwich { gain: 8.0 },
            ..TensorLayout::LLAMA
        }
    }
}
