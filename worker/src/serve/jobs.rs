//! What every endpoint of `serve` shares: the state of the server, reading a request's body,
//! and queueing a prepared request until it starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{ApiError, Event};
use super::generation::{Generator, Reply};
use super::metrics::{Metrics, Outcome};
use crate::files::ModelInfo;
use crate::prompter::Prompter;
use crate::request::PreparedRequest;
use crate::worker::LoadOptions;

/// The largest request body accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 1 << 20;

pub struct AppState {
    pub generator: Generator,
    pub prompter: Arc<Prompter>,
    pub info: ModelInfo,
    pub load: LoadOptions,
    pub model: String,
    /// The name `/v1/models` gives the model: its folder's (or GGUF file's) name.
    pub model_id: String,
    pub metrics: Arc<Metrics>,
    pub next_job: AtomicU64,
    pub body_timeout: Duration,
}

impl AppState {
    /// A job id for a request that gives none: `{prefix}-{n}`.
    pub fn new_job_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_job.fetch_add(1, Ordering::Relaxed))
    }
}

/// Logs and counts a request refused before it reached the generation thread.
pub fn refused(state: &AppState, error: ApiError) -> ApiError {
    tracing::info!(field = error.field, reason = error.message, "refused");
    state.metrics.request(Outcome::Invalid);
    error
}

/// A request's body, refused when it is larger than `BODY_LIMIT` or not all sent within the
/// body timeout.
pub async fn read_body(state: &Arc<AppState>, request: Request) -> Result<Bytes, ApiError> {
    // A body announced larger than the limit is refused before waiting for it.
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            field: "body".into(),
            message: format!("is larger than {BODY_LIMIT} bytes"),
        });
    }
    // A client that stops sending its body would otherwise hold the connection for ever.
    match tokio::time::timeout(state.body_timeout, Bytes::from_request(request, state)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(rejection)) => Err(body_rejected(rejection)),
        Err(_) => Err(ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            field: "body".into(),
            message: format!("not received within {} s", state.body_timeout.as_secs_f64()),
        }),
    }
}

/// Queues a prepared request and waits for its `started` event; refused when the queue is
/// full, the server is stopping, or the generation thread refuses it (which counts it itself).
pub async fn start_job(
    state: &AppState,
    job_id: String,
    prepared: PreparedRequest,
    arrived: Instant,
) -> Result<(Event, UnboundedReceiver<Reply>), ApiError> {
    let Some(mut replies) = state.generator.submit(job_id, prepared, arrived) else {
        state.metrics.request(Outcome::Overloaded);
        return Err(ApiError::unavailable("the queue is full; retry later"));
    };
    match replies.recv().await {
        Some(Reply::Event(started)) => Ok((started, replies)),
        Some(Reply::Refused(error)) => Err(error),
        None => Err(ApiError::unavailable("the server is shutting down")),
    }
}

fn body_rejected(rejection: BytesRejection) -> ApiError {
    ApiError {
        status: rejection.status(),
        field: "body".into(),
        message: rejection.body_text(),
    }
}
