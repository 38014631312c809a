//! A model folder read ([`ModelFiles`]), then loaded ([`Worker`]): generation of prepared
//! requests with a fresh KV cache per request.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use crate::backend::{candle_dtype, open_device, Backend, Dtype};
use crate::chat::ChatTemplate;
use crate::checkpoint::CheckpointSummary;
use crate::config::{HfConfig, Rope};
use crate::error::{Error, Result};
use crate::folder::{read_json_object, ModelFolder, Weights, WeightsFormat};
use crate::gguf::format::{GgufArchitecture, Header};
use crate::model::{ArchConfig, Architecture, CausalLm, Dims, ModuleConfig, Window};
use crate::prompter::Prompter;
use crate::request::{
    Generation, GenerationTimings, PreparedRequest, Prompt, Request, StopReason, TokenEvent,
};
use crate::tokens::{IncrementalText, ModelSpecials, TextCodec};
use crate::{arch, gguf, weights};

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
    pub architecture: &'static dyn Architecture,
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

impl ModelInfo {
    /// Reads config (or GGUF metadata), tokenizer and checkpoint headers, without loading any
    /// weights.
    pub fn inspect(model_dir: &Path) -> Result<ModelInfo> {
        ModelFiles::open(model_dir).map(|files| files.info)
    }
}

/// What builds the module over the weights.
enum Module {
    SafeTensors(Box<dyn ModuleConfig>),
    Gguf(&'static dyn GgufArchitecture),
}

/// A model folder read up to, but not including, its weights: its settings, its tokenizer and
/// chat template (read once, shared by everything that prepares requests) and its checkpoint
/// headers. A bad folder fails here, before any weight is read.
pub struct ModelFiles {
    info: ModelInfo,
    arch: ArchConfig,
    module: Module,
    prompter: Arc<Prompter>,
    folder: ModelFolder,
}

impl ModelFiles {
    pub fn open(model_dir: &Path) -> Result<Self> {
        let folder = ModelFolder::open(model_dir)?;
        let (arch, module, specials, unread_keys, checkpoint) = match &folder.weights {
            Weights::Gguf(path) => {
                let header = Header::read(path)?;
                let (arch, gguf) = gguf::parse(&header)?;
                let specials = header.special_tokens()?;
                let (unread, summary) = (header.unread_keys(), header.summary());
                (arch, Module::Gguf(gguf), specials, unread, summary)
            }
            _ => {
                let config = HfConfig::load(&folder.config())?;
                let parsed = arch::parse(&config)?;
                let specials = ModelSpecials {
                    eos_ids: config.token_ids("eos_token_id")?,
                    explicit: None,
                };
                let summary = weights::summarize(&folder)?;
                let module = Module::SafeTensors(parsed.module);
                (
                    parsed.config,
                    module,
                    specials,
                    config.unread_keys(),
                    summary,
                )
            }
        };
        let tokenizer_config = match &folder.tokenizer_config {
            Some(path) => Some((path.as_path(), read_json_object(path)?)),
            None => None,
        };
        let codec = TextCodec::load(
            &folder,
            &specials,
            tokenizer_config.as_ref().map(|(path, map)| (*path, map)),
        )?;
        let chat = match &tokenizer_config {
            Some((path, map)) => ChatTemplate::from_config(path, map)
                .map_or_else(|e| Some(Err(e.to_string())), |t| t.map(Ok)),
            None => None,
        };
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
        let prompter = Prompter::new(
            codec,
            chat,
            info.dims.vocab_size,
            info.context_length,
            &info.window,
            info.architecture.name(),
        );
        Ok(Self {
            info,
            arch,
            module,
            prompter: Arc::new(prompter),
            folder,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// What checks and tokenizes requests for this model; shared with the [`Worker`] loaded
    /// from these files.
    pub fn prompter(&self) -> &Arc<Prompter> {
        &self.prompter
    }

    pub fn folder(&self) -> &ModelFolder {
        &self.folder
    }

    pub fn arch(&self) -> &ArchConfig {
        &self.arch
    }

    /// The settings of the module a SafeTensors checkpoint is built with.
    pub fn module_config(&self) -> Option<&dyn ModuleConfig> {
        match &self.module {
            Module::SafeTensors(module) => Some(module.as_ref()),
            Module::Gguf(_) => None,
        }
    }

    /// Loads the weights onto the device and warms the model up.
    pub fn load(self, options: LoadOptions) -> Result<Worker> {
        let started = Instant::now();
        let device = open_device(options.backend, options.device)?;
        for key in &self.info.unrecognized_config_keys {
            tracing::warn!(
                key = key.as_str(),
                "the model's settings have a key the worker does not know; check that it does \
                 not change the model's math"
            );
        }
        let dtype = candle_dtype(options.dtype);
        let model = match (&self.module, &self.folder.weights) {
            (Module::Gguf(gguf), Weights::Gguf(path)) => gguf::load(path, *gguf, &device, dtype)?,
            (Module::SafeTensors(module), _) => {
                weights::load_model(&self.folder, &self.arch, module.as_ref(), &device, dtype)?
            }
            (Module::Gguf(_), _) => unreachable!("GGUF settings come from a GGUF file"),
        };
        let mut worker = Worker {
            model,
            prompter: self.prompter,
            info: self.info,
            options,
            device,
            load_timings: LoadTimings {
                load_ms: elapsed_ms(started),
                warmup_ms: 0.0,
            },
        };
        let started = Instant::now();
        worker.warm_up()?;
        worker.load_timings.warmup_ms = elapsed_ms(started);
        Ok(worker)
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
    prompter: Arc<Prompter>,
    info: ModelInfo,
    options: LoadOptions,
    device: Device,
    load_timings: LoadTimings,
}

impl Worker {
    pub fn load(model_dir: &Path, options: LoadOptions) -> Result<Self> {
        ModelFiles::open(model_dir)?.load(options)
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
        let (token_ids, text, stop_reason, timings) = outcome?;
        reset?;
        Ok(Generation {
            prompt_ids: request.prompt_ids().to_vec(),
            token_ids,
            text,
            stop_reason,
            timings,
        })
    }

    fn run(
        &mut self,
        prepared: &PreparedRequest,
        on_token: &mut dyn FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<(Vec<u32>, String, StopReason, GenerationTimings)> {
        let Self {
            model,
            prompter,
            device,
            ..
        } = self;
        let (request, prompt_ids) = (prepared.request(), prepared.prompt_ids());
        let codec = prompter.codec();
        let mut sampler = LogitsProcessor::from_sampling(request.seed, sampling(request));
        let mut text = IncrementalText::new(codec);
        let mut token_ids: Vec<u32> = Vec::with_capacity(request.max_tokens);
        let started = Instant::now();
        let mut logits = forward(model.as_mut(), device, prompt_ids, 0)?;
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
            logits = forward(model.as_mut(), device, &[id], prompt_ids.len() + index)?;
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
        forward(self.model.as_mut(), &self.device, ids, offset)
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
