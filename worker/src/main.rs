//! The `llm-worker-rbee` command: each subcommand in its own module of `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli {
    pub mod args;
    pub mod bench;
    pub mod generate;
    pub mod inspect;
    pub mod serve;
    pub mod synth;
}

use cli::{bench, generate, inspect, serve, synth};

/// A minimal LLM inference worker: loads a model folder (Hugging Face layout, SafeTensors or
/// GGUF) or a model fetched by `cargo xtask fetch-models`, detects its architecture and
/// generates tokens deterministically.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate tokens for one prompt and print them as they come (or one JSON object).
    Generate(generate::GenerateArgs),
    /// Print what was detected in a model folder, without loading the weights.
    Inspect(inspect::InspectArgs),
    /// Serve generations over HTTP: `POST /execute` streams tokens as server-sent events,
    /// `GET /health` and `GET /metrics` report the state. Prints `listening on http://ADDR`
    /// once listening; `/health` says `ready` once the model is loaded. Logs JSON lines to
    /// stderr. SIGTERM or ctrl-c cancels the running generation and exits.
    Serve(serve::ServeArgs),
    /// Write models with random weights: the fixture models the tests run on (`--fixtures`), or
    /// one with the shape of a real model (`--shape`: its config's sizes, a made-up tokenizer of
    /// its vocabulary size), for measuring speed and memory without downloads.
    Synth(synth::SynthArgs),
    /// Measure load time, prefill and decode speed, memory and the memory-bandwidth roofline
    /// of a model, and the same decode as a plain candle loop; `--check` compares the figures
    /// with targets. Figures, not tests.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    // candle captures a backtrace into its errors when RUST_BACKTRACE is set, and their
    // messages print it: users get the cause, never a backtrace (panics still honour
    // RUST_BACKTRACE, which std reads apart from RUST_LIB_BACKTRACE). Set before any thread.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let outcome = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (`RUST_LOG` filters them): for `serve`, JSON lines from level info, each
/// line of a job carrying its `job_id`; otherwise text from level warn.
fn init_logging(serving: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if serving { "info" } else { "warn" })
    });
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if serving {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.init();
    }
}
