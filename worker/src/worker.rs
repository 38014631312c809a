//! A model loaded from its files ([`Worker`]): generation of prepared requests with a fresh KV
//! cache per request.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use crate::backend::{candle_dtype, open_device, Backend, Dtype, KvCache};
use crate::error::{Error, Result};
use crate::fast::{self, Engine};
use crate::files::{ModelFiles, ModelInfo, Module};
use crate::folder::Weights;
use crate::logprobs::token_logprobs;
use crate::model::{CausalLm, DecodeGraph};
use crate::prompter::Prompter;
use crate::request::{
    Generation, GenerationTimings, PreparedRequest, Prompt, Request, StopReason, TokenEvent,
    TokenLogprobs,
};
use crate::stop::StopStrings;
use crate::tokens::{IncrementalText, TextCodec};
use crate::{gguf, memory, weights};

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub backend: Backend,
    /// Device ordinal for `cuda`/`metal`.
    pub device: usize,
    pub dtype: Dtype,
    /// The implementation to run; `None`: the fast engine where it runs, else candle's (see
    /// `fast::choose`).
    pub engine: Option<Engine>,
    /// The type of the KV cache (f16 for llama-family GGUF files only).
    pub kv_cache: KvCache,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Cpu,
            device: 0,
            dtype: Dtype::F32,
            engine: None,
            kv_cache: KvCache::Activations,
        }
    }
}

/// Wall-clock times of loading, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LoadTimings {
    pub load_ms: f64,
    /// A prefill and a decode step run at load, so the first request does not pay for kernel
    /// compilation (CUDA) or first-touch allocation.
    pub warmup_ms: f64,
}

pub struct Worker {
    model: Box<dyn CausalLm>,
    engine: Engine,
    prompter: Arc<Prompter>,
    info: ModelInfo,
    options: LoadOptions,
    device: Device,
    load_timings: LoadTimings,
}

impl Worker {
    pub fn load(model_dir: &Path, options: LoadOptions) -> Result<Self> {
        Self::from_files(ModelFiles::open(model_dir)?, options)
    }

    /// Loads the weights of `files` onto the device and warms the model up.
    pub fn from_files(files: ModelFiles, options: LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let device = open_device(options.backend, options.device)?;
        for key in &files.info.unrecognized_config_keys {
            tracing::warn!(
                key = key.as_str(),
                "the model's settings have a key the worker does not know; check that it does \
                 not change the model's math"
            );
        }
        let dtype = candle_dtype(options.dtype);
        if let Some(free) = memory::device_free_memory(&device) {
            let needed = files.load_bytes(dtype);
            if let Some(problem) = memory::device_problem(needed, free, options.backend.name()) {
                return Err(files.memory_error(needed, free, problem));
            }
        }
        let candidate = match &files.module {
            Module::SafeTensors(module) => fast::Candidate::SafeTensors(module.as_ref()),
            Module::Gguf(gguf) => fast::Candidate::Gguf {
                cpu_kernels: gguf.runs_cpu_kernels(),
            },
        };
        let (engine, fast_shape) = fast::choose(options.engine, &device, candidate)?;
        if options.kv_cache == KvCache::F16 {
            let message = match &files.module {
                Module::Gguf(gguf) if gguf.holds_an_f16_kv_cache() => None,
                Module::Gguf(gguf) => Some(format!(
                    "built for llama-family GGUF files; the {} module keeps its cache in f32",
                    gguf.architecture()
                )),
                Module::SafeTensors(_) => Some(
                    "built for llama-family GGUF files; a SafeTensors model keeps its cache in \
                     its activations' type (`--dtype f16` or `bf16` halves it)"
                        .into(),
                ),
            };
            if let Some(message) = message {
                return Err(Error::KvCache {
                    kv_cache: options.kv_cache.name().into(),
                    message,
                });
            }
        }
        let root = files.folder.root.clone();
        let model = match (&files.module, &files.folder.weights) {
            (Module::Gguf(gguf), Weights::Gguf(path)) => {
                gguf::load(path, *gguf, &device, dtype, engine, options.kv_cache)?
            }
            (Module::SafeTensors(module), _) => weights::load_model(
                &files.folder,
                &files.arch,
                (module.as_ref(), fast_shape.as_ref()),
                &device,
                dtype,
            )?,
            (Module::Gguf(_), _) => unreachable!("GGUF settings come from a GGUF file"),
        };
        let mut worker = Self {
            model,
            engine,
            prompter: files.prompter,
            info: files.info,
            options,
            device,
            load_timings: LoadTimings {
                load_ms: elapsed_ms(started),
                warmup_ms: 0.0,
            },
        };
        let started = Instant::now();
        worker.warm_up().map_err(|e| match e {
            // Computed from the weights and config alone: the model, not a request, is at fault.
            Error::NotFinite { .. } => {
                Error::weights(&root, format!("the warm-up generation failed: {e}"))
            }
            e => e,
        })?;
        worker.load_timings.warmup_ms = elapsed_ms(started);
        Ok(worker)
    }

    fn warm_up(&mut self) -> Result<()> {
        if self.info.context_length < 4 {
            return Ok(());
        }
        let mut request = Request::greedy(Prompt::Ids(vec![0, 0]), 2);
        request.ignore_eos = true;
        let prepared = self.prepare(&request)?;
        self.generate(&prepared, |_| ControlFlow::Continue(()))
            .map(drop)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The implementation that runs the model.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn load_timings(&self) -> &LoadTimings {
        &self.load_timings
    }

    pub fn codec(&self) -> &TextCodec {
        self.prompter.codec()
    }

    pub fn prompter(&self) -> &Arc<Prompter> {
        &self.prompter
    }

    /// Checks and tokenizes `request` for this model ([`Prompter::prepare`]).
    pub fn prepare(&self, request: &Request) -> Result<PreparedRequest> {
        self.prompter.prepare(request)
    }

    /// Generates tokens for `request` (prepared by this worker's prompter), calling `on_token`
    /// for each as soon as it is chosen; `on_token` returning `Break` cancels the generation.
    /// Every request starts from an empty KV cache, whatever happened to the one before.
    pub fn generate(
        &mut self,
        request: &PreparedRequest,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.reset_cache()?;
        let outcome = self.run(request, &mut on_token);
        // The next request resets too; this only frees the cache's memory now.
        let reset = self.reset_cache();
        let outcome = outcome?;
        reset?;
        Ok(Generation {
            prompt_ids: request.prompt_ids().to_vec(),
            token_ids: outcome.token_ids,
            text: outcome.text,
            stop_reason: outcome.stop_reason,
            timings: outcome.timings,
            logprobs: outcome.logprobs,
        })
    }

    fn run(
        &mut self,
        prepared: &PreparedRequest,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        let Self {
            model,
            prompter,
            device,
            ..
        } = self;
        let (request, prompt_ids) = (prepared.request(), prepared.prompt_ids());
        let codec = prompter.codec();
        let mut sampler = LogitsProcessor::from_sampling(request.seed, sampling(request));
        let greedy = is_greedy(request);
        // The next token after `ids` at `offset`, `generated` so far, and its log-probabilities
        // when the request asks for them.
        let mut choose = |ids: &[u32], offset: usize, generated: &[u32]| -> Result<Chosen> {
            if greedy && request.repeat_penalty.is_none() && request.logprobs.is_none() {
                if let Some(id) = model.forward_greedy(ids, offset)? {
                    return Ok((id, None));
                }
            }
            let mut logits = forward(model.as_mut(), device, ids, offset)?;
            check_finite(&logits, generated.len())?;
            if let Some(penalty) = request.repeat_penalty {
                let context: Vec<u32> = prompt_ids.iter().chain(generated).copied().collect();
                logits =
                    candle_transformers::utils::apply_repeat_penalty(&logits, penalty, &context)?;
            }
            let id = if greedy {
                argmax(&logits)?
            } else {
                sampler.sample(&logits)?
            };
            let logprobs = match request.logprobs {
                Some(top) => {
                    let temperature = if greedy { 1.0 } else { request.temperature };
                    let values = logits.to_vec1::<f32>()?;
                    Some(token_logprobs(&values, temperature, id, top, codec)?)
                }
                None => None,
            };
            Ok((id, logprobs))
        };
        let mut text = IncrementalText::new(codec);
        let mut stops = StopStrings::new(&request.stop);
        let mut emitted = String::new();
        let mut token_ids: Vec<u32> = Vec::with_capacity(request.max_tokens);
        let mut all_logprobs = request.logprobs.map(|_| Vec::new());
        let started = Instant::now();
        let (mut id, mut logprobs) = choose(prompt_ids, 0, &[])?;
        let mut prefill_ms = 0.0;
        let stop_reason = loop {
            let index = token_ids.len();
            token_ids.push(id);
            if index == 0 {
                prefill_ms = elapsed_ms(started);
            }
            let eos = !request.ignore_eos && codec.eos_ids().contains(&id);
            let full = token_ids.len() == request.max_tokens;
            let released = stops.push(&text.push(id, eos || full)?, eos || full);
            emitted.push_str(&released.text);
            if let (Some(all), Some(logprobs)) = (&mut all_logprobs, &logprobs) {
                all.push(logprobs.clone());
            }
            if on_token(&TokenEvent {
                index,
                id,
                text: released.text,
                logprobs: logprobs.take(),
            })
            .is_break()
            {
                break StopReason::Cancelled;
            }
            if released.stopped {
                break StopReason::StopString;
            }
            if eos {
                break StopReason::Eos;
            }
            if full {
                break StopReason::MaxTokens;
            }
            (id, logprobs) = choose(&[id], prompt_ids.len() + index, &token_ids)?;
        };
        let timings = timings(prefill_ms, elapsed_ms(started), token_ids.len());
        Ok(Outcome {
            token_ids,
            text: emitted,
            stop_reason,
            timings,
            logprobs: all_logprobs,
        })
    }

    fn forward(&mut self, ids: &[u32], offset: usize) -> Result<Tensor> {
        forward(self.model.as_mut(), &self.device, ids, offset)
    }

    /// The census of the decode step's CUDA graph and its replay time at `position` (the fast
    /// engine's; `None` for candle's modules). Leaves the cache empty.
    pub fn decode_graph(&mut self, position: usize) -> Result<Option<DecodeGraph>> {
        self.check_sequence(position + 1)?;
        let graph = self.model.decode_graph(position);
        self.reset_cache()?;
        Ok(graph?)
    }

    /// The logits the model gives after `prompt_ids` and after each prefix of `continuation`,
    /// computed with the KV cache as generation does: `continuation.len() + 1` vectors.
    pub fn step_logits(
        &mut self,
        prompt_ids: &[u32],
        continuation: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        self.check_sequence(prompt_ids.len() + continuation.len())?;
        self.reset_cache()?;
        let mut steps = Vec::with_capacity(continuation.len() + 1);
        let outcome = (|| -> Result<()> {
            steps.push(self.forward(prompt_ids, 0)?.to_vec1()?);
            for (i, id) in continuation.iter().enumerate() {
                steps.push(self.forward(&[*id], prompt_ids.len() + i)?.to_vec1()?);
            }
            Ok(())
        })();
        self.reset_cache()?;
        outcome.map(|()| steps)
    }

    /// The logits after `ids`, computed in one pass over the whole sequence without a cache.
    pub fn logits_without_cache(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check_sequence(ids.len())?;
        self.reset_cache()?;
        let logits = self.forward(ids, 0).and_then(|t| Ok(t.to_vec1()?));
        self.reset_cache()?;
        logits
    }

    /// Empties the KV cache. With the `fault-injection` feature it does nothing: requests then
    /// reuse each other's cache, the bug the conformance suite must catch (except on GGUF
    /// models, whose quantized modules start a new cache whenever a forward starts at position
    /// 0).
    fn reset_cache(&mut self) -> Result<()> {
        if cfg!(feature = "fault-injection") {
            return Ok(());
        }
        Ok(self.model.reset()?)
    }

    fn check_sequence(&self, len: usize) -> Result<()> {
        if len == 0 || len > self.info.context_length {
            return Err(Error::request(
                "prompt_ids",
                format!(
                    "has {len} tokens in all; it needs 1 to {} (the context)",
                    self.info.context_length
                ),
            ));
        }
        Ok(())
    }
}

/// A token and, when asked for, its log-probabilities.
type Chosen = (u32, Option<TokenLogprobs>);

/// What `Worker::run` produced, before the cache is reset.
struct Outcome {
    token_ids: Vec<u32>,
    text: String,
    stop_reason: StopReason,
    timings: GenerationTimings,
    logprobs: Option<Vec<TokenLogprobs>>,
}

/// Runs `ids` at positions from `offset` and returns the last position's logits as an f32
/// vector.
fn forward(
    model: &mut dyn CausalLm,
    device: &Device,
    ids: &[u32],
    offset: usize,
) -> Result<Tensor> {
    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
    Ok(model
        .forward(&input, offset)?
        .flatten_all()?
        .to_dtype(DType::F32)?)
}

/// Refuses logits holding NaN or +inf, from which argmax and sampling would pick a token that
/// means nothing (argmax with `>` never picks a NaN). -inf is a token ruled out, and fine.
fn check_finite(logits: &Tensor, step: usize) -> Result<()> {
    let values = logits.to_vec1::<f32>()?;
    let what = if values.iter().any(|v| v.is_nan()) {
        "NaN"
    } else if values.contains(&f32::INFINITY) {
        "+infinity"
    } else {
        return Ok(());
    };
    Err(Error::NotFinite { step, what })
}

/// Temperature 0, or only the most likely token allowed.
fn is_greedy(request: &Request) -> bool {
    request.temperature == 0.0 || request.top_k == Some(1)
}

/// The id of the largest logit, the lowest id among equal ones as `torch.argmax` picks: in
/// bf16 exact ties are common, and the device's own argmax breaks them in no fixed way.
fn argmax(logits: &Tensor) -> Result<u32> {
    let values = logits.to_vec1::<f32>()?;
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

fn sampling(request: &Request) -> Sampling {
    let temperature = request.temperature;
    if is_greedy(request) {
        return Sampling::ArgMax;
    }
    match (request.top_k, request.top_p) {
        (None, None) => Sampling::All { temperature },
        (Some(k), None) => Sampling::TopK { k, temperature },
        (None, Some(p)) => Sampling::TopP { p, temperature },
        (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
    }
}

/// The prefill and decode times of `tokens` tokens, the first of which took `prefill_ms` of
/// `total_ms`; the decode rate counts the tokens after the first.
fn timings(prefill_ms: f64, total_ms: f64, tokens: usize) -> GenerationTimings {
    let decode_ms = total_ms - prefill_ms;
    let decode_tokens_per_s = if tokens > 1 && decode_ms > 0.0 {
        (tokens - 1) as f64 / (decode_ms / 1000.0)
    } else {
        0.0
    };
    GenerationTimings {
        prefill_ms,
        decode_ms,
        decode_tokens_per_s,
    }
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_breaks_exact_ties_towards_the_lowest_id_as_torch_does() {
        let argmax_of = |values: &[f32]| argmax(&Tensor::new(values, &Device::Cpu).unwrap());
        assert_eq!(argmax_of(&[1.0, 3.0, 3.0, 2.0]).unwrap(), 1);
        assert_eq!(argmax_of(&[0.5; 7]).unwrap(), 0);
        assert_eq!(argmax_of(&[-1.0, -2.0, -1.0]).unwrap(), 0);
        assert_eq!(argmax_of(&[f32::NEG_INFINITY, 2.0, 2.0]).unwrap(), 1);
    }

    #[test]
    fn the_decode_rate_counts_the_tokens_after_the_first() {
        let t = timings(40.0, 240.0, 11);
        assert_eq!((t.prefill_ms, t.decode_ms), (40.0, 200.0));
        assert_eq!(t.decode_tokens_per_s, 50.0);
        // One token is all prefill; no time is no rate.
        assert_eq!(timings(40.0, 40.0, 1).decode_tokens_per_s, 0.0);
        assert_eq!(timings(40.0, 40.0, 2).decode_tokens_per_s, 0.0);
        assert_eq!(timings(40.0, 41.0, 1).decode_tokens_per_s, 0.0);
    }
}
