//! `cargo xtask test`: run the conformance suite, then aggregate the trial records into
//! report.json, JUnit XML and a table.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use conformance::report::{self, Outcome, Report, RunInfo};
use llm_worker_rbee::{synth, Backend, Dtype};
use xshell::{cmd, Shell};

use crate::{project_root, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// The backend to run on; not `cpu` needs that backend compiled in and a device.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// The host name recorded in the report [default: the hostname].
    #[arg(long, value_name = "LABEL")]
    pub host_label: Option<String>,
    /// Also copy the report to golden/reports/<host-label>-<backend>-<dtype>.json, the evidence
    /// `cargo xtask support-matrix` reads.
    #[arg(long)]
    pub record: bool,
    /// Trial-name filters for the harness, e.g. `-- qwen2/` or `-- --exact NAME`.
    #[arg(last = true, value_name = "FILTER")]
    pub filters: Vec<String>,
}

impl Args {
    pub fn cpu() -> Self {
        Self {
            backend: Backend::Cpu,
            dtype: Dtype::F32,
            host_label: None,
            record: false,
            filters: Vec::new(),
        }
    }
}

pub fn conformance_dir() -> PathBuf {
    target_dir().join("conformance")
}

pub fn run(args: &Args) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    write_missing_fixtures()?;

    let out = conformance_dir();
    let records = out.join("records");
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let harness = harness(&sh, args, &records, &[])?.run();
    let mut trials = report::read_records(&records).unwrap_or_default();
    // Rows in the order cases.toml lists the models.
    let cases = conformance::Cases::load(&conformance::cases::default_path())?;
    let rank = |model: &str| cases.models.fixtures.iter().position(|m| m == model);
    trials.sort_by(|a, b| (rank(&a.model), &a.name).cmp(&(rank(&b.model), &b.name)));
    if trials.is_empty() {
        harness.context("the conformance harness ran no trial")?;
        bail!(
            "the conformance harness wrote no records into {}",
            records.display()
        );
    }

    let report = Report {
        schema: report::SCHEMA,
        run: RunInfo {
            host: match &args.host_label {
                Some(label) => label.clone(),
                None => hostname(&sh),
            },
            backend: args.backend,
            dtype: args.dtype,
            transport: "library".into(),
            git_commit: cmd!(sh, "git rev-parse HEAD")
                .ignore_stderr()
                .read()
                .unwrap_or_else(|_| "unknown".into()),
            git_dirty: cmd!(sh, "git status --porcelain")
                .ignore_stderr()
                .read()
                .map(|s| !s.trim().is_empty())
                .unwrap_or(true),
            started_at,
            worker_version: llm_worker_rbee::VERSION.into(),
        },
        trials,
    };
    let report_path = out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(out.join("junit.xml"), junit(&report)?)?;

    println!("\n{}", report::table(&report.trials));
    for trial in report
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Failed)
    {
        let message = trial.message.as_deref().unwrap_or("");
        println!(
            "FAILED {}: {}",
            trial.name,
            message.lines().next().unwrap_or("")
        );
    }
    let count = |o| report.count(o);
    println!(
        "\n{} trials: {} passed, {} failed, {} ignored, {} expected failures ({}, {})",
        report.trials.len(),
        count(Outcome::Passed),
        count(Outcome::Failed),
        count(Outcome::Ignored),
        count(Outcome::ExpectedFailure),
        report_path.display(),
        out.join("junit.xml").display(),
    );
    if args.record {
        let name = format!("{}-{}-{}.json", report.run.host, args.backend, args.dtype);
        let recorded = project_root().join("golden/reports").join(name);
        std::fs::create_dir_all(recorded.parent().unwrap())?;
        std::fs::copy(&report_path, &recorded)?;
        println!("recorded {}", recorded.display());
    }
    if report.failed() > 0 {
        bail!("{} conformance trials failed", report.failed());
    }
    harness.context("the conformance harness failed")
}

/// The command that runs the harness so that it writes one record per trial into `records`
/// (emptied first), with the worker built with `features` too.
pub fn harness<'a>(
    sh: &'a Shell,
    args: &Args,
    records: &Path,
    features: &[&str],
) -> Result<xshell::Cmd<'a>> {
    if records.exists() {
        std::fs::remove_dir_all(records)?;
    }
    let mut features: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    if args.backend != Backend::Cpu {
        features.push(format!("llm-worker-rbee/{}", args.backend));
    }
    let features = if features.is_empty() {
        vec![]
    } else {
        vec!["--features".to_string(), features.join(",")]
    };
    let filters = &args.filters;
    Ok(cmd!(
        sh,
        "cargo test -p conformance --test conformance {features...} -- {filters...}"
    )
    .env("CONFORMANCE_BACKENDS", args.backend.name())
    .env("CONFORMANCE_DTYPES", args.dtype.name())
    .env("CONFORMANCE_RECORDS", records)
    .env("CONFORMANCE_FIXTURES", crate::fixtures::default_dir())
    .env("INSTA_WORKSPACE_ROOT", project_root()))
}

/// Writes the fixtures whose folder is missing (`cargo xtask fixtures` checks their bytes).
pub fn write_missing_fixtures() -> Result<()> {
    let dir = crate::fixtures::default_dir();
    for spec in synth::fixtures() {
        let folder = dir.join(spec.id);
        if !folder.join("model.safetensors").is_file() {
            synth::write_fixture(&spec, &folder)
                .with_context(|| format!("writing fixture `{}`", spec.id))?;
        }
    }
    Ok(())
}

fn hostname(sh: &Shell) -> String {
    cmd!(sh, "hostname")
        .ignore_stderr()
        .read()
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn junit(report: &Report) -> Result<String> {
    use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
    let mut junit = quick_junit::Report::new("conformance");
    let mut suite = TestSuite::new(format!("{}-{}", report.run.backend, report.run.dtype));
    for trial in &report.trials {
        let mut status = match trial.outcome {
            Outcome::Passed | Outcome::ExpectedFailure => TestCaseStatus::success(),
            Outcome::Failed => TestCaseStatus::non_success(NonSuccessKind::Failure),
            Outcome::Ignored => TestCaseStatus::skipped(),
        };
        if let Some(message) = &trial.message {
            status.set_description(message.clone());
        }
        let mut case = TestCase::new(trial.name.clone(), status);
        case.set_time(Duration::from_secs_f64(trial.duration_ms / 1000.0));
        suite.add_test_case(case);
    }
    junit.add_test_suite(suite);
    Ok(junit.to_string()?)
}
