//! Trial records (one file per trial, written by the harness) and the run report built from
//! them (`report.json`, schema 1).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use llm_worker_rbee::{Backend, Dtype};
use serde::{Deserialize, Serialize};

use crate::Error;

pub const SCHEMA: u32 = 1;

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
    /// For a GGUF fixture: how far its greedy tokens follow those of the SafeTensors fixture it
    /// was quantized from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_agreement: Option<SourceAgreement>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceAgreement {
    pub source: String,
    /// Leading steps whose tokens equal the source's.
    pub equal_steps: usize,
    /// The source's steps.
    pub steps: usize,
}

impl SourceAgreement {
    pub fn of(source: &str, source_tokens: &[u32], tokens: &[u32]) -> Self {
        Self {
            source: source.to_string(),
            equal_steps: source_tokens
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count(),
            steps: source_tokens.len(),
        }
    }
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
    pub git_commit: String,
    /// Whether the working tree had uncommitted changes.
    pub git_dirty: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub worker_version: String,
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
            git_commit,
            git_dirty,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            worker_version: llm_worker_rbee::VERSION.into(),
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
        if let Some(latency) = self.first_request_latency() {
            write!(out, "\n{latency}").unwrap();
        }
        write!(
            out,
            "\n{} trials ({} {} via {}): {} passed, {} failed, {} ignored, {} expected \
             failures",
            self.trials.len(),
            self.run.backend,
            self.run.dtype,
            self.run.transport,
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
    /// trusted to catch the old cache bug. Returns how many greedy trials failed.
    pub fn check_fault_injection(
        &self,
        models: &[String],
        single_token_prompts: &[String],
    ) -> Result<usize, String> {
        let mut caught = 0;
        for model in models {
            let greedy: Vec<&TrialRecord> = self
                .trials
                .iter()
                .filter(|t| &t.model == model && t.seed == "greedy")
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

/// Counts of each outcome in one table cell, and of greedy trials that left the reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub outcomes: BTreeMap<Outcome, usize>,
    pub divergences: usize,
    /// GGUF fixtures: leading greedy steps equal to the source fixture's, and steps compared.
    pub source_agreement: Option<(usize, usize)>,
}

impl Cell {
    pub fn total(&self) -> usize {
        self.outcomes.values().sum()
    }

    pub fn get(&self, outcome: Outcome) -> usize {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    /// `passed`, `FAILED 2/16`, `ignored`, or `passed, 2 expected failures, 3 diverged`, where
    /// `diverged` counts greedy trials whose tokens left the reference's (at a near tie), and
    /// `source 60/64` the greedy steps of a GGUF fixture that follow its source fixture.
    pub fn summary(&self) -> String {
        let failed = self.get(Outcome::Failed);
        if failed > 0 {
            return format!("FAILED {failed}/{}", self.total());
        }
        let expected = self.get(Outcome::ExpectedFailure);
        if expected > 0 && expected == self.total() {
            return format!("expected to fail ({expected}/{expected})");
        }
        let ran = self.get(Outcome::Passed) + expected;
        let mut text = if ran == 0 { "ignored" } else { "passed" }.to_string();
        if self.get(Outcome::ExpectedFailure) > 0 {
            write!(
                text,
                ", {} expected failures",
                self.get(Outcome::ExpectedFailure)
            )
            .unwrap();
        }
        if ran > 0 && self.get(Outcome::Ignored) > 0 {
            write!(text, ", {} ignored", self.get(Outcome::Ignored)).unwrap();
        }
        if self.divergences > 0 {
            write!(text, ", {} diverged", self.divergences).unwrap();
        }
        if let Some((equal, steps)) = self.source_agreement {
            write!(text, ", source {equal}/{steps}").unwrap();
        }
        text
    }
}

/// Outcome counts per model (rows, in first-seen order) and backend-dtype (columns).
#[derive(Default)]
struct Grid {
    models: Vec<String>,
    columns: Vec<String>,
    cells: BTreeMap<(String, String), Cell>,
}

impl Grid {
    /// Records with the column each belongs to.
    fn new(records: &[(String, &TrialRecord)]) -> Self {
        let mut grid = Grid::default();
        for (column, record) in records {
            let column = column.clone();
            if !grid.models.contains(&record.model) {
                grid.models.push(record.model.clone());
            }
            if !grid.columns.contains(&column) {
                grid.columns.push(column.clone());
            }
            let cell = grid
                .cells
                .entry((record.model.clone(), column))
                .or_default();
            *cell.outcomes.entry(record.outcome).or_default() += 1;
            let diverged = record
                .differential
                .as_ref()
                .is_some_and(|d| d.first_divergence.is_some());
            cell.divergences += usize::from(diverged);
            let agreement = record
                .differential
                .as_ref()
                .and_then(|d| d.source_agreement.as_ref());
            if let Some(agreement) = agreement {
                let (equal, steps) = cell.source_agreement.get_or_insert((0, 0));
                *equal += agreement.equal_steps;
                *steps += agreement.steps;
            }
        }
        grid
    }
}

/// The terminal table of a run: rows = models, columns = backend-dtype.
pub fn table(records: &[TrialRecord]) -> String {
    let columns: Vec<(String, &TrialRecord)> = records
        .iter()
        .map(|r| (format!("{}-{}", r.backend, r.dtype), r))
        .collect();
    table_by_column(&columns)
}

/// A terminal table with the columns given: rows = models, in first-seen order.
pub fn table_by_column(records: &[(String, &TrialRecord)]) -> String {
    let grid = Grid::new(records);
    let width = grid
        .models
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}", "model");
    for column in &grid.columns {
        write!(out, "  {column:<28}").unwrap();
    }
    out.push('\n');
    for model in &grid.models {
        write!(out, "{model:<width$}").unwrap();
        for column in &grid.columns {
            let cell = grid
                .cells
                .get(&(model.clone(), column.clone()))
                .map(Cell::summary)
                .unwrap_or_else(|| "-".into());
            write!(out, "  {cell:<28}").unwrap();
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(model: &str, outcome: Outcome) -> TrialRecord {
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
    fn the_table_counts_outcomes_per_model_and_column() {
        let records = vec![
            record("a", Outcome::Passed),
            record("a", Outcome::Failed),
            record("b", Outcome::Passed),
            record("b", Outcome::ExpectedFailure),
            record("c", Outcome::Ignored),
            TrialRecord {
                differential: Some(Differential {
                    first_divergence: Some(3),
                    near_tie: Some(true),
                    ..Differential::default()
                }),
                ..record("d", Outcome::Passed)
            },
            record("e", Outcome::ExpectedFailure),
            TrialRecord {
                differential: Some(Differential {
                    source_agreement: Some(SourceAgreement::of("s", &[1, 2], &[1, 3])),
                    ..Differential::default()
                }),
                ..record("f", Outcome::Passed)
            },
        ];
        let table = table(&records);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("cpu-f32"));
        assert!(
            lines[1].starts_with("a") && lines[1].contains("FAILED 1/2"),
            "{table}"
        );
        assert!(lines[2].contains("passed, 1 expected failures"), "{table}");
        assert!(lines[3].contains("ignored"), "{table}");
        assert!(lines[4].contains("passed, 1 diverged"), "{table}");
        assert!(lines[5].contains("expected to fail (1/1)"), "{table}");
        assert!(lines[6].contains("passed, source 1/2"), "{table}");
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
