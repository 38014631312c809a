//! Chat messages to prompt text, with the model's Jinja chat template (chat_template.jinja,
//! tokenizer_config.json or a GGUF's `tokenizer.chat_template`), as transformers'
//! `apply_chat_template` renders it.

use std::path::Path;

use minijinja::{context, Environment, ErrorKind};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::request::Message;

/// The model's chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE: &str = "chat";

impl ChatTemplate {
    /// The template of a tokenizer_config.json already read (`path` names it in errors);
    /// `None` when it has none.
    pub fn from_config(
        path: &Path,
        config: &serde_json::Map<String, Value>,
    ) -> Result<Option<Self>> {
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
        Self::new(
            source,
            special_token(config, "bos_token"),
            special_token(config, "eos_token"),
        )
        .map(Some)
        .map_err(|e| Error::field(path, "chat_template", e.to_string()))
    }

    /// A template from its source and the texts of the special tokens it may render; `Err`
    /// with the template's syntax error.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> std::result::Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        // As transformers renders them: a block tag takes the newline after it and the spaces
        // before it, which templates written one tag per line rely on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Hugging Face templates are written for Python's Jinja: `.strip()`, `.items()`, ...
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| {
            Err::<String, _>(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE, source)?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The rendered text of `messages`, ending with the prompt of the assistant's turn.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let rendered = self.env.get_template(TEMPLATE).and_then(|template| {
            template.render(context! {
                messages => messages,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => true,
            })
        });
        rendered.map_err(|error| {
            Error::request(
                "messages",
                format!("the model's chat template fails on them: {error}"),
            )
        })
    }
}

/// A special token of tokenizer_config.json, written as a string or as `{"content": ...}`.
pub fn special_token(config: &serde_json::Map<String, Value>, key: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: Value) -> serde_json::Map<String, Value> {
        json.as_object().unwrap().clone()
    }

    fn render(config: &serde_json::Map<String, Value>) -> String {
        let template = ChatTemplate::from_config(Path::new("tokenizer_config.json"), config)
            .unwrap()
            .expect("a template");
        let messages = [Message {
            role: "user".into(),
            content: "hi".into(),
        }];
        template.render(&messages).unwrap()
    }

    #[test]
    fn of_several_named_templates_the_default_one_is_the_chat_template() {
        let named = config(serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
                {"name": "rag", "template": "rag"},
            ]
        }));
        assert_eq!(render(&named), "hi");
        let none_default = config(serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "tools"}]
        }));
        let path = Path::new("tokenizer_config.json");
        assert!(ChatTemplate::from_config(path, &none_default)
            .unwrap()
            .is_none());
    }

    #[test]
    fn special_tokens_written_as_objects_render_their_content() {
        let template =
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\
                        {% if add_generation_prompt %}>{% endif %}";
        let as_objects = config(serde_json::json!({
            "chat_template": template,
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
        }));
        assert_eq!(render(&as_objects), "<s>hi</s>>");
        let missing = config(serde_json::json!({"chat_template": template}));
        assert_eq!(render(&missing), "hi>");
    }
}
