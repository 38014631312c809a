//! `cargo xtask test`: run the conformance suite, then aggregate the trial records into
//! report.json, JUnit XML and a table.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use conformance::report::{Report, RunInfo};
use conformance::trial::Transport;
use llm_worker_rbee_api::{Backend, Dtype, Engine};
use xshell::Shell;

use crate::harness::{self, Selection};
use crate::paths::{conformance_dir, project_root};

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
    /// How trials reach the worker: `library` (in the harness's process), `http` (a
    /// `llm-worker-rbee serve` process per model, its `/execute` streams checked against the
    /// same goldens; the logit checks are the library's alone) or `openai` (the same server
    /// through `/v1/completions` with token-id prompts and `/v1/chat/completions`, streamed).
    #[arg(long, default_value = "library", value_name = "TRANSPORT", value_parser = transport)]
    pub via: Transport,
    /// What runs the models: `candle` (candle's modules, every backend) or `fast` (on cuda the
    /// fused kernels and graph for the llama family, on the cpu the quantized kernels for
    /// llama-family GGUF files, candle's modules for the rest) [default: fast on cuda and cpu,
    /// else candle]. A report of the engine that is not the default is recorded
    /// under a name that ends in it.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<Engine>,
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
            engine: None,
            hosts: Vec::new(),
            hosts_file: None,
            filters: Vec::new(),
        }
    }

    /// The CPU f32 suite over HTTP: `/execute` or OpenAI's API.
    pub fn cpu_via(via: Transport) -> Self {
        Self { via, ..Self::cpu() }
    }
}

impl Args {
    /// The backend to run on here.
    pub fn backend(&self) -> Backend {
        self.backend.unwrap_or(Backend::Cpu)
    }

    pub fn selection(&self) -> Selection<'_> {
        Selection {
            backend: self.backend(),
            dtype: self.dtype,
            via: self.via,
            engine: self.engine,
            filters: &self.filters,
        }
    }
}

fn transport(value: &str) -> Result<Transport, String> {
    value.parse()
}

pub fn run(args: &Args) -> Result<()> {
    if !args.hosts.is_empty() {
        return crate::hosts::test(&crate::hosts::Test {
            names: &args.hosts,
            file: args.hosts_file.as_deref(),
            backend: args.backend,
            via: args.via,
            filters: &args.filters,
            record: args.record,
        });
    }
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let models = args
        .models
        .iter()
        .map(|id| Ok((id.clone(), crate::models::verified_folder(id)?)))
        .collect::<Result<Vec<_>>>()?;
    let out = conformance_dir();
    let records = out.join("records");
    let host = match &args.host_label {
        Some(label) => label.clone(),
        None => harness::hostname(&sh),
    };
    let (git_commit, git_dirty) = harness::git_state(&sh);
    let mut run = RunInfo::starting_now(host, args.backend(), args.dtype, git_commit, git_dirty);
    run.transport = args.via.name().into();
    run.engine = args
        .engine
        .unwrap_or(Engine::default_for(args.backend()))
        .name()
        .into();
    let listed: String = models
        .iter()
        .map(|(id, folder)| format!("{id}={}\n", folder.display()))
        .collect();
    let harness = harness::command(&sh, &args.selection(), &records, &[])?
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
        harness::record(&report, &out.join("report.json"), &args.models)?;
    }
    if report.failed() > 0 {
        bail!("{} conformance trials failed", report.failed());
    }
    harness.context("the conformance harness failed")
}
