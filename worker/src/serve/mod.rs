//! `llm-worker-rbee serve`: an HTTP worker. `POST /execute` streams a generation as server-sent
//! events; OpenAI's `/v1/chat/completions`, `/v1/completions` and `/v1/models` answer beside it;
//! `GET /health` and `GET /metrics` tell its state. One generation runs at a time; the
//! others wait in a bounded queue.

mod api;
mod connections;
mod generation;
mod jobs;
mod metrics;
mod openai;

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

use self::api::Event;
pub use self::connections::ConnectionLimits;
use self::generation::{Generator, Reply};
pub use self::jobs::BODY_LIMIT;
use self::jobs::{read_body, refused, start_job, AppState};
use self::metrics::Metrics;
use crate::files::ModelFiles;
use crate::worker::LoadOptions;

pub struct ServeOptions {
    pub model_dir: PathBuf,
    /// The model as given on the command line, reported by `/health` and in `started` events.
    pub model: String,
    pub load: LoadOptions,
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// How many requests may wait while one generates; more get 503.
    pub queue: usize,
    pub connections: ConnectionLimits,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
}

/// How long open streams may take to end after SIGTERM before the server exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Reads the model's settings, starts listening while the weights load, and serves until
/// SIGTERM or ctrl-c; then returns once the open streams ended (at most `SHUTDOWN_GRACE`
/// later). A model that fails to load is an error, after which nothing is served.
pub fn run(options: ServeOptions) -> anyhow::Result<()> {
    // Settings, tokenizer and chat template are read once, before listening, so that a bad
    // folder fails at once; `/execute` prepares requests with them while the weights load.
    let files = ModelFiles::open(&options.model_dir)
        .with_context(|| format!("cannot read the model in {}", options.model_dir.display()))?;
    if let Some(problem) = files.prompter().chat_template_problem() {
        anyhow::bail!(
            "cannot read the model in {}: the chat template of tokenizer_config.json: {problem}",
            options.model_dir.display()
        );
    }
    let info = files.info().clone();
    let prompter = files.prompter().clone();
    let metrics = Arc::new(Metrics::default());
    let (generator, loaded) = Generator::start(
        files,
        options.model.clone(),
        options.load,
        options.queue,
        metrics.clone(),
    )?;
    let model_id = options.model_dir.file_name().map_or_else(
        || options.model.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    let state = Arc::new(AppState {
        generator,
        prompter,
        info,
        load: options.load,
        model: options.model,
        model_id,
        metrics,
        next_job: AtomicU64::new(1),
        body_timeout: options.body_timeout,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(
        state,
        SocketAddr::new(options.host, options.port),
        options.connections,
        loaded,
    ))
}

async fn serve(
    state: Arc<AppState>,
    address: SocketAddr,
    limits: ConnectionLimits,
    loaded: oneshot::Receiver<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/execute", post(execute))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/health", get(health))
        .route("/metrics", get(serve_metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state.clone());
    // Clients (and the tests) read the port from this line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{local}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(address = %local, model = state.model, "listening; loading the model");

    let (stop, stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(connections::serve(listener, app, limits, stopped));
    let load_failure = async {
        match loaded.await {
            Ok(Err(error)) => error,
            // Loaded (or the thread is gone, which the requests report): keep serving.
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        error = load_failure => return Err(error),
        result = &mut server => return finished(result),
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down: cancelling the generation, refusing new requests");
    state.generator.shut_down();
    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(result) => finished(result),
        Err(_) => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "open streams did not end in time; exiting anyway"
            );
            Ok(())
        }
    }
}

fn finished(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result
        .context("the server task failed")?
        .context("the server failed")
}

/// Resolves at SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn execute(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let arrived = Instant::now();
    let parsed = match read_body(&state, request).await {
        Ok(body) => api::parse_execute(&body),
        Err(error) => Err(error),
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return refused(&state, error).into_response(),
    };
    let job_id = parsed.job_id.unwrap_or_else(|| state.new_job_id("job"));
    // Checked and tokenized here, so that a refusal needs no turn of the generation thread.
    let span = tracing::info_span!("job", job_id = job_id.as_str());
    let prepared = match span.in_scope(|| state.prompter.prepare(&parsed.request)) {
        Ok(prepared) => prepared,
        Err(error) => {
            return span
                .in_scope(|| refused(&state, api::from_worker_error(error)))
                .into_response()
        }
    };
    match start_job(&state, job_id, prepared, arrived).await {
        Ok((started, replies)) => Sse::new(events(started, replies)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The SSE stream of a job: `started`, then what the generation thread sends until it drops
/// its sender. Dropping this stream (the client left) closes the channel, which cancels the
/// generation at its next token.
fn events(
    started: Event,
    replies: UnboundedReceiver<Reply>,
) -> impl Stream<Item = Result<sse::Event, Infallible>> {
    let rest = futures::stream::unfold(replies, |mut replies| async move {
        match replies.recv().await {
            Some(Reply::Event(event)) => Some((event, replies)),
            Some(Reply::Refused(error)) => Some((
                Event::Error {
                    message: error.message,
                },
                replies,
            )),
            None => None,
        }
    });
    futures::stream::once(std::future::ready(started))
        .chain(rest)
        .map(|event| Ok(to_sse(&event)))
}

fn to_sse(event: &Event) -> sse::Event {
    let data = serde_json::to_string(event).expect("events serialize");
    sse::Event::default().event(event.name()).data(data)
}

/// 200 once the model is loaded (`ready`, or `busy` while it generates), 503 while it loads.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (code, status) = match (state.generator.loaded(), state.generator.busy()) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        (true, true) => (StatusCode::OK, "busy"),
        (true, false) => (StatusCode::OK, "ready"),
    };
    let body = Json(json!({
        "status": status,
        "model": state.model,
        "architecture": state.info.architecture,
        "backend": state.load.backend,
        "device": state.load.device,
        "dtype": state.load.dtype,
    }));
    (code, body).into_response()
}

async fn serve_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let text = state
        .metrics
        .render(state.generator.queued(), state.generator.busy());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}
