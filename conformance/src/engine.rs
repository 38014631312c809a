//! The transports behind one interface: what runs a model's requests for the trials, the
//! worker library in this process or a `llm-worker-rbee serve` process over HTTP (its own
//! `/execute` or OpenAI's API).

use std::ops::ControlFlow;
use std::path::Path;

use llm_worker_rbee::{Generation, LoadOptions, ModelInfo, Request, Worker};

use crate::http::{Api, HttpWorker};
use crate::paths::Paths;
use crate::trial::{Transport, TrialSpec};

/// Runs requests for one model, loaded once per backend, dtype and transport.
pub trait Engine: Send {
    fn generate(&mut self, request: &Request) -> Result<Generation, String>;

    /// The model's logits, where the transport carries them: the library's alone. Over HTTP the
    /// goldens (reviewed against the reference) and the sampling checks are what a client is
    /// held to.
    fn logits(&mut self) -> Option<&mut dyn Logits>;
}

/// Logits of the model, as the checks on logits need them.
pub trait Logits {
    /// After the prompt and after each prefix of `continuation`, decoding with the KV cache.
    fn step_logits(
        &mut self,
        prompt_ids: &[u32],
        continuation: &[u32],
    ) -> Result<Vec<Vec<f32>>, String>;

    /// After `ids`, in one pass without a cache.
    fn without_cache(&mut self, ids: &[u32]) -> Result<Vec<f32>, String>;
}

/// Loads the model of `spec` in `dir`: into this process, or into a server of its own.
pub fn start(
    spec: &TrialSpec,
    dir: &Path,
    paths: &Paths,
) -> Result<(Box<dyn Engine>, ModelInfo), String> {
    match spec.transport {
        Transport::Library => {
            let options = LoadOptions {
                backend: spec.backend,
                device: 0,
                dtype: spec.dtype,
                engine: spec.engine,
                ..LoadOptions::default()
            };
            let worker =
                Worker::load(dir, options).map_err(|e| format!("cannot load the model: {e}"))?;
            let info = worker.info().clone();
            Ok((Box::new(worker), info))
        }
        Transport::Http | Transport::OpenAi => {
            let binary = paths.worker_binary.as_ref().ok_or_else(|| {
                format!(
                    "the {0} transport needs the worker binary in CONFORMANCE_WORKER \
                     (`cargo xtask test --via {0}` builds it)",
                    spec.transport
                )
            })?;
            let info =
                ModelInfo::inspect(dir).map_err(|e| format!("cannot read the model: {e}"))?;
            let api = match spec.transport {
                Transport::OpenAi => Api::OpenAi,
                _ => Api::Execute,
            };
            let server =
                HttpWorker::start(binary, dir, spec.backend, spec.dtype, spec.engine, api)?;
            Ok((Box::new(server), info))
        }
    }
}

impl Engine for Worker {
    fn generate(&mut self, request: &Request) -> Result<Generation, String> {
        let prepared = self.prepare(request).map_err(|e| e.to_string())?;
        Worker::generate(self, &prepared, |_| ControlFlow::Continue(())).map_err(|e| e.to_string())
    }

    fn logits(&mut self) -> Option<&mut dyn Logits> {
        Some(self)
    }
}

impl Logits for Worker {
    fn step_logits(
        &mut self,
        prompt_ids: &[u32],
        continuation: &[u32],
    ) -> Result<Vec<Vec<f32>>, String> {
        Worker::step_logits(self, prompt_ids, continuation).map_err(|e| e.to_string())
    }

    fn without_cache(&mut self, ids: &[u32]) -> Result<Vec<f32>, String> {
        self.logits_without_cache(ids).map_err(|e| e.to_string())
    }
}

impl Engine for HttpWorker {
    fn generate(&mut self, request: &Request) -> Result<Generation, String> {
        HttpWorker::generate(self, request)
    }

    fn logits(&mut self) -> Option<&mut dyn Logits> {
        None
    }
}
