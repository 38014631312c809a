//! What every architecture shares: the [`Architecture`] trait each file of `arch/` implements,
//! the settings it reads ([`ArchConfig`], [`Dims`], [`Window`]) and the loaded model
//! ([`CausalLm`]). It sits below the architectures: they import from here, never from the
//! registry that lists them.

use std::any::Any;
use std::fmt;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::{Activation, VarBuilder};
use serde::Serialize;

use crate::config::{HfConfig, Rope};
use crate::error::Result;
use crate::fixture::{FixtureLayout, FixtureTensor, FixtureVariant, Geometry, TensorLayout};

/// One supported architecture: its names, how it reads `config.json` (refusing what its module
/// cannot compute), the tensors it may leave unread, and how `synth` writes its fixtures.
/// `arch::ALL` lists every implementation once.
pub trait Architecture: Send + Sync {
    /// The name reports, cases and fixtures use.
    fn name(&self) -> &'static str;

    /// The `model_type`s of config.json this architecture answers to, compared without case,
    /// `_` and `-` (`stable_lm` is `stablelm`); transformers' class names in `architectures`
    /// (`Qwen2ForCausalLM`) are compared with their suffix removed.
    fn model_types(&self) -> &'static [&'static str];

    /// transformers' class, written into the fixtures' `architectures`.
    fn class_name(&self) -> &'static str;

    /// The settings of config.json, and the module's own; fails on a setting the module would
    /// silently compute differently from transformers.
    fn parse(&self, cfg: &HfConfig) -> Result<Parsed>;

    /// Checkpoint tensors the module does not read and that do not change its output, matched
    /// by name suffix.
    fn harmless_tensors(&self) -> &'static [&'static str] {
        // Rotary frequencies saved by older transformers; recomputed from rope_theta.
        &["rotary_emb.inv_freq"]
    }

    /// This architecture's fixture models: the first is the plain one, any others vary it.
    fn fixtures(&self) -> &'static [FixtureVariant];

    /// The choices of its fixture models: heads, tying, special tokens.
    fn fixture_layout(&self) -> FixtureLayout;

    /// The keys of a fixture's config.json beyond the sizes every architecture writes.
    fn fixture_config(
        &self,
        geometry: &Geometry,
        sliding_window: Option<usize>,
    ) -> serde_json::Value;

    /// The layout of its checkpoints' tensors, from which [`Self::fixture_tensors`] lists them.
    fn tensor_layout(&self) -> TensorLayout;

    /// The tensors of its fixtures' checkpoints, as `synth` names and fills them; an
    /// architecture whose tensors [`TensorLayout`] cannot describe lists them itself.
    fn fixture_tensors(&self, geometry: &Geometry) -> Vec<FixtureTensor> {
        self.tensor_layout().tensors(geometry)
    }
}

impl fmt::Debug for dyn Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for dyn Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for dyn Architecture {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for dyn Architecture {}

impl std::hash::Hash for dyn Architecture {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl Serialize for dyn Architecture {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// What [`Architecture::parse`] reads: the settings every architecture has, and its module's.
pub struct Parsed {
    pub config: ArchConfig,
    pub module: Box<dyn ModuleConfig>,
}

/// A module's own settings, able to build the module over a checkpoint's tensors.
pub trait ModuleConfig: Send + Sync + fmt::Debug {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>>;

    /// The module as the CUDA fast path sees it, for the llama-family modules it covers.
    fn llama_shape(&self) -> Option<crate::fast::shape::LlamaShape> {
        None
    }

    /// For the bench's plain candle baseline, which builds candle's module from the same
    /// settings.
    fn as_any(&self) -> &dyn Any;
}

/// A loaded model with its KV cache.
pub trait CausalLm: Send {
    /// Runs `ids` (shape `(1, n)`) at positions `offset..offset + n`, appending to the KV cache,
    /// and returns the logits of the last position, in the module's shape and dtype.
    fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor>;

    /// Greedy decoding's next token, for a model that picks it where its logits are: runs `ids`
    /// at `offset` as [`Self::forward`] does and returns the index of the largest last logit,
    /// the lowest among equal ones. `None`, having run nothing, when the model does not pick;
    /// the caller then takes the logits.
    fn forward_greedy(&mut self, _ids: &[u32], _offset: usize) -> CandleResult<Option<u32>> {
        Ok(None)
    }

    /// Empties the KV cache, so that the next forward starts at position 0.
    fn reset(&mut self) -> CandleResult<()>;

    /// For a model whose decode step is a CUDA graph: its census, and its replays timed from
    /// `position` on. Overwrites the cache from `position`; `None` for the others.
    fn decode_graph(&mut self, _position: usize) -> CandleResult<Option<DecodeGraph>> {
        Ok(None)
    }
}

/// A decode step captured as a CUDA graph: what it launches, and how long a replay takes.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct DecodeGraph {
    /// The graph's nodes; `kernels` of them are kernel launches (the others copies or sets).
    pub nodes: usize,
    pub kernels: usize,
    /// Replays back to back, each the next greedy token from the one before, starting at
    /// this position, with nothing between them on the host.
    pub replays: usize,
    pub position: usize,
    /// Wall time of the replays over their count: the step's time on the device with no host
    /// work between tokens.
    pub replay_us: f64,
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
    pub fn read(
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
            num_layers: layer_count(cfg)?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: cfg
                .opt_usize("max_position_embeddings")?
                .unwrap_or(default_max_position_embeddings),
        })
    }

    /// For modules that derive the head size from `hidden_size / num_attention_heads`.
    pub fn expect_derived_head_dim(&self, cfg: &HfConfig) -> Result<()> {
        let derived = self.hidden_size / self.num_heads;
        if self.head_dim != derived || !self.hidden_size.is_multiple_of(self.num_heads) {
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

/// Everything the worker derived from `config.json`, or from a GGUF file's metadata.
#[derive(Clone, Debug)]
pub struct ArchConfig {
    pub architecture: &'static dyn Architecture,
    pub dims: Dims,
    pub tie_word_embeddings: bool,
    pub rope: Rope,
    pub window: Window,
}

impl ArchConfig {
    /// The longest sequence (prompt plus generated tokens) the worker runs for this model.
    pub fn context_length(&self) -> usize {
        match self.window {
            Window::LimitsContext { size } => size.min(self.dims.max_position_embeddings),
            _ => self.dims.max_position_embeddings,
        }
    }
}

/// The activation named by `key` (transformers' `ACT2FN` names), limited to those whose candle
/// implementation computes the same function.
pub fn activation(cfg: &HfConfig, key: &str, default: &str) -> Result<Activation> {
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
pub fn module_config<T: serde::de::DeserializeOwned>(
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
pub fn qwen_window(cfg: &HfConfig, dims: &Dims) -> Result<Window> {
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

/// The most layers a model may state: a hundred times the deepest models of today. The layer
/// list is built from the stated count before any weight is seen, and 2^62 of them would abort
/// the process on the allocation.
pub const MAX_LAYERS: usize = 16_384;

fn layer_count(cfg: &HfConfig) -> Result<usize> {
    match positive(cfg, "num_hidden_layers")? {
        n if n > MAX_LAYERS => Err(cfg.error(
            "num_hidden_layers",
            format!("is {n}; more than {MAX_LAYERS} layers is not a model that fits in memory"),
        )),
        n => Ok(n),
    }
}

fn positive(cfg: &HfConfig, key: &str) -> Result<usize> {
    match cfg.usize(key)? {
        0 => Err(cfg.error(key, "must be positive")),
        n => Ok(n),
    }
}
