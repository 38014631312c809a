//! `cargo xtask bench`: measured figures, never test assertions.
//!
//! `bench --model M | --shape S` measures one model with the worker's own `bench` command
//! (which is also what a GPU host runs from the bundle), with `--peer llama.cpp` in turns with
//! llama.cpp on the CPU; `bench http` loads the HTTP worker
//! with concurrent clients.

mod http;
mod llama_cpp;
mod model;
mod peer;

use anyhow::Result;

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
