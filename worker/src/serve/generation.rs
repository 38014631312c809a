//! The one generation thread: it loads the model, then owns the `Worker` and runs the queued
//! jobs one at a time, so each gets exactly the output it would get alone.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::api::{ApiError, Event};
use super::metrics::{JobReport, Metrics, Outcome};
use crate::files::ModelFiles;
use crate::request::{PreparedRequest, StopReason};
use crate::worker::{LoadOptions, Worker};

/// What the generation thread tells a request's handler: the events of its stream, or a
/// refusal (before `started`: the HTTP answer; after it: an `error` event).
pub enum Reply {
    Refused(ApiError),
    Event(Event),
}

struct Job {
    job_id: String,
    request: PreparedRequest,
    replies: UnboundedSender<Reply>,
    arrived: Instant,
}

/// The handle of the generation thread, shared by the request handlers.
pub struct Generator {
    jobs: mpsc::Sender<Job>,
    /// Jobs sent and not yet finished: the running one and those waiting.
    outstanding: Arc<AtomicUsize>,
    /// How many jobs may wait while one runs.
    capacity: usize,
    loaded: Arc<AtomicBool>,
    busy: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
}

impl Generator {
    /// Starts the thread, which loads the model and then serves the jobs; jobs submitted while
    /// it loads wait in the queue. The receiver tells how the load went.
    pub fn start(
        files: ModelFiles,
        model: String,
        options: LoadOptions,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Self, oneshot::Receiver<anyhow::Result<()>>)> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let generator = Self {
            jobs,
            outstanding: Arc::default(),
            capacity,
            loaded: Arc::default(),
            busy: Arc::default(),
            shutdown: Arc::default(),
        };
        let thread = GenerationThread {
            jobs: receiver,
            outstanding: generator.outstanding.clone(),
            busy: generator.busy.clone(),
            shutdown: generator.shutdown.clone(),
            metrics,
            model,
        };
        let loaded = generator.loaded.clone();
        std::thread::Builder::new()
            .name("generation".into())
            .spawn(move || {
                let started = Instant::now();
                let model_dir = files.info().model_dir.clone();
                match Worker::from_files(files, options) {
                    Ok(worker) => {
                        let timings = worker.load_timings();
                        tracing::info!(
                            load_ms = timings.load_ms,
                            warmup_ms = timings.warmup_ms,
                            total_ms = started.elapsed().as_secs_f64() * 1000.0,
                            "model loaded"
                        );
                        loaded.store(true, Ordering::SeqCst);
                        let _ = loaded_tx.send(Ok(()));
                        thread.serve(worker);
                    }
                    Err(error) => {
                        let _ = loaded_tx.send(Err(anyhow::Error::new(error)
                            .context(format!("cannot load the model in {}", model_dir.display()))));
                    }
                }
            })?;
        Ok((generator, loaded_rx))
    }

    /// Queues a job; `None` when the queue is full.
    pub fn submit(
        &self,
        job_id: String,
        request: PreparedRequest,
        arrived: Instant,
    ) -> Option<UnboundedReceiver<Reply>> {
        let most = self.capacity + 1;
        self.outstanding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()?;
        let (replies, receiver) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            job_id,
            request,
            replies,
            arrived,
        };
        if self.jobs.send(job).is_err() {
            // The thread is gone; the dropped sender tells the handler.
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
        Some(receiver)
    }

    /// Jobs waiting for the running one (or for the load).
    pub fn queued(&self) -> usize {
        let outstanding = self.outstanding.load(Ordering::SeqCst);
        outstanding.saturating_sub(usize::from(self.busy()))
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Cancels the running generation at its next token and refuses the queued jobs.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }
}

struct GenerationThread {
    jobs: mpsc::Receiver<Job>,
    outstanding: Arc<AtomicUsize>,
    busy: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    model: String,
}

impl GenerationThread {
    fn serve(self, mut worker: Worker) {
        while let Ok(job) = self.jobs.recv() {
            self.busy.store(true, Ordering::SeqCst);
            let replies = job.replies.clone();
            let span = tracing::info_span!("job", job_id = job.job_id.as_str());
            let ran =
                span.in_scope(|| catch_unwind(AssertUnwindSafe(|| self.run(&mut worker, job))));
            if ran.is_err() {
                // A bug, not the request's fault; the worker resets its cache at the next
                // request, so the jobs after this one are served as usual.
                span.in_scope(|| tracing::error!("the generation panicked"));
                self.metrics.request(Outcome::Failed);
                let _ = replies.send(Reply::Refused(ApiError::internal(
                    "the generation failed inside the worker (a bug: see its log)",
                )));
            }
            self.busy.store(false, Ordering::SeqCst);
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn run(&self, worker: &mut Worker, job: Job) {
        let Job {
            job_id,
            request,
            replies,
            arrived,
        } = job;
        if replies.is_closed() || self.shutdown.load(Ordering::SeqCst) {
            // The client left while queued, or the server is stopping: nothing to run.
            tracing::info!("not run: the client left or the server is stopping");
            self.metrics.request(Outcome::Cancelled);
            return;
        }
        let queued = arrived.elapsed();
        let prompt_ids = request.prompt_ids().to_vec();
        tracing::info!(
            prompt_tokens = prompt_ids.len(),
            max_tokens = request.request().max_tokens,
            queued_ms = queued.as_secs_f64() * 1000.0,
            "started"
        );
        let _ = replies.send(Reply::Event(Event::Started {
            job_id: job_id.clone(),
            model: self.model.clone(),
            backend: worker.options().backend.to_string(),
            prompt_ids,
        }));
        let mut tokens = 0;
        // Token events sent: `end` reports these, which a cancelled job has one fewer of.
        let mut sent = 0;
        let mut first_token = None;
        let outcome = worker.generate(&request, |token| {
            tokens += 1;
            first_token.get_or_insert_with(|| arrived.elapsed());
            let event = Event::Token {
                t: token.text.clone(),
                i: token.index,
                id: token.id,
                logprobs: token.logprobs.clone(),
            };
            // A closed channel means the client disconnected: stop between tokens.
            if self.shutdown.load(Ordering::SeqCst) || replies.send(Reply::Event(event)).is_err() {
                return ControlFlow::Break(());
            }
            sent += 1;
            ControlFlow::Continue(())
        });
        let report = |stop_reason| JobReport {
            job_id: &job_id,
            tokens,
            stop_reason,
            queued,
            first_token,
            total: arrived.elapsed(),
        };
        let event = match outcome {
            Ok(generation) => {
                let t = &generation.timings;
                let stop_reason = generation.stop_reason;
                tracing::info!(
                    tokens,
                    stop_reason = stop_reason.name(),
                    prefill_ms = t.prefill_ms,
                    decode_ms = t.decode_ms,
                    tokens_per_s = t.decode_tokens_per_s,
                    "finished"
                );
                self.metrics.request(match stop_reason {
                    StopReason::Cancelled => Outcome::Cancelled,
                    _ => Outcome::Completed,
                });
                self.metrics.job(&report(stop_reason.name()));
                Event::End {
                    job_id: job_id.clone(),
                    tokens_out: sent,
                    stop_reason,
                    prefill_ms: t.prefill_ms,
                    decode_ms: t.decode_ms,
                    tokens_per_s: t.decode_tokens_per_s,
                }
            }
            Err(error) => {
                // Out of device memory lands here too: this request fails, the next one runs.
                tracing::error!(tokens, %error, "generation failed");
                self.metrics.request(Outcome::Failed);
                self.metrics.job(&report("error"));
                Event::Error {
                    message: error.to_string(),
                }
            }
        };
        let _ = replies.send(Reply::Event(event));
    }
}
