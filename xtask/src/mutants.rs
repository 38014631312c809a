//! `cargo xtask mutants`: cargo-mutants over the worker's generation, sampling, cache, config
//! and tokenizer code (the scope and the test command are in .cargo/mutants.toml, so a plain
//! `cargo mutants` runs the same), then a summary in ci/mutants/summary.md: the date, commit,
//! scope, kill ratio and every surviving mutant with the reason ci/mutants/survivors.toml gives
//! for it, or none. Not a CI step: it takes most of an hour on two cores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::harness::git_state;
use crate::paths::{fixtures_dir, project_root, target_dir};

/// The cargo-mutants release the command installs (from crates.io, into target/tools/).
const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// The least share of viable mutants the tests must kill.
const KILL_RATIO_TARGET: f64 = 0.95;

#[derive(clap::Args)]
pub struct Args {
    /// Only the mutants whose name matches this regex (as `cargo mutants --list` names them);
    /// the summary then goes to target/mutants/summary.md, not ci/mutants/.
    #[arg(long, value_name = "REGEX")]
    re: Option<String>,
    /// Write the summary again from the last run's outcomes (after editing
    /// ci/mutants/survivors.toml) without running anything.
    #[arg(long)]
    summary_only: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let sh = Shell::new()?;
    let root = project_root();
    sh.change_dir(&root);
    let out = target_dir().join("mutants");
    let summary_path = match args.re {
        None => root.join("ci/mutants/summary.md"),
        Some(_) => out.join("summary.md"),
    };
    let survivors = Survivors::load(&root.join("ci/mutants/survivors.toml"))?;
    if args.summary_only {
        let outcomes = Outcomes::load(&out)?;
        let run = RunInfo::load(&out)?;
        return write_summary(&summary_path, &run, &outcomes, &survivors);
    }
    let tool = install(&sh)?;
    let (commit, dirty) = git_state(&sh);
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let started = Instant::now();
    let re: Vec<String> = match &args.re {
        Some(re) => vec!["--re".into(), re.clone()],
        None => vec![],
    };
    // One job in one copy of the tree, built in target/mutants/build: a later run rebuilds only
    // the mutated crate, where a fresh copy would build every dependency again (7 minutes here).
    // The suite writes the fixtures it misses into this tree's target/fixtures once and reads
    // them there; its records and snapshots go nowhere that counts.
    let records = out.join("records");
    let mutants = cmd!(
        sh,
        "{tool} mutants --output {out} --jobs 1 --colors never {re...}"
    )
    .env("CARGO_TARGET_DIR", out.join("build"))
    .env("CONFORMANCE_FIXTURES", fixtures_dir())
    .env("CONFORMANCE_WRITE_FIXTURES", "1")
    .env("CONFORMANCE_RECORDS", &records)
    .env("CI", "true")
    .env("INSTA_UPDATE", "no");
    eprintln!("$ {mutants}");
    let status = std::process::Command::from(mutants).status()?;
    // cargo-mutants exits 2 when mutants survive and 3 on timeouts: outcomes, not failures.
    match status.code() {
        Some(0 | 2 | 3) => {}
        code => bail!(
            "cargo mutants failed (exit {code:?}); its log is in {}",
            out.join("mutants.out/debug.log").display()
        ),
    }
    let run = RunInfo {
        started_at,
        commit,
        dirty,
        minutes: started.elapsed().as_secs_f64() / 60.0,
        re: args.re.clone(),
        tool_version: CARGO_MUTANTS_VERSION.into(),
    };
    run.save(&out)?;
    let outcomes = Outcomes::load(&out)?;
    write_summary(&summary_path, &run, &outcomes, &survivors)
}

/// cargo-mutants at [`CARGO_MUTANTS_VERSION`], installed into target/tools/ when missing.
fn install(sh: &Shell) -> Result<PathBuf> {
    let root = target_dir().join("tools/cargo-mutants");
    let tool = root.join("bin/cargo-mutants");
    let installed = cmd!(sh, "{tool} mutants --version")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    if installed.trim() != format!("cargo-mutants {CARGO_MUTANTS_VERSION}") {
        eprintln!(
            "installing cargo-mutants {CARGO_MUTANTS_VERSION} into {}",
            root.display()
        );
        cmd!(
            sh,
            "cargo install --locked --quiet --version {CARGO_MUTANTS_VERSION} --root {root} cargo-mutants"
        )
        .run()
        .context("installing cargo-mutants from crates.io")?;
    }
    Ok(tool)
}

/// What the summary says about the run beside its outcomes.
#[derive(serde::Serialize, Deserialize)]
struct RunInfo {
    started_at: String,
    commit: String,
    dirty: bool,
    minutes: f64,
    re: Option<String>,
    tool_version: String,
}

impl RunInfo {
    fn file(out: &Path) -> PathBuf {
        out.join("run.json")
    }

    fn save(&self, out: &Path) -> Result<()> {
        Ok(std::fs::write(
            Self::file(out),
            serde_json::to_string_pretty(self)?,
        )?)
    }

    fn load(out: &Path) -> Result<Self> {
        let file = Self::file(out);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "{}: no run to summarize; run `cargo xtask mutants`",
                file.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}", file.display()))
    }
}

/// Each mutant's outcome, from cargo-mutants' outcomes.json, keyed by its name without the
/// line and column (which move with every edit above it).
struct Outcomes {
    by_outcome: BTreeMap<Summary, Vec<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Summary {
    CaughtMutant,
    MissedMutant,
    Timeout,
    Unviable,
    Success,
    Failure,
}

#[derive(Deserialize)]
struct OutcomesFile {
    outcomes: Vec<OutcomeEntry>,
}

#[derive(Deserialize)]
struct OutcomeEntry {
    scenario: serde_json::Value,
    summary: Summary,
}

impl Outcomes {
    fn load(out: &Path) -> Result<Self> {
        let file = out.join("mutants.out/outcomes.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!("{}: no outcomes; run `cargo xtask mutants`", file.display())
        })?;
        let parsed: OutcomesFile =
            serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
        let mut by_outcome: BTreeMap<Summary, Vec<String>> = BTreeMap::new();
        for entry in parsed.outcomes {
            let Some(mutant) = entry.scenario.get("Mutant") else {
                continue; // the baseline
            };
            by_outcome
                .entry(entry.summary)
                .or_default()
                .push(mutant_name(mutant)?);
        }
        Ok(Self { by_outcome })
    }

    fn names(&self, summary: Summary) -> &[String] {
        self.by_outcome.get(&summary).map_or(&[], Vec::as_slice)
    }

    fn count(&self, summary: Summary) -> usize {
        self.names(summary).len()
    }
}

/// `file: replacement in function`, as `cargo mutants --list` names a mutant, less the line and
/// column.
fn mutant_name(mutant: &serde_json::Value) -> Result<String> {
    let text = |key: &str| mutant.get(key).and_then(|v| v.as_str());
    let name = mutant
        .get("name")
        .and_then(|v| v.as_str())
        .context("a mutant in outcomes.json has no name")?;
    let file = text("file").context("a mutant in outcomes.json has no file")?;
    // "file:line:col: what" -> "file: what"
    let what = name
        .splitn(4, ':')
        .nth(3)
        .map(str::trim)
        .with_context(|| format!("unexpected mutant name `{name}`"))?;
    Ok(format!("{file}: {what}"))
}

/// The surviving mutants the project has looked at, each with why no test can kill it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Survivors {
    #[serde(default)]
    equivalent: Vec<Equivalent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Equivalent {
    mutant: String,
    why: String,
}

impl Survivors {
    fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }

    fn why(&self, mutant: &str) -> Option<&str> {
        self.equivalent
            .iter()
            .find(|e| e.mutant == mutant)
            .map(|e| e.why.as_str())
    }
}

fn write_summary(
    path: &Path,
    run: &RunInfo,
    outcomes: &Outcomes,
    survivors: &Survivors,
) -> Result<()> {
    let caught = outcomes.count(Summary::CaughtMutant);
    let missed = outcomes.count(Summary::MissedMutant);
    let timeout = outcomes.count(Summary::Timeout);
    let unviable = outcomes.count(Summary::Unviable);
    let viable = caught + missed + timeout;
    let ratio = if viable == 0 {
        0.0
    } else {
        (caught + timeout) as f64 / viable as f64
    };
    let config = std::fs::read_to_string(project_root().join(".cargo/mutants.toml"))
        .context(".cargo/mutants.toml")?;
    let mut text = String::new();
    text.push_str("# Mutation testing of the worker\n\n");
    text.push_str(
        "Written by `cargo xtask mutants` (cargo-mutants over the files below, the conformance \
         suite and the worker's tests as the test command); not a CI step.\n\n",
    );
    text.push_str(&format!(
        "- Run: {} UTC, {:.0} minutes, cargo-mutants {}\n",
        run.started_at.replace('T', " ").trim_end_matches('Z'),
        run.minutes,
        run.tool_version
    ));
    text.push_str(&format!(
        "- Commit: {}{}\n",
        run.commit,
        if run.dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    ));
    if let Some(re) = &run.re {
        text.push_str(&format!("- Only mutants matching `{re}`\n"));
    }
    text.push_str(&format!(
        "- Kill ratio: {:.1}% ({} caught + {} timed out of {} viable; target {:.0}%); {} unviable \
         (did not build) not counted\n\n",
        ratio * 100.0,
        caught,
        timeout,
        viable,
        KILL_RATIO_TARGET * 100.0,
        unviable
    ));
    text.push_str("## Scope and tests (.cargo/mutants.toml)\n\n```toml\n");
    text.push_str(config.trim_end());
    text.push_str("\n```\n\n## Surviving mutants\n\n");
    let missed_names = outcomes.names(Summary::MissedMutant);
    let mut unexplained = 0;
    if missed_names.is_empty() {
        text.push_str("None.\n");
    }
    for name in missed_names {
        match survivors.why(name) {
            Some(why) => text.push_str(&format!("- `{name}`: equivalent; {why}\n")),
            None => {
                unexplained += 1;
                text.push_str(&format!("- `{name}`: not explained\n"));
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, &text)?;
    println!("{text}\nwritten to {}", path.display());
    if ratio < KILL_RATIO_TARGET {
        bail!(
            "the kill ratio {:.1}% is below the target {:.0}%",
            ratio * 100.0,
            KILL_RATIO_TARGET * 100.0
        );
    }
    if unexplained > 0 {
        bail!(
            "{unexplained} surviving mutant(s) are not explained: kill each with a test or say \
             in ci/mutants/survivors.toml why it is equivalent"
        );
    }
    Ok(())
}
