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
    /// Generation ends once the text contains one of these (at most [`MAX_STOP_STRINGS`]); the
    /// text from the stop string on is not returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Report each token's log-probability and those of the N most likely tokens (0 to
    /// [`MAX_TOP_LOGPROBS`]; 0: the chosen token's alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

/// The most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// The most alternatives a token's log-probabilities may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

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
            stop: Vec::new(),
            logprobs: None,
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
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(RequestError::new(
                "stop",
                format!(
                    "has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                    self.stop.len()
                ),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(RequestError::new("stop", "holds an empty string"));
        }
        if let Some(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(RequestError::new(
                    "logprobs",
                    format!("is {n}; it must be 0 to {MAX_TOP_LOGPROBS}"),
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
    /// The text reached one of the request's stop strings.
    StopString,
    /// The token callback asked to stop.
    Cancelled,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopString => "stop_string",
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
    /// The text this token completes; may be empty (special tokens, the first bytes of a
    /// multi-byte character, or text that may be the start of a stop string).
    pub text: String,
    /// When the request asks for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<TokenLogprobs>,
}

/// A generated token's log-probability and the most likely tokens' at its step, of the
/// distribution it was chosen from: after the repetition penalty and the temperature, before
/// top-k and top-p; computed in f32. Greedy requests use temperature 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token decoded alone, special tokens included.
    pub token: String,
    pub logprob: f32,
    /// The most likely tokens, most likely first (the lower id first among equal ones).
    pub top: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub logprob: f32,
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
    /// One per token of `token_ids`, when the request asks for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprobs>>,
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
