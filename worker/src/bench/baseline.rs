//! The baseline: candle-transformers' own module over the same weights, driven by the loop of
//! candle's examples (forward, `LogitsProcessor` argmax, next token), with nothing of the
//! worker around it. The bench runs it in turns with the worker. It also splits each decode step into the time the host spends issuing
//! the forward pass and the time it then waits for the logits: a step that is mostly issuing is
//! bound by per-kernel overhead, not by memory bandwidth.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{llama, mistral, qwen2};

use crate::arch::{llama as llama_arch, mistral as mistral_arch, qwen2 as qwen2_arch};
use crate::backend::{candle_dtype, open_device};
use crate::error::{Error, Result};
use crate::files::ModelFiles;
use crate::worker::LoadOptions;

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

/// A candle error of the baseline, as an error about the model's folder.
fn failed(model_dir: &Path) -> impl Fn(candle_core::Error) -> Error + Copy + '_ {
    move |e| Error::weights(model_dir, format!("baseline: {e}"))
}

/// candle-transformers' module loaded over a model's weights, ready to decode.
pub struct Baseline {
    model: Plain,
    module: &'static str,
    device: Device,
    dtype: DType,
    model_dir: std::path::PathBuf,
}

impl Baseline {
    /// Loads the module for the model in `model_dir`, or says which architectures have none
    /// (`Ok(None)`).
    pub fn load(model_dir: &Path, load: LoadOptions, log: &dyn Fn(&str)) -> Result<Option<Self>> {
        let model_files = ModelFiles::open(model_dir)?;
        let Some(module) = model_files.module_config() else {
            log("no plain candle baseline for GGUF weights");
            return Ok(None);
        };
        let module = module.as_any();
        let files = model_files.folder().weights.files();
        let device = open_device(load.backend, load.device)?;
        let dtype = candle_dtype(load.dtype);
        let failed = failed(model_dir);
        // SAFETY: as the worker's own loading: the files are only read.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &device) }
            .map_err(failed)?;
        let (model, module) = if let Some(llama_arch::Config(config)) = module.downcast_ref() {
            let cache = llama::Cache::new(true, dtype, config, &device).map_err(failed)?;
            let model = llama::Llama::load(vb, config).map_err(failed)?;
            (
                Plain::Llama(model, cache, config.clone()),
                "models::llama::Llama",
            )
        } else if let Some(config) = module.downcast_ref::<mistral_arch::Config>() {
            (
                Plain::Mistral(mistral::Model::new(&config.module, vb).map_err(failed)?),
                "models::mistral::Model",
            )
        } else if let Some(qwen2_arch::Config(config)) = module.downcast_ref() {
            (
                Plain::Qwen2(qwen2::ModelForCausalLM::new(config, vb).map_err(failed)?),
                "models::qwen2::ModelForCausalLM",
            )
        } else {
            log(&format!(
                "no plain candle baseline for {}: the worker's module for it is its own",
                model_files.info().architecture
            ));
            return Ok(None);
        };
        Ok(Some(Self {
            model,
            module,
            device,
            dtype,
            model_dir: model_dir.to_path_buf(),
        }))
    }

    pub fn module(&self) -> String {
        format!("candle_transformers::{}", self.module)
    }

    /// Decodes `gen` tokens after `prompt` greedily from an empty cache: the decode speed
    /// (tokens after the first per second) and each decode step's (issuing, waiting) in ms.
    pub fn decode(&mut self, prompt: &[u32], gen: usize) -> Result<(f64, Vec<(f64, f64)>)> {
        let Self {
            model,
            device,
            dtype,
            model_dir,
            ..
        } = self;
        let failed = failed(model_dir);
        model.clear(*dtype, device).map_err(failed)?;
        let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        let mut step = |model: &mut Plain, ids: &[u32], offset: usize| {
            let input = Tensor::new(ids, device)?.unsqueeze(0)?;
            let started = Instant::now();
            let logits = model.forward(&input, offset)?;
            let issued = started.elapsed().as_secs_f64() * 1000.0;
            let logits = logits.flatten_all()?.to_dtype(DType::F32)?;
            let next = sampler.sample(&logits)?;
            let total = started.elapsed().as_secs_f64() * 1000.0;
            Ok::<_, candle_core::Error>((next, (issued, total - issued)))
        };
        let (mut next, _) = step(model, prompt, 0).map_err(failed)?;
        let started = Instant::now();
        let mut steps = Vec::with_capacity(gen);
        for i in 1..gen {
            let (token, split) = step(model, &[next], prompt.len() + i - 1).map_err(failed)?;
            next = token;
            steps.push(split);
        }
        Ok(((gen - 1) as f64 / started.elapsed().as_secs_f64(), steps))
    }
}
