//! Phi-3 and Phi-3.5: candle-transformers `models::phi3`.
//!
//! The module applies no sliding window: a checkpoint with one (Phi-3-mini-4k has 2047) runs
//! sequences up to the window, where the window masks nothing.

use std::any::Any;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::phi3 as candle_phi3;
use serde_json::{json, Value};

use crate::config::{HfConfig, RopeDefaults};
use crate::error::Result;
use crate::fixture::{
    AttentionTensors, FixtureLayout, FixtureVariant, Geometry, MlpTensors, TensorLayout, ENDOFTEXT,
    IM_END,
};
use crate::model::{self, ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Parsed, Window};

pub struct Phi3;

impl Architecture for Phi3 {
    fn name(&self) -> &'static str {
        "phi3"
    }

    fn model_types(&self) -> &'static [&'static str] {
        &["phi3"]
    }

    fn class_name(&self) -> &'static str {
        "Phi3ForCausalLM"
    }

    fn parse(&self, cfg: &HfConfig) -> Result<Parsed> {
        let dims = Dims::read(cfg, 4096, None)?;
        dims.expect_derived_head_dim(cfg)?;
        // longrope (the 128k variants) is refused here: the module's version of it differs
        // from transformers'.
        let rope = cfg.rope(RopeDefaults::STANDARD, &[])?;
        let tie_word_embeddings = cfg.bool_or("tie_word_embeddings", false)?;
        let window = match cfg.opt_usize("sliding_window")? {
            Some(size) if size < dims.max_position_embeddings => Window::LimitsContext { size },
            _ => Window::None,
        };
        // Used by transformers only together with longrope, which is refused above.
        cfg.value("original_max_position_embeddings");
        let module = candle_phi3::Config {
            vocab_size: dims.vocab_size,
            hidden_act: model::activation(cfg, "hidden_act", "silu")?,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_hidden_layers: dims.num_layers,
            num_attention_heads: dims.num_heads,
            num_key_value_heads: dims.num_kv_heads,
            rms_norm_eps: cfg.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-5),
            rope_theta: rope.theta,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: dims.max_position_embeddings,
            original_max_position_embeddings: None,
            partial_rotary_factor: Some(rope.partial_rotary_factor).filter(|f| *f != 1.0),
            tie_word_embeddings,
        };
        Ok(Parsed {
            config: ArchConfig {
                architecture: &Phi3,
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
            id: "phi3",
            seed: 5,
            sliding_window: None,
            rope: None,
            description: "fused projections; a 64-token window limits the context, as \
                          Phi-3-mini-4k's does",
        }]
    }

    fn fixture_layout(&self) -> FixtureLayout {
        FixtureLayout {
            kv_heads: 2,
            head_dim: None,
            tied: false,
            add_bos: false,
            eos: ENDOFTEXT,
            extra_eos: Some(IM_END),
            chat_template: include_str!("chat_templates/phi3.jinja"),
        }
    }

    fn fixture_config(&self, geometry: &Geometry, _: Option<usize>) -> Value {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "sliding_window": 64, "original_max_position_embeddings": geometry.max_positions, "rope_scaling": null})
    }

    fn tensor_layout(&self) -> TensorLayout {
        TensorLayout {
            attention: AttentionTensors {
                fused_qkv: true,
                ..TensorLayout::LLAMA.attention
            },
            mlp: MlpTensors::FusedGateUp,
            ..TensorLayout::LLAMA
        }
    }
}

#[derive(Debug)]
struct Config(candle_phi3::Config);

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model(candle_phi3::Model::new(&self.0, vb)?)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Model(candle_phi3::Model);

impl CausalLm for Model {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        self.0.forward(ids, offset)
    }

    fn reset(&mut self) -> CandleResult<()> {
        self.0.clear_kv_cache();
        Ok(())
    }
}
