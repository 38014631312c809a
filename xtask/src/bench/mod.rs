//! `cargo xtask bench`: measured figures, never test assertions.
//!
//! `bench --model M | --shape S` measures one model with the worker's own `bench` command
//! (which is also what a GPU host runs from the bundle); `bench http` loads the HTTP worker
//! with concurrent clients.

mod http;
mod model;

use std::path::PathBuf;

use anyhow::Result;
use llm_worker_rbee::Backend;
use xshell::{cmd, Shell};

use crate::project_root;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    bench: Option<Bench>,
    #[command(flatten)]
    model: model::ModelArgs,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// The HTTP worker under concurrent load: requests/s, p50/p99 latency, and the server's
    /// RSS after warm-up against at the end. Writes target/bench/http.json.
    Http(http::HttpArgs),
}

pub fn run(args: &Args) -> Result<()> {
    match &args.bench {
        Some(Bench::Http(args)) => http::run(args),
        None => model::run(&args.model),
    }
}

/// Builds the release worker binary for `backend` and returns its path.
fn build_release(backend: Backend) -> Result<PathBuf> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let target = crate::build::prepare(&sh, backend, None)?;
    let features: Vec<String> = crate::build::backend_feature(backend)
        .map(|f| vec!["--features".into(), f])
        .unwrap_or_default();
    cmd!(
        sh,
        "cargo build --release -p llm-worker-rbee --bin llm-worker-rbee {features...} --target-dir {target}"
    )
    .run()?;
    Ok(target.join("release/llm-worker-rbee"))
}
