//! `cargo xtask ci`: everything the linux-cpu CI job runs, in order, stopping at the first
//! failure.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use conformance::report::{self, Outcome};
use conformance::Cases;
use xshell::{cmd, Shell};

use crate::{project_root, test};

type Step = fn(&Shell) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("formatting", |sh| {
        Ok(cmd!(sh, "cargo fmt --all --check").run()?)
    }),
    ("clippy", |sh| {
        Ok(cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?)
    }),
    ("fixtures", |_| crate::fixtures::run(&Default::default())),
    ("tests", |sh| Ok(cmd!(sh, "cargo test --workspace").run()?)),
    ("conformance", |_| test::run(&test::Args::cpu())),
    ("conformance under nextest", |sh| {
        Ok(cmd!(sh, "cargo nextest run -p conformance --no-fail-fast").run()?)
    }),
    ("fault injection", fault_injection),
    ("support matrix", |_| {
        crate::support_matrix::run(&crate::support_matrix::Args { check: true })
    }),
];

pub fn run() -> Result<()> {
    // CI mode for insta: a missing or different snapshot fails, and nothing is written.
    std::env::set_var("CI", "true");
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    for (name, step) in STEPS {
        eprintln!("==> ci: {name}");
        step(&sh).with_context(|| format!("ci step `{name}` failed"))?;
    }
    eprintln!("==> ci: all steps passed");
    Ok(())
}

/// With the `fault-injection` feature the worker skips its per-request cache reset, the old
/// bug. Every greedy trial of every fixture must then fail, 1-token prompts included, or the
/// suite could not be trusted to catch it.
fn fault_injection(sh: &Shell) -> Result<()> {
    let records = test::conformance_dir().join("fault-injection-records");
    let args = test::Args::cpu();
    let outcome = test::harness(sh, &args, &records, &["llm-worker-rbee/fault-injection"])?
        .env("INSTA_UPDATE", "no")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    if outcome.is_ok() {
        bail!("the suite passed with the cache reset skipped");
    }
    let trials = report::read_records(&records)?;
    let cases = Cases::load(&conformance::cases::default_path())?;
    let single_token: BTreeSet<&str> = cases
        .prompts
        .iter()
        .filter(|p| p.ids.as_ref().is_some_and(|ids| ids.len() == 1))
        .map(|p| p.id.as_str())
        .collect();
    let mut caught = 0;
    for model in &cases.models.fixtures {
        let greedy: Vec<_> = trials
            .iter()
            .filter(|t| &t.model == model && t.seed == "greedy")
            .collect();
        let missed: Vec<&str> = greedy
            .iter()
            .filter(|t| t.outcome != Outcome::Failed)
            .map(|t| t.name.as_str())
            .collect();
        if greedy.is_empty() || !missed.is_empty() {
            bail!("with the cache reset skipped, {model} still passes greedy trials {missed:?} (of {})", greedy.len());
        }
        if !greedy
            .iter()
            .any(|t| single_token.contains(t.prompt.as_str()))
        {
            bail!("{model} has no failing single-token greedy trial");
        }
        caught += greedy.len();
    }
    eprintln!(
        "fault injection: all {caught} greedy trials of {} fixtures failed with the cache reset skipped",
        cases.models.fixtures.len()
    );
    Ok(())
}
