//! The supported architectures: one [`Model`] variant each, with each architecture's config
//! keys, tensor names and cache handling in its own file; GGUF files of some of them through
//! candle's quantized modules ([`gguf`]).

mod gemma;
mod gemma2;
pub mod gguf;
mod llama;
mod llama_module;
mod mask;
mod mistral;
mod phi;
mod phi3;
mod qwen2;
mod qwen3;
mod rotary;
mod stablelm;
mod starcoder2;

use candle_core::{DType, Result as CandleResult, Tensor};
use candle_nn::{Activation, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::config::{HfConfig, Rope};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Phi,
    Phi3,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Starcoder2,
    #[serde(rename = "stablelm")]
    StableLm,
}

impl Architecture {
    pub const ALL: [Architecture; 10] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Phi,
        Architecture::Phi3,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma,
        Architecture::Gemma2,
        Architecture::Starcoder2,
        Architecture::StableLm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Phi => "phi",
            Architecture::Phi3 => "phi3",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma => "gemma",
            Architecture::Gemma2 => "gemma2",
            Architecture::Starcoder2 => "starcoder2",
            Architecture::StableLm => "stablelm",
        }
    }

    /// From `model_type`, else from `architectures[0]` (`Qwen2ForCausalLM` -> qwen2).
    pub fn detect(cfg: &HfConfig) -> Result<Self> {
        let (field, found) = match cfg.opt_str("model_type")? {
            Some(model_type) => ("model_type", model_type.to_string()),
            None => {
                let first = cfg
                    .value("architectures")
                    .and_then(|v| v.as_array())
                    .and_then(|list| list.first())
                    .and_then(|v| v.as_str());
                match first {
                    Some(name) => ("architectures", name.to_string()),
                    None => {
                        return Err(cfg.error(
                            "model_type",
                            format!(
                                "missing, and no `architectures` list to fall back on; \
                                 supported: {}",
                                Self::supported_list()
                            ),
                        ))
                    }
                }
            }
        };
        Self::from_name(&normalize(&found)).ok_or_else(|| {
            cfg.error(
                field,
                format!(
                    "architecture `{found}` is not supported; supported: {}",
                    Self::supported_list()
                ),
            )
        })
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    fn supported_list() -> String {
        Self::ALL.map(|a| a.name()).join(", ")
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `Qwen2ForCausalLM` -> `qwen2`, `StableLmForCausalLM` -> `stablelm`, `stable_lm` -> `stablelm`.
fn normalize(name: &str) -> String {
    let lower = name.to_ascii_lowercase().replace(['_', '-'], "");
    ["forcausallm", "lmheadmodel", "model"]
        .iter()
        .find_map(|suffix| lower.strip_suffix(suffix))
        .unwrap_or(&lower)
        .to_string()
}

/// How a sliding attention window in the checkpoint is handled.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "handling", rename_all = "snake_case")]
pub enum Window {
    /// No layer uses a window.
    None,
    /// Applied exactly as transformers applies it; `layers` marks the layers that slide.
    Applied { size: usize, layers: Vec<bool> },
    /// The architecture's candle module cannot apply it: sequences are limited to `size` tokens,
    /// where the window masks nothing, so the result is still exact.
    LimitsContext { size: usize },
}

/// The sizes of a decoder-only transformer, read from `config.json` or the GGUF metadata.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
}

impl Dims {
    /// `default_head_dim` is the class default transformers uses when `head_dim` is absent;
    /// `None` derives it as `hidden_size / num_attention_heads`.
    fn read(
        cfg: &HfConfig,
        default_max_position_embeddings: usize,
        default_head_dim: Option<usize>,
    ) -> Result<Self> {
        let hidden_size = positive(cfg, "hidden_size")?;
        let num_heads = positive(cfg, "num_attention_heads")?;
        let num_kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(cfg.error(
                "num_key_value_heads",
                format!("is {num_kv_heads}; it must divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match (cfg.opt_usize("head_dim")?, default_head_dim) {
            (Some(0), _) => return Err(cfg.error("head_dim", "must be positive")),
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) if hidden_size % num_heads == 0 => hidden_size / num_heads,
            (None, None) => {
                return Err(cfg.error(
                    "num_attention_heads",
                    format!("is {num_heads}, which does not divide hidden_size ({hidden_size})"),
                ))
            }
        };
        Ok(Self {
            vocab_size: positive(cfg, "vocab_size")?,
            hidden_size,
            intermediate_size: positive(cfg, "intermediate_size")?,
            num_layers: positive(cfg, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: cfg
                .opt_usize("max_position_embeddings")?
                .unwrap_or(default_max_position_embeddings),
        })
    }

    /// For modules that derive the head size from `hidden_size / num_attention_heads`.
    fn expect_derived_head_dim(&self, cfg: &HfConfig) -> Result<()> {
        let derived = self.hidden_size / self.num_heads;
        if self.head_dim != derived || self.hidden_size % self.num_heads != 0 {
            return Err(cfg.error(
                "head_dim",
                format!(
                    "is {}, but this architecture's module uses hidden_size / \
                     num_attention_heads = {derived}",
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }
}

/// The activation named by `key` (transformers' `ACT2FN` names), limited to those whose candle
/// implementation computes the same function.
fn activation(cfg: &HfConfig, key: &str, default: &str) -> Result<Activation> {
    let name = cfg.opt_str(key)?.unwrap_or(default);
    Ok(match name {
        "silu" | "swish" => Activation::Silu,
        "gelu" => Activation::Gelu,
        "gelu_new" => Activation::NewGelu,
        "gelu_pytorch_tanh" => Activation::GeluPytorchTanh,
        "relu" => Activation::Relu,
        other => {
            return Err(cfg.error(
                key,
                format!(
                    "activation `{other}` is not supported; supported: silu, swish, gelu, \
                     gelu_new, gelu_pytorch_tanh, relu"
                ),
            ))
        }
    })
}

/// Builds a candle module config whose fields are crate-private from its serde form.
fn module_config<T: serde::de::DeserializeOwned>(
    cfg: &HfConfig,
    value: serde_json::Value,
) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        cfg.error(
            "model_type",
            format!("cannot build the module's config: {e}"),
        )
    })
}

/// Qwen2/Qwen3 semantics: `sliding_window` counts only with `use_sliding_window`, on the layers
/// `layer_types` marks, or else on the layers from `max_window_layers` on.
fn qwen_window(cfg: &HfConfig, dims: &Dims) -> Result<Window> {
    let use_sliding_window = cfg.bool_or("use_sliding_window", false)?;
    let size = cfg.opt_usize("sliding_window")?;
    let max_window_layers = cfg.opt_usize("max_window_layers")?.unwrap_or(28);
    let layer_types = cfg.sliding_layers(dims.num_layers)?;
    let Some(size) = size.filter(|_| use_sliding_window) else {
        return Ok(Window::None);
    };
    let layers = layer_types.unwrap_or_else(|| {
        (0..dims.num_layers)
            .map(|i| i >= max_window_layers)
            .collect()
    });
    Ok(
        if layers.contains(&true) && size < dims.max_position_embeddings {
            Window::LimitsContext { size }
        } else {
            Window::None
        },
    )
}

fn positive(cfg: &HfConfig, key: &str) -> Result<usize> {
    match cfg.usize(key)? {
        0 => Err(cfg.error(key, "must be positive")),
        n => Ok(n),
    }
}

/// Everything the worker derived from `config.json`, or from a GGUF file's metadata.
#[derive(Clone, Debug)]
pub struct ArchConfig {
    pub architecture: Architecture,
    pub dims: Dims,
    pub tie_word_embeddings: bool,
    pub rope: Rope,
    pub window: Window,
    module: ModuleConfig,
}

#[derive(Clone, Debug)]
pub(crate) enum ModuleConfig {
    Llama(llama::Config),
    Mistral(mistral::Config),
    Phi(phi::Config),
    Phi3(phi3::Config),
    Qwen2(qwen2::Config),
    Qwen3(qwen3::Config),
    Gemma(gemma::Config),
    Gemma2(gemma2::Config),
    Starcoder2(starcoder2::Config),
    StableLm(stablelm::Config),
    Gguf(gguf::Config),
}

impl ArchConfig {
    pub fn parse(cfg: &HfConfig) -> Result<Self> {
        match Architecture::detect(cfg)? {
            Architecture::Llama => llama::parse(cfg),
            Architecture::Mistral => mistral::parse(cfg),
            Architecture::Phi => phi::parse(cfg),
            Architecture::Phi3 => phi3::parse(cfg),
            Architecture::Qwen2 => qwen2::parse(cfg),
            Architecture::Qwen3 => qwen3::parse(cfg),
            Architecture::Gemma => gemma::parse(cfg),
            Architecture::Gemma2 => gemma2::parse(cfg),
            Architecture::Starcoder2 => starcoder2::parse(cfg),
            Architecture::StableLm => stablelm::parse(cfg),
        }
    }

    /// The longest sequence (prompt plus generated tokens) the worker runs for this model.
    pub fn context_length(&self) -> usize {
        let context = match self.window {
            Window::LimitsContext { size } => size.min(self.dims.max_position_embeddings),
            _ => self.dims.max_position_embeddings,
        };
        match &self.module {
            ModuleConfig::Gguf(c) => context.min(c.table_positions),
            _ => context,
        }
    }

    /// The candle module's own settings.
    pub(crate) fn module(&self) -> &ModuleConfig {
        &self.module
    }

    /// The settings only a model read from a GGUF file has.
    pub fn gguf(&self) -> Option<&gguf::Config> {
        match &self.module {
            ModuleConfig::Gguf(c) => Some(c),
            _ => None,
        }
    }

    /// Checkpoint tensors the model does not read and that do not change its output, matched
    /// by name suffix.
    pub fn harmless_tensors(&self) -> &'static [&'static str] {
        match self.architecture {
            Architecture::Llama => llama::HARMLESS_TENSORS,
            Architecture::Mistral => mistral::HARMLESS_TENSORS,
            Architecture::Phi => phi::HARMLESS_TENSORS,
            Architecture::Phi3 => phi3::HARMLESS_TENSORS,
            Architecture::Qwen2 => qwen2::HARMLESS_TENSORS,
            Architecture::Qwen3 => qwen3::HARMLESS_TENSORS,
            Architecture::Gemma => gemma::HARMLESS_TENSORS,
            Architecture::Gemma2 => gemma2::HARMLESS_TENSORS,
            Architecture::Starcoder2 => starcoder2::HARMLESS_TENSORS,
            Architecture::StableLm => stablelm::HARMLESS_TENSORS,
        }
    }
}

/// A loaded model: one variant per architecture, each owning its KV cache, and one for the
/// quantized modules of GGUF files.
pub enum Model {
    Llama(llama::Model),
    Mistral(mistral::Model),
    Phi(phi::Model),
    Phi3(phi3::Model),
    Qwen2(qwen2::Model),
    Qwen3(qwen3::Model),
    Gemma(gemma::Model),
    Gemma2(gemma2::Model),
    Starcoder2(starcoder2::Model),
    StableLm(stablelm::Model),
    Gguf(gguf::Model),
}

impl Model {
    /// Builds the model from SafeTensors tensors already on the device (GGUF models are built
    /// by [`gguf::load`]).
    pub fn load(config: &ArchConfig, vb: VarBuilder<'static>) -> CandleResult<Self> {
        Ok(match &config.module {
            ModuleConfig::Llama(c) => Model::Llama(llama::Model::load(c, vb)?),
            ModuleConfig::Mistral(c) => {
                Model::Mistral(mistral::Model::load(c, &config.window, vb)?)
            }
            ModuleConfig::Phi(c) => Model::Phi(phi::Model::load(c, vb)?),
            ModuleConfig::Phi3(c) => Model::Phi3(phi3::Model::load(c, vb)?),
            ModuleConfig::Qwen2(c) => Model::Qwen2(qwen2::Model::load(c, vb)?),
            ModuleConfig::Qwen3(c) => Model::Qwen3(qwen3::Model::load(c, vb)?),
            ModuleConfig::Gemma(c) => Model::Gemma(gemma::Model::load(c, vb)?),
            ModuleConfig::Gemma2(c) => Model::Gemma2(gemma2::Model::load(c, vb)?),
            ModuleConfig::Starcoder2(c) => Model::Starcoder2(starcoder2::Model::load(c, vb)?),
            ModuleConfig::StableLm(c) => Model::StableLm(stablelm::Model::load(c, vb)?),
            ModuleConfig::Gguf(_) => {
                candle_core::bail!("a GGUF model is built from its file, not from SafeTensors")
            }
        })
    }

    /// Runs `ids` (shape `(1, n)`) at positions `offset..offset + n` through the model, appending
    /// to the KV cache, and returns the logits of the last position as an f32 vector.
    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        let logits = match self {
            Model::Llama(m) => m.forward(ids, offset)?,
            Model::Mistral(m) => m.forward(ids, offset)?,
            Model::Phi(m) => m.forward(ids, offset)?,
            Model::Phi3(m) => m.forward(ids, offset)?,
            Model::Qwen2(m) => m.forward(ids, offset)?,
            Model::Qwen3(m) => m.forward(ids, offset)?,
            Model::Gemma(m) => m.forward(ids, offset)?,
            Model::Gemma2(m) => m.forward(ids, offset)?,
            Model::Starcoder2(m) => m.forward(ids, offset)?,
            Model::StableLm(m) => m.forward(ids, offset)?,
            Model::Gguf(m) => m.forward(ids, offset)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)
    }

    /// Empties the KV cache, so the next forward starts at position 0.
    pub fn reset(&mut self) -> CandleResult<()> {
        match self {
            Model::Llama(m) => m.reset(),
            Model::Mistral(m) => m.reset(),
            Model::Phi(m) => m.reset(),
            Model::Phi3(m) => m.reset(),
            Model::Qwen2(m) => m.reset(),
            Model::Qwen3(m) => m.reset(),
            Model::Gemma(m) => m.reset(),
            Model::Gemma2(m) => m.reset(),
            Model::Starcoder2(m) => m.reset(),
            Model::StableLm(m) => m.reset()?,
            Model::Gguf(m) => m.reset(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_class_names_and_model_types() {
        assert_eq!(normalize("Qwen2ForCausalLM"), "qwen2");
        assert_eq!(normalize("StableLmForCausalLM"), "stablelm");
        assert_eq!(normalize("stable_lm"), "stablelm");
        assert_eq!(normalize("Starcoder2ForCausalLM"), "starcoder2");
        assert_eq!(normalize("PhiForCausalLM"), "phi");
        assert_eq!(normalize("GPT2LMHeadModel"), "gpt2");
        assert_eq!(normalize("llama"), "llama");
    }
}
