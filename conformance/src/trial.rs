//! Trials: the cross product of the cases for the backends, dtypes and transport a run
//! selects.

use std::path::{Path, PathBuf};

use llm_worker_rbee_api::{Backend, Dtype, Engine};

use crate::cases::{Cases, PromptCase, Seed};

/// How trials reach the worker: the library in this process, or a `llm-worker-rbee serve`
/// process per model over HTTP, through `/execute` or through OpenAI's API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    #[default]
    Library,
    Http,
    OpenAi,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Library => "library",
            Transport::Http => "http",
            Transport::OpenAi => "openai",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "library" => Ok(Transport::Library),
            "http" => Ok(Transport::Http),
            "openai" => Ok(Transport::OpenAi),
            other => Err(format!(
                "unknown transport `{other}` (library, http or openai)"
            )),
        }
    }
}

/// The backends and dtypes a run covers: `CONFORMANCE_BACKENDS` and `CONFORMANCE_DTYPES`
/// (comma-separated), by default `cpu` and `f32`; the transport, `CONFORMANCE_TRANSPORT`
/// (`library` by default); and the engine, `CONFORMANCE_ENGINE`.
#[derive(Clone, Debug)]
pub struct Selection {
    pub backends: Vec<Backend>,
    pub dtypes: Vec<Dtype>,
    pub transport: Transport,
    /// `candle` runs every model on candle's modules; unset or `fast`, the worker picks its
    /// default: the fast engine for the models it covers on CUDA and the CPU, candle's modules
    /// otherwise.
    pub engine: Option<Engine>,
}

impl Selection {
    pub fn from_env() -> Result<Self, String> {
        let transport = match std::env::var("CONFORMANCE_TRANSPORT") {
            Ok(value) => value
                .parse()
                .map_err(|e| format!("CONFORMANCE_TRANSPORT: {e}"))?,
            Err(_) => Transport::Library,
        };
        let engine = match std::env::var("CONFORMANCE_ENGINE").as_deref() {
            Err(_) | Ok("") => None,
            Ok(name) => Some(
                name.parse::<Engine>()
                    .map_err(|e| format!("CONFORMANCE_ENGINE: {e}"))?,
            ),
        };
        let backends = list("CONFORMANCE_BACKENDS", Backend::Cpu)?;
        if engine == Some(Engine::Fast) && backends.contains(&Backend::Metal) {
            return Err(
                "CONFORMANCE_ENGINE: the fast engine runs on the cuda and cpu backends only; \
                 leave it unset or say `candle` for metal"
                    .into(),
            );
        }
        Ok(Self {
            backends,
            dtypes: list("CONFORMANCE_DTYPES", Dtype::F32)?,
            transport,
            engine,
        })
    }

    /// The engine a run on `backend` names: the one asked for, else the backend's default.
    pub fn run_engine(&self, backend: Backend) -> Engine {
        self.engine.unwrap_or(Engine::default_for(backend))
    }

    /// The engine to load a model with: candle's when asked for; else the worker's default,
    /// so that `fast` still runs the architectures it does not cover on candle's modules.
    pub fn load_engine(&self) -> Option<Engine> {
        self.engine.filter(|e| *e == Engine::Candle)
    }
}

fn list<T: std::str::FromStr<Err = String>>(var: &str, default: T) -> Result<Vec<T>, String> {
    match std::env::var(var) {
        Err(_) => Ok(vec![default]),
        Ok(value) => value
            .split(',')
            .map(|item| item.trim().parse().map_err(|e| format!("{var}: {e}")))
            .collect(),
    }
}

/// The file of the golden snapshot `name` (a trial's name, or an engine's own golden's) in `dir`.
pub fn snapshot_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.snap", name.replace('/', "__")))
}

/// The name of the golden an engine keeps of its own for trial `name`
/// (`<model>/<backend>-<dtype>-<engine>/<seed>/<prompt>`), for the trials where its arithmetic
/// picks other tokens than the shared golden holds: the CUDA fast engine's, whose fused kernels
/// round bf16 and f16 less often than candle's modules. candle's modules keep the shared goldens,
/// and so does the CPU fast engine, whose products are candle's bit for bit.
pub fn engine_golden_name(name: &str, engine: Engine) -> Option<String> {
    if engine == Engine::Candle {
        return None;
    }
    let (model, rest) = name.split_once('/')?;
    let (column, rest) = rest.split_once('/')?;
    if !column.starts_with("cuda-") {
        return None;
    }
    Some(format!("{model}/{column}-{engine}/{rest}"))
}

/// The golden that checks trial `name` run on `engine`: the engine's own where it has one, else
/// the shared one.
pub fn golden_file(dir: &Path, name: &str, engine: Engine) -> PathBuf {
    engine_golden_name(name, engine)
        .map(|own| snapshot_file(dir, &own))
        .filter(|own| own.exists())
        .unwrap_or_else(|| snapshot_file(dir, name))
}

/// One trial: a model, backend, dtype, seed and prompt.
#[derive(Clone, Debug)]
pub struct TrialSpec {
    /// `<model>/<backend>-<dtype>/<seed>/<prompt-id>`.
    pub name: String,
    pub model: String,
    pub backend: Backend,
    pub dtype: Dtype,
    pub transport: Transport,
    /// `Some(Engine::Candle)` to force candle's modules; `None` for the worker's default.
    pub engine: Option<Engine>,
    /// The engine the run names (`Selection::run_engine`), whose own goldens apply.
    pub run_engine: Engine,
    pub seed: Seed,
    pub prompt: PromptCase,
    /// Tokens to generate: the real models' count for a real model, else the fixtures'.
    pub max_tokens: usize,
}

/// Every trial of `cases` for `models` and the selected backends and dtypes, in a stable order.
pub fn expand(cases: &Cases, selection: &Selection, models: &[String]) -> Vec<TrialSpec> {
    let mut trials = Vec::new();
    for model in models {
        let real = cases.real.as_ref().filter(|r| r.model(model).is_some());
        let (prompts, max_tokens) = match real {
            Some(real) => (&real.prompts, real.max_tokens),
            None => (&cases.prompts, cases.max_tokens),
        };
        for &backend in &selection.backends {
            for &dtype in &selection.dtypes {
                for &seed in &cases.seeds {
                    for prompt in prompts {
                        trials.push(TrialSpec {
                            name: format!("{model}/{backend}-{dtype}/{seed}/{}", prompt.id),
                            model: model.clone(),
                            backend,
                            dtype,
                            transport: selection.transport,
                            engine: selection.load_engine(),
                            run_engine: selection.run_engine(backend),
                            seed,
                            prompt: prompt.clone(),
                            max_tokens,
                        });
                    }
                }
            }
        }
    }
    trials
}
