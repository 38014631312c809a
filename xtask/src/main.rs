//! Project tasks: `cargo xtask <command>`. Each command is a plain function in its own module.

mod bench;
mod build;
mod bundle;
mod ci;
mod cuda;
mod fixtures;
mod harness;
mod hosts;
mod kernel_format;
mod models;
mod mutants;
mod paths;
mod reference;
mod results;
mod snapshots;
mod support_matrix;
mod test;
mod tools;
mod workflow;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Tasks of the llm-worker-rbee project",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the tiny fixture models into target/fixtures, verify their bytes against
    /// conformance/fixtures.lock and check that greedy decoding stays far from ties.
    Fixtures(fixtures::Args),
    /// Run the conformance suite (by default every fixture on cpu in f32) and print the table;
    /// writes target/conformance/report.json and junit.xml.
    Test(test::Args),
    /// Build the worker and the conformance harness for a backend (for cuda without a toolkit,
    /// one is provisioned into target/cuda-toolkit first).
    Build(build::Args),
    /// Make one archive that runs the suite on a GPU machine without Rust or network.
    Bundle(bundle::Args),
    /// Download models of conformance/models.toml into the Hugging Face cache (HF_HOME,
    /// HF_ENDPOINT and HF_TOKEN honoured), resuming interrupted downloads, and verify each file's
    /// sha256 against conformance/models.lock (the first fetch of a file records it there).
    /// Verified models are what `llm-worker-rbee --model ID` and `cargo xtask test --model ID`
    /// load.
    FetchModels(models::FetchArgs),
    /// List the models of the manifest and whether each is verified, present in the cache or
    /// absent here; reads no network.
    Models(models::Args),
    /// Write the transformers reference (golden/reference/) of the fixtures, or of one fetched
    /// model with --model ID; installs torch and transformers into target/ci-venvs/ first.
    Reference(reference::Args),
    /// Take in a results archive from a bundle's run.sh.
    Results(results::Args),
    /// Review the pending snapshots (.snap.new) under golden/snapshots/.
    Snapshots(snapshots::Args),
    /// Write MODEL_SUPPORT.md from the committed reports in golden/reports/.
    SupportMatrix(support_matrix::Args),
    /// Measure speed and memory (figures, not tests): `bench --model M | --shape S` the load,
    /// prefill and decode speed, memory and roofline of one model against a plain candle loop
    /// (`--check ci/bench/targets.toml` compares with the targets); `bench http` loads the HTTP
    /// worker with concurrent clients.
    Bench(bench::Args),
    /// Mutation testing (not a CI step; under an hour a part on two cores): cargo-mutants,
    /// installed into target/tools/, over a part of the worker with the conformance suite and
    /// the worker's tests; writes ci/mutants/<part>.md with the kill ratio and every surviving
    /// mutant, explained by ci/mutants/survivors.toml or not.
    Mutants(mutants::Args),
    /// Run every check CI runs: formatting, clippy, fixtures, tests, the conformance suite
    /// (also under nextest and with the fault injected), the remote hosts, and the support
    /// matrix.
    Ci(ci::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Fixtures(args) => fixtures::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Bundle(args) => bundle::run(&args),
        Command::FetchModels(args) => models::fetch_models(&args),
        Command::Models(args) => models::run(&args),
        Command::Reference(args) => reference::run(&args),
        Command::Results(args) => results::run(&args),
        Command::Snapshots(args) => snapshots::run(&args),
        Command::SupportMatrix(args) => support_matrix::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Mutants(args) => mutants::run(&args),
        Command::Ci(args) => ci::run(&args),
    }
}
