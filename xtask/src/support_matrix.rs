//! `cargo xtask support-matrix`: MODEL_SUPPORT.md from the committed reports, and nothing else.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use conformance::cases::Cases;
use conformance::matrix::{self, CommittedReport};
use conformance::report::Report;

use crate::paths::project_root;

#[derive(clap::Args)]
pub struct Args {
    /// Fail (with the difference) when MODEL_SUPPORT.md is not what the reports produce,
    /// instead of writing it.
    #[arg(long)]
    pub check: bool,
}

pub fn path() -> PathBuf {
    project_root().join("MODEL_SUPPORT.md")
}

pub fn run(args: &Args) -> Result<()> {
    let root = project_root();
    let cases = Cases::load(&conformance::cases::default_path())?;
    let dir = root.join("golden/reports");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let reports = files
        .iter()
        .map(|file| {
            Ok(CommittedReport {
                path: file
                    .strip_prefix(&root)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
                report: Report::load(file)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let text = matrix::render(&cases, &reports, &root.join("golden/snapshots"));
    let path = path();
    if args.check {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != text {
            let diff = similar::TextDiff::from_lines(&committed, &text)
                .unified_diff()
                .header("MODEL_SUPPORT.md", "from golden/reports")
                .to_string();
            bail!("MODEL_SUPPORT.md is not what the committed reports produce; run `cargo xtask support-matrix`:\n{diff}");
        }
        println!(
            "MODEL_SUPPORT.md matches {} committed reports",
            reports.len()
        );
        return Ok(());
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} from {} reports", path.display(), reports.len());
    Ok(())
}
