//! `cargo xtask results`: take in a results archive from a bundle's run.sh: show its reports,
//! put its pending snapshots up for review, check its fault-injection run, and with
//! `--record` keep its reports as evidence.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use conformance::cases::Cases;
use conformance::report::Report;
use flate2::read::GzDecoder;

use crate::harness;
use crate::paths::{project_root, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// The results.tar.gz that run.sh wrote.
    archive: PathBuf,
    /// Copy the reports (not the fault-injection one) to golden/reports/.
    #[arg(long)]
    record: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let stem = args
        .archive
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_end_matches(".tar.gz")
        .to_string();
    let dir = target_dir().join("conformance/imported").join(stem);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let file =
        File::open(&args.archive).with_context(|| format!("opening {}", args.archive.display()))?;
    tar::Archive::new(GzDecoder::new(file))
        .unpack(&dir)
        .with_context(|| format!("unpacking {}", args.archive.display()))?;
    let results = dir.join("results");
    let cases = Cases::load(&conformance::cases::default_path())?;

    let mut failed = 0;
    for run in run_dirs(&results)? {
        let report_file = run.join("report.json");
        let report = Report::load(&report_file)?;
        let label = run
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if label.starts_with("fault-injection") {
            match report.check_fault_injection(
                &cases.models.fixtures,
                &cases.single_token_prompts(),
                &cases.refused_prompts(),
            ) {
                Ok(caught) => println!("{label}: all {caught} greedy trials failed, as they must"),
                Err(message) => {
                    failed += 1;
                    println!("{label}: {message}");
                }
            }
            continue;
        }
        println!(
            "\n== {label} on {} (commit {})\n{}",
            report.run.host,
            report.run.git_commit,
            report.summary()
        );
        failed += report.failed();
        if args.record {
            harness::record(&report, &report_file, &[])?;
        }
    }

    take_snapshots(&results)?;
    if failed > 0 {
        bail!(
            "{failed} trials or checks failed in {}",
            args.archive.display()
        );
    }
    Ok(())
}

/// Copies the pending snapshots of an unpacked results folder (`snapshots/*.snap.new`) beside
/// the goldens, for `cargo xtask snapshots` to review.
pub fn take_snapshots(results: &Path) -> Result<usize> {
    let snapshots = project_root().join("golden/snapshots");
    let mut pending = 0;
    if let Ok(entries) = std::fs::read_dir(results.join("snapshots")) {
        for entry in entries {
            let entry = entry?;
            std::fs::copy(entry.path(), snapshots.join(entry.file_name()))?;
            pending += 1;
        }
    }
    println!(
        "{pending} pending snapshots from {} copied to {}; review them with `cargo xtask snapshots`",
        results.display(),
        snapshots.display()
    );
    Ok(pending)
}

/// The folders of an unpacked results folder that hold a report.json (one per backend-dtype,
/// and `fault-injection-*`), sorted.
pub fn run_dirs(results: &Path) -> Result<Vec<PathBuf>> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(results)
        .with_context(|| format!("reading {}", results.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("report.json").is_file())
        .collect();
    runs.sort();
    Ok(runs)
}
