//! A loaded model and its tokenizer: generation with a fresh KV cache per request.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use crate::arch::{gguf, ArchConfig, Architecture, Dims, Model, Window};
use crate::backend::{Backend, Dtype};
use crate::config::{HfConfig, Rope};
use crate::error::{Error, Result};
use crate::folder::{ModelFolder, Weights, WeightsFormat};
use crate::generate::{Generation, GenerationTimings, Prompt, Request, StopReason, TokenEvent};
use crate::tokens::{IncrementalText, ModelSpecials, TextCodec};
use crate::weights::{self, CheckpointSummary};

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub backend: Backend,
    /// Device ordinal for `cuda`/`metal`.
    pub device: usize,
    pub dtype: Dtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Cpu,
            device: 0,
            dtype: Dtype::F32,
        }
    }
}

/// What was detected in a model folder; `llm-worker-rbee inspect` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub model_dir: PathBuf,
    /// SafeTensors (settings from config.json) or GGUF (settings from the file's metadata).
    pub format: WeightsFormat,
    pub architecture: Architecture,
    pub dims: Dims,
    /// The longest prompt plus generation the worker runs.
    pub context_length: usize,
    pub window: Window,
    pub rope: Rope,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub tokenizer_vocab_size: usize,
    pub checkpoint: CheckpointSummary,
    /// Keys of config.json that nothing read and that are not known to be harmless; for GGUF,
    /// the keys of the architecture's metadata namespace (`llama.*`, ...) that nothing read.
    pub unrecognized_config_keys: Vec<String>,
}

/// The settings of a model folder and its folder, as the worker reads them (for the plain
/// candle baseline of `bench`).
pub(crate) fn settings(model_dir: &Path) -> Result<(ArchConfig, ModelFolder)> {
    open(model_dir).map(|opened| (opened.arch, opened.folder))
}

impl ModelInfo {
    /// Reads config (or GGUF metadata), tokenizer and checkpoint headers, without loading any
    /// weights.
    pub fn inspect(model_dir: &Path) -> Result<ModelInfo> {
        open(model_dir).map(|opened| opened.info)
    }
}

/// A model folder read up to, but not including, its weights.
struct Opened {
    info: ModelInfo,
    arch: ArchConfig,
    codec: TextCodec,
    folder: ModelFolder,
}

/// What the model's settings say: config.json, or the metadata of a GGUF file.
struct Settings {
    arch: ArchConfig,
    specials: ModelSpecials,
    unread_keys: Vec<String>,
}

fn read_settings(folder: &ModelFolder) -> Result<Settings> {
    if let Weights::Gguf(path) = &folder.weights {
        let header = gguf::Header::read(path)?;
        let arch = gguf::parse(&header)?;
        let specials = header.special_tokens()?;
        return Ok(Settings {
            arch,
            specials,
            unread_keys: header.unread_keys(),
        });
    }
    let config = HfConfig::load(&folder.config())?;
    let arch = ArchConfig::parse(&config)?;
    let specials = ModelSpecials {
        eos_ids: config.token_ids("eos_token_id")?,
        explicit: None,
    };
    Ok(Settings {
        arch,
        specials,
        unread_keys: config.unread_keys(),
    })
}

fn open(model_dir: &Path) -> Result<Opened> {
    let folder = ModelFolder::open(model_dir)?;
    let Settings {
        arch,
        specials,
        unread_keys,
    } = read_settings(&folder)?;
    let codec = TextCodec::load(&folder, &specials)?;
    let checkpoint = weights::summarize(&folder)?;
    let info = ModelInfo {
        model_dir: model_dir.to_path_buf(),
        format: folder.weights.format(),
        architecture: arch.architecture,
        dims: arch.dims.clone(),
        context_length: arch.context_length(),
        window: arch.window.clone(),
        rope: arch.rope.clone(),
        tie_word_embeddings: arch.tie_word_embeddings,
        bos_token_id: codec.bos_id(),
        eos_token_ids: codec.eos_ids().to_vec(),
        tokenizer_vocab_size: codec.vocab_size(),
        checkpoint,
        unrecognized_config_keys: unread_keys,
    };
    Ok(Opened {
        info,
        arch,
        codec,
        folder,
    })
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
    model: Model,
    codec: TextCodec,
    info: ModelInfo,
    options: LoadOptions,
    device: Device,
    load_timings: LoadTimings,
}

impl Worker {
    pub fn load(model_dir: &Path, options: LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let device = options.backend.device(options.device)?;
        let Opened {
            info,
            arch,
            codec,
            folder,
        } = open(model_dir)?;
        for key in &info.unrecognized_config_keys {
            tracing::warn!(
                key = key.as_str(),
                "the model's settings have a key the worker does not know; check that it does \
                 not change the model's math"
            );
        }
        let model = weights::load_model(&folder, &arch, &device, options.dtype.candle())?;
        let load_ms = elapsed_ms(started);
        let mut worker = Self {
            model,
            codec,
            info,
            options,
            device,
            load_timings: LoadTimings {
                load_ms,
                warmup_ms: 0.0,
            },
        };
        let started = Instant::now();
        worker.warm_up()?;
        worker.load_timings.warmup_ms = elapsed_ms(started);
        Ok(worker)
    }

    fn warm_up(&mut self) -> Result<()> {
        if self.info.context_length < 4 {
            return Ok(());
        }
        let mut request = Request::greedy(Prompt::Ids(vec![0, 0]), 2);
        request.ignore_eos = true;
        self.generate(&request, |_| ControlFlow::Continue(()))
            .map(drop)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn load_timings(&self) -> &LoadTimings {
        &self.load_timings
    }

    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }

    /// The prompt's token ids, checked against the vocabulary and the context.
    pub fn prompt_ids(&self, request: &Request) -> Result<Vec<u32>> {
        request.validate()?;
        let (field, ids) = match &request.prompt {
            Prompt::Text(text) => ("prompt", self.codec.encode(text)?),
            Prompt::Ids(ids) => ("prompt_ids", ids.clone()),
        };
        if ids.is_empty() {
            return Err(Error::request(field, "tokenizes to no tokens"));
        }
        let vocab = self.info.dims.vocab_size;
        if let Some(bad) = ids.iter().find(|id| **id as usize >= vocab) {
            return Err(Error::request(
                field,
                format!("token id {bad} is outside the model's vocabulary (0..{vocab})"),
            ));
        }
        let context = self.info.context_length;
        let why = match self.info.window {
            Window::LimitsContext { size } => {
                format!(
                    " (the {size}-token sliding window that candle's {} module cannot apply)",
                    self.info.architecture
                )
            }
            _ => String::new(),
        };
        if ids.len() >= context {
            return Err(Error::request(
                field,
                format!(
                    "is {} tokens; the context is {context} tokens{why}, including at least one \
                     generated token",
                    ids.len()
                ),
            ));
        }
        if ids.len() + request.max_tokens > context {
            return Err(Error::request(
                "max_tokens",
                format!(
                    "is {}, but the prompt has {} tokens and the context is {context}{why}: at \
                     most {} can be generated",
                    request.max_tokens,
                    ids.len(),
                    context - ids.len()
                ),
            ));
        }
        Ok(ids)
    }

    /// Generates tokens for `request`, calling `on_token` for each as soon as it is chosen;
    /// `on_token` returning `Break` cancels the generation. Every request starts from an empty
    /// KV cache, whatever happened to the one before.
    pub fn generate(
        &mut self,
        request: &Request,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let prompt_ids = self.prompt_ids(request)?;
        self.reset_cache()?;
        let outcome = self.run(request, &prompt_ids, &mut on_token);
        // The next request resets too; this only frees the cache's memory now.
        let reset = self.reset_cache();
        let (token_ids, text, stop_reason, timings) = outcome?;
        reset?;
        Ok(Generation {
            prompt_ids,
            token_ids,
            text,
            stop_reason,
            timings,
        })
    }

    fn run(
        &mut self,
        request: &Request,
        prompt_ids: &[u32],
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<(Vec<u32>, String, StopReason, GenerationTimings)> {
        let Self {
            model,
            codec,
            device,
            ..
        } = self;
        let mut sampler = LogitsProcessor::from_sampling(request.seed, sampling(request));
        let mut text = IncrementalText::new(codec);
        let mut token_ids: Vec<u32> = Vec::with_capacity(request.max_tokens);
        let started = Instant::now();
        let mut logits = forward(model, device, prompt_ids, 0)?;
        let mut prefill_ms = 0.0;
        let stop_reason = loop {
            if let Some(penalty) = request.repeat_penalty {
                let context: Vec<u32> = prompt_ids.iter().chain(&token_ids).copied().collect();
                logits =
                    candle_transformers::utils::apply_repeat_penalty(&logits, penalty, &context)?;
            }
            let id = if is_greedy(request) {
                argmax(&logits)?
            } else {
                sampler.sample(&logits)?
            };
            let index = token_ids.len();
            token_ids.push(id);
            if index == 0 {
                prefill_ms = elapsed_ms(started);
            }
            let eos = !request.ignore_eos && codec.eos_ids().contains(&id);
            let full = token_ids.len() == request.max_tokens;
            let piece = text.push(id, eos || full)?;
            if on_token(&TokenEvent {
                index,
                id,
                text: piece,
            })
            .is_break()
            {
                break StopReason::Cancelled;
            }
            if eos {
                break StopReason::Eos;
            }
            if full {
                break StopReason::MaxTokens;
            }
            logits = forward(model, device, &[id], prompt_ids.len() + index)?;
        };
        let total_ms = elapsed_ms(started);
        let decode_ms = total_ms - prefill_ms;
        let decode_tokens_per_s = if token_ids.len() > 1 && decode_ms > 0.0 {
            (token_ids.len() - 1) as f64 / (decode_ms / 1000.0)
        } else {
            0.0
        };
        let timings = GenerationTimings {
            prefill_ms,
            decode_ms,
            decode_tokens_per_s,
        };
        Ok((token_ids, text.text().to_string(), stop_reason, timings))
    }

    fn forward(&mut self, ids: &[u32], offset: usize) -> Result<Tensor> {
        forward(&mut self.model, &self.device, ids, offset)
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

/// Runs `ids` at positions from `offset` and returns the last position's logits.
fn forward(model: &mut Model, device: &Device, ids: &[u32], offset: usize) -> Result<Tensor> {
    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
    Ok(model.forward(&input, offset)?)
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

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
