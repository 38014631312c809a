//! Running one trial: the model loaded once and kept for the trials that follow, the requests
//! sent, each check of `checks` applied, and the record written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use llm_worker_rbee::folder::WeightsFormat;
use llm_worker_rbee::{Backend, Dtype, Generation, Request};

use crate::cases::{Cases, Seed, Tolerance};
use crate::checks::llama_cpp::LlamaCppTokens;
use crate::checks::logits::penalized;
use crate::checks::{logprobs, recompute, reference, repeat, sampling, snapshot, source};
use crate::engine::{self, Engine, Logits};
use crate::hash::weights_sha256;
use crate::paths::Paths;
use crate::record::{Differential, Latency, Outcome, TrialRecord};
use crate::reference::Reference;
use crate::trial::{Transport, TrialSpec};

/// A model loaded once per backend, dtype and transport, shared by its trials.
struct Loaded {
    engine: Box<dyn Engine>,
    format: WeightsFormat,
    weights_sha256: String,
    /// The model's context, which context-edge prompts fill.
    context_length: usize,
}

type Slot = Arc<Mutex<Option<Result<Loaded, String>>>>;
type SharedReference = Arc<Result<Option<Reference>, String>>;
type SharedLlamaCpp = Arc<Result<LlamaCppTokens, String>>;

/// Runs trials, loading each model once and keeping it for the trials that follow.
pub struct Suite {
    pub cases: Cases,
    pub paths: Paths,
    workers: Mutex<HashMap<(String, Backend, Dtype, Transport), Slot>>,
    references: Mutex<HashMap<String, SharedReference>>,
    llama_cpp: Mutex<HashMap<PathBuf, SharedLlamaCpp>>,
}

/// How a trial ended before the expected-failure list is applied.
enum Verdict {
    Ignored(String),
    Ran {
        failures: Vec<String>,
        golden_sha256: Option<String>,
        differential: Box<Differential>,
        latency: Option<Latency>,
    },
}

impl Verdict {
    fn failed(message: String) -> Self {
        Verdict::Ran {
            failures: vec![message],
            golden_sha256: None,
            differential: Box::default(),
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
            llama_cpp: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one trial and writes its record.
    pub fn run(&self, spec: &TrialSpec) -> TrialRecord {
        let started = Instant::now();
        let verdict = self.check(spec);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let expected = self.cases.expected_failure(&spec.name, spec.run_engine);
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
                (
                    outcome,
                    message,
                    golden_sha256,
                    Some(*differential),
                    latency,
                )
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

    fn load(&self, dir: &Path, spec: &TrialSpec) -> Result<Loaded, String> {
        let (engine, info) = engine::start(spec, dir, &self.paths)?;
        let weights_sha256 = weights_sha256(&info.checkpoint.files)
            .map_err(|e| format!("cannot hash the weights: {e}"))?;
        Ok(Loaded {
            engine,
            format: info.format,
            weights_sha256,
            context_length: info.context_length,
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

    fn llama_cpp(&self, file: &Path) -> SharedLlamaCpp {
        let mut files = self
            .llama_cpp
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        files
            .entry(file.to_path_buf())
            .or_insert_with(|| Arc::new(LlamaCppTokens::load(file)))
            .clone()
    }

    /// The greedy tokens of the SafeTensors model with a GGUF model's weights (the fixture it
    /// was quantized from, a real GGUF's twin), on the same backend and dtype.
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
        let dir = self.paths.model_dir(source);
        if !dir.is_dir() {
            return Err(format!(
                "the source model `{source}` is not at {} (a fixture: `cargo xtask fixtures`; a \
                 real model: `cargo xtask fetch-models {source}`)",
                dir.display()
            ));
        }
        let slot = self.slot(&source_spec);
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = guard.get_or_insert_with(|| self.load(&dir, &source_spec));
        let loaded = loaded
            .as_mut()
            .map_err(|e| format!("source model `{source}`: {e}"))?;
        loaded
            .engine
            .generate(request)
            .map(|g| g.token_ids)
            .map_err(|e| format!("source model `{source}`: generation failed: {e}"))
    }

    fn request(&self, spec: &TrialSpec, context_length: usize) -> Request {
        let prompt = spec.prompt.prompt(context_length, spec.max_tokens);
        let greedy = Request {
            repeat_penalty: spec.prompt.repeat_penalty,
            ignore_eos: spec.prompt.ignore_eos,
            ..Request::greedy(prompt, spec.max_tokens)
        };
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
        let request = self.request(spec, loaded.context_length);
        let engine = &mut loaded.engine;
        if let Some(expected) = &spec.prompt.refused {
            let failure = match engine.generate(&request) {
                Err(e) if e.contains(expected.as_str()) => None,
                Err(e) => Some(format!("refused, but not with `{expected}`: {e}")),
                Ok(g) => Some(format!(
                    "generated {} tokens; the request must be refused with `{expected}`",
                    g.token_ids.len()
                )),
            };
            return Verdict::Ran {
                failures: failure.into_iter().collect(),
                golden_sha256: None,
                differential: Box::default(),
                latency: None,
            };
        }
        let started = Instant::now();
        let generation = match engine.generate(&request) {
            Ok(g) => g,
            Err(e) => return Verdict::failed(format!("generation failed: {e}")),
        };
        let first_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut failures = Vec::new();
        let mut differential = Box::<Differential>::default();

        let contents = snapshot::contents(spec, &loaded.weights_sha256, &request, &generation);
        let golden_sha256 = match snapshot::check(
            &self.paths.snapshots(),
            &spec.name,
            spec.run_engine,
            &contents,
        ) {
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
        failures.extend(repeat::check(&generation, again));

        if spec.seed.is_greedy() {
            let gguf = loaded.format == WeightsFormat::Gguf;
            let real = self.cases.real.as_ref().and_then(|r| r.model(&spec.model));
            let tolerance = self
                .cases
                .tolerance(spec.backend, spec.dtype, gguf, real.is_some());
            for (what, variant) in sampling::greedy_equivalents(&request) {
                let outcome = engine.generate(&variant);
                failures.extend(sampling::check(&generation, what, outcome));
            }
            let source = match real {
                Some(real) => real.source.as_deref(),
                None => self.cases.models.source_of(&spec.model),
            };
            if let Some(source) = source {
                match self.source_tokens(source, spec, &request) {
                    Ok(tokens) => {
                        let agreement = source::agreement(source, &tokens, &generation.token_ids);
                        let bound = real.and_then(|r| r.source_min_steps.get(&spec.prompt.id));
                        failures.extend(source::check(&agreement, bound.copied()));
                        differential.source_agreement = Some(agreement);
                    }
                    Err(e) => failures.push(e),
                }
            }
            if let Some(file) = real.and_then(|r| r.llama_cpp.as_deref()) {
                let bound = real.and_then(|r| r.llama_cpp_min_steps.get(&spec.prompt.id));
                let file = self.paths.reference().join(file);
                let tokens = self.llama_cpp(&file);
                let agreement = tokens
                    .as_ref()
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|t| t.agreement(&file, &spec.prompt.id, &generation));
                match agreement {
                    Ok(agreement) => {
                        failures.extend(source::check(&agreement, bound.copied()));
                        differential.llama_cpp_agreement = Some(agreement);
                    }
                    Err(e) => failures.push(e),
                }
            }
            let transformers_reference = !gguf && source.is_none();
            let logprob_bound = tolerance.and_then(|t| t.reference_logprobs);
            if let Some(bound) = logprob_bound.filter(|_| transformers_reference) {
                let reference = self.reference(&spec.model);
                if let Err(message) = check_logprobs(
                    engine.as_mut(),
                    &reference,
                    spec,
                    &request,
                    &generation,
                    bound,
                    &mut differential,
                ) {
                    failures.push(message);
                }
            }
            if let Some(logits) = engine.logits() {
                let sampled = real.and_then(|_| self.cases.real.as_ref()?.recompute_steps);
                if let Err(message) = check_recompute(
                    logits,
                    &generation,
                    request.repeat_penalty,
                    tolerance,
                    sampled,
                    &mut differential,
                ) {
                    failures.push(message);
                }
                if let Some(tolerance) = tolerance.filter(|_| transformers_reference) {
                    let reference = self.reference(&spec.model);
                    if let Err(message) = self.check_reference(
                        logits,
                        &reference,
                        spec,
                        &generation,
                        &tolerance,
                        &mut differential,
                    ) {
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

    /// The worker's logits teacher-forced on the reference's tokens, compared with its logits.
    fn check_reference(
        &self,
        logits: &mut dyn Logits,
        reference: &Result<Option<Reference>, String>,
        spec: &TrialSpec,
        generation: &Generation,
        tolerance: &Tolerance,
        differential: &mut Differential,
    ) -> Result<(), String> {
        let (expected, reference_logits) = reference::expected(
            reference,
            &spec.model,
            &spec.prompt.id,
            spec.max_tokens,
            generation,
        )?;
        let forced = &expected.token_ids;
        let mut ours = logits
            .step_logits(
                &expected.prompt_ids,
                &forced[..forced.len().saturating_sub(1)],
            )
            .map_err(|e| format!("teacher-forced logits: {e}"))?;
        // The reference keeps the model's logits; its tokens were chosen after the penalty.
        let mut reference_logits = reference_logits;
        if let Some(penalty) = spec.prompt.repeat_penalty {
            let prompt = &expected.prompt_ids;
            penalized(&mut ours, prompt, forced, penalty);
            for theirs in reference_logits.iter_mut() {
                penalized(theirs, prompt, forced, penalty);
            }
        }
        reference::compare(
            expected,
            reference_logits.as_deref(),
            &ours,
            generation,
            tolerance,
            differential,
        )
    }
}

/// The request again with `logprobs`: the same tokens, and log-probabilities close to the
/// reference's (`checks::logprobs`).
fn check_logprobs(
    engine: &mut dyn Engine,
    reference: &Result<Option<Reference>, String>,
    spec: &TrialSpec,
    request: &Request,
    generation: &Generation,
    bound: f32,
    differential: &mut Differential,
) -> Result<(), String> {
    let (expected, reference_logits) = reference::expected(
        reference,
        &spec.model,
        &spec.prompt.id,
        spec.max_tokens,
        generation,
    )?;
    let Some(mut reference_logits) = reference_logits else {
        // A real model's reference keeps each step's top 5 logits: no log-probabilities.
        return Ok(());
    };
    let with_logprobs = Request {
        logprobs: Some(logprobs::TOP),
        ..request.clone()
    };
    let ours = engine
        .generate(&with_logprobs)
        .map_err(|e| format!("logprobs: generation failed: {e}"))?;
    if ours.token_ids != generation.token_ids {
        return Err(format!(
            "logprobs: asked for log-probabilities, the worker generated {:?}; without, {:?}",
            ours.token_ids, generation.token_ids
        ));
    }
    // The reference keeps the model's logits; the worker's logprobs are after the penalty.
    if let Some(penalty) = request.repeat_penalty {
        penalized(
            &mut reference_logits,
            &expected.prompt_ids,
            &expected.token_ids,
            penalty,
        );
    }
    let closeness = logprobs::compare(&expected.token_ids, &reference_logits, &ours, bound);
    differential.max_reference_logprob_diff = closeness.max_diff;
    closeness.verdict
}

/// The logits of every step decoding with the cache, and recomputed without it; with a repeat
/// penalty, as it leaves them.
fn check_recompute(
    logits: &mut dyn Logits,
    generation: &Generation,
    repeat_penalty: Option<f32>,
    tolerance: Option<Tolerance>,
    sampled: Option<usize>,
    differential: &mut Differential,
) -> Result<(), String> {
    let (prompt, tokens) = (&generation.prompt_ids, &generation.token_ids);
    let mut cached = logits
        .step_logits(prompt, &tokens[..tokens.len() - 1])
        .map_err(|e| format!("cached logits: {e}"))?;
    let mut full = Vec::with_capacity(cached.len());
    for step in recomputed_steps(cached.len(), sampled) {
        let sequence: Vec<u32> = prompt.iter().chain(&tokens[..step]).copied().collect();
        let mut recomputed = vec![logits
            .without_cache(&sequence)
            .map_err(|e| format!("recomputed logits at step {step}: {e}"))?];
        if let Some(penalty) = repeat_penalty {
            penalized(&mut recomputed, &sequence, &[], penalty);
        }
        full.push((step, recomputed.remove(0)));
    }
    if let Some(penalty) = repeat_penalty {
        penalized(&mut cached, prompt, tokens, penalty);
    }
    let (figures, verdict) = recompute::check(tokens, &cached, &full, tolerance);
    if let Some(figures) = figures {
        differential.max_recompute_logit_diff = Some(figures.max_logit_diff);
        differential.recompute_near_ties = Some(figures.near_ties);
    }
    verdict
}

/// The steps of `steps` to recompute: every one, or `sampled` of them spread evenly, the first
/// and the last among them (the last reads every cached position).
fn recomputed_steps(steps: usize, sampled: Option<usize>) -> Vec<usize> {
    match sampled {
        Some(n) if n >= 2 && n < steps => (0..n).map(|i| i * (steps - 1) / (n - 1)).collect(),
        Some(1) if steps > 0 => vec![steps - 1],
        _ => (0..steps).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::recomputed_steps;

    #[test]
    fn recomputes_every_step_or_a_spread_ending_at_the_last() {
        assert_eq!(recomputed_steps(4, None), [0, 1, 2, 3]);
        assert_eq!(recomputed_steps(32, Some(4)), [0, 10, 20, 31]);
        assert_eq!(recomputed_steps(3, Some(4)), [0, 1, 2]);
        assert_eq!(recomputed_steps(5, Some(1)), [4]);
    }
}
