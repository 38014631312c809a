//! The baseline: candle-transformers' own module over the same weights, driven by the loop of
//! candle's examples (forward, `LogitsProcessor` argmax, next token), with nothing of the
//! worker around it. It also splits each decode step into the time the host spends issuing
//! the forward pass and the time it then waits for the logits: a step that is mostly issuing is
//! bound by per-kernel overhead, not by memory bandwidth.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{llama, mistral, qwen2};
use serde::{Deserialize, Serialize};

use super::Spread;
use crate::arch::ModuleConfig;
use crate::error::{Error, Result};
use crate::folder::Weights;
use crate::LoadOptions;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineFigures {
    /// The candle-transformers module run.
    pub module: String,
    pub prompt_len: usize,
    pub decode_tokens_per_s: Spread,
    /// Per decode step, the median time inside `forward` (issuing work) ...
    pub issue_ms_per_token: f64,
    /// ... and from then until the next token is on the host.
    pub wait_ms_per_token: f64,
    /// The worker's median decode speed over this one's, at the same prompt length.
    pub worker_relative: f64,
}

/// One of the candle-transformers modules with their caches.
enum Plain {
    Llama(llama::Llama, llama::Cache, llama::Config),
    Mistral(mistral::Model),
    Qwen2(qwen2::ModelForCausalLM),
}

impl Plain {
    fn forward(&mut self, input: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        match self {
            Plain::Llama(model, cache, _) => model.forward(input, offset, cache),
            Plain::Mistral(model) => model.forward(input, offset),
            Plain::Qwen2(model) => model.forward(input, offset),
        }
    }

    fn clear(&mut self, dtype: DType, device: &Device) -> candle_core::Result<()> {
        match self {
            Plain::Llama(_, cache, config) => {
                *cache = llama::Cache::new(true, dtype, config, device)?;
            }
            Plain::Mistral(model) => model.clear_kv_cache(),
            Plain::Qwen2(model) => model.clear_kv_cache(),
        }
        Ok(())
    }
}

/// Runs the baseline, or says which architectures have none (`Ok(None)`).
pub fn run(
    model_dir: &Path,
    load: LoadOptions,
    prompt: &[u32],
    gen: usize,
    reps: usize,
    log: &dyn Fn(&str),
) -> Result<Option<BaselineFigures>> {
    let (arch, folder) = crate::worker::settings(model_dir)?;
    if let Weights::Gguf(_) = folder.weights {
        log("no plain candle baseline for GGUF weights");
        return Ok(None);
    }
    let files = folder.weights.files();
    let device = load.backend.device(load.device)?;
    let dtype = load.dtype.candle();
    let failed = |e: candle_core::Error| Error::weights(model_dir, format!("baseline: {e}"));
    // SAFETY: as the worker's own loading: the files are only read.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &device) }.map_err(failed)?;
    let (mut model, module) = match arch.module() {
        ModuleConfig::Llama(config) => {
            let cache = llama::Cache::new(true, dtype, config, &device).map_err(failed)?;
            let model = llama::Llama::load(vb, config).map_err(failed)?;
            (
                Plain::Llama(model, cache, config.clone()),
                "models::llama::Llama",
            )
        }
        ModuleConfig::Mistral(config) => (
            Plain::Mistral(mistral::Model::new(config, vb).map_err(failed)?),
            "models::mistral::Model",
        ),
        ModuleConfig::Qwen2(config) => (
            Plain::Qwen2(qwen2::ModelForCausalLM::new(config, vb).map_err(failed)?),
            "models::qwen2::ModelForCausalLM",
        ),
        _ => {
            log(&format!(
                "no plain candle baseline for {}: the worker's module for it is its own",
                arch.architecture
            ));
            return Ok(None);
        }
    };

    let mut speeds = Vec::new();
    let (mut issue, mut wait) = (Vec::new(), Vec::new());
    let decode = |model: &mut Plain| -> candle_core::Result<(f64, Vec<(f64, f64)>)> {
        model.clear(dtype, &device)?;
        let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        let mut step = |model: &mut Plain, ids: &[u32], offset: usize| {
            let input = Tensor::new(ids, &device)?.unsqueeze(0)?;
            let started = Instant::now();
            let logits = model.forward(&input, offset)?;
            let issued = started.elapsed().as_secs_f64() * 1000.0;
            let logits = logits.flatten_all()?.to_dtype(DType::F32)?;
            let next = sampler.sample(&logits)?;
            let total = started.elapsed().as_secs_f64() * 1000.0;
            Ok::<_, candle_core::Error>((next, (issued, total - issued)))
        };
        let (mut next, _) = step(model, prompt, 0)?;
        let started = Instant::now();
        let mut steps = Vec::with_capacity(gen);
        for i in 1..gen {
            let (token, split) = step(model, &[next], prompt.len() + i - 1)?;
            next = token;
            steps.push(split);
        }
        Ok(((gen - 1) as f64 / started.elapsed().as_secs_f64(), steps))
    };
    // Not measured, as for the worker.
    let warming = Instant::now();
    loop {
        decode(&mut model).map_err(failed)?;
        if warming.elapsed() >= super::WARMUP {
            break;
        }
    }
    for rep in 1..=reps {
        let (speed, steps) = decode(&mut model).map_err(failed)?;
        log(&format!(
            "plain candle, run {rep}/{reps}: decode {speed:.1} tokens/s"
        ));
        speeds.push(speed);
        issue.extend(steps.iter().map(|s| s.0));
        wait.extend(steps.iter().map(|s| s.1));
    }
    Ok(Some(BaselineFigures {
        module: format!("candle_transformers::{module}"),
        prompt_len: prompt.len(),
        decode_tokens_per_s: Spread::of(&speeds),
        issue_ms_per_token: Spread::of(&issue).median,
        wait_ms_per_token: Spread::of(&wait).median,
        worker_relative: f64::NAN,
    }))
}
