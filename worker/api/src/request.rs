//! Generation requests and their results.

use serde::{Deserialize, Serialize};

use crate::error::RequestError;

/// The prompt: text (tokenized with the model's rules for special tokens), token ids as is, or
/// chat messages (rendered with the model's chat template).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Messages(Vec<Message>),
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The smallest temperature that samples (vLLM's sampling epsilon): logits of a few thousand
/// divided by it stay far inside f32, while 1e-320 is 0 in f32 and divides by zero.
pub const MIN_TEMPERATURE: f64 = 1e-5;

/// One generation request. Temperature 0 is greedy; otherwise tokens are sampled with `seed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: u64,
    /// Divides positive logits (multiplies negative ones) of every token already in the
    /// sequence, prompt included, as transformers' `repetition_penalty` does.
    pub repeat_penalty: Option<f32>,
    /// Keep generating past EOS tokens (for benchmarks and tests).
    pub ignore_eos: bool,
}

impl Request {
    /// A greedy request for `max_tokens` tokens.
    pub fn greedy(prompt: Prompt, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 0,
            repeat_penalty: None,
            ignore_eos: false,
        }
    }

    /// Checks the parameters that do not depend on the model.
    pub fn validate(&self) -> Result<(), RequestError> {
        match &self.prompt {
            Prompt::Text(text) if text.is_empty() => {
                return Err(RequestError::new("prompt", "is empty"))
            }
            Prompt::Ids(ids) if ids.is_empty() => {
                return Err(RequestError::new("prompt_ids", "is empty"))
            }
            Prompt::Messages(messages) if messages.is_empty() => {
                return Err(RequestError::new("messages", "is empty"))
            }
            _ => {}
        }
        if self.max_tokens == 0 {
            return Err(RequestError::new("max_tokens", "must be at least 1"));
        }
        let t = self.temperature;
        if !(t.is_finite() && (t == 0.0 || t >= MIN_TEMPERATURE)) {
            return Err(RequestError::new(
                "temperature",
                format!(
                    "is {t}; it must be 0 (greedy) or at least {MIN_TEMPERATURE} (below that, \
                     logits divided by it overflow)"
                ),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(RequestError::new(
                    "top_p",
                    format!("is {p}; it must be in (0, 1]"),
                ));
            }
        }
        if self.top_k == Some(0) {
            return Err(RequestError::new("top_k", "must be at least 1"));
        }
        if let Some(r) = self.repeat_penalty {
            if !(r.is_finite() && r > 0.0) {
                return Err(RequestError::new(
                    "repeat_penalty",
                    format!("is {r}; it must be positive"),
                ));
            }
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An EOS token was generated (it is the last of `token_ids`).
    Eos,
    MaxTokens,
    /// The token callback asked to stop.
    Cancelled,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// One generated token, as delivered to the token callback.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenEvent {
    /// Position among the generated tokens, from 0.
    pub index: usize,
    pub id: u32,
    /// The text this token completes; may be empty (special tokens, or the first bytes of a
    /// multi-byte character).
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    /// The concatenation of the streamed pieces: the decode of `token_ids` without special
    /// tokens. After a cancellation it lacks any held-back incomplete character.
    pub text: String,
    pub stop_reason: StopReason,
    pub timings: GenerationTimings,
}

/// Wall-clock times of one request, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationTimings {
    /// The prompt's forward pass and the choice of the first token.
    pub prefill_ms: f64,
    /// Every further token: one forward pass of one token each.
    pub decode_ms: f64,
    /// Tokens after the first per second of `decode_ms`; 0 with a single token.
    pub decode_tokens_per_s: f64,
}
