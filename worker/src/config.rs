//! Reading a transformers `config.json` in both forms found in the wild.
//!
//! transformers 4.x writes `rope_theta`, `rope_scaling` and `partial_rotary_factor` at the top
//! level; transformers 5.x writes them inside `rope_parameters` and may write `sliding_window:
//! null` and `layer_types`. [`HfConfig`] reads either form and remembers which keys were read, so
//! that keys nobody looked at can be reported instead of silently ignored.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Keys that never change the math of inference: bookkeeping, training-only settings, and ids
/// the worker reads from elsewhere.
const KEYS_WITHOUT_EFFECT: &[&str] = &[
    "_name_or_path",
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tokenizer_class",
    // Dropout is off at inference.
    "attention_dropout",
    "hidden_dropout",
    "embd_pdrop",
    "resid_pdrop",
    "embedding_dropout",
    "residual_dropout",
    // Splits the projections into slices during training; the product is the same.
    "pretraining_tp",
];

/// A parsed `config.json` that tracks which keys were read.
#[derive(Debug)]
pub struct HfConfig {
    path: PathBuf,
    map: Map<String, Value>,
    read: RefCell<BTreeSet<String>>,
}

impl HfConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::file(
                path,
                format!("cannot read config: {e} (a model folder needs config.json)"),
            )
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Error::file(path, "expected a JSON object at the top level"));
        };
        Ok(Self {
            path: path.to_path_buf(),
            map,
            read: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::field(&self.path, field, message)
    }

    /// The raw value of `key`, `None` when absent or `null`; marks the key as read.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.error(key, "required, but missing"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.value(key)
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    self.error(key, format!("expected a non-negative integer, found {v}"))
                })
            })
            .transpose()
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?
            .ok_or_else(|| self.error(key, "required, but missing"))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.value(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.error(key, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    /// A number that must be positive (an epsilon, a base): 0 or less would make the model
    /// divide by zero or take the log of a negative, silently.
    pub fn opt_positive_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.opt_f64(key)? {
            Some(x) if !(x > 0.0 && x.is_finite()) => {
                Err(self.error(key, format!("is {x}; it must be a positive, finite number")))
            }
            x => Ok(x),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.value(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(key, format!("expected true or false, found {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.value(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.error(key, format!("expected a string, found {v}")))
            })
            .transpose()
    }

    /// Fails unless `key` is absent, `null`, or equal to `expected`: for settings the
    /// architecture's candle module hard-codes.
    pub fn expect(&self, key: &str, expected: Value, why: &str) -> Result<()> {
        match self.value(key) {
            None => Ok(()),
            Some(v)
                if *v == expected || v.as_f64().is_some() && v.as_f64() == expected.as_f64() =>
            {
                Ok(())
            }
            Some(v) => Err(self.error(
                key,
                format!("is {v}, but only {expected} is supported: {why}"),
            )),
        }
    }

    /// Token ids given as one integer or a list (`eos_token_id`).
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        token_ids(self.value(key)).map_err(|m| self.error(key, m))
    }

    /// Keys present in the file that no part of the worker read, minus the ones known to have no
    /// effect on inference.
    pub fn unread_keys(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.map
            .keys()
            .filter(|k| !read.contains(*k) && !KEYS_WITHOUT_EFFECT.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    /// The `layer_types` list (5.x, and 4.x for some architectures): `true` for each layer
    /// that uses sliding-window attention.
    pub fn sliding_layers(&self, num_layers: usize) -> Result<Option<Vec<bool>>> {
        let Some(v) = self.value("layer_types") else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.error("layer_types", format!("expected a list, found {v}")))?;
        if list.len() != num_layers {
            return Err(self.error(
                "layer_types",
                format!(
                    "has {} entries but num_hidden_layers is {num_layers}",
                    list.len()
                ),
            ));
        }
        list.iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(self.error(
                    "layer_types",
                    format!("unknown layer type {t}: expected \"full_attention\" or \"sliding_attention\""),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Rotary position embedding settings from either config form, with the architecture's
    /// defaults for what is absent. `supported` lists the scaling types the architecture's
    /// module implements besides `default`.
    pub fn rope(&self, defaults: RopeDefaults, supported: &[RopeKind]) -> Result<Rope> {
        let from_parameters = self.value("rope_parameters");
        let from_scaling = self.value("rope_scaling");
        let (field, params) = match (from_parameters, from_scaling) {
            (Some(p), None) => ("rope_parameters", Some(p)),
            (None, Some(s)) => ("rope_scaling", Some(s)),
            (None, None) => ("rope_scaling", None),
            (Some(_), Some(_)) => {
                return Err(self.error(
                    "rope_scaling",
                    "both rope_parameters (transformers 5.x) and rope_scaling (4.x) are set; \
                     keep one",
                ))
            }
        };
        let params = match params {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(v) => return Err(self.error(field, format!("expected an object, found {v}"))),
        };
        let param_f64 = |key: &str| -> Result<Option<f64>> {
            params
                .get(key)
                .filter(|v| !v.is_null())
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        self.error(
                            format!("{field}.{key}"),
                            format!("expected a number, found {v}"),
                        )
                    })
                })
                .transpose()
        };
        let required = |key: &str| -> Result<f64> {
            param_f64(key)?.ok_or_else(|| {
                self.error(
                    format!("{field}.{key}"),
                    "required by this rope type, but missing",
                )
            })
        };

        let theta = one_of(
            self,
            field,
            "rope_theta",
            param_f64("rope_theta")?,
            self.opt_f64("rope_theta")?,
        )?
        .unwrap_or(defaults.theta);
        if !(theta > 0.0 && theta.is_finite()) {
            return Err(self.error(
                "rope_theta",
                format!("is {theta}; the rotary base must be a positive, finite number"),
            ));
        }
        let partial_rotary_factor = one_of(
            self,
            field,
            "partial_rotary_factor",
            param_f64("partial_rotary_factor")?,
            self.opt_f64("partial_rotary_factor")?,
        )?
        .unwrap_or(defaults.partial_rotary_factor);
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            return Err(self.error(
                "partial_rotary_factor",
                format!("is {partial_rotary_factor}; it must be in (0, 1]"),
            ));
        }

        let rope_type = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .filter(|v| !v.is_null());
        let rope_type = match rope_type {
            None => "default",
            Some(v) => v.as_str().ok_or_else(|| {
                self.error(
                    format!("{field}.rope_type"),
                    format!("expected a string, found {v}"),
                )
            })?,
        };
        let kind = match rope_type {
            "default" => RopeKind::Default,
            "llama3" => RopeKind::Llama3,
            other => {
                return Err(self.error(
                    format!("{field}.rope_type"),
                    format!(
                        "rope type `{other}` is not implemented by this architecture's module; \
                         supported: {}",
                        supported_names(supported)
                    ),
                ))
            }
        };
        if kind != RopeKind::Default && !supported.contains(&kind) {
            return Err(self.error(
                format!("{field}.rope_type"),
                format!(
                    "rope type `{rope_type}` is not implemented by this architecture's module; \
                     supported: {}",
                    supported_names(supported)
                ),
            ));
        }
        let known: &[&str] = match kind {
            RopeKind::Default => &["rope_type", "type", "rope_theta", "partial_rotary_factor"],
            RopeKind::Llama3 => &[
                "rope_type",
                "type",
                "rope_theta",
                "partial_rotary_factor",
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_max_position_embeddings",
            ],
        };
        if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(self.error(
                format!("{field}.{unknown}"),
                format!("not supported with rope type `{rope_type}`"),
            ));
        }
        let scaling = match kind {
            RopeKind::Default => RopeScaling::None,
            RopeKind::Llama3 => RopeScaling::Llama3 {
                factor: required("factor")?,
                low_freq_factor: required("low_freq_factor")?,
                high_freq_factor: required("high_freq_factor")?,
                original_max_position_embeddings: required("original_max_position_embeddings")?
                    as usize,
            },
        };
        Ok(Rope {
            theta,
            partial_rotary_factor,
            scaling,
        })
    }
}

/// A setting that may appear in `rope_parameters` (5.x) or at the top level (4.x): both may be
/// present only when they agree.
fn one_of(
    cfg: &HfConfig,
    field: &str,
    key: &str,
    nested: Option<f64>,
    top: Option<f64>,
) -> Result<Option<f64>> {
    match (nested, top) {
        (Some(a), Some(b)) if a != b => Err(cfg.error(
            key,
            format!("is {b} at the top level but {a} in {field}; they must agree"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn supported_names(supported: &[RopeKind]) -> String {
    std::iter::once("default")
        .chain(supported.iter().map(|k| k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn token_ids(value: Option<&Value>) -> std::result::Result<Vec<u32>, String> {
    let as_id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("expected a token id, found {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(list)) => list.iter().map(as_id).collect(),
        Some(v) => as_id(v).map(|id| vec![id]),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    Default,
    Llama3,
}

impl RopeKind {
    fn name(self) -> &'static str {
        match self {
            RopeKind::Default => "default",
            RopeKind::Llama3 => "llama3",
        }
    }
}

/// transformers' class defaults for an architecture's rope settings.
#[derive(Clone, Copy, Debug)]
pub struct RopeDefaults {
    pub theta: f64,
    pub partial_rotary_factor: f64,
}

impl RopeDefaults {
    /// `rope_theta` 10000, rotating the whole head.
    pub const STANDARD: RopeDefaults = RopeDefaults {
        theta: 10_000.0,
        partial_rotary_factor: 1.0,
    };
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rope {
    pub theta: f64,
    /// The fraction of each head's dimensions that is rotated.
    pub partial_rotary_factor: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Fails when only part of the head is rotated, for a module that rotates all of it.
    pub fn expect_full_rotation(&self, cfg: &HfConfig) -> Result<()> {
        match self.partial_rotary_factor {
            1.0 => Ok(()),
            f => Err(cfg.error(
                "partial_rotary_factor",
                format!("is {f}, but this architecture's module rotates the whole head (1.0)"),
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    None,
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}
