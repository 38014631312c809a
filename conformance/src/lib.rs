//! The conformance cases, read from `conformance/cases.toml`.

use std::path::{Path, PathBuf};

use llm_worker_rbee::Prompt;
use serde::Deserialize;

/// The committed case file.
pub fn cases_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases.toml")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// Tokens generated per prompt.
    pub max_tokens: usize,
    pub prompts: Vec<PromptCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptCase {
    pub id: String,
    pub text: Option<String>,
    pub ids: Option<Vec<u32>>,
}

impl PromptCase {
    pub fn prompt(&self) -> Prompt {
        match (&self.text, &self.ids) {
            (Some(text), _) => Prompt::Text(text.clone()),
            (None, Some(ids)) => Prompt::Ids(ids.clone()),
            (None, None) => unreachable!("checked by Cases::parse"),
        }
    }
}

impl Cases {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let cases: Cases = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if cases.max_tokens == 0 {
            return Err(invalid("max_tokens must be at least 1".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for prompt in &cases.prompts {
            if !seen.insert(prompt.id.as_str()) {
                return Err(invalid(format!("prompt id `{}` is used twice", prompt.id)));
            }
            match (&prompt.text, &prompt.ids) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(format!(
                        "prompt `{}` needs exactly one of `text` and `ids`",
                        prompt.id
                    )))
                }
            }
        }
        Ok(cases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_cases_parse() {
        let cases = Cases::load(&cases_path()).unwrap();
        assert!(cases.prompts.len() >= 3);
        assert!(cases
            .prompts
            .iter()
            .any(|p| p.ids.as_ref().is_some_and(|ids| ids.len() == 1)));
    }

    #[test]
    fn rejects_a_prompt_with_both_text_and_ids() {
        let text = "max_tokens = 4\n[[prompts]]\nid = \"x\"\ntext = \"a\"\nids = [1]\n";
        let err = Cases::parse(Path::new("cases.toml"), text).unwrap_err();
        assert!(err.to_string().contains("exactly one of"), "{err}");
    }

    #[test]
    fn rejects_duplicate_prompt_ids() {
        let text = "max_tokens = 4\n[[prompts]]\nid = \"x\"\ntext = \"a\"\n[[prompts]]\nid = \"x\"\nids = [1]\n";
        let err = Cases::parse(Path::new("cases.toml"), text).unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }
}
