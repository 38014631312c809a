//! The wire format of `serve`: the `/execute` body, its validation, the streamed events and the
//! JSON errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::request::{Message, Prompt, Request, StopReason, TokenLogprobs};

/// The fields `/execute` accepts; any other is refused, so that a misspelt parameter is never
/// silently ignored.
const FIELDS: &[&str] = &[
    "job_id",
    "prompt",
    "prompt_ids",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repeat_penalty",
    "ignore_eos",
    "stop",
    "logprobs",
];

/// A refused request: its HTTP status, the field at fault (`body` for the body as a whole) and
/// the rule it breaks.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: String,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The server cannot take the request now; the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            field: "body".into(),
            message: message.into(),
        }
    }

    /// The server's fault, not the request's.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            field: "body".into(),
            message: message.into(),
        }
    }

    /// The answer with `body`; a 503 asks the client to come back.
    pub fn respond(&self, body: Value) -> Response {
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(json!({"error": {"field": self.field, "message": self.message}}))
    }
}

/// A parsed `/execute` body.
#[derive(Clone, Debug)]
pub struct Execute {
    pub job_id: Option<String>,
    pub request: Request,
}

/// Parses an `/execute` body into a request: the fields, their types, one prompt. What needs
/// the model (tokens, context, the chat template) is checked when the request is prepared.
pub fn parse_execute(body: &[u8]) -> Result<Execute, ApiError> {
    let mut object = parse_object(body, FIELDS)?;
    let job_id: Option<String> = take(&mut object, "job_id")?;
    let prompt: Option<String> = take(&mut object, "prompt")?;
    let prompt_ids: Option<Vec<u32>> = take(&mut object, "prompt_ids")?;
    let messages: Option<Vec<Message>> = take(&mut object, "messages")?;
    let prompt = match (prompt, prompt_ids, messages) {
        (Some(text), None, None) => Prompt::Text(text),
        (None, Some(ids), None) => Prompt::Ids(ids),
        (None, None, Some(messages)) => Prompt::Messages(messages),
        (None, None, None) => {
            return Err(ApiError::bad_request(
                "prompt",
                "is missing: give one of prompt, prompt_ids or messages",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "prompt",
                "give only one of prompt, prompt_ids or messages",
            ))
        }
    };
    let max_tokens: usize = take(&mut object, "max_tokens")?
        .ok_or_else(|| ApiError::bad_request("max_tokens", "is missing"))?;
    let request = Request {
        prompt,
        max_tokens,
        temperature: take(&mut object, "temperature")?.unwrap_or(0.0),
        top_p: take(&mut object, "top_p")?,
        top_k: take(&mut object, "top_k")?,
        seed: take(&mut object, "seed")?.unwrap_or(0),
        repeat_penalty: take(&mut object, "repeat_penalty")?,
        ignore_eos: take(&mut object, "ignore_eos")?.unwrap_or(false),
        stop: take::<Stop>(&mut object, "stop")?.map_or_else(Vec::new, Stop::into_vec),
        logprobs: take(&mut object, "logprobs")?,
    };
    Ok(Execute { job_id, request })
}

/// Reads `body` as one JSON object whose keys are all among `fields` and appear once.
pub fn parse_object(body: &[u8], fields: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request("body", "must be a JSON object"));
    };
    // serde_json keeps the last of two equal keys; which one the client meant is unknowable.
    if let Ok(FirstDuplicate(Some(key))) = serde_json::from_slice(body) {
        return Err(ApiError::bad_request(
            key,
            "appears twice in one JSON object; each key must appear once",
        ));
    }
    if let Some(unknown) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            unknown.clone(),
            format!("is not a known field (known: {})", fields.join(", ")),
        ));
    }
    Ok(object)
}

/// `stop`: one string or a list of them, as OpenAI's API takes it.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(stop) => vec![stop],
            Stop::Many(stops) => stops,
        }
    }
}

/// The first key that some object of a JSON document holds twice, at any depth.
struct FirstDuplicate(Option<String>);

impl<'de> Deserialize<'de> for FirstDuplicate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FirstDuplicateVisitor)
    }
}

struct FirstDuplicateVisitor;

impl<'de> Visitor<'de> for FirstDuplicateVisitor {
    type Value = FirstDuplicate;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(FirstDuplicate(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(FirstDuplicate(inner)) = seq.next_element()? {
            found = found.or(inner);
        }
        Ok(FirstDuplicate(found))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = HashSet::new();
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            let FirstDuplicate(inner) = map.next_value()?;
            if !keys.insert(key.clone()) {
                found = found.or(Some(key));
            }
            found = found.or(inner);
        }
        Ok(FirstDuplicate(found))
    }
}

/// Removes `field` from `object` and reads it as a `T`; `null` counts as absent.
pub fn take<T: DeserializeOwned>(
    object: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<T>, ApiError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ApiError::bad_request(field, format!("has the wrong type: {e}"))),
    }
}

/// A worker error about a request becomes a 400 naming its field; anything else is the
/// server's fault.
pub fn from_worker_error(error: Error) -> ApiError {
    match error {
        Error::Request { field, message } => ApiError::bad_request(field, message),
        other => ApiError::internal(other.to_string()),
    }
}

/// One event of an `/execute` stream; the SSE event name is its `type`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started {
        job_id: String,
        model: String,
        backend: String,
        /// The prompt as the model sees it: tokenized, or rendered with the chat template.
        prompt_ids: Vec<u32>,
    },
    Token {
        t: String,
        i: usize,
        id: u32,
        /// With `logprobs` in the request: the token's and the most likely ones'.
        #[serde(skip_serializing_if = "Option::is_none")]
        logprobs: Option<TokenLogprobs>,
    },
    End {
        job_id: String,
        tokens_out: usize,
        stop_reason: StopReason,
        prefill_ms: f64,
        decode_ms: f64,
        tokens_per_s: f64,
    },
    Error {
        message: String,
    },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::Token { .. } => "token",
            Event::End { .. } => "end",
            Event::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
pub mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `cases` cases from a fixed seed, so that CI runs the same inputs every time; the
    /// environment's PROPTEST_CASES and PROPTEST_RNG_SEED override both, for a deeper run by hand.
    pub fn fuzz_config(cases: u32) -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = cases;
        }
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x11e5);
        }
        config
    }

    /// Any JSON value (numbers at the edges of their types among them), for a field's value.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("role|content|[a-z]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(fuzz_config(512))]

        #[test]
        fn any_bytes_are_parsed_or_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_execute(&body);
        }

        #[test]
        fn any_values_of_the_known_fields_are_parsed_or_refused(
            fields in prop::collection::vec(
                (prop::sample::select(FIELDS), json_value()),
                0..6,
            ),
        ) {
            let body: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let body = serde_json::to_vec(&body).unwrap();
            if let Ok(parsed) = parse_execute(&body) {
                let _ = parsed.request.validate();
            }
        }
    }
}
