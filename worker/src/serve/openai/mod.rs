//! OpenAI's API beside `/execute`: `POST /v1/chat/completions`, `POST /v1/completions` and
//! `GET /v1/models`, on the same queue and generation thread.

mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use self::wire::{Endpoint, OpenAiRequest, Usage};
use super::api::{self, ApiError, Event};
use super::generation::Reply;
use super::jobs::{read_body, refused, start_job, AppState};
use crate::request::{PreparedRequest, StopReason, TokenLogprobs};

pub async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    answer(state, Endpoint::Chat, request).await
}

pub async fn completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    answer(state, Endpoint::Completions, request).await
}

/// The one model this server holds.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "llm-worker-rbee",
        }],
    }))
    .into_response()
}

fn error_response(error: &ApiError) -> Response {
    error.respond(wire::error_body(error))
}

async fn answer(state: Arc<AppState>, endpoint: Endpoint, request: Request) -> Response {
    let arrived = Instant::now();
    let parsed = match read_body(&state, request).await {
        Ok(body) => wire::parse(endpoint, &body),
        Err(error) => Err(error),
    };
    let parsed = match parsed.and_then(|p| check_model(&state, p)) {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&refused(&state, error)),
    };
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let job_id = state.new_job_id(prefix);
    let span = tracing::info_span!("job", job_id = job_id.as_str());
    let prepared = match span.in_scope(|| prepare(&state, &parsed)) {
        Ok(prepared) => prepared,
        Err(error) => return error_response(&span.in_scope(|| refused(&state, error))),
    };
    let (started, replies) = match start_job(&state, job_id.clone(), prepared, arrived).await {
        Ok(started) => started,
        Err(error) => return error_response(&error),
    };
    let Event::Started { prompt_ids, .. } = started else {
        return error_response(&ApiError::internal("the generation did not start"));
    };
    let answer = Answer {
        id: job_id,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: state.model_id.clone(),
        parsed,
        prompt_ids,
    };
    if answer.parsed.stream {
        Sse::new(answer.stream(replies)).into_response()
    } else {
        answer.whole(replies).await
    }
}

/// `model` must name the model this server holds: its id, or the path it was started with.
fn check_model(state: &AppState, parsed: OpenAiRequest) -> Result<OpenAiRequest, ApiError> {
    if parsed.model == state.model_id || parsed.model == state.model {
        return Ok(parsed);
    }
    Err(ApiError {
        status: StatusCode::NOT_FOUND,
        field: "model".into(),
        message: format!(
            "`{}` is not served here; this server holds `{}` (GET /v1/models)",
            parsed.model, state.model_id
        ),
    })
}

/// Tokenizes and checks the request; a chat without `max_tokens` may fill the context.
fn prepare(state: &AppState, parsed: &OpenAiRequest) -> Result<PreparedRequest, ApiError> {
    let prepared = state
        .prompter
        .prepare(&parsed.request)
        .map_err(api::from_worker_error)?;
    if parsed.endpoint == Endpoint::Chat && !parsed.max_tokens_given {
        let mut request = prepared.request().clone();
        request.max_tokens = state.prompter.context_length() - prepared.prompt_ids().len();
        return Ok(PreparedRequest::new(
            request,
            prepared.prompt_ids().to_vec(),
        ));
    }
    Ok(prepared)
}

/// One request's answer, as it is written.
struct Answer {
    id: String,
    created: u64,
    model: String,
    parsed: OpenAiRequest,
    prompt_ids: Vec<u32>,
}

/// A generated token as the events bring it.
struct Token {
    text: String,
    id: u32,
    logprobs: Option<TokenLogprobs>,
}

/// What the generation thread sends after `started`, read as tokens until the end.
enum Step {
    Token(Token),
    End(StopReason),
    Failed(ApiError),
}

async fn next_step(replies: &mut UnboundedReceiver<Reply>) -> Step {
    match replies.recv().await {
        Some(Reply::Event(Event::Token {
            t, id, logprobs, ..
        })) => Step::Token(Token {
            text: t,
            id,
            logprobs,
        }),
        Some(Reply::Event(Event::End { stop_reason, .. })) => match stop_reason {
            StopReason::Cancelled => Step::Failed(ApiError::unavailable(
                "the generation was cancelled: the server is shutting down",
            )),
            reason => Step::End(reason),
        },
        Some(Reply::Event(Event::Error { message })) => Step::Failed(ApiError::internal(message)),
        Some(Reply::Refused(error)) => Step::Failed(error),
        Some(Reply::Event(Event::Started { .. })) | None => Step::Failed(ApiError::unavailable(
            "the generation ended without an answer: the server is shutting down",
        )),
    }
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.parsed.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    /// An answer or chunk holding `choices` (one, or none in the usage chunk).
    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        let mut value = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.parsed.return_token_ids && !chunk {
            value["prompt_token_ids"] = json!(self.prompt_ids);
        }
        value
    }

    /// A choice holding `text` (as the message's content, or a chunk's delta) and what the
    /// request asks for of `tokens`; `offset` is the text's byte offset in the whole answer.
    fn choice(
        &self,
        chunk: bool,
        text: &str,
        tokens: &[Token],
        offset: usize,
        finish: Option<&str>,
    ) -> Value {
        let mut choice = json!({"index": 0, "finish_reason": finish});
        match (self.parsed.endpoint, chunk) {
            (Endpoint::Chat, false) => {
                choice["message"] = json!({"role": "assistant", "content": text})
            }
            (Endpoint::Chat, true) if finish.is_some() && tokens.is_empty() => {
                choice["delta"] = json!({})
            }
            (Endpoint::Chat, true) => choice["delta"] = json!({"content": text}),
            (Endpoint::Completions, _) => choice["text"] = json!(text),
        }
        choice["logprobs"] = Value::Null;
        if self.parsed.request.logprobs.is_some() && !tokens.is_empty() {
            let logprobs: Vec<TokenLogprobs> = tokens
                .iter()
                .filter_map(|t| {
                    let mut logprobs = t.logprobs.clone()?;
                    if self.parsed.tokens_as_ids {
                        logprobs.token = format!("token_id:{}", t.id);
                        for top in &mut logprobs.top {
                            top.token = format!("token_id:{}", top.id);
                        }
                    }
                    Some(logprobs)
                })
                .collect();
            choice["logprobs"] = match self.parsed.endpoint {
                Endpoint::Chat => wire::chat_logprobs(&logprobs),
                Endpoint::Completions => {
                    let pieces: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
                    wire::completion_logprobs(&logprobs, &pieces, offset)
                }
            };
        }
        if self.parsed.return_token_ids {
            choice["token_ids"] = json!(tokens.iter().map(|t| t.id).collect::<Vec<_>>());
        }
        choice
    }

    fn usage(&self, completion_tokens: usize) -> Usage {
        Usage::new(self.prompt_ids.len(), completion_tokens)
    }

    /// The whole answer as one JSON object, once generation ends.
    async fn whole(self, mut replies: UnboundedReceiver<Reply>) -> Response {
        let mut tokens = Vec::new();
        let stop = loop {
            match next_step(&mut replies).await {
                Step::Token(token) => tokens.push(token),
                Step::End(stop) => break stop,
                Step::Failed(error) => return error_response(&error),
            }
        };
        let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
        let choice = self.choice(false, &text, &tokens, 0, wire::finish_reason(stop));
        let mut value = self.envelope(false, vec![choice]);
        value["usage"] = json!(self.usage(tokens.len()));
        Json(value).into_response()
    }

    /// The answer as server-sent events: a chunk per token (chat's first one with the role),
    /// the last with the finish reason, usage when asked, then `[DONE]`.
    fn stream(
        self,
        replies: UnboundedReceiver<Reply>,
    ) -> impl Stream<Item = Result<sse::Event, Infallible>> {
        let mut first = Vec::new();
        if self.parsed.endpoint == Endpoint::Chat {
            let mut choice = self.choice(true, "", &[], 0, None);
            choice["delta"] = json!({"role": "assistant", "content": ""});
            first.push(self.envelope(true, vec![choice]));
        }
        if self.parsed.return_token_ids {
            let mut value = first
                .pop()
                .unwrap_or_else(|| self.envelope(true, vec![self.choice(true, "", &[], 0, None)]));
            value["prompt_token_ids"] = json!(self.prompt_ids);
            first.push(value);
        }
        let state = Streaming {
            answer: self,
            replies,
            tokens: 0,
            offset: 0,
            done: false,
        };
        let rest = futures::stream::unfold(state, |mut state| async move {
            let events = state.next().await?;
            Some((futures::stream::iter(events), state))
        })
        .flatten();
        futures::stream::iter(first.into_iter().map(data))
            .chain(rest)
            .map(Ok)
    }
}

/// The state of a streamed answer between events.
struct Streaming {
    answer: Answer,
    replies: UnboundedReceiver<Reply>,
    tokens: usize,
    /// Bytes of text sent so far.
    offset: usize,
    done: bool,
}

impl Streaming {
    /// The events of the next step; `None` once `[DONE]` is sent.
    async fn next(&mut self) -> Option<Vec<sse::Event>> {
        if self.done {
            return None;
        }
        let answer = &self.answer;
        let events = match next_step(&mut self.replies).await {
            Step::Token(token) => {
                self.tokens += 1;
                let text_len = token.text.len();
                let tokens = [token];
                let choice = answer.choice(true, &tokens[0].text, &tokens, self.offset, None);
                self.offset += text_len;
                vec![data(answer.envelope(true, vec![choice]))]
            }
            Step::End(stop) => {
                self.done = true;
                let finish = wire::finish_reason(stop);
                let last = answer.choice(true, "", &[], self.offset, finish);
                let mut events = vec![data(answer.envelope(true, vec![last]))];
                if answer.parsed.include_usage {
                    let mut usage = answer.envelope(true, vec![]);
                    usage["usage"] = json!(answer.usage(self.tokens));
                    events.push(data(usage));
                }
                events.push(sse::Event::default().data("[DONE]"));
                events
            }
            Step::Failed(error) => {
                self.done = true;
                vec![
                    data(wire::error_body(&error)),
                    sse::Event::default().data("[DONE]"),
                ]
            }
        };
        Some(events)
    }
}

fn data(value: Value) -> sse::Event {
    sse::Event::default().data(value.to_string())
}
