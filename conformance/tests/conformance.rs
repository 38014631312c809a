//! The conformance harness: one libtest trial per case of `conformance/cases.toml`, named
//! `<model>/<backend>-<dtype>/<seed>/<prompt-id>`, so `cargo test -p conformance -- qwen2/`
//! filters and `cargo nextest run -p conformance` lists and runs them. Every trial writes its
//! record for `cargo xtask test` to aggregate.
//!
//! `CONFORMANCE_WRITE_FIXTURES` makes it write the missing fixture models first.
//! `CONFORMANCE_TRANSPORT=http` runs the trials through a `serve` process per model, the binary
//! `CONFORMANCE_WORKER` names (`cargo xtask test --via http` sets both).
//!
//! Where no cargo is at hand (a bundle on a GPU machine), setting `CONFORMANCE_REPORT_DIR` makes
//! the harness write report.json and junit.xml there itself, for one backend and dtype, with
//! `CONFORMANCE_HOST`, `CONFORMANCE_GIT_COMMIT` and `CONFORMANCE_GIT_DIRTY` in the run info.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use conformance::cases::Cases;
use conformance::paths::Paths;
use conformance::record::Outcome;
use conformance::report::{Report, RunInfo};
use conformance::suite::Suite;
use conformance::trial::{expand, Selection};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let paths = Paths::from_env();
    // A bundle carries the means to make the fixtures rather than their bytes.
    if std::env::var_os("CONFORMANCE_WRITE_FIXTURES").is_some() {
        if let Err(e) = llm_worker_rbee::synth::write_missing(&paths.fixtures) {
            eprintln!(
                "error: cannot write the fixtures into {}: {e}",
                paths.fixtures.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let setup = Cases::load(&paths.cases)
        .map_err(|e| e.to_string())
        .and_then(|cases| Ok((cases, Selection::from_env()?)))
        .and_then(|(cases, selection)| Ok((report_run(&selection)?, cases, selection)));
    let (run, cases, selection) = match setup {
        Ok(setup) => setup,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let models = paths.model_ids(&cases);
    let specs = expand(&cases, &selection, &models);
    let suite = Arc::new(Suite::new(cases, paths.clone()));
    let trials = specs
        .into_iter()
        .map(|spec| {
            let suite = suite.clone();
            Trial::ignorable_test(spec.name.clone(), move || {
                let record = suite.run(&spec);
                let message = record.message.unwrap_or_default();
                match record.outcome {
                    Outcome::Passed | Outcome::ExpectedFailure => Ok(Completion::Completed),
                    Outcome::Ignored => Ok(Completion::ignored_with(message)),
                    Outcome::Failed => Err(Failed::from(message)),
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some((dir, run)) = run {
        let written = Report::from_records(run, &paths.records, &models)
            .map_err(|e| e.to_string())
            .and_then(|report| {
                report.write(&dir).map_err(|e| e.to_string())?;
                Ok(report)
            });
        match written {
            Ok(report) => println!("\n{}\nreport: {}", report.summary(), dir.display()),
            Err(message) => {
                eprintln!(
                    "error: cannot write the report into {}: {message}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    conclusion.exit_code()
}

/// Where to write a report, and its run info, when `CONFORMANCE_REPORT_DIR` asks for one.
fn report_run(selection: &Selection) -> Result<Option<(PathBuf, RunInfo)>, String> {
    let Some(dir) = std::env::var_os("CONFORMANCE_REPORT_DIR").map(PathBuf::from) else {
        return Ok(None);
    };
    let ([backend], [dtype]) = (selection.backends.as_slice(), selection.dtypes.as_slice()) else {
        return Err("CONFORMANCE_REPORT_DIR needs exactly one backend and one dtype".into());
    };
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let host = var("CONFORMANCE_HOST")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "unknown-host".into());
    let commit = var("CONFORMANCE_GIT_COMMIT").unwrap_or_else(|| "unknown".into());
    let dirty = var("CONFORMANCE_GIT_DIRTY").is_none_or(|d| d != "false");
    let mut run = RunInfo::starting_now(host, *backend, *dtype, commit, dirty);
    run.transport = selection.transport.name().into();
    run.engine = selection.run_engine(*backend).name().into();
    Ok(Some((dir, run)))
}
