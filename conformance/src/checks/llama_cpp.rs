//! A real GGUF model against llama.cpp on the same file: its greedy tokens (written by
//! ci/reference/llama_cpp_reference.py into golden/reference/), compared step by step.

use std::path::Path;

use llm_worker_rbee_api::Generation;
use serde::Deserialize;

use super::source;
use crate::record::SourceAgreement;

/// llama.cpp's greedy tokens for each prompt of a real model, read once per run.
#[derive(Deserialize)]
pub struct LlamaCppTokens {
    prompts: Vec<LlamaCppPrompt>,
}

#[derive(Deserialize)]
struct LlamaCppPrompt {
    id: String,
    prompt_ids: Vec<u32>,
    token_ids: Vec<u32>,
}

impl LlamaCppTokens {
    pub fn load(file: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("llama.cpp's tokens: {}: {e}", file.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("llama.cpp's tokens: {}: {e}", file.display()))
    }

    /// How far `generation` (the trial of prompt `prompt_id`) follows llama.cpp's greedy
    /// tokens; an error when `file` (where these came from) has no such prompt or tokenized it
    /// otherwise.
    pub fn agreement(
        &self,
        file: &Path,
        prompt_id: &str,
        generation: &Generation,
    ) -> Result<SourceAgreement, String> {
        let prompt = self
            .prompts
            .iter()
            .find(|p| p.id == prompt_id)
            .ok_or_else(|| {
                format!(
                    "{} has no prompt `{prompt_id}`; regenerate it with \
                     ci/reference/llama_cpp_reference.py",
                    file.display()
                )
            })?;
        compare(prompt, generation)
    }
}

fn compare(prompt: &LlamaCppPrompt, generation: &Generation) -> Result<SourceAgreement, String> {
    if prompt.prompt_ids != generation.prompt_ids {
        return Err(format!(
            "prompt ids {:?} differ from llama.cpp's {:?}",
            generation.prompt_ids, prompt.prompt_ids
        ));
    }
    Ok(source::agreement(
        "llama.cpp",
        &prompt.token_ids,
        &generation.token_ids,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(prompt_ids: Vec<u32>, token_ids: Vec<u32>) -> Generation {
        Generation {
            prompt_ids,
            token_ids,
            ..crate::checks::testing::generation(&[], "")
        }
    }

    #[test]
    fn counts_leading_agreement_and_refuses_other_prompt_ids() {
        let prompt = LlamaCppPrompt {
            id: "p".into(),
            prompt_ids: vec![5, 6],
            token_ids: vec![1, 2, 3],
        };
        let a = compare(&prompt, &generation(vec![5, 6], vec![1, 2, 7])).unwrap();
        assert_eq!(
            (a.equal_steps, a.steps, a.source.as_str()),
            (2, 3, "llama.cpp")
        );
        let err = compare(&prompt, &generation(vec![5], vec![1, 2, 3])).unwrap_err();
        assert!(err.contains("differ from llama.cpp's"), "{err}");
    }
}
