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

    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::field(&self.path, field, message)
    }

    /// The raw value of `key`, `None` when absent or `null`; marks the key as read.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
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
        // A null parameter counts as absent, as transformers reads it.
        let present = |key: &str| params.get(key).filter(|v| !v.is_null());
        let param_f64 = |key: &str| -> Result<Option<f64>> {
            present(key)
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

        // transformers 4.x wrote `type`, later `rope_type`; a `rope_type: null` beside `type`
        // leaves `type` in force.
        let rope_type = present("rope_type").or_else(|| present("type"));
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(config: Value) -> HfConfig {
        HfConfig::parse(Path::new("model/config.json"), &config.to_string()).unwrap()
    }

    fn refusal<T: std::fmt::Debug>(result: Result<T>) -> String {
        result.unwrap_err().to_string()
    }

    fn rope(config: Value, supported: &[RopeKind]) -> Result<Rope> {
        cfg(config).rope(RopeDefaults::STANDARD, supported)
    }

    fn assert_refused<T: std::fmt::Debug>(result: Result<T>, expected: &str) {
        let message = refusal(result);
        assert!(
            message.starts_with("model/config.json: ") && message.contains(expected),
            "expected `{expected}` in: {message}"
        );
    }

    const LLAMA3: &[RopeKind] = &[RopeKind::Llama3];

    fn llama3_parameters() -> Value {
        json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64
        })
    }

    #[test]
    fn a_missing_file_or_one_that_is_not_an_object_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let message = refusal(HfConfig::load(&path));
        assert!(
            message.contains("config.json") && message.contains("cannot read config"),
            "{message}"
        );
        std::fs::write(&path, r#"{"hidden_size": 8}"#).unwrap();
        assert_eq!(
            HfConfig::load(&path).unwrap().usize("hidden_size").unwrap(),
            8
        );
        let path = Path::new("model/config.json");
        assert!(refusal(HfConfig::parse(path, "{")).contains("not valid JSON"));
        assert!(refusal(HfConfig::parse(path, "[]")).contains("JSON object at the top level"));
    }

    #[test]
    fn values_are_read_by_type_and_null_counts_as_absent() {
        let c = cfg(json!({"n": 3, "x": 2.5, "neg": -1, "s": "a", "b": false, "nul": null}));
        assert_eq!(c.usize("n").unwrap(), 3);
        assert_eq!(c.opt_usize("absent").unwrap(), None);
        assert_eq!(c.opt_usize("nul").unwrap(), None);
        assert_refused(c.usize("nul"), "field `nul`: required, but missing");
        assert_refused(
            c.usize("neg"),
            "field `neg`: expected a non-negative integer, found -1",
        );
        assert_refused(c.opt_usize("x"), "found 2.5");
        assert_eq!(c.f64("x").unwrap(), 2.5);
        assert_eq!(c.f64("n").unwrap(), 3.0);
        assert_eq!(c.opt_f64("nul").unwrap(), None);
        assert_refused(c.f64("absent"), "field `absent`: required, but missing");
        assert_refused(c.opt_f64("s"), "field `s`: expected a number, found \"a\"");
        assert_eq!(c.opt_str("s").unwrap(), Some("a"));
        assert_eq!(c.opt_str("absent").unwrap(), None);
        assert_refused(c.opt_str("n"), "field `n`: expected a string, found 3");
        assert!(!c.bool_or("b", true).unwrap());
        assert!(c.bool_or("absent", true).unwrap());
        assert!(!c.bool_or("nul", false).unwrap());
        assert_refused(
            c.bool_or("n", false),
            "field `n`: expected true or false, found 3",
        );
    }

    #[test]
    fn positive_numbers_refuse_zero_and_negatives() {
        let c = cfg(json!({"eps": 1e-6, "huge": 1e300, "zero": 0.0, "neg": -1e-6}));
        assert_eq!(c.opt_positive_f64("eps").unwrap(), Some(1e-6));
        assert_eq!(c.opt_positive_f64("huge").unwrap(), Some(1e300));
        assert_eq!(c.opt_positive_f64("absent").unwrap(), None);
        assert_refused(
            c.opt_positive_f64("zero"),
            "field `zero`: is 0; it must be a positive",
        );
        assert_refused(
            c.opt_positive_f64("neg"),
            "field `neg`: is -0.000001; it must be",
        );
    }

    #[test]
    fn an_expected_setting_matches_by_value_and_a_number_by_magnitude() {
        let c = cfg(json!({"act": "silu", "one": 1, "half": 0.5, "flag": false, "nul": null}));
        for (key, expected) in [
            ("absent", json!(true)),
            ("nul", json!(true)),
            ("act", json!("silu")),
            ("one", json!(1.0)),
            ("flag", json!(false)),
        ] {
            c.expect(key, expected, "why").unwrap();
        }
        assert_refused(
            c.expect("act", json!("gelu"), "the module applies gelu"),
            "field `act`: is \"silu\", but only \"gelu\" is supported: the module applies gelu",
        );
        assert_refused(c.expect("half", json!(1.0), "why"), "is 0.5, but only 1.0");
        assert_refused(
            c.expect("flag", json!(true), "why"),
            "is false, but only true",
        );
    }

    #[test]
    fn token_ids_are_one_id_or_a_list() {
        let c = cfg(json!({
            "one": 2, "list": [0, 7], "nul": null, "neg": -1, "big": 4_294_967_296_u64,
            "text": "</s>", "mixed": [1, "x"]
        }));
        assert_eq!(c.token_ids("one").unwrap(), vec![2]);
        assert_eq!(c.token_ids("list").unwrap(), vec![0, 7]);
        assert_eq!(c.token_ids("nul").unwrap(), Vec::<u32>::new());
        assert_eq!(c.token_ids("absent").unwrap(), Vec::<u32>::new());
        for (key, found) in [
            ("neg", "-1"),
            ("big", "4294967296"),
            ("text", "\"</s>\""),
            ("mixed", "\"x\""),
        ] {
            assert_refused(
                c.token_ids(key),
                &format!("field `{key}`: expected a token id, found {found}"),
            );
        }
    }

    #[test]
    fn keys_nobody_read_are_reported_except_those_without_effect() {
        let c = cfg(json!({
            "hidden_size": 8, "torch_dtype": "float32", "attn_temperature": 0.5, "rope_theta": 1.0
        }));
        assert_eq!(
            c.unread_keys(),
            ["attn_temperature", "hidden_size", "rope_theta"]
        );
        c.usize("hidden_size").unwrap();
        assert_eq!(c.value("rope_theta"), Some(&json!(1.0)));
        assert_eq!(c.unread_keys(), ["attn_temperature"]);
    }

    #[test]
    fn layer_types_name_each_layer() {
        let c = cfg(json!({
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]
        }));
        assert_eq!(c.sliding_layers(3).unwrap(), Some(vec![true, false, true]));
        assert_refused(
            c.sliding_layers(2),
            "field `layer_types`: has 3 entries but num_hidden_layers is 2",
        );
        assert_eq!(cfg(json!({})).sliding_layers(2).unwrap(), None);
        let chunked = cfg(json!({"layer_types": ["full_attention", "chunked_attention"]}));
        assert_refused(
            chunked.sliding_layers(2),
            "unknown layer type \"chunked_attention\"",
        );
        let text = cfg(json!({"layer_types": "full_attention"}));
        assert_refused(text.sliding_layers(1), "expected a list");
    }

    #[test]
    fn rope_settings_come_from_either_form_or_the_defaults() {
        let standard = Rope {
            theta: 10_000.0,
            partial_rotary_factor: 1.0,
            scaling: RopeScaling::None,
        };
        assert_eq!(rope(json!({}), &[]).unwrap(), standard);
        let theta = Rope {
            theta: 1e6,
            ..standard.clone()
        };
        for config in [
            json!({"rope_theta": 1e6}),
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
            json!({"rope_theta": 1e6, "rope_parameters": {"rope_theta": 1e6}}),
            json!({"rope_theta": null, "rope_scaling": null, "rope_parameters": {"rope_theta": 1e6}}),
        ] {
            assert_eq!(rope(config, &[]).unwrap(), theta);
        }
        assert_refused(
            rope(
                json!({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e6}}),
                &[],
            ),
            "field `rope_theta`: is 10000 at the top level but 1000000 in rope_parameters; they \
             must agree",
        );
        let both = json!({"rope_parameters": {}, "rope_scaling": {}});
        assert_refused(
            rope(both, &[]),
            "field `rope_scaling`: both rope_parameters",
        );
        for bad in [0.0, -1.0] {
            assert_refused(
                rope(json!({"rope_theta": bad}), &[]),
                "the rotary base must be a positive, finite number",
            );
            assert_refused(
                rope(json!({"rope_parameters": {"rope_theta": bad}}), &[]),
                "field `rope_theta`",
            );
        }
        for factor in [0.5, 1.0] {
            let partial = rope(json!({"partial_rotary_factor": factor}), &[]).unwrap();
            assert_eq!(partial.partial_rotary_factor, factor);
        }
        for bad in [0.0, -0.5, 1.5] {
            assert_refused(
                rope(json!({"partial_rotary_factor": bad}), &[]),
                &format!("field `partial_rotary_factor`: is {bad}; it must be in (0, 1]"),
            );
        }
    }

    #[test]
    fn a_module_that_rotates_the_whole_head_refuses_a_partial_factor() {
        let c = cfg(json!({"partial_rotary_factor": 0.5}));
        let partial = c.rope(RopeDefaults::STANDARD, &[]).unwrap();
        assert_refused(
            partial.expect_full_rotation(&c),
            "field `partial_rotary_factor`: is 0.5, but this architecture's module rotates the \
             whole head",
        );
        let c = cfg(json!({}));
        let full = c.rope(RopeDefaults::STANDARD, &[]).unwrap();
        full.expect_full_rotation(&c).unwrap();
    }

    #[test]
    fn rope_types_must_be_implemented_and_their_keys_known() {
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let mut legacy = llama3_parameters();
        legacy["type"] = legacy["rope_type"].take();
        for config in [
            json!({"rope_scaling": llama3_parameters()}),
            json!({"rope_parameters": llama3_parameters()}),
            json!({"rope_scaling": legacy}),
        ] {
            assert_eq!(rope(config, LLAMA3).unwrap().scaling, llama3);
        }
        assert_refused(
            rope(json!({"rope_scaling": llama3_parameters()}), &[]),
            "field `rope_scaling.rope_type`: rope type `llama3` is not implemented by this \
             architecture's module; supported: default",
        );
        assert_refused(
            rope(json!({"rope_parameters": {"rope_type": "yarn"}}), LLAMA3),
            "field `rope_parameters.rope_type`: rope type `yarn` is not implemented by this \
             architecture's module; supported: default, llama3",
        );
        assert_refused(
            rope(
                json!({"rope_parameters": {"rope_type": "default", "factor": 2.0}}),
                LLAMA3,
            ),
            "field `rope_parameters.factor`: not supported with rope type `default`",
        );
        let mut missing = llama3_parameters();
        missing.as_object_mut().unwrap().remove("low_freq_factor");
        assert_refused(
            rope(json!({"rope_scaling": missing}), LLAMA3),
            "field `rope_scaling.low_freq_factor`: required by this rope type, but missing",
        );
        let mut text = llama3_parameters();
        text["factor"] = json!("8");
        assert_refused(
            rope(json!({"rope_scaling": text}), LLAMA3),
            "field `rope_scaling.factor`: expected a number, found \"8\"",
        );
        assert_refused(
            rope(json!({"rope_scaling": {"rope_type": 3}}), LLAMA3),
            "field `rope_scaling.rope_type`: expected a string, found 3",
        );
        assert_refused(
            rope(json!({"rope_scaling": "llama3"}), LLAMA3),
            "field `rope_scaling`: expected an object, found \"llama3\"",
        );
    }
}
