//! Trial records: one file per trial, written by the harness, read back into reports.

use std::path::{Path, PathBuf};

use llm_worker_rbee_api::{Backend, Dtype};
use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Passed,
    Failed,
    Ignored,
    /// Failed, and listed in cases.toml as expected to, with a reason.
    ExpectedFailure,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Ignored => "ignored",
            Outcome::ExpectedFailure => "expected-failure",
        }
    }
}

/// The result of one trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub name: String,
    pub model: String,
    pub backend: Backend,
    pub dtype: Dtype,
    pub seed: String,
    pub prompt: String,
    pub outcome: Outcome,
    pub duration_ms: f64,
    /// Why it failed, was ignored, or is an expected failure.
    pub message: Option<String>,
    /// The sha256 of the golden snapshot file the trial was checked against.
    pub golden_sha256: Option<String>,
    pub differential: Option<Differential>,
    pub latency: Option<Latency>,
}

/// Wall-clock time of the trial's request and of the same request repeated. On the first trial
/// of a model the first figure includes anything the load's warm-up left to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub first_ms: f64,
    pub repeat_ms: f64,
}

/// How far the trial's numbers were from the reference and from a full recompute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Differential {
    /// Largest absolute logit difference, decoding with the KV cache against recomputing.
    pub max_recompute_logit_diff: Option<f32>,
    /// Largest absolute difference of teacher-forced logits against the reference.
    pub max_reference_logit_diff: Option<f32>,
    /// Largest normalized MSE of one step's teacher-forced logits against the reference.
    pub max_reference_nmse: Option<f32>,
    /// Whether the greedy tokens equal the reference's.
    pub reference_tokens_equal: Option<bool>,
    /// The first step whose greedy token differs from the reference's.
    pub first_divergence: Option<usize>,
    /// Whether that divergence is a near tie (see `Tolerance::near_tie_margin`).
    pub near_tie: Option<bool>,
    /// At that divergence, the larger of the two sides' preference for its own token, when
    /// each side's token is in the other's top 5.
    pub divergence_margin: Option<f32>,
    /// Steps where decoding with the cache and a full recompute chose different tokens at a
    /// near tie.
    pub recompute_near_ties: Option<usize>,
    /// Largest absolute difference of a reported top-5 log-probability from the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reference_logprob_diff: Option<f32>,
    /// For a GGUF fixture: how far its greedy tokens follow those of the SafeTensors fixture it
    /// was quantized from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_agreement: Option<SourceAgreement>,
    /// For a real GGUF model: how far its greedy tokens follow llama.cpp's on the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama_cpp_agreement: Option<SourceAgreement>,
}

/// How far greedy tokens follow another run's: a source model's, or llama.cpp's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceAgreement {
    pub source: String,
    /// Leading steps whose tokens equal the source's.
    pub equal_steps: usize,
    /// The source's steps.
    pub steps: usize,
}

/// The file a trial's record goes to.
pub fn record_path(dir: &Path, trial: &str) -> PathBuf {
    dir.join(format!("{}.json", trial.replace('/', "__")))
}

impl TrialRecord {
    /// Writes the record into `dir` (through a temporary file, so a reader never sees half).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = record_path(dir, &self.name);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("records serialize");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }
}

/// Every record in `dir`, sorted by trial name.
pub fn read_records(dir: &Path) -> Result<Vec<TrialRecord>, Error> {
    let read_error = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let record = serde_json::from_str(&text).map_err(|e| Error::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
            records.push(record);
        }
    }
    records.sort_by(|a: &TrialRecord, b| a.name.cmp(&b.name));
    Ok(records)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(model: &str, outcome: Outcome) -> TrialRecord {
        TrialRecord {
            name: format!("{model}/cpu-f32/greedy/p"),
            model: model.into(),
            backend: Backend::Cpu,
            dtype: Dtype::F32,
            seed: "greedy".into(),
            prompt: "p".into(),
            outcome,
            duration_ms: 1.0,
            message: None,
            golden_sha256: None,
            differential: None,
            latency: None,
        }
    }

    #[test]
    fn records_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = record("a", Outcome::Passed);
        first.differential = Some(Differential {
            max_reference_logit_diff: Some(1e-6),
            ..Differential::default()
        });
        first.write(dir.path()).unwrap();
        record("b", Outcome::Failed).write(dir.path()).unwrap();
        let read = read_records(dir.path()).unwrap();
        assert_eq!(read, vec![first, record("b", Outcome::Failed)]);
        assert!(
            record_path(dir.path(), "a/cpu-f32/greedy/p").ends_with("a__cpu-f32__greedy__p.json")
        );
    }
}
