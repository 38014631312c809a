//! Project tasks: `cargo xtask <command>`. Each command is a plain function in its own module.

mod ci;
mod fixtures;

use std::path::{Path, PathBuf};

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
    /// Run every check CI runs: formatting, clippy, the fixture lock, and the tests.
    Ci,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Fixtures(args) => fixtures::run(&args),
        Command::Ci => ci::run(),
    }
}

/// The workspace root.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory (honours CARGO_TARGET_DIR).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    }
}
