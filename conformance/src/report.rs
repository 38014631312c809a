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
}

/// How far the trial's numbers were from the reference and from a full recompute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Differential {
    /// Largest absolute logit difference, decoding with the KV cache against recomputing.
    pub max_recompute_logit_diff: Option<f32>,
    /// Largest absolute difference of teacher-forced logits against the reference.
    pub max_reference_logit_diff: Option<f32>,
    /// Whether the greedy tokens equal the reference's.
    pub reference_tokens_equal: Option<bool>,
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
    /// How trials reached the worker: `library`.
    pub transport: String,
    pub git_commit: String,
    /// Whether the working tree had uncommitted changes.
    pub git_dirty: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub worker_version: String,
}

impl Report {
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

/// Counts of each outcome in one table cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cell(pub BTreeMap<Outcome, usize>);

impl Cell {
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    pub fn get(&self, outcome: Outcome) -> usize {
        self.0.get(&outcome).copied().unwrap_or(0)
    }

    /// `passed`, `FAILED 2/16`, `ignored`, or `passed, 2 expected failures`.
    pub fn summary(&self) -> String {
        let failed = self.get(Outcome::Failed);
        if failed > 0 {
            return format!("FAILED {failed}/{}", self.total());
        }
        let ran = self.get(Outcome::Passed) + self.get(Outcome::ExpectedFailure);
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
    fn new(records: &[TrialRecord]) -> Self {
        let mut grid = Grid::default();
        for record in records {
            let column = format!("{}-{}", record.backend, record.dtype);
            if !grid.models.contains(&record.model) {
                grid.models.push(record.model.clone());
            }
            if !grid.columns.contains(&column) {
                grid.columns.push(column.clone());
            }
            *grid
                .cells
                .entry((record.model.clone(), column))
                .or_default()
                .0
                .entry(record.outcome)
                .or_default() += 1;
        }
        grid
    }
}

/// The terminal table of a run: rows = models, columns = backend-dtype.
pub fn table(records: &[TrialRecord]) -> String {
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
