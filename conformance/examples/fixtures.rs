//! The fixture check `cargo xtask fixtures` runs: every fixture written afresh, its bytes
//! against conformance/fixtures.lock, and its greedy decoding far from ties; or a search for a
//! fixture's seed. An example, not a binary, so that it builds with the test harness's
//! dependencies and shares its build of candle.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use conformance::cases::{default_path, Cases};
use conformance::fixtures;
use conformance::paths::workspace_root;

#[derive(Parser)]
struct Args {
    /// Where to write the fixtures.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Rewrite conformance/fixtures.lock from the files written now.
    #[arg(long)]
    update_lock: bool,
    /// Only write the fixtures whose folder is missing, and check nothing.
    #[arg(long, conflicts_with_all = ["update_lock", "search_seed"])]
    missing: bool,
    /// Try seeds of this fixture from --from up and print the first that passes.
    #[arg(long, value_name = "ID")]
    search_seed: Option<String>,
    #[arg(long, default_value_t = 0, value_name = "SEED")]
    from: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.missing {
        llm_worker_rbee::synth::write_missing(&args.out)?;
        return Ok(());
    }
    let cases = Cases::load(&default_path())?;
    match &args.search_seed {
        Some(id) => fixtures::search_seed(id, args.from, &cases, &args.out.join("seed-search")),
        None => fixtures::check_all(
            &cases,
            &args.out,
            &workspace_root().join("conformance/fixtures.lock"),
            args.update_lock,
        ),
    }
}
