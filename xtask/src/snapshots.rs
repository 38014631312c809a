//! `cargo xtask snapshots`: review the pending `.snap.new` files insta wrote under
//! golden/snapshots/, one diff at a time.
//!
//! Kept because `cargo insta review` cannot do it here: cargo-insta (1.49) looks for pending
//! snapshots in the folders of the workspace's packages, found through `cargo metadata`, and
//! golden/snapshots/ is in none of them (it answers "No pending snapshots", with
//! `--workspace-root .` too). It would also be one more tool for a fresh machine to build.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::paths::project_root;

#[derive(clap::Args)]
pub struct Args {
    /// Accept the pending snapshots whose name contains this text (after showing each diff).
    #[arg(long, value_name = "FILTER")]
    accept: Option<String>,
    /// Delete the pending snapshots whose name contains this text.
    #[arg(long, value_name = "FILTER")]
    reject: Option<String>,
}

pub fn snapshots_dir() -> PathBuf {
    project_root().join("golden/snapshots")
}

/// Every `.snap.new` file, sorted.
pub fn pending(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".snap.new"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn run(args: &Args) -> Result<()> {
    let dir = snapshots_dir();
    let pending = pending(&dir)?;
    if pending.is_empty() {
        println!("no pending snapshots in {}", dir.display());
        return Ok(());
    }
    let interactive =
        args.accept.is_none() && args.reject.is_none() && std::io::stdin().is_terminal();
    let mut stdin = std::io::stdin().lock();
    let (mut accepted, mut rejected) = (0, 0);
    for new in &pending {
        let golden = PathBuf::from(new.to_string_lossy().trim_end_matches(".new"));
        let name = golden
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let matches = |filter: &Option<String>| filter.as_deref().is_some_and(|f| name.contains(f));
        println!(
            "\n=== {name} ({})",
            if golden.exists() { "changed" } else { "new" }
        );
        println!("{}", diff(&golden, new)?);
        let decision = if matches(&args.reject) {
            'r'
        } else if matches(&args.accept) {
            'a'
        } else if interactive {
            print!("[a]ccept, [r]eject, [s]kip? ");
            std::io::stdout().flush()?;
            let mut line = String::new();
            stdin.read_line(&mut line)?;
            line.trim().chars().next().unwrap_or('s')
        } else {
            's'
        };
        match decision {
            'a' => {
                std::fs::rename(new, &golden)
                    .with_context(|| format!("accepting {}", new.display()))?;
                accepted += 1;
                println!("accepted {}", golden.display());
            }
            'r' => {
                std::fs::remove_file(new)?;
                rejected += 1;
                println!("rejected");
            }
            _ => println!("skipped"),
        }
    }
    let left = pending.len() - accepted - rejected;
    println!("\n{accepted} accepted, {rejected} rejected, {left} still pending");
    if left > 0 && !interactive && args.accept.is_none() && args.reject.is_none() {
        bail!("{left} snapshots are pending review: run `cargo xtask snapshots` in a terminal, or pass --accept/--reject");
    }
    Ok(())
}

/// The golden contents against the pending ones (metadata headers left out).
fn diff(golden: &Path, new: &Path) -> Result<String> {
    let contents = |path: &Path| -> Result<String> {
        if !path.exists() {
            return Ok(String::new());
        }
        // insta trims the contents; both sides end in one newline so the diff shows content only.
        let snapshot = insta::Snapshot::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(snapshot
            .as_text()
            .map(|t| t.to_string())
            .unwrap_or_default())
    };
    let (old, new) = (contents(golden)?, contents(new)?);
    Ok(similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header("golden", "pending")
        .to_string())
}
