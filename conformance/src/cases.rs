//! `conformance/cases.toml`: the cases as data.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use llm_worker_rbee_api::{Backend, Dtype, Engine, Message, Prompt};
use serde::Deserialize;

use crate::error::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// Tokens generated per trial.
    pub max_tokens: usize,
    pub backends: Vec<Backend>,
    pub dtypes: Vec<Dtype>,
    pub seeds: Vec<Seed>,
    pub sampling: Sampling,
    pub models: Models,
    pub prompts: Vec<PromptCase>,
    /// Real trained models, with prompts of their own.
    #[serde(default)]
    pub real: Option<Real>,
    #[serde(default)]
    pub tolerances: BTreeMap<String, Tolerance>,
    #[serde(default)]
    pub expected_failures: Vec<ExpectedFailure>,
}

/// `greedy`, or the seed of a sampled trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Seed {
    Sampled(u64),
    Label(SeedLabel),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedLabel {
    Greedy,
}

impl Seed {
    pub const GREEDY: Seed = Seed::Label(SeedLabel::Greedy);

    pub fn is_greedy(self) -> bool {
        self == Self::GREEDY
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Sampled(seed) => write!(f, "{seed}"),
            Seed::Label(SeedLabel::Greedy) => f.write_str("greedy"),
        }
    }
}

/// Sampling parameters of the numbered seeds.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// SafeTensors fixture ids of `cargo xtask fixtures`; each has a transformers reference.
    pub fixtures: Vec<String>,
    /// GGUF fixture ids of `cargo xtask fixtures`, each quantized from a SafeTensors fixture.
    #[serde(default)]
    pub gguf: Vec<GgufFixture>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GgufFixture {
    pub id: String,
    /// The SafeTensors fixture it was quantized from; its greedy tokens are compared with it.
    pub source: String,
}

impl Models {
    /// Every fixture: SafeTensors first, then GGUF.
    pub fn ids(&self) -> Vec<String> {
        let gguf = self.gguf.iter().map(|g| g.id.clone());
        self.fixtures.iter().cloned().chain(gguf).collect()
    }

    /// The SafeTensors fixture `id` was quantized from, for a GGUF fixture.
    pub fn source_of(&self, id: &str) -> Option<&str> {
        self.gguf
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.source.as_str())
    }
}

/// Real trained models of conformance/models.toml (fetched by `cargo xtask fetch-models`), run
/// with `cargo xtask test --model ID`: their own prompts and token count, the fixtures' seeds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Real {
    pub max_tokens: usize,
    /// Greedy steps at which decoding with the cache is checked against a full recompute,
    /// spread evenly from the first to the last; every step when absent.
    pub recompute_steps: Option<usize>,
    pub models: Vec<RealModel>,
    pub prompts: Vec<PromptCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealModel {
    pub id: String,
    /// The SafeTensors model holding the same weights: its greedy tokens are compared with this
    /// one's. Without it, the model has a transformers reference (golden/reference/<id>.json).
    pub source: Option<String>,
    /// llama.cpp's greedy tokens on this GGUF (a file of golden/reference/).
    pub llama_cpp: Option<String>,
    /// Per prompt, the fewest leading greedy steps that must equal llama.cpp's.
    #[serde(default)]
    pub llama_cpp_min_steps: BTreeMap<String, usize>,
    /// Per prompt, the fewest leading greedy steps that must equal the source's.
    #[serde(default)]
    pub source_min_steps: BTreeMap<String, usize>,
}

impl Real {
    pub fn model(&self, id: &str) -> Option<&RealModel> {
        self.models.iter().find(|m| m.id == id)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptCase {
    pub id: String,
    pub text: Option<String>,
    pub ids: Option<Vec<u32>>,
    /// A chat, rendered with the model's template.
    pub messages: Option<Vec<Message>>,
    /// The request's repeat penalty (prompt and generated tokens, as transformers applies it).
    pub repeat_penalty: Option<f32>,
    /// Generate past EOS tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Token ids that fill each model's own context up to its edge (see [`ContextEdge`]).
    pub context_edge: Option<ContextEdge>,
    /// The request must be refused with a message that contains this; nothing else is checked.
    pub refused: Option<String>,
}

/// Prompt ids from [`CONTEXT_EDGE_FIRST_ID`] up, as many as leave room for exactly the trial's
/// tokens in the model's context (`full`), or one more (`over`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextEdge {
    Full,
    Over,
}

/// The first id of a context-edge prompt (ci/reference/reference.py counts from it too).
pub const CONTEXT_EDGE_FIRST_ID: u32 = 312;

impl PromptCase {
    /// The prompt of a trial of `max_tokens` tokens on a model of `context_length` positions.
    pub fn prompt(&self, context_length: usize, max_tokens: usize) -> Prompt {
        match (&self.text, &self.ids, &self.messages, self.context_edge) {
            (Some(text), ..) => Prompt::Text(text.clone()),
            (None, Some(ids), ..) => Prompt::Ids(ids.clone()),
            (None, None, Some(messages), _) => Prompt::Messages(messages.clone()),
            (None, None, None, Some(edge)) => {
                let over = usize::from(edge == ContextEdge::Over);
                let len = (context_length + over).saturating_sub(max_tokens).max(1);
                Prompt::Ids((CONTEXT_EDGE_FIRST_ID..).take(len).collect())
            }
            (None, None, None, None) => unreachable!("checked by Cases::parse"),
        }
    }
}

/// How far greedy trials of one backend-dtype may be from the reference and from a full
/// recompute. The reference is checked only where a tolerance is stated.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Largest absolute difference of any teacher-forced logit from the reference.
    pub reference_logits: Option<f32>,
    /// Largest normalized MSE (sum of squared differences over the sum of squared reference
    /// logits) of one step's teacher-forced logits.
    pub reference_nmse: Option<f32>,
    /// Largest absolute logit difference between decoding with the cache and recomputing.
    pub recompute_logits: f32,
    /// Without it, greedy tokens must equal the reference's. With it, they may leave them at a
    /// near tie only: each side's token among the other's top 5 at that step, and each side
    /// preferring its token by at most this many logits.
    pub near_tie_margin: Option<f32>,
    /// Largest absolute difference of one of the worker's top-5 log-probabilities from the
    /// reference's at the steps before the greedy tokens differ (`checks::logprobs`); without
    /// it the check does not run.
    pub reference_logprobs: Option<f32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailure {
    /// A glob over trial names, e.g. `phi/*-bf16/*`.
    pub trials: String,
    /// Only in runs on this engine (`Selection::run_engine`); absent, in every run.
    #[serde(default)]
    pub engine: Option<Engine>,
    pub reason: String,
}

impl Cases {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let cases: Cases = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if cases.max_tokens == 0 {
            return Err(invalid("max_tokens must be at least 1".into()));
        }
        check_prompts(&cases.prompts).map_err(|e| invalid(format!("prompts: {e}")))?;
        if let Some(real) = &cases.real {
            check_real(real).map_err(|e| invalid(format!("real: {e}")))?;
        }
        let fixtures: std::collections::BTreeSet<&str> =
            cases.models.fixtures.iter().map(String::as_str).collect();
        let mut ids = fixtures.clone();
        for gguf in &cases.models.gguf {
            if !fixtures.contains(gguf.source.as_str()) {
                return Err(invalid(format!(
                    "models.gguf: `{}` comes from `{}`, which is not in models.fixtures",
                    gguf.id, gguf.source
                )));
            }
            if !ids.insert(gguf.id.as_str()) {
                return Err(invalid(format!("model `{}` is listed twice", gguf.id)));
            }
        }
        if cases.sampling.temperature <= 0.0 {
            return Err(invalid("sampling.temperature must be positive".into()));
        }
        for expected in &cases.expected_failures {
            glob::Pattern::new(&expected.trials).map_err(|e| {
                invalid(format!(
                    "expected_failures: `{}` is not a glob: {e}",
                    expected.trials
                ))
            })?;
        }
        Ok(cases)
    }

    /// The ids of the prompts of exactly one token.
    pub fn single_token_prompts(&self) -> Vec<String> {
        self.prompts
            .iter()
            .filter(|p| p.ids.as_ref().is_some_and(|ids| ids.len() == 1))
            .map(|p| p.id.clone())
            .collect()
    }

    /// The ids of the prompts the worker must refuse.
    pub fn refused_prompts(&self) -> Vec<String> {
        self.prompts
            .iter()
            .filter(|p| p.refused.is_some())
            .map(|p| p.id.clone())
            .collect()
    }

    /// The tolerance of `backend`-`dtype`, if cases.toml states one; GGUF models and real models
    /// have their own (`<backend>-<dtype>[-gguf][-real]`).
    pub fn tolerance(
        &self,
        backend: Backend,
        dtype: Dtype,
        gguf: bool,
        real: bool,
    ) -> Option<Tolerance> {
        let gguf = if gguf { "-gguf" } else { "" };
        let real = if real { "-real" } else { "" };
        self.tolerances
            .get(&format!("{backend}-{dtype}{gguf}{real}"))
            .copied()
    }

    /// The expected failure that covers `trial` run on `engine`, if any.
    pub fn expected_failure(&self, trial: &str, engine: Engine) -> Option<&ExpectedFailure> {
        self.expected_failures.iter().find(|e| {
            e.engine.is_none_or(|only| only == engine)
                && glob::Pattern::new(&e.trials).is_ok_and(|pattern| pattern.matches(trial))
        })
    }
}

fn check_prompts(prompts: &[PromptCase]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for prompt in prompts {
        if !seen.insert(prompt.id.as_str()) {
            return Err(format!("prompt id `{}` is used twice", prompt.id));
        }
        if prompt.id.contains('/') {
            return Err(format!("prompt id `{}` contains `/`", prompt.id));
        }
        let given = [
            prompt.text.is_some(),
            prompt.ids.is_some(),
            prompt.messages.is_some(),
            prompt.context_edge.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(format!(
                "prompt `{}` needs exactly one of `text`, `ids`, `messages` and `context_edge`",
                prompt.id
            ));
        }
        if let Some(penalty) = prompt
            .repeat_penalty
            .filter(|p| !(*p > 0.0 && p.is_finite()))
        {
            return Err(format!(
                "prompt `{}`: repeat_penalty is {penalty}; it must be positive and finite",
                prompt.id
            ));
        }
    }
    Ok(())
}

fn check_real(real: &Real) -> Result<(), String> {
    if real.max_tokens == 0 {
        return Err("max_tokens must be at least 1".into());
    }
    check_prompts(&real.prompts)?;
    if let Some(prompt) = real.prompts.iter().find(|p| p.repeat_penalty.is_some()) {
        // Their references keep each step's top 5 model logits only, which a penalty reorders.
        return Err(format!(
            "prompt `{}`: the real models' prompts take no repeat_penalty",
            prompt.id
        ));
    }
    let prompts: std::collections::BTreeSet<&str> =
        real.prompts.iter().map(|p| p.id.as_str()).collect();
    for model in &real.models {
        if let Some(source) = &model.source {
            if real.model(source).is_none_or(|s| s.source.is_some()) {
                return Err(format!(
                    "model `{}`: its source `{source}` is not a real model with a reference",
                    model.id
                ));
            }
        }
        for (what, bounds, peer) in [
            (
                "llama_cpp_min_steps",
                &model.llama_cpp_min_steps,
                model.llama_cpp.is_some(),
            ),
            (
                "source_min_steps",
                &model.source_min_steps,
                model.source.is_some(),
            ),
        ] {
            if !bounds.is_empty() && !peer {
                return Err(format!("model `{}`: {what} without its peer", model.id));
            }
            if let Some(prompt) = bounds.keys().find(|p| !prompts.contains(p.as_str())) {
                return Err(format!(
                    "model `{}`: {what} names no prompt `{prompt}`",
                    model.id
                ));
            }
        }
    }
    Ok(())
}

/// The committed case file.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        max_tokens = 4
        backends = ["cpu"]
        dtypes = ["f32"]
        seeds = ["greedy", 7]
        sampling = { temperature = 0.8, top_p = 0.95 }
        models = { fixtures = ["llama"] }
    "#;

    fn parse(extra: &str) -> Result<Cases, Error> {
        Cases::parse(Path::new("cases.toml"), &format!("{MINIMAL}\n{extra}"))
    }

    #[test]
    fn committed_cases_parse() {
        let cases = Cases::load(&default_path()).unwrap();
        assert!(cases.prompts.len() >= 3);
        assert!(cases.seeds.len() >= 3);
        assert!(cases.seeds.contains(&Seed::GREEDY));
        assert!(cases
            .prompts
            .iter()
            .any(|p| p.ids.as_ref().is_some_and(|ids| ids.len() == 1)));
        assert!(cases
            .tolerance(Backend::Cpu, Dtype::F32, false, false)
            .is_some());
        assert!(cases
            .tolerance(Backend::Cpu, Dtype::F32, true, false)
            .is_some());
    }

    #[test]
    fn seeds_are_greedy_or_numbers() {
        let cases = parse("[[prompts]]\nid = \"a\"\ntext = \"a\"").unwrap();
        assert_eq!(cases.seeds, [Seed::GREEDY, Seed::Sampled(7)]);
        assert_eq!(cases.seeds[1].to_string(), "7");
        let bad = MINIMAL.replace("\"greedy\", 7", "\"random\"");
        assert!(Cases::parse(Path::new("c.toml"), &bad).is_err());
    }

    #[test]
    fn rejects_a_prompt_with_both_text_and_ids() {
        let err = parse("[[prompts]]\nid = \"x\"\ntext = \"a\"\nids = [1]").unwrap_err();
        assert!(err.to_string().contains("exactly one of"), "{err}");
        let err = parse("[[prompts]]\nid = \"x\"\nids = [1]\nmessages = []").unwrap_err();
        assert!(err.to_string().contains("exactly one of"), "{err}");
    }

    #[test]
    fn rejects_duplicate_prompt_ids() {
        let err =
            parse("[[prompts]]\nid = \"x\"\ntext = \"a\"\n[[prompts]]\nid = \"x\"\nids = [1]")
                .unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }

    #[test]
    fn expected_failures_match_by_glob() {
        let cases = parse(
            "[[prompts]]\nid = \"a\"\ntext = \"a\"\n[[expected_failures]]\ntrials = \"llama/*-bf16/*\"\nreason = \"r\"",
        )
        .unwrap();
        let candle = Engine::Candle;
        assert!(cases
            .expected_failure("llama/cpu-bf16/greedy/a", candle)
            .is_some());
        assert!(cases
            .expected_failure("llama/cuda-bf16/7/a", Engine::Fast)
            .is_some());
        assert!(cases
            .expected_failure("llama/cpu-f32/greedy/a", candle)
            .is_none());
        assert!(cases
            .expected_failure("llama2/cpu-bf16/greedy/a", candle)
            .is_none());
        let bad = parse(
            "[[prompts]]\nid = \"a\"\ntext = \"a\"\n[[expected_failures]]\ntrials = \"[x\"\nreason = \"r\"",
        )
        .unwrap_err();
        assert!(bad.to_string().contains("not a glob"), "{bad}");
    }

    #[test]
    fn expected_failures_may_hold_on_one_engine_only() {
        let cases = parse(
            "[[prompts]]\nid = \"a\"\ntext = \"a\"\n[[expected_failures]]\ntrials = \"q/*-bf16/*\"\nengine = \"candle\"\nreason = \"r\"",
        )
        .unwrap();
        assert!(cases
            .expected_failure("q/cuda-bf16/greedy/a", Engine::Candle)
            .is_some());
        assert!(cases
            .expected_failure("q/cuda-bf16/greedy/a", Engine::Fast)
            .is_none());
    }

    #[test]
    fn a_context_edge_prompt_leaves_room_for_exactly_the_trials_tokens_or_one_less() {
        let cases = parse(
            "[[prompts]]\nid = \"full\"\ncontext_edge = \"full\"\n\
             [[prompts]]\nid = \"over\"\ncontext_edge = \"over\"\nrefused = \"at most 3\"",
        )
        .unwrap();
        let ids = |prompt: &PromptCase| match prompt.prompt(64, 4) {
            Prompt::Ids(ids) => ids,
            other => panic!("{other:?}"),
        };
        let full = ids(&cases.prompts[0]);
        assert_eq!((full.len(), full[0], full[59]), (60, 312, 371));
        assert_eq!(ids(&cases.prompts[1]).len(), 61);
        assert_eq!(cases.refused_prompts(), ["over"]);
        let both = parse("[[prompts]]\nid = \"x\"\nids = [1]\ncontext_edge = \"full\"");
        assert!(both.unwrap_err().to_string().contains("exactly one of"));
    }

    #[test]
    fn real_models_take_their_own_prompts_and_bounds_name_them() {
        let real = |model: &str| {
            parse(&format!(
                "[[prompts]]\nid = \"a\"\ntext = \"a\"\n[real]\nmax_tokens = 8\nmodels = [{{ id = \"st\" }}, {model}]\n[[real.prompts]]\nid = \"chat\"\nmessages = [{{ role = \"user\", content = \"hi\" }}]"
            ))
        };
        let cases = real(r#"{ id = "q", source = "st", llama_cpp = "l.json", llama_cpp_min_steps = { chat = 3 } }"#)
            .unwrap();
        let real_group = cases.real.as_ref().unwrap();
        assert_eq!(
            real_group.model("q").unwrap().llama_cpp_min_steps["chat"],
            3
        );
        assert!(matches!(real_group.prompts[0].prompt(64, 8), Prompt::Messages(m) if m.len() == 1));
        let err = real(r#"{ id = "q", source = "st", llama_cpp = "l.json", llama_cpp_min_steps = { nope = 3 } }"#)
            .unwrap_err();
        assert!(err.to_string().contains("names no prompt `nope`"), "{err}");
        let err = real(r#"{ id = "q", source = "other" }"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a real model with a reference"),
            "{err}"
        );
        let err = real(r#"{ id = "q", source_min_steps = { chat = 1 } }"#).unwrap_err();
        assert!(err.to_string().contains("without its peer"), "{err}");
    }
}
