//! The transformers reference in `golden/reference/`, written by `ci/reference/reference.py`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::Error;

/// transformers' greedy decoding of every prompt for one model.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub model: String,
    pub torch: String,
    pub transformers: String,
    pub max_tokens: usize,
    pub prompts: BTreeMap<String, ReferencePrompt>,
    /// Per prompt id: the logits of every step, `[steps, vocab]`.
    #[serde(skip)]
    logits: HashMap<String, Tensor>,
}

#[derive(Debug, Deserialize)]
pub struct ReferencePrompt {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    /// Per step, the five largest logits as `(id, logit)`, rounded to 5 decimals.
    pub top5: Vec<Vec<(u32, f32)>>,
}

impl Reference {
    /// The reference of `model` under `dir`, `None` when there is none.
    pub fn load(dir: &Path, model: &str) -> Result<Option<Self>, Error> {
        let json = dir.join(format!("{model}.json"));
        if !json.exists() {
            return Ok(None);
        }
        let invalid = |path: &Path, message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(&json).map_err(|source| Error::Read {
            path: json.clone(),
            source,
        })?;
        let mut reference: Reference =
            serde_json::from_str(&text).map_err(|e| invalid(&json, e.to_string()))?;
        let logits = dir.join(format!("{model}.logits.safetensors"));
        // A real model's reference keeps each step's top 5 only.
        if !logits.exists() {
            return Ok(Some(reference));
        }
        reference.logits = candle_core::safetensors::load(&logits, &Device::Cpu)
            .map_err(|e| invalid(&logits, e.to_string()))?;
        for (id, prompt) in &reference.prompts {
            let dims = reference.logits.get(id).map(|t| t.dims().to_vec());
            if dims.as_ref().and_then(|d| d.first()) != Some(&prompt.token_ids.len()) {
                return Err(invalid(
                    &logits,
                    format!(
                        "prompt `{id}`: expected logits for {} steps, found {dims:?}",
                        prompt.token_ids.len()
                    ),
                ));
            }
        }
        Ok(Some(reference))
    }

    /// Whether it holds every step's full logits, not only the top 5.
    pub fn has_logits(&self) -> bool {
        !self.logits.is_empty()
    }

    /// The logits of each step of `prompt_id`.
    pub fn logits(&self, prompt_id: &str) -> Option<Vec<Vec<f32>>> {
        self.logits.get(prompt_id).and_then(|t| t.to_vec2().ok())
    }
}
