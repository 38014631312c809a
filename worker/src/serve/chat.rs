//! Chat messages to prompt ids, with the Jinja chat template of the model's
//! tokenizer_config.json, as transformers' `apply_chat_template` does.

use std::path::Path;

use minijinja::{context, Environment, ErrorKind};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::api::{ApiError, Message};
use crate::error::{Error, Result};
use crate::folder::ModelFolder;

/// The model's chat template with what it is rendered and encoded with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tokenizer: Tokenizer,
}

const TEMPLATE: &str = "chat";

impl ChatTemplate {
    /// The template of the folder's tokenizer_config.json; `None` when it has none.
    pub fn load(model_dir: &Path) -> Result<Option<Self>> {
        let folder = ModelFolder::open(model_dir)?;
        let Some(path) = &folder.tokenizer_config else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(source)) => source.clone(),
            // Several named templates: the one named `default` is the chat template.
            Some(Value::Array(named)) => match named.iter().find(|t| t["name"] == "default") {
                Some(t) => t["template"].as_str().unwrap_or_default().to_string(),
                None => return Ok(None),
            },
            Some(other) => {
                return Err(Error::field(
                    path,
                    "chat_template",
                    format!("expected a string, found {other}"),
                ))
            }
        };
        let mut env = Environment::new();
        // Hugging Face templates are written for Python's Jinja: `.strip()`, `.items()`, ...
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| {
            Err::<String, _>(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE, source)
            .map_err(|e| Error::field(path, "chat_template", e.to_string()))?;
        let tokenizer_path = folder.tokenizer();
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            Error::file(&tokenizer_path, format!("not a valid tokenizer.json: {e}"))
        })?;
        Ok(Some(Self {
            env,
            bos_token: special_token(&config, "bos_token"),
            eos_token: special_token(&config, "eos_token"),
            tokenizer,
        }))
    }

    /// The rendered text of `messages`, ending with the prompt of the assistant's turn.
    pub fn render(&self, messages: &[Message]) -> Result<String, ApiError> {
        let template = self.env.get_template(TEMPLATE).map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => true,
            })
            .map_err(template_error)
    }

    /// The prompt ids of `messages`: the rendered text encoded without adding special tokens,
    /// since the template writes them itself.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, ApiError> {
        let text = self.render(messages)?;
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ApiError::bad_request("messages", format!("cannot be tokenized: {e}")))?;
        if encoding.get_ids().is_empty() {
            return Err(ApiError::bad_request(
                "messages",
                "the model's chat template renders them as no tokens",
            ));
        }
        Ok(encoding.get_ids().to_vec())
    }
}

fn template_error(error: minijinja::Error) -> ApiError {
    ApiError::bad_request(
        "messages",
        format!("the model's chat template fails on them: {error}"),
    )
}

/// A special token of tokenizer_config.json, written as a string or as `{"content": ...}`.
fn special_token(config: &Value, key: &str) -> String {
    match &config[key] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}
