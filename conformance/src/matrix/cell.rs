//! One cell of the support matrix: what a report showed for a model, and the mark of a cell
//! from all of its runs.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::hash::hex;
use crate::record::{Outcome, SourceAgreement};
use crate::report::Report;
use crate::trial::golden_file;

/// What one report showed for one model.
pub enum Showing {
    Passed {
        expected_failures: usize,
        ignored: usize,
        /// Greedy trials whose tokens left the reference's at a near tie.
        diverged: usize,
        /// GGUF fixtures: leading greedy steps equal to the source fixture's, of the steps.
        source_agreement: Option<(usize, usize)>,
        /// Real GGUF models: leading greedy steps equal to llama.cpp's, of its steps.
        llama_cpp_agreement: Option<(usize, usize)>,
        /// Trials cases.toml defines for the model that the run did not have (it was made
        /// before they were added).
        not_run: usize,
    },
    Failed {
        failed: usize,
        total: usize,
    },
    /// Some golden snapshot changed since the report was made.
    Stale,
    /// Every trial was ignored (the model was absent).
    Ignored,
    /// Every trial failed, as `cases.toml` expects (with its reason).
    ExpectedToFail(usize),
}

/// What `report` showed for `model`, of which cases.toml defines `defined` trials per
/// backend-dtype.
pub fn showing(report: &Report, model: &str, defined: usize, snapshots: &Path) -> Option<Showing> {
    let trials: Vec<_> = report.trials.iter().filter(|t| t.model == model).collect();
    if trials.is_empty() {
        return None;
    }
    let count = |o: Outcome| trials.iter().filter(|t| t.outcome == o).count();
    if count(Outcome::Failed) > 0 {
        return Some(Showing::Failed {
            failed: count(Outcome::Failed),
            total: trials.len(),
        });
    }
    if count(Outcome::Ignored) == trials.len() {
        return Some(Showing::Ignored);
    }
    if count(Outcome::ExpectedFailure) == trials.len() {
        return Some(Showing::ExpectedToFail(trials.len()));
    }
    let engine = report.run.engine.parse().unwrap_or_default();
    let stale = trials.iter().any(|t| {
        let golden = golden_file(snapshots, &t.name, engine);
        let current = std::fs::read(golden).ok().map(|b| hex(&Sha256::digest(&b)));
        t.outcome != Outcome::Ignored && current != t.golden_sha256
    });
    Some(if stale {
        Showing::Stale
    } else {
        Showing::Passed {
            expected_failures: count(Outcome::ExpectedFailure),
            ignored: count(Outcome::Ignored),
            diverged: trials
                .iter()
                .filter(|t| {
                    t.differential
                        .as_ref()
                        .is_some_and(|d| d.first_divergence.is_some())
                })
                .count(),
            source_agreement: summed(
                trials
                    .iter()
                    .filter_map(|t| t.differential.as_ref()?.source_agreement.as_ref()),
            ),
            llama_cpp_agreement: summed(
                trials
                    .iter()
                    .filter_map(|t| t.differential.as_ref()?.llama_cpp_agreement.as_ref()),
            ),
            not_run: defined.saturating_sub(trials.len()),
        }
    })
}

/// Leading equal steps and steps, summed over prompts.
fn summed<'a>(agreements: impl Iterator<Item = &'a SourceAgreement>) -> Option<(usize, usize)> {
    agreements
        .map(|a| (a.equal_steps, a.steps))
        .reduce(|(e1, s1), (e2, s2)| (e1 + e2, s1 + s2))
}

impl Showing {
    /// What the run showed, in words.
    pub fn detail(&self) -> String {
        match self {
            Showing::Passed {
                expected_failures,
                ignored,
                diverged,
                source_agreement,
                llama_cpp_agreement,
                not_run,
            } => {
                let mut text = "passed".to_string();
                if *not_run > 0 {
                    write!(text, " ({not_run} trials of cases.toml not run)").unwrap();
                }
                if *expected_failures > 0 {
                    write!(text, ", {expected_failures} expected failures").unwrap();
                }
                if *ignored > 0 {
                    write!(text, ", {ignored} ignored").unwrap();
                }
                if *diverged > 0 {
                    write!(text, ", {diverged} diverged").unwrap();
                }
                if let Some((equal, steps)) = source_agreement {
                    write!(text, ", source {equal}/{steps}").unwrap();
                }
                if let Some((equal, steps)) = llama_cpp_agreement {
                    write!(text, ", llama.cpp {equal}/{steps}").unwrap();
                }
                text
            }
            Showing::Failed { failed, total } => format!("failed {failed}/{total}"),
            Showing::Stale => "stale".into(),
            Showing::Ignored => "ignored".into(),
            Showing::ExpectedToFail(n) => format!("expected to fail ({n}/{n})"),
        }
    }
}

/// One report's showing for a cell: the run's footnote number and transport (with the engine
/// where it is not the backend's default: `library-candle`).
pub struct Shown {
    pub footnote: usize,
    pub transport: String,
    pub showing: Showing,
}

/// The cell's mark: the worst of its runs, and for a pass the transports that passed.
pub fn mark(runs: &[Shown]) -> String {
    if runs.is_empty() {
        return "not run".into();
    }
    if let Some((failed, total)) = runs
        .iter()
        .filter_map(|r| match r.showing {
            Showing::Failed { failed, total } => Some((failed, total)),
            _ => None,
        })
        .max()
    {
        return format!("fail {failed}/{total}");
    }
    if runs.iter().any(|r| matches!(r.showing, Showing::Stale)) {
        return "stale".into();
    }
    if runs
        .iter()
        .all(|r| matches!(r.showing, Showing::ExpectedToFail(_)))
    {
        return "expected fail".into();
    }
    let passed: Vec<String> = runs
        .iter()
        .filter(|r| matches!(r.showing, Showing::Passed { not_run: 0, .. }))
        .map(|r| r.transport.replacen("library", "lib", 1))
        .collect();
    if passed.is_empty()
        && runs
            .iter()
            .any(|r| matches!(r.showing, Showing::Passed { .. }))
    {
        return "partial".into();
    }
    // The library first, the others by name.
    let mut transports: Vec<&str> = passed.iter().map(String::as_str).collect();
    transports.sort_by_key(|t| (!t.starts_with("lib"), *t));
    transports.dedup();
    match transports.as_slice() {
        [] => "ignored".into(),
        ["lib"] => "pass".into(),
        _ => format!("pass ({})", transports.join("+")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_names_the_transports_that_passed_and_the_worst_run_wins() {
        let pass = || Showing::Passed {
            expected_failures: 0,
            ignored: 0,
            diverged: 0,
            source_agreement: None,
            llama_cpp_agreement: None,
            not_run: 0,
        };
        let shown = |transport: &str, showing| Shown {
            footnote: 1,
            transport: transport.into(),
            showing,
        };
        assert_eq!(mark(&[shown("library", pass())]), "pass");
        assert_eq!(mark(&[shown("http", pass())]), "pass (http)");
        assert_eq!(
            mark(&[shown("http", pass()), shown("library", pass())]),
            "pass (lib+http)"
        );
        assert_eq!(
            mark(&[shown("library-candle", pass()), shown("library", pass())]),
            "pass (lib+lib-candle)"
        );
        let failed = Showing::Failed {
            failed: 3,
            total: 16,
        };
        assert_eq!(
            mark(&[shown("library", pass()), shown("http", failed)]),
            "fail 3/16"
        );
        assert_eq!(mark(&[]), "not run");
        let partial = || Showing::Passed {
            expected_failures: 0,
            ignored: 0,
            diverged: 0,
            source_agreement: None,
            llama_cpp_agreement: None,
            not_run: 2,
        };
        assert_eq!(mark(&[shown("library", partial())]), "partial");
        assert_eq!(
            mark(&[shown("library", partial()), shown("http", pass())]),
            "pass (http)"
        );
        assert_eq!(
            partial().detail(),
            "passed (2 trials of cases.toml not run)"
        );
    }
}
