//! Requests to prompts: the one place a request (CLI, library or HTTP; text, token ids or chat
//! messages) is checked and tokenized. Generation takes only what comes out of here.

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::model::Window;
use crate::request::{PreparedRequest, Prompt, Request};
use crate::tokens::TextCodec;

/// A model's tokenizer, chat template and limits: everything a request is checked against
/// before it reaches the model.
pub struct Prompter {
    codec: TextCodec,
    /// The template of tokenizer_config.json, or why it cannot be used.
    chat: Option<std::result::Result<ChatTemplate, String>>,
    vocab_size: usize,
    context_length: usize,
    /// Why the context is shorter than the model's positions, for refusals.
    context_note: String,
}

impl Prompter {
    pub fn new(
        codec: TextCodec,
        chat: Option<std::result::Result<ChatTemplate, String>>,
        vocab_size: usize,
        context_length: usize,
        window: &Window,
        architecture: &str,
    ) -> Self {
        let context_note = match window {
            Window::LimitsContext { size } => format!(
                " (the {size}-token sliding window that candle's {architecture} module cannot \
                 apply)"
            ),
            _ => String::new(),
        };
        Self {
            codec,
            chat,
            vocab_size,
            context_length,
            context_note,
        }
    }

    /// The most tokens a request's prompt and generation may hold together.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }

    /// Why the chat template of tokenizer_config.json cannot be used, if it cannot.
    pub fn chat_template_problem(&self) -> Option<&str> {
        match &self.chat {
            Some(Err(problem)) => Some(problem),
            _ => None,
        }
    }

    /// Checks `request` and tokenizes its prompt: text with the model's special tokens, chat
    /// messages rendered with its template, ids as given. Every refusal names the field the
    /// client sent.
    pub fn prepare(&self, request: &Request) -> Result<PreparedRequest> {
        request.validate()?;
        let (field, ids) = match &request.prompt {
            Prompt::Text(text) => ("prompt", self.codec.encode(text)?),
            Prompt::Ids(ids) => ("prompt_ids", ids.clone()),
            Prompt::Messages(messages) => {
                let text = self.chat()?.render(messages)?;
                let ids = self.codec.encode_rendered(&text)?;
                if ids.is_empty() {
                    return Err(Error::request(
                        "messages",
                        "the model's chat template renders them as no tokens",
                    ));
                }
                ("messages", ids)
            }
        };
        if ids.is_empty() {
            return Err(Error::request(field, "tokenizes to no tokens"));
        }
        let vocab = self.vocab_size;
        if let Some(bad) = ids.iter().find(|id| **id as usize >= vocab) {
            return Err(Error::request(
                field,
                format!("token id {bad} is outside the model's vocabulary (0..{vocab})"),
            ));
        }
        let (context, why) = (self.context_length, &self.context_note);
        if ids.len() >= context {
            return Err(Error::request(
                field,
                format!(
                    "is {} tokens; the context is {context} tokens{why}, including at least one \
                     generated token",
                    ids.len()
                ),
            ));
        }
        let room = context - ids.len();
        if request.max_tokens > room {
            return Err(Error::request(
                "max_tokens",
                format!(
                    "is {}, but the prompt has {} tokens and the context is {context}{why}: at \
                     most {room} can be generated",
                    request.max_tokens,
                    ids.len(),
                ),
            ));
        }
        Ok(PreparedRequest::new(request.clone(), ids))
    }

    fn chat(&self) -> Result<&ChatTemplate> {
        match &self.chat {
            Some(Ok(chat)) => Ok(chat),
            Some(Err(problem)) => Err(Error::request(
                "messages",
                format!("the model's chat template cannot be used: {problem}"),
            )),
            None => Err(Error::request(
                "messages",
                "the model has no chat template (no chat_template in tokenizer_config.json); \
                 send prompt or prompt_ids",
            )),
        }
    }
}
