//! `cargo xtask test`: run the conformance suite, then aggregate the trial records into
//! report.json, JUnit XML and a table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use conformance::report::{Report, RunInfo};
use conformance::trial::Transport;
use llm_worker_rbee::{synth, Backend, Dtype};
use xshell::{cmd, Shell};

use crate::{project_root, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// The backend to run on; not `cpu` needs that backend compiled in and a device [default:
    /// cpu; with --host, each host's backends from ci/hosts.toml].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// The dtype of weights and activations (GGUF models run in f32 only; cases.toml lists
    /// their bf16/f16 trials as expected failures).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// The host name recorded in the report [default: the hostname].
    #[arg(long, value_name = "LABEL")]
    pub host_label: Option<String>,
    /// Also copy the report to golden/reports/<host-label>-<backend>-<dtype>.json, the evidence
    /// `cargo xtask support-matrix` reads.
    #[arg(long)]
    pub record: bool,
    /// Run these models fetched and verified by `cargo xtask fetch-models` instead of the
    /// fixtures (repeatable). Their snapshots are new: review them with `cargo xtask snapshots`.
    #[arg(long = "model", value_name = "ID")]
    pub models: Vec<String>,
    /// How trials reach the worker: `library` (in the harness's process) or `http` (a
    /// `llm-worker-rbee serve` process per model, its SSE streams checked against the same
    /// goldens; the logit checks are the library's alone).
    #[arg(long, default_value = "library", value_name = "TRANSPORT", value_parser = transport)]
    pub via: Transport,
    /// Run on this host of ci/hosts.toml over ssh instead of here (repeatable; `--host all` for
    /// every host): in parallel, with the dtypes ci/hosts.toml gives it, results into
    /// target/conformance/hosts/<name>/, one table.
    #[arg(long = "host", visible_alias = "hosts", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// The hosts file --host reads [default: ci/hosts.toml].
    #[arg(long, value_name = "FILE", requires = "hosts")]
    pub hosts_file: Option<PathBuf>,
    /// Trial-name filters for the harness, e.g. `-- qwen2/` or `-- --exact NAME`.
    #[arg(last = true, value_name = "FILTER")]
    pub filters: Vec<String>,
}

impl Args {
    pub fn cpu() -> Self {
        Self {
            backend: None,
            dtype: Dtype::F32,
            host_label: None,
            record: false,
            models: Vec::new(),
            via: Transport::Library,
            hosts: Vec::new(),
            hosts_file: None,
            filters: Vec::new(),
        }
    }

    /// The CPU f32 suite over HTTP.
    pub fn cpu_http() -> Self {
        Self {
            via: Transport::Http,
            ..Self::cpu()
        }
    }
}

impl Args {
    /// The backend to run on here.
    pub fn backend(&self) -> Backend {
        self.backend.unwrap_or(Backend::Cpu)
    }
}

fn transport(value: &str) -> Result<Transport, String> {
    value.parse()
}

pub fn conformance_dir() -> PathBuf {
    target_dir().join("conformance")
}

pub fn run(args: &Args) -> Result<()> {
    if !args.hosts.is_empty() {
        return crate::hosts::test(args);
    }
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let models = args
        .models
        .iter()
        .map(|id| Ok((id.clone(), crate::models::verified_folder(id)?)))
        .collect::<Result<Vec<_>>>()?;
    if models.is_empty() {
        write_missing_fixtures()?;
    }

    let out = conformance_dir();
    let records = out.join("records");
    let host = match &args.host_label {
        Some(label) => label.clone(),
        None => hostname(&sh),
    };
    let (git_commit, git_dirty) = git_state(&sh);
    let mut run = RunInfo::starting_now(host, args.backend(), args.dtype, git_commit, git_dirty);
    run.transport = args.via.name().into();
    let listed: String = models
        .iter()
        .map(|(id, folder)| format!("{id}={}\n", folder.display()))
        .collect();
    let harness = harness(&sh, args, &records, &[])?
        .env("CONFORMANCE_MODELS", listed)
        .run();
    let cases = conformance::cases::Cases::load(&conformance::cases::default_path())?;
    let ids = match models.is_empty() {
        true => cases.models.ids(),
        false => args.models.clone(),
    };
    let report = match Report::from_records(run, &records, &ids) {
        Ok(report) if !report.trials.is_empty() => report,
        _ => {
            harness.context("the conformance harness failed")?;
            bail!(
                "the conformance harness wrote no records into {}",
                records.display()
            );
        }
    };
    report.write(&out)?;
    println!("\n{}", report.summary());
    println!(
        "report: {}, {}",
        out.join("report.json").display(),
        out.join("junit.xml").display()
    );
    if args.record {
        record(&report, &out.join("report.json"), &args.models)?;
    }
    if report.failed() > 0 {
        bail!("{} conformance trials failed", report.failed());
    }
    harness.context("the conformance harness failed")
}

/// Copies a report into golden/reports/, the evidence the support matrix is made from; a run
/// of real models is named after them too, and one over HTTP says so.
pub fn record(report: &Report, file: &Path, models: &[String]) -> Result<()> {
    let run = &report.run;
    let mut name = format!("{}-{}-{}", run.host, run.backend, run.dtype);
    if !models.is_empty() {
        name = format!("{name}-{}", models.join("+"));
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
        let synced = std::fs::read_to_string(project_root().join(crate::hosts::SOURCE_COMMIT_FILE));
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
pub fn harness<'a>(
    sh: &'a Shell,
    args: &Args,
    records: &Path,
    worker_features: &[&str],
) -> Result<xshell::Cmd<'a>> {
    if records.exists() {
        std::fs::remove_dir_all(records)?;
    }
    let worker = match args.via {
        Transport::Library => None,
        Transport::Http => {
            let build = crate::build::Args {
                backend: args.backend(),
                release: false,
                cuda_compute_cap: None,
            };
            Some(crate::build::build(&build, worker_features)?.worker)
        }
    };
    let mut features: Vec<String> = worker_features
        .iter()
        .map(|f| format!("llm-worker-rbee/{f}"))
        .collect();
    features.extend(crate::build::backend_feature(args.backend()));
    let features = if features.is_empty() {
        vec![]
    } else {
        vec!["--features".to_string(), features.join(",")]
    };
    let target = crate::build::prepare(sh, args.backend(), None)?;
    let filters = &args.filters;
    let mut harness = cmd!(
        sh,
        "cargo test -p conformance --test conformance {features...} --target-dir {target} -- {filters...}"
    );
    if let Some(worker) = worker {
        harness = harness.env("CONFORMANCE_WORKER", worker);
    }
    Ok(harness
        .env("CONFORMANCE_TRANSPORT", args.via.name())
        .env("CONFORMANCE_BACKENDS", args.backend().name())
        .env("CONFORMANCE_DTYPES", args.dtype.name())
        .env("CONFORMANCE_RECORDS", records)
        .env("CONFORMANCE_FIXTURES", crate::fixtures::default_dir())
        .env("INSTA_WORKSPACE_ROOT", project_root()))
}

/// Writes the fixtures whose folder is missing (`cargo xtask fixtures` checks their bytes).
pub fn write_missing_fixtures() -> Result<()> {
    let dir = crate::fixtures::default_dir();
    synth::write_missing(&dir)
        .with_context(|| format!("writing fixtures into {}", dir.display()))?;
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
