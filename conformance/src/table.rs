//! The terminal table of a run: rows = models, columns = backend-dtype (or host/backend-dtype).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::record::{Outcome, TrialRecord};

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
    use crate::record::tests::record;
    use crate::record::{Differential, SourceAgreement};

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
                    source_agreement: Some(SourceAgreement {
                        source: "s".into(),
                        equal_steps: 1,
                        steps: 2,
                    }),
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
}
