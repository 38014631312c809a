//! `cargo xtask ci`: everything the linux-cpu CI job runs, in order, stopping at the first
//! failure.

use anyhow::{bail, Context, Result};
use conformance::report::{Report, RunInfo};
use conformance::Cases;
use llm_worker_rbee::{Backend, Dtype};
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
    ("conformance over http", |_| {
        test::run(&test::Args::cpu_http())
    }),
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
/// bug. Every greedy trial of every SafeTensors fixture must then fail, 1-token prompts
/// included, or the suite could not be trusted to catch it. GGUF fixtures are not counted: the
/// fault cannot happen there, candle's quantized modules start a new cache at position 0 on
/// their own (worker/tests/gguf.rs checks that).
fn fault_injection(sh: &Shell) -> Result<()> {
    let records = test::conformance_dir().join("fault-injection-records");
    let args = test::Args::cpu();
    let outcome = test::harness(sh, &args, &records, &["fault-injection"])?
        .env("INSTA_UPDATE", "no")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    if outcome.is_ok() {
        bail!("the suite passed with the cache reset skipped");
    }
    let cases = Cases::load(&conformance::cases::default_path())?;
    let run = RunInfo::starting_now(
        "local".into(),
        Backend::Cpu,
        Dtype::F32,
        String::new(),
        true,
    );
    let report = Report::from_records(run, &records, &cases.models.fixtures)?;
    let caught = report
        .check_fault_injection(&cases.models.fixtures, &cases.single_token_prompts())
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "fault injection: all {caught} greedy trials of {} fixtures failed with the cache reset skipped",
        cases.models.fixtures.len()
    );
    Ok(())
}
