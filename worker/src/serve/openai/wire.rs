//! OpenAI's wire format: the bodies of `/v1/chat/completions` and `/v1/completions` read into
//! requests, and the answers, chunks and errors written in OpenAI's shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::request::{Message, Prompt, Request, StopReason, TokenLogprobs, MAX_TOP_LOGPROBS};
use crate::serve::api::{parse_object, take, ApiError, Stop};

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// The fields both endpoints take. `top_k`, `repetition_penalty`, `ignore_eos`,
/// `return_token_ids` and `return_tokens_as_token_ids` are vLLM's extensions, under its names.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "n",
    "frequency_penalty",
    "presence_penalty",
    "user",
    "top_k",
    "repetition_penalty",
    "ignore_eos",
    "return_token_ids",
    "return_tokens_as_token_ids",
];

/// OpenAI's default `max_tokens` of `/v1/completions`; chat defaults to the rest of the context.
pub const COMPLETIONS_MAX_TOKENS: usize = 16;

/// A parsed OpenAI request.
#[derive(Clone, Debug)]
pub struct OpenAiRequest {
    pub endpoint: Endpoint,
    pub model: String,
    /// `max_tokens` unset on chat is filled in once the prompt's length is known.
    pub request: Request,
    pub max_tokens_given: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Token ids in the answer (vLLM's `return_token_ids`).
    pub return_token_ids: bool,
    /// Log-probabilities name tokens `token_id:N` (vLLM's `return_tokens_as_token_ids`).
    pub tokens_as_ids: bool,
}

/// Reads an OpenAI request body for `endpoint`. What needs the model is checked when the request
/// is prepared.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<OpenAiRequest, ApiError> {
    let own: &[&str] = match endpoint {
        Endpoint::Chat => &["messages", "max_completion_tokens", "top_logprobs"],
        Endpoint::Completions => &["prompt"],
    };
    let fields: Vec<&str> = COMMON_FIELDS.iter().chain(own).copied().collect();
    let mut object = parse_object(body, &fields)?;
    let model: String =
        take(&mut object, "model")?.ok_or_else(|| ApiError::bad_request("model", "is missing"))?;
    let prompt = match endpoint {
        Endpoint::Chat => {
            let messages: Vec<Value> = take(&mut object, "messages")?
                .ok_or_else(|| ApiError::bad_request("messages", "is missing"))?;
            Prompt::Messages(
                messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| message(i, m))
                    .collect::<Result<_, _>>()?,
            )
        }
        Endpoint::Completions => {
            match take::<CompletionPrompt>(&mut object, "prompt")?
                .ok_or_else(|| ApiError::bad_request("prompt", "is missing"))?
            {
                CompletionPrompt::Text(text) => Prompt::Text(text),
                CompletionPrompt::Ids(ids) => Prompt::Ids(ids),
            }
        }
    };
    let max_tokens: Option<usize> = take(&mut object, "max_tokens")?;
    let max_completion_tokens: Option<usize> = take(&mut object, "max_completion_tokens")?;
    let max_tokens = match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "max_completion_tokens",
                "differs from max_tokens; give one of them",
            ))
        }
        (a, b) => a.or(b),
    };
    let n: Option<u64> = take(&mut object, "n")?;
    if n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "n",
            "must be 1: this server generates one choice per request",
        ));
    }
    for penalty in ["frequency_penalty", "presence_penalty"] {
        let value: Option<f64> = take(&mut object, penalty)?;
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::bad_request(
                penalty,
                "must be 0: this server does not implement it (repetition_penalty is there)",
            ));
        }
    }
    let _user: Option<String> = take(&mut object, "user")?;
    let stream = take(&mut object, "stream")?.unwrap_or(false);
    let include_usage = match take::<StreamOptions>(&mut object, "stream_options")? {
        Some(_) if !stream => {
            return Err(ApiError::bad_request(
                "stream_options",
                "is allowed only with stream: true",
            ))
        }
        Some(options) => options.include_usage.unwrap_or(false),
        None => false,
    };
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let wanted: bool = take(&mut object, "logprobs")?.unwrap_or(false);
            let top: Option<usize> = take(&mut object, "top_logprobs")?;
            match (wanted, top) {
                (false, Some(_)) => {
                    return Err(ApiError::bad_request(
                        "top_logprobs",
                        "needs logprobs: true",
                    ))
                }
                (false, None) => None,
                (true, top) => Some(top.unwrap_or(0)),
            }
        }
        Endpoint::Completions => take(&mut object, "logprobs")?,
    };
    if logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
        let field = match endpoint {
            Endpoint::Chat => "top_logprobs",
            Endpoint::Completions => "logprobs",
        };
        return Err(ApiError::bad_request(
            field,
            format!("must be 0 to {MAX_TOP_LOGPROBS}"),
        ));
    }
    let default_max = match endpoint {
        Endpoint::Chat => 1,
        Endpoint::Completions => COMPLETIONS_MAX_TOKENS,
    };
    let request = Request {
        prompt,
        max_tokens: max_tokens.unwrap_or(default_max),
        // OpenAI's default: sampling at temperature 1 (here with seed 0 unless one is given).
        temperature: take(&mut object, "temperature")?.unwrap_or(1.0),
        top_p: take(&mut object, "top_p")?,
        top_k: take(&mut object, "top_k")?,
        seed: take(&mut object, "seed")?.unwrap_or(0),
        repeat_penalty: take(&mut object, "repetition_penalty")?,
        ignore_eos: take(&mut object, "ignore_eos")?.unwrap_or(false),
        stop: take::<Stop>(&mut object, "stop")?.map_or_else(Vec::new, Stop::into_vec),
        logprobs,
    };
    Ok(OpenAiRequest {
        endpoint,
        model,
        request,
        max_tokens_given: max_tokens.is_some(),
        stream,
        include_usage,
        return_token_ids: take(&mut object, "return_token_ids")?.unwrap_or(false),
        tokens_as_ids: take(&mut object, "return_tokens_as_token_ids")?.unwrap_or(false),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CompletionPrompt {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// One chat message: `role` and `content`, a string or a list of text parts.
fn message(index: usize, value: Value) -> Result<Message, ApiError> {
    let field = format!("messages[{index}]");
    let Value::Object(mut object) = value else {
        return Err(ApiError::bad_request(field, "must be an object"));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "role" && *k != "content") {
        return Err(ApiError::bad_request(
            format!("{field}.{unknown}"),
            "is not supported (role and content are)",
        ));
    }
    let role = match object.remove("role") {
        Some(Value::String(role)) => role,
        _ => {
            return Err(ApiError::bad_request(
                format!("{field}.role"),
                "must be a string",
            ))
        }
    };
    let content = match object.remove("content") {
        Some(Value::String(text)) => text,
        Some(Value::Array(parts)) => text_parts(&field, parts)?,
        _ => {
            return Err(ApiError::bad_request(
                format!("{field}.content"),
                "must be a string or a list of text parts",
            ))
        }
    };
    Ok(Message { role, content })
}

/// The text of `[{"type": "text", "text": ...}, ...]`, joined.
fn text_parts(field: &str, parts: Vec<Value>) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Part {
        r#type: String,
        text: String,
    }
    let mut text = String::new();
    for (i, part) in parts.into_iter().enumerate() {
        let part: Part = serde_json::from_value(part)
            .map_err(|e| ApiError::bad_request(format!("{field}.content[{i}]"), format!("{e}")))?;
        if part.r#type != "text" {
            return Err(ApiError::bad_request(
                format!("{field}.content[{i}].type"),
                format!("is `{}`; only text parts are supported", part.r#type),
            ));
        }
        text.push_str(&part.text);
    }
    Ok(text)
}

/// OpenAI's finish reason; `None` for a generation cut short.
pub fn finish_reason(stop: StopReason) -> Option<&'static str> {
    match stop {
        StopReason::Eos | StopReason::StopString => Some("stop"),
        StopReason::MaxTokens => Some("length"),
        StopReason::Cancelled => None,
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(error: &ApiError) -> Value {
    let (kind, code) = match error.status.as_u16() {
        404 => ("invalid_request_error", Some("model_not_found")),
        413 => ("invalid_request_error", Some("request_too_large")),
        503 => ("server_error", Some("overloaded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    // The worker names a token-id prompt `prompt_ids`; OpenAI's field is `prompt`.
    let param = match error.field.as_str() {
        "body" => None,
        "prompt_ids" => Some("prompt"),
        field => Some(field),
    };
    let message = match param {
        Some(param) => format!("{param}: {}", error.message),
        None => error.message.clone(),
    };
    serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// JSON has no -inf: a ruled-out token's log-probability is written as -9999, as vLLM does.
fn finite(logprob: f32) -> f32 {
    logprob.max(-9999.0)
}

/// The log-probabilities of some of a chat answer's tokens: `{"content": [...]}`.
pub fn chat_logprobs(tokens: &[TokenLogprobs]) -> Value {
    let entry = |token: &str, logprob: f32| {
        serde_json::json!({
            "token": token,
            "logprob": finite(logprob),
            "bytes": token.as_bytes(),
        })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut value = entry(&t.token, t.logprob);
            value["top_logprobs"] = t
                .top
                .iter()
                .map(|top| entry(&top.token, top.logprob))
                .collect();
            value
        })
        .collect();
    serde_json::json!({"content": content, "refusal": null})
}

/// The log-probabilities of some of a completion's tokens, in the legacy shape: parallel lists,
/// `text_offset` counting bytes of the text from `offset`, with `pieces` each token's text.
pub fn completion_logprobs(tokens: &[TokenLogprobs], pieces: &[&str], offset: usize) -> Value {
    let mut at = offset;
    let mut text_offset = Vec::with_capacity(pieces.len());
    for piece in pieces {
        text_offset.push(at);
        at += piece.len();
    }
    let top: Vec<Map<String, Value>> = tokens
        .iter()
        .map(|t| {
            t.top
                .iter()
                .map(|top| (top.token.clone(), finite(top.logprob).into()))
                .collect()
        })
        .collect();
    serde_json::json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| finite(t.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::serve::api::tests::{fuzz_config, json_value};

    proptest! {
        #![proptest_config(fuzz_config(256))]

        #[test]
        fn any_bytes_are_parsed_or_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(Endpoint::Chat, &body);
            let _ = parse(Endpoint::Completions, &body);
        }

        #[test]
        fn any_values_of_the_known_fields_are_parsed_or_refused(
            fields in prop::collection::vec(
                (prop::sample::select(COMMON_FIELDS.iter().chain(&["messages", "prompt",
                    "top_logprobs", "max_completion_tokens"]).copied().collect::<Vec<_>>()),
                 json_value()),
                0..8,
            ),
        ) {
            let body: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let body = serde_json::to_vec(&body).unwrap();
            for endpoint in [Endpoint::Chat, Endpoint::Completions] {
                if let Ok(parsed) = parse(endpoint, &body) {
                    let _ = parsed.request.validate();
                }
            }
        }
    }

    fn refused(endpoint: Endpoint, body: Value) -> ApiError {
        parse(endpoint, body.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn a_chat_request_reads_messages_stop_and_logprobs() {
        let body = serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            ],
            "max_completion_tokens": 5,
            "temperature": 0,
            "stop": "\n",
            "logprobs": true,
            "top_logprobs": 3,
            "stream": true,
            "stream_options": {"include_usage": true},
            "n": 1,
            "user": "someone",
        });
        let parsed = parse(Endpoint::Chat, body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.request.max_tokens, 5);
        assert!(parsed.max_tokens_given && parsed.stream && parsed.include_usage);
        assert_eq!(parsed.request.stop, ["\n"]);
        assert_eq!(parsed.request.logprobs, Some(3));
        assert_eq!(parsed.request.temperature, 0.0);
        let Prompt::Messages(messages) = &parsed.request.prompt else {
            panic!("{:?}", parsed.request.prompt)
        };
        assert_eq!(messages[1].content, "hi there");
    }

    #[test]
    fn a_completion_takes_token_ids_and_defaults_like_openai() {
        let body = serde_json::json!({"model": "m", "prompt": [1, 2, 3], "logprobs": 2});
        let parsed = parse(Endpoint::Completions, body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.request.prompt, Prompt::Ids(vec![1, 2, 3]));
        assert_eq!(parsed.request.max_tokens, COMPLETIONS_MAX_TOKENS);
        assert_eq!(parsed.request.temperature, 1.0);
        assert_eq!(parsed.request.logprobs, Some(2));
    }

    #[test]
    fn what_this_server_does_not_do_is_refused_naming_the_field() {
        let chat = |extra: Value| {
            let mut body =
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            refused(Endpoint::Chat, body).field
        };
        assert_eq!(chat(serde_json::json!({"n": 2})), "n");
        assert_eq!(
            chat(serde_json::json!({"presence_penalty": 0.5})),
            "presence_penalty"
        );
        assert_eq!(chat(serde_json::json!({"tools": []})), "tools");
        assert_eq!(chat(serde_json::json!({"top_logprobs": 2})), "top_logprobs");
        assert_eq!(
            chat(serde_json::json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs"
        );
        assert_eq!(
            chat(serde_json::json!({"stream_options": {"include_usage": true}})),
            "stream_options"
        );
        assert_eq!(
            refused(
                Endpoint::Completions,
                serde_json::json!({"model": "m", "messages": []})
            )
            .field,
            "messages"
        );
        assert_eq!(
            refused(Endpoint::Chat, serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x", "name": "a"}]})).field,
            "messages[0].name"
        );
    }

    #[test]
    fn errors_take_openais_shape() {
        let body = error_body(&ApiError::bad_request("prompt_ids", "is empty"));
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "prompt: is empty", "type": "invalid_request_error", "param": "prompt", "code": null}})
        );
    }

    #[test]
    fn completion_logprobs_are_parallel_lists_with_byte_offsets() {
        let token = |t: &str, lp| TokenLogprobs {
            token: t.into(),
            logprob: lp,
            top: vec![crate::request::TopLogprob {
                id: 7,
                token: t.into(),
                logprob: lp,
            }],
        };
        let value = completion_logprobs(
            &[token("é", -0.5), token("x", f32::NEG_INFINITY)],
            &["é", "x"],
            3,
        );
        assert_eq!(value["text_offset"], serde_json::json!([3, 5]));
        assert_eq!(value["token_logprobs"], serde_json::json!([-0.5, -9999.0]));
        assert_eq!(value["top_logprobs"][0]["é"], serde_json::json!(-0.5));
    }
}
