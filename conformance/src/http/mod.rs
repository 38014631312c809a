//! The HTTP transports: a `llm-worker-rbee serve` process per model, its `/execute` streams (or
//! OpenAI's, `openai`) read with reqwest, so trials check what a client of the server gets.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use llm_worker_rbee_api::GenerationTimings;
use llm_worker_rbee_api::{
    Backend, Dtype, Engine, Generation, Prompt, Request, StopReason, TokenLogprobs,
};

mod openai;
use serde::Deserialize;
use serde_json::json;

/// How long a server may take to load its model, and a request to finish.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The API a `HttpWorker`'s requests go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Execute,
    /// `/v1/completions` (`/v1/chat/completions` for chat prompts), streamed.
    OpenAi,
}

/// A running `serve` process, stopped when dropped. `generate` may be called from several
/// threads at once (the server queues them).
pub struct HttpWorker {
    child: Child,
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    api: Api,
    /// The model's name in OpenAI's API: its folder's name.
    model_id: String,
}

/// The events of `/execute`, as README.md documents them; written apart from the server's own
/// type, so that a change to the wire format fails the suite instead of following on both sides.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    Started {
        prompt_ids: Vec<u32>,
    },
    Token {
        t: String,
        i: usize,
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    End {
        stop_reason: StopReason,
        prefill_ms: f64,
        decode_ms: f64,
        tokens_per_s: f64,
    },
    Error {
        message: String,
    },
}

impl HttpWorker {
    /// Starts `binary serve` on a free loopback port and waits until the model is loaded.
    pub fn start(
        binary: &Path,
        model_dir: &Path,
        backend: Backend,
        dtype: Dtype,
        engine: Option<Engine>,
        api: Api,
    ) -> Result<Self, String> {
        let engine: Vec<String> = engine
            .map(|e| vec!["--engine".into(), e.to_string()])
            .unwrap_or_default();
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--model")
            .arg(model_dir)
            .args(["--backend", backend.name(), "--dtype", dtype.name()])
            .args(&engine)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut line = String::new();
        let read =
            BufReader::new(child.stdout.take().expect("stdout is piped")).read_line(&mut line);
        let base = match (read, line.trim().strip_prefix("listening on ")) {
            (Ok(_), Some(base)) => base.to_string(),
            _ => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!(
                    "`{} serve` did not start listening ({status}); its error is above",
                    binary.display()
                ));
            }
        };
        // Each caller's `block_on` runs its own request; one worker thread drives the sockets.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an async runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let model_id = model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut worker = Self {
            child,
            base,
            client,
            runtime,
            api,
            model_id,
        };
        worker.wait_until_loaded()?;
        Ok(worker)
    }

    fn wait_until_loaded(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the server exited while loading ({status}); its error is above"
                ));
            }
            let health = self.runtime.block_on(async {
                let response = self
                    .client
                    .get(format!("{}/health", self.base))
                    .send()
                    .await?;
                Ok::<_, reqwest::Error>(response.status())
            });
            if matches!(health, Ok(status) if status.is_success()) {
                return Ok(());
            }
            if started.elapsed() > LOAD_TIMEOUT {
                return Err(format!(
                    "the server did not load the model in {LOAD_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `request` through `/execute`: the token ids and text pieces of the stream, the
    /// prompt ids of its `started` event and the stop reason of its `end` event. Through OpenAI's
    /// API, the same from its chunks.
    pub fn generate(&self, request: &Request) -> Result<Generation, String> {
        match self.api {
            Api::Execute => self.runtime.block_on(self.execute(request)),
            Api::OpenAi => self.runtime.block_on(openai::generate(
                &self.client,
                &self.base,
                &self.model_id,
                request,
            )),
        }
    }

    async fn execute(&self, request: &Request) -> Result<Generation, String> {
        let mut body = json!({
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "seed": request.seed,
            "repeat_penalty": request.repeat_penalty,
            "ignore_eos": request.ignore_eos,
            "stop": request.stop,
            "logprobs": request.logprobs,
        });
        match &request.prompt {
            Prompt::Text(text) => body["prompt"] = json!(text),
            Prompt::Ids(ids) => body["prompt_ids"] = json!(ids),
            Prompt::Messages(messages) => body["messages"] = json!(messages),
        }
        let response = self
            .client
            .post(format!("{}/execute", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST /execute: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("POST /execute answered {status}: {text}"));
        }
        let mut events = response.bytes_stream().eventsource();
        let mut prompt_ids = None;
        let mut token_ids = Vec::new();
        let mut text = String::new();
        let mut logprobs = None;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| format!("the event stream broke: {e}"))?;
            let parsed: Event = serde_json::from_str(&event.data)
                .map_err(|e| format!("event `{}` {:?}: {e}", event.event, event.data))?;
            match parsed {
                Event::Started { prompt_ids: ids } => prompt_ids = Some(ids),
                Event::Token {
                    t,
                    i,
                    id,
                    logprobs: token_logprobs,
                } => {
                    if i != token_ids.len() {
                        return Err(format!(
                            "token event {i} came as number {}",
                            token_ids.len()
                        ));
                    }
                    token_ids.push(id);
                    text.push_str(&t);
                    if let Some(token_logprobs) = token_logprobs {
                        logprobs.get_or_insert_with(Vec::new).push(token_logprobs);
                    }
                }
                Event::End {
                    stop_reason,
                    prefill_ms,
                    decode_ms,
                    tokens_per_s,
                } => {
                    return Ok(Generation {
                        prompt_ids: prompt_ids.ok_or("`end` came before `started`")?,
                        token_ids,
                        text,
                        stop_reason,
                        timings: GenerationTimings {
                            prefill_ms,
                            decode_ms,
                            decode_tokens_per_s: tokens_per_s,
                        },
                        logprobs,
                    })
                }
                Event::Error { message } => {
                    return Err(format!("the server's error event: {message}"))
                }
            }
        }
        Err(format!(
            "the event stream ended without an `end` event, after {} tokens",
            token_ids.len()
        ))
    }
}

impl Drop for HttpWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
