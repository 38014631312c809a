//! Trials: the cross product of the cases for the backends, dtypes and transport a run
//! selects.

use llm_worker_rbee_api::{Backend, Dtype};

use crate::cases::{Cases, PromptCase, Seed};

/// How trials reach the worker: the library in this process, or a `llm-worker-rbee serve`
/// process per model over HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    #[default]
    Library,
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Library => "library",
            Transport::Http => "http",
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
            other => Err(format!("unknown transport `{other}` (library or http)")),
        }
    }
}

/// The backends and dtypes a run covers: `CONFORMANCE_BACKENDS` and `CONFORMANCE_DTYPES`
/// (comma-separated), by default `cpu` and `f32`; and the transport, `CONFORMANCE_TRANSPORT`
/// (`library` by default).
#[derive(Clone, Debug)]
pub struct Selection {
    pub backends: Vec<Backend>,
    pub dtypes: Vec<Dtype>,
    pub transport: Transport,
}

impl Selection {
    pub fn from_env() -> Result<Self, String> {
        let transport = match std::env::var("CONFORMANCE_TRANSPORT") {
            Ok(value) => value
                .parse()
                .map_err(|e| format!("CONFORMANCE_TRANSPORT: {e}"))?,
            Err(_) => Transport::Library,
        };
        Ok(Self {
            backends: list("CONFORMANCE_BACKENDS", Backend::Cpu)?,
            dtypes: list("CONFORMANCE_DTYPES", Dtype::F32)?,
            transport,
        })
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

/// One trial: a model, backend, dtype, seed and prompt.
#[derive(Clone, Debug)]
pub struct TrialSpec {
    /// `<model>/<backend>-<dtype>/<seed>/<prompt-id>`.
    pub name: String,
    pub model: String,
    pub backend: Backend,
    pub dtype: Dtype,
    pub transport: Transport,
    pub seed: Seed,
    pub prompt: PromptCase,
}

/// Every trial of `cases` for `models` and the selected backends and dtypes, in a stable order.
pub fn expand(cases: &Cases, selection: &Selection, models: &[String]) -> Vec<TrialSpec> {
    let mut trials = Vec::new();
    for model in models {
        for &backend in &selection.backends {
            for &dtype in &selection.dtypes {
                for &seed in &cases.seeds {
                    for prompt in &cases.prompts {
                        trials.push(TrialSpec {
                            name: format!("{model}/{backend}-{dtype}/{seed}/{}", prompt.id),
                            model: model.clone(),
                            backend,
                            dtype,
                            transport: selection.transport,
                            seed,
                            prompt: prompt.clone(),
                        });
                    }
                }
            }
        }
    }
    trials
}
