//! Trials: the cross product of the cases, and running one.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use llm_worker_rbee::folder::WeightsFormat;
use llm_worker_rbee::{
    Backend, Dtype, Generation, LoadOptions, ModelInfo, Request, StopReason, Worker,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cases::{Cases, PromptCase, Seed, Tolerance};
use crate::http::HttpWorker;
use crate::reference::Reference;
use crate::report::{Differential, Latency, Outcome, SourceAgreement, TrialRecord};
use crate::Paths;

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

/// What a trial's golden snapshot holds. Never timings.
#[derive(Serialize)]
struct TrialSnapshot<'a> {
    model: &'a str,
    weights_sha256: &'a str,
    backend: Backend,
    dtype: Dtype,
    seed: String,
    sampling: SnapshotSampling,
    prompt: SnapshotPrompt<'a>,
    token_ids: &'a [u32],
    text: &'a str,
    stop_reason: StopReason,
}

#[derive(Serialize)]
struct SnapshotSampling {
    temperature: f64,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
}

#[derive(Serialize)]
struct SnapshotPrompt<'a> {
    id: &'a str,
    text: Option<&'a str>,
    ids: &'a [u32],
}

/// What runs a model's requests: the library, or a server over HTTP.
enum Engine {
    Library(Box<Worker>),
    Http(HttpWorker),
}

impl Engine {
    fn generate(&mut self, request: &Request) -> Result<Generation, String> {
        match self {
            Engine::Library(worker) => worker
                .generate(request, |_| ControlFlow::Continue(()))
                .map_err(|e| e.to_string()),
            Engine::Http(server) => server.generate(request),
        }
    }

    /// The worker itself, for the checks that need logits; not over HTTP.
    fn worker(&mut self) -> Option<&mut Worker> {
        match self {
            Engine::Library(worker) => Some(worker),
            Engine::Http(_) => None,
        }
    }
}

/// A model loaded once per backend, dtype and transport, shared by its trials.
struct Loaded {
    engine: Engine,
    format: WeightsFormat,
    weights_sha256: String,
}

type Slot = Arc<Mutex<Option<Result<Loaded, String>>>>;
type SharedReference = Arc<Result<Option<Reference>, String>>;

/// Runs trials, loading each model once and keeping it for the trials that follow.
pub struct Suite {
    pub cases: Cases,
    pub paths: Paths,
    workers: Mutex<HashMap<(String, Backend, Dtype, Transport), Slot>>,
    references: Mutex<HashMap<String, SharedReference>>,
}

/// How a trial ended before the expected-failure list is applied.
enum Verdict {
    Ignored(String),
    Ran {
        failures: Vec<String>,
        golden_sha256: Option<String>,
        differential: Differential,
        latency: Option<Latency>,
    },
}

impl Verdict {
    fn failed(message: String) -> Self {
        Verdict::Ran {
            failures: vec![message],
            golden_sha256: None,
            differential: Differential::default(),
            latency: None,
        }
    }
}

impl Suite {
    pub fn new(cases: Cases, paths: Paths) -> Self {
        Self {
            cases,
            paths,
            workers: Mutex::new(HashMap::new()),
            references: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one trial and writes its record.
    pub fn run(&self, spec: &TrialSpec) -> TrialRecord {
        let started = Instant::now();
        let verdict = self.check(spec);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let expected = self.cases.expected_failure(&spec.name);
        let (outcome, message, golden_sha256, differential, latency) = match verdict {
            Verdict::Ignored(reason) => (Outcome::Ignored, Some(reason), None, None, None),
            Verdict::Ran {
                failures,
                golden_sha256,
                differential,
                latency,
            } => {
                let (outcome, message) = match (failures.is_empty(), expected) {
                    (true, None) => (Outcome::Passed, None),
                    (false, None) => (Outcome::Failed, Some(failures.join("\n\n"))),
                    (false, Some(e)) => (
                        Outcome::ExpectedFailure,
                        Some(format!(
                            "expected failure ({}): {}",
                            e.reason,
                            failures.join("\n\n")
                        )),
                    ),
                    (true, Some(e)) => (
                        Outcome::Failed,
                        Some(format!(
                            "passed, but cases.toml lists it as an expected failure ({}); \
                             remove the entry `{}`",
                            e.reason, e.trials
                        )),
                    ),
                };
                (outcome, message, golden_sha256, Some(differential), latency)
            }
        };
        let record = TrialRecord {
            name: spec.name.clone(),
            model: spec.model.clone(),
            backend: spec.backend,
            dtype: spec.dtype,
            seed: spec.seed.to_string(),
            prompt: spec.prompt.id.clone(),
            outcome,
            duration_ms,
            message,
            golden_sha256,
            differential,
            latency,
        };
        if let Err(e) = record.write(&self.paths.records) {
            eprintln!("cannot write the record of {}: {e}", spec.name);
        }
        record
    }

    fn check(&self, spec: &TrialSpec) -> Verdict {
        let dir = self.paths.model_dir(&spec.model);
        if !dir.is_dir() {
            return Verdict::Ignored(format!(
                "model `{}` is not present in {} (run `cargo xtask fixtures`)",
                spec.model,
                dir.display()
            ));
        }
        let slot = self.slot(spec);
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = guard.get_or_insert_with(|| self.load(&dir, spec));
        match loaded {
            Ok(loaded) => self.check_loaded(spec, loaded),
            Err(e) => Verdict::failed(e.clone()),
        }
    }

    /// Loads the model of `spec` in `dir`: into this process, or into a server of its own.
    fn load(&self, dir: &Path, spec: &TrialSpec) -> Result<Loaded, String> {
        let (engine, info) = match spec.transport {
            Transport::Library => {
                let options = LoadOptions {
                    backend: spec.backend,
                    device: 0,
                    dtype: spec.dtype,
                };
                let worker = Worker::load(dir, options)
                    .map_err(|e| format!("cannot load the model: {e}"))?;
                let info = worker.info().clone();
                (Engine::Library(Box::new(worker)), info)
            }
            Transport::Http => {
                let binary = self.paths.worker_binary.as_ref().ok_or(
                    "the http transport needs the worker binary in CONFORMANCE_WORKER \
                     (`cargo xtask test --via http` builds it)",
                )?;
                let info =
                    ModelInfo::inspect(dir).map_err(|e| format!("cannot read the model: {e}"))?;
                let server = HttpWorker::start(binary, dir, spec.backend, spec.dtype)?;
                (Engine::Http(server), info)
            }
        };
        let weights_sha256 = weights_sha256(&info.checkpoint.files)
            .map_err(|e| format!("cannot hash the weights: {e}"))?;
        Ok(Loaded {
            engine,
            format: info.format,
            weights_sha256,
        })
    }

    fn slot(&self, spec: &TrialSpec) -> Slot {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers
            .entry((spec.model.clone(), spec.backend, spec.dtype, spec.transport))
            .or_default()
            .clone()
    }

    fn reference(&self, model: &str) -> SharedReference {
        let mut references = self
            .references
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        references
            .entry(model.to_string())
            .or_insert_with(|| {
                Arc::new(Reference::load(&self.paths.reference(), model).map_err(|e| e.to_string()))
            })
            .clone()
    }

    /// The greedy tokens of the SafeTensors fixture a GGUF fixture was quantized from, on the
    /// same backend and dtype.
    fn source_tokens(
        &self,
        source: &str,
        spec: &TrialSpec,
        request: &Request,
    ) -> Result<Vec<u32>, String> {
        let source_spec = TrialSpec {
            model: source.to_string(),
            ..spec.clone()
        };
        let slot = self.slot(&source_spec);
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = self.paths.model_dir(source);
        let loaded = guard.get_or_insert_with(|| self.load(&dir, &source_spec));
        let loaded = loaded
            .as_mut()
            .map_err(|e| format!("source fixture `{source}`: {e}"))?;
        loaded
            .engine
            .generate(request)
            .map(|g| g.token_ids)
            .map_err(|e| format!("source fixture `{source}`: generation failed: {e}"))
    }

    fn request(&self, spec: &TrialSpec) -> Request {
        let greedy = Request::greedy(spec.prompt.prompt(), self.cases.max_tokens);
        match spec.seed {
            Seed::Sampled(seed) => Request {
                temperature: self.cases.sampling.temperature,
                top_p: self.cases.sampling.top_p,
                top_k: self.cases.sampling.top_k,
                seed,
                ..greedy
            },
            Seed::Label(_) => greedy,
        }
    }

    fn check_loaded(&self, spec: &TrialSpec, loaded: &mut Loaded) -> Verdict {
        let request = self.request(spec);
        let engine = &mut loaded.engine;
        let started = Instant::now();
        let generation = match engine.generate(&request) {
            Ok(g) => g,
            Err(e) => return Verdict::failed(format!("generation failed: {e}")),
        };
        let first_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut failures = Vec::new();
        let mut differential = Differential::default();

        let snapshot = TrialSnapshot {
            model: &spec.model,
            weights_sha256: &loaded.weights_sha256,
            backend: spec.backend,
            dtype: spec.dtype,
            seed: spec.seed.to_string(),
            sampling: SnapshotSampling {
                temperature: request.temperature,
                top_p: request.top_p,
                top_k: request.top_k,
                seed: match spec.seed {
                    Seed::Sampled(seed) => Some(seed),
                    Seed::Label(_) => None,
                },
            },
            prompt: SnapshotPrompt {
                id: &spec.prompt.id,
                text: spec.prompt.text.as_deref(),
                ids: &generation.prompt_ids,
            },
            token_ids: &generation.token_ids,
            text: &generation.text,
            stop_reason: generation.stop_reason,
        };
        let contents = serde_json::to_string_pretty(&snapshot).expect("snapshots serialize");
        let golden_sha256 = match check_snapshot(&self.paths.snapshots(), &spec.name, &contents) {
            Ok(sha) => Some(sha),
            Err(message) => {
                failures.push(message);
                None
            }
        };

        let started = Instant::now();
        let again = engine.generate(&request);
        let latency = Latency {
            first_ms,
            repeat_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        match again {
            Ok(again)
                if again.token_ids == generation.token_ids && again.text == generation.text => {}
            Ok(again) => failures.push(format!(
                "the same request again gave other tokens: {:?}, first {:?}",
                again.token_ids, generation.token_ids
            )),
            Err(e) => failures.push(format!("the same request again failed: {e}")),
        }

        if spec.seed.is_greedy() {
            let gguf = loaded.format == WeightsFormat::Gguf;
            let tolerance = self.cases.tolerance(spec.backend, spec.dtype, gguf);
            failures.extend(greedy_equivalents(engine, &request, &generation));
            if let Some(source) = self.cases.models.source_of(&spec.model) {
                match self.source_tokens(source, spec, &request) {
                    Ok(tokens) => {
                        differential.source_agreement =
                            Some(SourceAgreement::of(source, &tokens, &generation.token_ids))
                    }
                    Err(e) => failures.push(e),
                }
            }
            // Logits are the library's alone: over HTTP, the goldens (reviewed against the
            // reference) and the sampling checks are what a client is held to.
            if let Some(worker) = engine.worker() {
                if let Err(message) = recompute(worker, &generation, tolerance, &mut differential) {
                    failures.push(message);
                }
                let transformers_reference =
                    !gguf && self.cases.models.source_of(&spec.model).is_none();
                if let Some(tolerance) = tolerance.filter(|_| transformers_reference) {
                    let reference = self.reference(&spec.model);
                    let check = ReferenceCheck {
                        reference: &reference,
                        max_tokens: self.cases.max_tokens,
                        tolerance,
                    };
                    if let Err(message) =
                        check.compare(worker, spec, &generation, &mut differential)
                    {
                        failures.push(message);
                    }
                }
            }
        }
        Verdict::Ran {
            failures,
            golden_sha256,
            differential,
            latency: Some(latency),
        }
    }
}

/// The sha256 of a single weight file, or of the `sha256sum` listing of several.
fn weights_sha256(files: &[PathBuf]) -> std::io::Result<String> {
    let digests = files
        .iter()
        .map(|path| {
            let mut hasher = Sha256::new();
            std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            Ok((hex(&hasher.finalize()), name.into_owned()))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(match digests.as_slice() {
        [(digest, _)] => digest.clone(),
        _ => {
            let listing: String = digests.iter().map(|(d, n)| format!("{d}  {n}\n")).collect();
            hex(&Sha256::digest(listing.as_bytes()))
        }
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The golden snapshot of `name` must equal `contents`. Returns the sha256 of the golden file.
/// insta decides (and writes `.snap.new` files for review, except in CI); the message carries
/// the diff so that reports show it too.
fn check_snapshot(dir: &Path, name: &str, contents: &str) -> Result<String, String> {
    let path = dir.join(format!("{}.snap", name.replace('/', "__")));
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let asserted = catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name, contents))
    }));
    if asserted.is_ok() {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(hex(&Sha256::digest(&bytes)));
    }
    let golden = insta::Snapshot::from_file(&path)
        .ok()
        .and_then(|s| s.as_text().map(|t| t.to_string()));
    Err(match golden {
        None => format!(
            "no golden snapshot {} yet; review the new one with `cargo xtask snapshots`",
            path.display()
        ),
        Some(golden) => {
            let (golden, contents) = (
                format!("{}\n", golden.trim_end()),
                format!("{}\n", contents.trim_end()),
            );
            let diff = similar::TextDiff::from_lines(&golden, &contents)
                .unified_diff()
                .context_radius(3)
                .header("golden", "this run")
                .to_string();
            format!(
                "the result differs from golden snapshot {}:\n{diff}",
                path.display()
            )
        }
    })
}

/// top_k = 1 and a tiny top_p leave only the greedy token, whatever the temperature and seed.
fn greedy_equivalents(
    engine: &mut Engine,
    greedy: &Request,
    generation: &Generation,
) -> Vec<String> {
    let variants = [
        (
            "top_k 1",
            Request {
                temperature: 0.8,
                top_k: Some(1),
                seed: 11,
                ..greedy.clone()
            },
        ),
        (
            "top_p 1e-6",
            Request {
                temperature: 0.8,
                top_p: Some(1e-6),
                seed: 12,
                ..greedy.clone()
            },
        ),
    ];
    variants
        .into_iter()
        .filter_map(|(what, request)| match engine.generate(&request) {
            Ok(g) if g.token_ids == generation.token_ids => None,
            Ok(g) => Some(format!(
                "{what} gave {:?}, greedy gave {:?}",
                g.token_ids, generation.token_ids
            )),
            Err(e) => Some(format!("{what} failed: {e}")),
        })
        .collect()
}

/// Decoding with the cache must pick the tokens a full recompute picks (or, where the tolerance
/// allows near ties, differ only at one), with logits within the tolerance when one is set.
fn recompute(
    worker: &mut Worker,
    generation: &Generation,
    tolerance: Option<Tolerance>,
    differential: &mut Differential,
) -> Result<(), String> {
    let tokens = &generation.token_ids;
    let cached = worker
        .step_logits(&generation.prompt_ids, &tokens[..tokens.len() - 1])
        .map_err(|e| format!("cached logits: {e}"))?;
    let mut max_diff = 0.0f32;
    let mut near_ties = 0;
    for (step, logits) in cached.iter().enumerate() {
        let sequence: Vec<u32> = generation
            .prompt_ids
            .iter()
            .chain(&tokens[..step])
            .copied()
            .collect();
        let full = worker
            .logits_without_cache(&sequence)
            .map_err(|e| format!("recomputed logits at step {step}: {e}"))?;
        let recomputed = argmax(&full) as u32;
        if recomputed != tokens[step] {
            let margin = near_tie(logits, &full, tokens[step], recomputed);
            let bound = tolerance.and_then(|t| t.near_tie_margin);
            match (margin, bound) {
                (Some(margin), Some(bound)) if margin <= bound => near_ties += 1,
                _ => {
                    return Err(format!(
                        "step {step}: decoding with the cache chose {}, a full recompute chooses \
                         {recomputed} (near-tie margin {margin:?}, allowed {bound:?})",
                        tokens[step]
                    ))
                }
            }
        }
        max_diff = max_diff.max(max_abs_diff(logits, &full));
    }
    differential.max_recompute_logit_diff = Some(max_diff);
    differential.recompute_near_ties = Some(near_ties);
    match tolerance {
        Some(t) if max_diff > t.recompute_logits => Err(format!(
            "logits with the cache differ from a full recompute by {max_diff:e} (tolerance {:e})",
            t.recompute_logits
        )),
        _ => Ok(()),
    }
}

/// Greedy tokens must equal transformers' (or leave them only at a near tie, where the tolerance
/// allows it), and the logits teacher-forced on its tokens must be within the tolerance.
struct ReferenceCheck<'a> {
    reference: &'a Result<Option<Reference>, String>,
    max_tokens: usize,
    tolerance: Tolerance,
}

impl ReferenceCheck<'_> {
    fn compare(
        &self,
        worker: &mut Worker,
        spec: &TrialSpec,
        generation: &Generation,
        differential: &mut Differential,
    ) -> Result<(), String> {
        let regenerate =
            "regenerate it with `cargo xtask reference` (a fetched model: `--model ID`)";
        let reference = match self.reference {
            Err(e) => return Err(format!("the reference cannot be read: {e}")),
            Ok(None) => {
                return Err(format!(
                    "no reference for `{}` in golden/reference: {regenerate}",
                    spec.model
                ))
            }
            Ok(Some(r)) => r,
        };
        if reference.max_tokens != self.max_tokens {
            return Err(format!(
                "the reference decoded {} tokens, cases.toml asks for {}: {regenerate}",
                reference.max_tokens, self.max_tokens
            ));
        }
        let (Some(expected), Some(logits)) = (
            reference.prompts.get(&spec.prompt.id),
            reference.logits(&spec.prompt.id),
        ) else {
            return Err(format!(
                "the reference has no prompt `{}`: {regenerate}",
                spec.prompt.id
            ));
        };
        if expected.prompt_ids != generation.prompt_ids {
            return Err(format!(
                "prompt ids {:?} differ from the reference's {:?}",
                generation.prompt_ids, expected.prompt_ids
            ));
        }
        let forced = &expected.token_ids;
        let ours = worker
            .step_logits(
                &expected.prompt_ids,
                &forced[..forced.len().saturating_sub(1)],
            )
            .map_err(|e| format!("teacher-forced logits: {e}"))?;
        let max_diff = ours
            .iter()
            .zip(&logits)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0.0f32, f32::max);
        let max_nmse = ours
            .iter()
            .zip(&logits)
            .map(|(a, b)| nmse(a, b))
            .fold(0.0f32, f32::max);
        differential.max_reference_logit_diff = Some(max_diff);
        differential.max_reference_nmse = Some(max_nmse);

        let mut failures = Vec::new();
        let divergence = generation
            .token_ids
            .iter()
            .zip(forced)
            .position(|(a, b)| a != b);
        differential.reference_tokens_equal =
            Some(divergence.is_none() && generation.token_ids.len() == forced.len());
        if let Some(step) = divergence {
            let tie = near_tie(
                &ours[step],
                &logits[step],
                generation.token_ids[step],
                forced[step],
            );
            differential.first_divergence = Some(step);
            differential.divergence_margin = tie;
            differential.near_tie = Some(tie.is_some_and(|margin| {
                self.tolerance
                    .near_tie_margin
                    .is_some_and(|bound| margin <= bound)
            }));
            let what = format!(
                "tokens leave the reference's at step {step} ({} instead of {}{})",
                generation.token_ids[step],
                forced[step],
                match tie {
                    Some(margin) => format!(", both in each other's top 5, margin {margin:e}"),
                    None => ", not both in each other's top 5".into(),
                }
            );
            match self.tolerance.near_tie_margin {
                None => failures.push(format!("{what}; they must equal")),
                Some(bound) if differential.near_tie != Some(true) => failures.push(format!(
                    "{what}; a near tie needs a margin of at most {bound:e}"
                )),
                Some(_) => {}
            }
        } else if generation.token_ids.len() != forced.len() {
            failures.push(format!(
                "{} tokens where the reference has {}",
                generation.token_ids.len(),
                forced.len()
            ));
        }
        if let Some(bound) = self.tolerance.reference_logits.filter(|b| max_diff > *b) {
            failures.push(format!(
                "teacher-forced logits differ from the reference by {max_diff:e} (tolerance {bound:e})"
            ));
        }
        if let Some(bound) = self.tolerance.reference_nmse.filter(|b| max_nmse > *b) {
            failures.push(format!(
                "teacher-forced logits have a normalized MSE of {max_nmse:e} against the reference \
                 (tolerance {bound:e})"
            ));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

/// When `ours_token` (our argmax) and `reference_token` (the reference's) are each in the other
/// side's top 5, the larger of the two sides' preference for its own token; else `None`.
fn near_tie(ours: &[f32], reference: &[f32], ours_token: u32, reference_token: u32) -> Option<f32> {
    let (o, r) = (ours_token as usize, reference_token as usize);
    let in_top5 =
        |logits: &[f32], token: usize| logits.iter().filter(|v| **v > logits[token]).count() < 5;
    if o >= ours.len() || r >= ours.len() || o >= reference.len() || r >= reference.len() {
        return None;
    }
    (in_top5(ours, r) && in_top5(reference, o))
        .then(|| (ours[o] - ours[r]).max(reference[r] - reference[o]))
}

/// Normalized mean squared error: the squared differences summed, over the squared reference
/// values summed.
fn nmse(ours: &[f32], reference: &[f32]) -> f32 {
    if ours.len() != reference.len() {
        return f32::INFINITY;
    }
    let error: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let scale: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
    (error / scale.max(f64::MIN_POSITIVE)) as f32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The lowest index of the largest value, as the worker's greedy decoding picks.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_tie_needs_both_tokens_in_each_others_top_five() {
        let ours = [5.0, 4.9, 1.0, 0.0, -1.0, -2.0, -3.0];
        let reference = [4.95, 5.0, 1.0, 0.0, -1.0, -2.0, -3.0];
        let margin = near_tie(&ours, &reference, 0, 1).unwrap();
        assert!((margin - 0.1).abs() < 1e-6, "{margin}");
        // Token 6 is last in both: not a near tie.
        let far = [5.0, 4.9, 1.0, 0.0, -1.0, -2.0, 6.0];
        assert_eq!(near_tie(&far, &reference, 6, 1), None);
    }

    #[test]
    fn nmse_is_relative_to_the_reference_scale() {
        assert_eq!(nmse(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((nmse(&[1.1, 2.0], &[1.0, 2.0]) - 0.01 / 5.0).abs() < 1e-7);
        assert_eq!(nmse(&[1.0], &[1.0, 2.0]), f32::INFINITY);
    }
}
