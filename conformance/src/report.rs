//! The run report built from the trial records (`report.json`, schema 1, and JUnit XML).

use std::fmt::Write as _;
use std::path::Path;

use llm_worker_rbee_api::{Backend, Dtype};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::record::{read_records, Outcome, TrialRecord};
use crate::table::table;

pub const SCHEMA: u32 = 1;

/// One run of the suite: what ran where, and every trial's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub run: RunInfo,
    pub trials: Vec<TrialRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The host label (`--host-label`, default the hostname).
    pub host: String,
    pub backend: Backend,
    pub dtype: Dtype,
    /// How trials reached the worker: `library` or `http`.
    pub transport: String,
    /// What ran the models: `candle` (candle's modules) or `fast` (the fast engine for the
    /// models it covers, candle's modules for the rest). Runs recorded before the fast engine
    /// existed ran candle's.
    #[serde(default = "candle_engine")]
    pub engine: String,
    pub git_commit: String,
    /// Whether the working tree had uncommitted changes.
    pub git_dirty: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub worker_version: String,
}

fn candle_engine() -> String {
    "candle".into()
}

impl RunInfo {
    /// A run starting now; `host`, `git_commit` and `git_dirty` as the caller knows them.
    pub fn starting_now(
        host: String,
        backend: Backend,
        dtype: Dtype,
        git_commit: String,
        git_dirty: bool,
    ) -> Self {
        Self {
            host,
            backend,
            dtype,
            transport: "library".into(),
            engine: candle_engine(),
            git_commit,
            git_dirty,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            worker_version: llm_worker_rbee_api::VERSION.into(),
        }
    }
}

impl Report {
    /// The report of `run` from the records in `dir`, rows in the order `models` lists them.
    pub fn from_records(run: RunInfo, dir: &Path, models: &[String]) -> Result<Self, Error> {
        let mut trials = read_records(dir)?;
        let rank = |model: &str| models.iter().position(|m| m == model);
        trials.sort_by(|a, b| (rank(&a.model), &a.name).cmp(&(rank(&b.model), &b.name)));
        Ok(Report {
            schema: SCHEMA,
            run,
            trials,
        })
    }

    /// Writes `report.json` and `junit.xml` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).expect("reports serialize");
        std::fs::write(dir.join("report.json"), json + "\n")?;
        std::fs::write(dir.join("junit.xml"), self.junit())
    }

    /// The JUnit XML of the run: one test case per trial.
    pub fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
        let mut junit = quick_junit::Report::new("conformance");
        let mut suite = TestSuite::new(format!("{}-{}", self.run.backend, self.run.dtype));
        for trial in &self.trials {
            let mut status = match trial.outcome {
                Outcome::Passed | Outcome::ExpectedFailure => TestCaseStatus::success(),
                Outcome::Failed => TestCaseStatus::non_success(NonSuccessKind::Failure),
                Outcome::Ignored => TestCaseStatus::skipped(),
            };
            if let Some(message) = &trial.message {
                status.set_description(message.clone());
            }
            let mut case = TestCase::new(trial.name.clone(), status);
            case.set_time(std::time::Duration::from_secs_f64(
                trial.duration_ms / 1000.0,
            ));
            suite.add_test_case(case);
        }
        junit.add_test_suite(suite);
        junit.to_string().expect("JUnit serializes")
    }

    /// The first request on each freshly loaded model against the same request repeated, as
    /// medians over the models: shows what warming up at load leaves to the first request.
    fn first_request_latency(&self) -> Option<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut first = Vec::new();
        let mut repeat = Vec::new();
        // Trials run in name order per model; the first of each model met the fresh load.
        let mut by_name: Vec<&TrialRecord> = self.trials.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        for trial in by_name {
            if let Some(latency) = &trial.latency {
                if seen.insert(&trial.model) {
                    first.push(latency.first_ms);
                    repeat.push(latency.repeat_ms);
                }
            }
        }
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied()
        };
        Some(format!(
            "first request after load {:.1} ms, the same request again {:.1} ms (medians over {} models)",
            median(&mut first)?,
            median(&mut repeat)?,
            first.len()
        ))
    }

    /// The table, the failed trials, and the counts, as `cargo xtask test` prints them.
    pub fn summary(&self) -> String {
        let mut out = table(&self.trials);
        for trial in self.trials.iter().filter(|t| t.outcome == Outcome::Failed) {
            let message = trial.message.as_deref().unwrap_or("");
            writeln!(
                out,
                "FAILED {}: {}",
                trial.name,
                message.lines().next().unwrap_or("")
            )
            .unwrap();
        }
        let compared: Vec<String> = self.trials.iter().filter_map(agreement_line).collect();
        if !compared.is_empty() {
            writeln!(
                out,
                "\nleading greedy steps that agree with llama.cpp and with the source:"
            )
            .unwrap();
            for line in compared {
                writeln!(out, "  {line}").unwrap();
            }
        }
        if let Some(latency) = self.first_request_latency() {
            write!(out, "\n{latency}").unwrap();
        }
        write!(
            out,
            "\n{} trials ({} {} via {}, {} engine): {} passed, {} failed, {} ignored, {} \
             expected failures",
            self.trials.len(),
            self.run.backend,
            self.run.dtype,
            self.run.transport,
            self.run.engine,
            self.count(Outcome::Passed),
            self.count(Outcome::Failed),
            self.count(Outcome::Ignored),
            self.count(Outcome::ExpectedFailure),
        )
        .unwrap();
        out
    }

    /// For a run with the `fault-injection` worker: every greedy trial of every model in
    /// `models` must have failed, a single-token prompt among them, or the suite could not be
    /// trusted to catch the old cache bug; the trials of `refused_prompts` generate nothing and
    /// are left out. Returns how many greedy trials failed.
    pub fn check_fault_injection(
        &self,
        models: &[String],
        single_token_prompts: &[String],
        refused_prompts: &[String],
    ) -> Result<usize, String> {
        let mut caught = 0;
        for model in models {
            let greedy: Vec<&TrialRecord> = self
                .trials
                .iter()
                .filter(|t| &t.model == model && t.seed == "greedy")
                .filter(|t| !refused_prompts.contains(&t.prompt))
                .collect();
            let missed: Vec<&str> = greedy
                .iter()
                .filter(|t| t.outcome != Outcome::Failed)
                .map(|t| t.name.as_str())
                .collect();
            if greedy.is_empty() || !missed.is_empty() {
                return Err(format!(
                    "with the cache reset skipped, {model} still passes greedy trials {missed:?} \
                     (of {})",
                    greedy.len()
                ));
            }
            if !greedy
                .iter()
                .any(|t| single_token_prompts.contains(&t.prompt))
            {
                return Err(format!("{model} has no failing single-token greedy trial"));
            }
            caught += greedy.len();
        }
        Ok(caught)
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let report: Report = serde_json::from_str(&text).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if report.schema != SCHEMA {
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                message: format!("schema {} is not the supported {SCHEMA}", report.schema),
            });
        }
        Ok(report)
    }

    pub fn failed(&self) -> usize {
        self.count(Outcome::Failed)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.trials.iter().filter(|t| t.outcome == outcome).count()
    }
}

/// For a trial compared with llama.cpp: `<trial>: llama.cpp 30/32, <source> 32/32`.
fn agreement_line(trial: &TrialRecord) -> Option<String> {
    let differential = trial.differential.as_ref()?;
    let llama_cpp = differential.llama_cpp_agreement.as_ref()?;
    let peers = [Some(llama_cpp), differential.source_agreement.as_ref()];
    let figures: Vec<String> = peers
        .into_iter()
        .flatten()
        .map(|a| format!("{} {}/{}", a.source, a.equal_steps, a.steps))
        .collect();
    Some(format!("{}: {}", trial.name, figures.join(", ")))
}
