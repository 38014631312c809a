//! Running the conformance harness (`cargo test -p conformance --test conformance`) so that it
//! writes one record per trial, and what a run is labelled with: the commit, the host. Used by
//! `test`, `ci`, `hosts`, `bundle` and `results`.

use std::path::Path;

use anyhow::Result;
use conformance::report::Report;
use conformance::trial::Transport;
use llm_worker_rbee_api::{Backend, Dtype, Engine};
use xshell::{cmd, Shell};

use crate::build;
use crate::paths::{fixtures_dir, project_root, SOURCE_COMMIT_FILE};

/// What the harness runs: one backend and dtype, through one transport, the trials the
/// filters pick.
pub struct Selection<'a> {
    pub backend: Backend,
    pub dtype: Dtype,
    pub via: Transport,
    /// `CONFORMANCE_ENGINE`; `None` for the worker's default.
    pub engine: Option<Engine>,
    pub filters: &'a [String],
}

/// Copies a report into golden/reports/, the evidence the support matrix is made from; a run
/// of real models is named after them too, one on an engine other than the backend's default
/// names it, and one over HTTP says so.
pub fn record(report: &Report, file: &Path, models: &[String]) -> Result<()> {
    let run = &report.run;
    let mut name = format!("{}-{}-{}", run.host, run.backend, run.dtype);
    if !models.is_empty() {
        name = format!("{name}-{}", models.join("+"));
    }
    if run.engine != Engine::default_for(run.backend).name() {
        name = format!("{name}-{}", run.engine);
    }
    if run.transport != Transport::Library.name() {
        name = format!("{name}-{}", run.transport);
    }
    let name = format!("{name}.json");
    let recorded = project_root().join("golden/reports").join(name);
    std::fs::create_dir_all(recorded.parent().unwrap())?;
    std::fs::copy(file, &recorded)?;
    println!("recorded {}", recorded.display());
    Ok(())
}

/// The commit checked out, and whether the working tree has uncommitted changes.
/// The commit and whether the tree differs from it; a source tree synced to a host has no
/// `.git`, only the commit it was made from, and no changes.
pub fn git_state(sh: &Shell) -> (String, bool) {
    let Ok(commit) = cmd!(sh, "git rev-parse HEAD").ignore_stderr().read() else {
        let synced = std::fs::read_to_string(project_root().join(SOURCE_COMMIT_FILE));
        return match synced {
            Ok(commit) => (commit.trim().to_string(), false),
            Err(_) => ("unknown".into(), true),
        };
    };
    let dirty = cmd!(sh, "git status --porcelain")
        .ignore_stderr()
        .read()
        .map(|s| !s.trim().is_empty())
        .unwrap_or(true);
    (commit, dirty)
}

/// The command that runs the harness so that it writes one record per trial into `records`
/// (emptied first), with the worker built with `worker_features` too (e.g. `fault-injection`).
/// Over HTTP, the worker binary is built first, with the same features.
pub fn command<'a>(
    sh: &'a Shell,
    selection: &Selection,
    records: &Path,
    worker_features: &[&str],
) -> Result<xshell::Cmd<'a>> {
    if records.exists() {
        std::fs::remove_dir_all(records)?;
    }
    let worker = match selection.via {
        Transport::Library => None,
        Transport::Http | Transport::OpenAi => {
            let build = build::Args {
                backend: selection.backend,
                release: false,
                cuda_compute_cap: None,
            };
            Some(build::build(&build, worker_features)?.worker)
        }
    };
    let mut features: Vec<String> = worker_features
        .iter()
        .map(|f| format!("llm-worker-rbee/{f}"))
        .collect();
    features.extend(build::backend_feature(selection.backend));
    let features = if features.is_empty() {
        vec![]
    } else {
        vec!["--features".to_string(), features.join(",")]
    };
    let target = build::prepare(sh, selection.backend, None)?;
    let filters = selection.filters;
    let mut harness = cmd!(
        sh,
        "cargo test -p conformance --test conformance {features...} --target-dir {target} -- {filters...}"
    );
    if let Some(worker) = worker {
        harness = harness.env("CONFORMANCE_WORKER", worker);
    }
    if let Some(engine) = selection.engine {
        harness = harness.env("CONFORMANCE_ENGINE", engine.name());
    }
    // The harness writes the fixtures that are missing; `cargo xtask fixtures` checks their
    // bytes.
    Ok(harness
        .env("CONFORMANCE_TRANSPORT", selection.via.name())
        .env("CONFORMANCE_BACKENDS", selection.backend.name())
        .env("CONFORMANCE_DTYPES", selection.dtype.name())
        .env("CONFORMANCE_RECORDS", records)
        .env("CONFORMANCE_FIXTURES", fixtures_dir())
        .env("CONFORMANCE_WRITE_FIXTURES", "1")
        .env("INSTA_WORKSPACE_ROOT", project_root()))
}

pub fn hostname(sh: &Shell) -> String {
    cmd!(sh, "hostname")
        .ignore_stderr()
        .read()
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}
