//! The registry of supported architectures: each file here implements
//! [`Architecture`](crate::model::Architecture) for one of them, and [`ALL`] lists them once.
//! Adding one: worker/README.md, "Adding an architecture".

pub mod gemma;
pub mod gemma2;
pub mod llama;
pub mod mistral;
pub mod phi;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod stablelm;
pub mod starcoder2;

use serde::{Deserialize, Deserializer};

use crate::config::HfConfig;
use crate::error::Result;
use crate::model::{Architecture, Parsed};

/// Every supported architecture, in the order tables list them.
pub const ALL: &[&dyn Architecture] = &[
    &llama::Llama,
    &mistral::Mistral,
    &phi::Phi,
    &phi3::Phi3,
    &qwen2::Qwen2,
    &qwen3::Qwen3,
    &gemma::Gemma,
    &gemma2::Gemma2,
    &starcoder2::Starcoder2,
    &stablelm::StableLm,
];

/// The architecture named `name` ("llama").
pub fn by_name(name: &str) -> Option<&'static dyn Architecture> {
    ALL.iter().copied().find(|a| a.name() == name)
}

/// The architecture of a config.json, from `model_type`, else from `architectures[0]`
/// (`Qwen2ForCausalLM` -> qwen2), and its settings.
pub fn parse(cfg: &HfConfig) -> Result<Parsed> {
    detect(cfg)?.parse(cfg)
}

pub fn detect(cfg: &HfConfig) -> Result<&'static dyn Architecture> {
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
                            supported_list()
                        ),
                    ))
                }
            }
        }
    };
    let wanted = normalize(&found);
    ALL.iter()
        .copied()
        .find(|a| a.model_types().iter().any(|t| normalize(t) == wanted))
        .ok_or_else(|| {
            cfg.error(
                field,
                format!(
                    "architecture `{found}` is not supported; supported: {}",
                    supported_list()
                ),
            )
        })
}

fn supported_list() -> String {
    ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
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

/// An architecture read back from its name (bench figures, shape files).
pub fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<&'static dyn Architecture, D::Error> {
    let name = String::deserialize(deserializer)?;
    by_name(&name).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown architecture `{name}`; known: {}",
            supported_list()
        ))
    })
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

    #[test]
    fn names_and_model_types_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for arch in ALL {
            assert!(seen.insert(arch.name()), "{} twice", arch.name());
            for other in ALL.iter().filter(|o| o.name() != arch.name()) {
                for t in arch.model_types() {
                    assert!(
                        other
                            .model_types()
                            .iter()
                            .all(|u| normalize(u) != normalize(t)),
                        "`{t}` answers to {} and {}",
                        arch.name(),
                        other.name()
                    );
                }
            }
            assert!(arch
                .model_types()
                .iter()
                .any(|t| normalize(t) == arch.name()));
            assert_eq!(normalize(arch.class_name()), arch.name());
        }
    }
}
