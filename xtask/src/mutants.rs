//! `cargo xtask mutants`: cargo-mutants over the worker's generation, sampling, cache, prompt,
//! chat, config and tokenizer code, in parts that each run in under an hour on two cores (the
//! test command is in .cargo/mutants.toml, which a plain `cargo mutants` reads too), then
//! ci/mutants/<part>.md: the date, commit, scope, kill ratio and every surviving mutant, killed
//! by a later rerun or explained by ci/mutants/survivors.toml, or neither. Not a CI step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::builder::PossibleValuesParser;
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::harness::git_state;
use crate::paths::{fixtures_dir, project_root, target_dir};

/// The cargo-mutants release the command installs (from crates.io, into target/tools/).
const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// The least share of viable mutants the tests must kill.
const KILL_RATIO_TARGET: f64 = 0.95;

/// The scope, in parts of under an hour each on two cores (a mutant takes 10 to 30 s to build
/// and test there).
const PARTS: &[Part] = &[
    Part {
        name: "generation",
        what: "generation, the greedy or sampled choice, the repeat penalty, the KV-cache reset, \
               the context checks, prompts, chat templates, special tokens and streamed text",
        files: &[
            "worker/src/worker.rs",
            "worker/src/request.rs",
            "worker/src/prompter.rs",
            "worker/src/chat.rs",
            "worker/src/tokens.rs",
        ],
    },
    Part {
        name: "config",
        what: "config.json in both transformers forms (sizes, epsilons, rotary settings and their \
               refusals) and the vocabularies built from GGUF metadata",
        files: &["worker/src/config.rs", "worker/src/gguf/tokenizer/*.rs"],
    },
];

struct Part {
    name: &'static str,
    what: &'static str,
    /// Globs, as cargo-mutants' `--file` takes them.
    files: &'static [&'static str],
}

#[derive(clap::Args)]
pub struct Args {
    /// The part of the worker to run or summarize (each under an hour on two cores); every
    /// part, one after the other, when not given.
    #[arg(long, value_parser = PossibleValuesParser::new(PARTS.iter().map(|p| p.name)))]
    part: Option<String>,
    /// Test only the mutants whose name matches this regex (as `cargo mutants --list` names
    /// them), e.g. the survivors of the last full run after adding tests for them; the summary
    /// then shows which of those survivors the rerun killed.
    #[arg(
        long,
        value_name = "REGEX",
        conflicts_with = "summary_only",
        requires = "part"
    )]
    re: Option<String>,
    /// Write the summary again from the last runs (after editing ci/mutants/survivors.toml)
    /// without running anything.
    #[arg(long)]
    summary_only: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let sh = Shell::new()?;
    let root = project_root();
    sh.change_dir(&root);
    let survivors = Survivors::load(&root.join("ci/mutants/survivors.toml"))?;
    let parts = PARTS
        .iter()
        .filter(|p| args.part.as_ref().is_none_or(|name| name == p.name));
    let mut failed = Vec::new();
    for part in parts {
        if let Err(e) = run_part(&sh, part, args, &survivors) {
            eprintln!("part `{}`: {e:#}", part.name);
            failed.push(part.name);
        }
    }
    if !failed.is_empty() {
        bail!("part(s) {} failed (above)", failed.join(", "));
    }
    Ok(())
}

fn run_part(sh: &Shell, part: &Part, args: &Args, survivors: &Survivors) -> Result<()> {
    let root = project_root();
    // The whole part's run, and the last run of some of its mutants (`--re`), each with its
    // cargo-mutants report (mutants.out/) and run.json.
    let full_dir = target_dir().join("mutants").join(part.name);
    let rerun_dir = full_dir.join("rerun");
    if !args.summary_only {
        let out = if args.re.is_some() {
            &rerun_dir
        } else {
            &full_dir
        };
        mutate(sh, part, out, args.re.as_deref())?;
    }
    let full = Run::load(&full_dir)?;
    // The scope the full run had, which later edits of the file do not change.
    // A rerun older than the full run says nothing about the code the full run tested.
    let rerun = match Run::load(&rerun_dir) {
        Ok(rerun) if rerun.info.started_at > full.info.started_at => Some(rerun),
        _ => None,
    };
    let summary = Tally::of(&full, rerun.as_ref(), survivors);
    let text = summary.render(part, &full.info, rerun.as_ref().map(|r| &r.info));
    let path = root.join(format!("ci/mutants/{}.md", part.name));
    std::fs::write(&path, &text).with_context(|| format!("{}", path.display()))?;
    println!("{text}\nwritten to {}", path.display());
    summary.verdict()
}

/// Runs cargo-mutants over `part` with its report in `out`, over the mutants `re` matches or
/// all.
fn mutate(sh: &Shell, part: &Part, out: &Path, re: Option<&str>) -> Result<()> {
    let tool = install(sh)?;
    let config = read_config()?;
    let (commit, dirty) = git_state(sh);
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let started = Instant::now();
    let mut filter: Vec<&str> = part.files.iter().flat_map(|f| ["--file", f]).collect();
    filter.extend(re.iter().flat_map(|re| ["--re", re]));
    // One job in one copy of the tree, built in target/mutants/build: a later run rebuilds only
    // the mutated crate, where a fresh copy would build every dependency again (6 minutes here).
    // The suite writes the fixtures it misses into this tree's target/fixtures once and reads
    // them there; its records and snapshots go nowhere that counts.
    // cargo-mutants makes `out` itself, but not its parent (absent in a fresh clone).
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mutants = cmd!(
        sh,
        "{tool} mutants --output {out} --jobs 1 --colors never {filter...}"
    )
    .env("CARGO_TARGET_DIR", target_dir().join("mutants/build"))
    .env("CONFORMANCE_FIXTURES", fixtures_dir())
    .env("CONFORMANCE_WRITE_FIXTURES", "1")
    .env("CONFORMANCE_RECORDS", out.join("records"))
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
    let info = RunInfo {
        started_at,
        commit,
        dirty,
        minutes: started.elapsed().as_secs_f64() / 60.0,
        re: re.map(str::to_string),
        tool_version: CARGO_MUTANTS_VERSION.into(),
        config,
        files: part.files.iter().map(|f| f.to_string()).collect(),
    };
    std::fs::write(out.join("run.json"), serde_json::to_string_pretty(&info)?)?;
    Ok(())
}

/// The scope and test command: cargo-mutants' own settings file.
fn read_config() -> Result<String> {
    let path = project_root().join(".cargo/mutants.toml");
    std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
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

/// What the summary says about a run beside its outcomes.
#[derive(Serialize, Deserialize)]
struct RunInfo {
    /// RFC 3339, UTC: later runs sort after earlier ones.
    started_at: String,
    commit: String,
    dirty: bool,
    minutes: f64,
    re: Option<String>,
    tool_version: String,
    /// .cargo/mutants.toml as the run read it.
    config: String,
    /// The files mutated (globs).
    files: Vec<String>,
}

/// One run: its info and each mutant's outcome, from cargo-mutants' outcomes.json.
struct Run {
    info: RunInfo,
    /// Mutant names (without line and column, which move with every edit above them) by
    /// outcome.
    by_outcome: BTreeMap<Outcome, Vec<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Outcome {
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
    summary: Outcome,
}

impl Run {
    fn load(dir: &Path) -> Result<Self> {
        let read = |file: PathBuf| {
            std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "{}: no run to summarize; run `cargo xtask mutants`",
                    file.display()
                )
            })
        };
        let info = read(dir.join("run.json"))?;
        let info: RunInfo = serde_json::from_str(&info).context("run.json")?;
        let outcomes = read(dir.join("mutants.out/outcomes.json"))?;
        Self::parse(info, &outcomes)
    }

    fn parse(info: RunInfo, outcomes_json: &str) -> Result<Self> {
        let parsed: OutcomesFile = serde_json::from_str(outcomes_json).context("outcomes.json")?;
        let mut by_outcome: BTreeMap<Outcome, Vec<String>> = BTreeMap::new();
        for entry in parsed.outcomes {
            // The other scenario is the baseline, the unmutated tree.
            if let Some(mutant) = entry.scenario.get("Mutant") {
                by_outcome
                    .entry(entry.summary)
                    .or_default()
                    .push(mutant_name(mutant)?);
            }
        }
        Ok(Self { info, by_outcome })
    }

    fn names(&self, outcome: Outcome) -> &[String] {
        self.by_outcome.get(&outcome).map_or(&[], Vec::as_slice)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.names(outcome).len()
    }

    fn killed(&self, name: &str) -> bool {
        [Outcome::CaughtMutant, Outcome::Timeout]
            .iter()
            .any(|o| self.names(*o).iter().any(|n| n == name))
    }
}

/// `file: mutation`, as `cargo mutants --list` names a mutant, less the line and column.
fn mutant_name(mutant: &serde_json::Value) -> Result<String> {
    let name = mutant
        .get("name")
        .and_then(|v| v.as_str())
        .context("a mutant in outcomes.json has no name")?;
    // "file:line:col: mutation"
    let mut parts = name.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(file), Some(_line), Some(_col), Some(mutation)) => {
            Ok(format!("{file}: {}", mutation.trim()))
        }
        _ => bail!("unexpected mutant name `{name}` in outcomes.json"),
    }
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

/// What became of each mutant of the full run.
struct Tally {
    caught: usize,
    timeout: usize,
    unviable: usize,
    /// Missed in the full run and caught by the later rerun.
    killed_later: Vec<String>,
    equivalent: Vec<(String, String)>,
    unexplained: Vec<String>,
}

impl Tally {
    fn of(full: &Run, rerun: Option<&Run>, survivors: &Survivors) -> Self {
        let mut tally = Self {
            caught: full.count(Outcome::CaughtMutant),
            timeout: full.count(Outcome::Timeout),
            unviable: full.count(Outcome::Unviable),
            killed_later: Vec::new(),
            equivalent: Vec::new(),
            unexplained: Vec::new(),
        };
        for name in full.names(Outcome::MissedMutant) {
            if rerun.is_some_and(|r| r.killed(name)) {
                tally.killed_later.push(name.clone());
            } else if let Some(why) = survivors.why(name) {
                tally.equivalent.push((name.clone(), why.to_string()));
            } else {
                tally.unexplained.push(name.clone());
            }
        }
        tally
    }

    fn viable(&self) -> usize {
        self.caught
            + self.timeout
            + self.killed_later.len()
            + self.equivalent.len()
            + self.unexplained.len()
    }

    /// Killed mutants over viable ones. Equivalent mutants count against it though no test can
    /// kill them, so that calling mutants equivalent cannot raise it: at most 5% may be.
    fn ratio(&self) -> f64 {
        let killed = self.caught + self.timeout + self.killed_later.len();
        match self.viable() {
            0 => 0.0,
            viable => killed as f64 / viable as f64,
        }
    }

    fn render(&self, part: &Part, full: &RunInfo, rerun: Option<&RunInfo>) -> String {
        let when = |info: &RunInfo| {
            format!(
                "{} UTC at {}{}, {:.0} minutes, cargo-mutants {}",
                info.started_at.replace('T', " ").trim_end_matches('Z'),
                info.commit,
                if info.dirty {
                    " with uncommitted changes"
                } else {
                    ""
                },
                info.minutes,
                info.tool_version
            )
        };
        let files = full.files.join(", ");
        let mut text = format!(
            "# Mutation testing of the worker: {}\n\nWritten by `cargo xtask mutants --part {}` \
             (xtask/README.md, \"Mutation testing\"); not a CI step.\n\n- Scope: {}: {files}\n",
            part.name, part.name, part.what
        );
        text.push_str(&format!("- Full run: {}\n", when(full)));
        if let Some(rerun) = rerun {
            text.push_str(&format!(
                "- Rerun of the mutants matching `{}`: {}\n",
                rerun.re.as_deref().unwrap_or_default(),
                when(rerun)
            ));
        }
        text.push_str(&format!(
            "- Kill ratio: {:.1}% of {} viable mutants (target {:.0}%): {} caught, {} timed out, \
             {} caught by the rerun; {} not explained, {} equivalent; {} unviable (did not \
             build) not counted\n\n",
            self.ratio() * 100.0,
            self.viable(),
            KILL_RATIO_TARGET * 100.0,
            self.caught,
            self.timeout,
            self.killed_later.len(),
            self.unexplained.len(),
            self.equivalent.len(),
            self.unviable
        ));
        text.push_str(
            "## Settings and tests (.cargo/mutants.toml, as the full run read it)\n\n```toml\n",
        );
        text.push_str(full.config.trim_end());
        text.push_str("\n```\n\n## Mutants the full run missed\n\n");
        if self.killed_later.is_empty() && self.equivalent.is_empty() && self.unexplained.is_empty()
        {
            text.push_str("None.\n");
        }
        for name in &self.killed_later {
            text.push_str(&format!(
                "- `{name}`: caught by the rerun, by tests added since\n"
            ));
        }
        for (name, why) in &self.equivalent {
            text.push_str(&format!("- `{name}`: equivalent; {why}\n"));
        }
        for name in &self.unexplained {
            text.push_str(&format!("- `{name}`: not explained\n"));
        }
        text
    }

    fn verdict(&self) -> Result<()> {
        if !self.unexplained.is_empty() {
            bail!(
                "{} surviving mutant(s) not explained: kill each with a test (then `cargo xtask \
                 mutants --part P --re` them) or say in ci/mutants/survivors.toml why it is equivalent",
                self.unexplained.len()
            );
        }
        if self.ratio() < KILL_RATIO_TARGET {
            bail!(
                "the kill ratio {:.1}% is below the target {:.0}%",
                self.ratio() * 100.0,
                KILL_RATIO_TARGET * 100.0
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(started_at: &str) -> RunInfo {
        RunInfo {
            started_at: started_at.into(),
            commit: "abc".into(),
            dirty: false,
            minutes: 1.0,
            re: None,
            tool_version: CARGO_MUTANTS_VERSION.into(),
            config: "timeout_multiplier = 3.0\n".into(),
            files: vec!["worker/src/a.rs".into()],
        }
    }

    /// outcomes.json as cargo-mutants 27 writes it, with the fields read here.
    fn outcomes(mutants: &[(&str, &str)]) -> String {
        let mut entries = vec![serde_json::json!({"scenario": "Baseline", "summary": "Success"})];
        for (name, summary) in mutants {
            entries.push(serde_json::json!({
                "scenario": {"Mutant": {"name": name, "file": "worker/src/a.rs"}},
                "summary": summary,
            }));
        }
        serde_json::json!({"outcomes": entries, "total_mutants": mutants.len()}).to_string()
    }

    #[test]
    fn survivors_are_killed_later_equivalent_or_unexplained_and_the_ratio_counts_them() {
        let mut mutants = vec![
            (
                "worker/src/a.rs:1:5: replace f -> bool with true",
                "MissedMutant",
            ),
            (
                "worker/src/a.rs:2:5: replace g -> bool with true",
                "MissedMutant",
            ),
            (
                "worker/src/a.rs:3:5: replace h -> bool with true",
                "MissedMutant",
            ),
            (
                "worker/src/a.rs:4:5: replace i -> bool with true",
                "Unviable",
            ),
            (
                "worker/src/a.rs:5:5: replace j -> bool with true",
                "Timeout",
            ),
        ];
        let caught = "worker/src/a.rs:9:1: replace k -> bool with false";
        mutants.extend(std::iter::repeat_n((caught, "CaughtMutant"), 95));
        let full = Run::parse(info("2026-12-05T20:00:00Z"), &outcomes(&mutants)).unwrap();
        // The rerun catches f, at another line after an edit.
        let rerun = Run::parse(
            info("2026-12-05T21:00:00Z"),
            &outcomes(&[(
                "worker/src/a.rs:11:5: replace f -> bool with true",
                "CaughtMutant",
            )]),
        )
        .unwrap();
        let survivors: Survivors = toml::from_str(
            "[[equivalent]]\nmutant = \"worker/src/a.rs: replace g -> bool with true\"\n\
             why = \"g is only ever true\"\n",
        )
        .unwrap();
        let tally = Tally::of(&full, Some(&rerun), &survivors);
        assert_eq!(
            tally.killed_later,
            ["worker/src/a.rs: replace f -> bool with true"]
        );
        assert_eq!(tally.equivalent.len(), 1);
        assert_eq!(
            tally.unexplained,
            ["worker/src/a.rs: replace h -> bool with true"]
        );
        assert_eq!(tally.viable(), 99);
        // 95 caught, 1 timed out, 1 caught later; g is equivalent; h survives.
        assert!((tally.ratio() - 97.0 / 99.0).abs() < 1e-12);
        let text = tally.render(&PARTS[0], &full.info, Some(&rerun.info));
        assert!(
            text.contains("- Kill ratio: 98.0% of 99 viable mutants"),
            "{text}"
        );
        assert!(text.contains(": worker/src/a.rs\n"), "{text}");
        assert!(text.contains("timeout_multiplier = 3"), "{text}");
        assert!(text.contains(
            "- `worker/src/a.rs: replace g -> bool with true`: equivalent; g is only ever true"
        ));
        assert!(text.contains("- `worker/src/a.rs: replace h -> bool with true`: not explained"));
        let refusal = tally.verdict().unwrap_err().to_string();
        assert!(
            refusal.contains("1 surviving mutant(s) not explained"),
            "{refusal}"
        );

        // Explained, all but h; without the rerun f survives too and the ratio falls short.
        let tally = Tally::of(&full, None, &survivors);
        assert_eq!(tally.unexplained.len(), 2);
        let mut survivors = survivors;
        for name in ["f", "h"] {
            survivors.equivalent.push(Equivalent {
                mutant: format!("worker/src/a.rs: replace {name} -> bool with true"),
                why: "because".into(),
            });
        }
        let tally = Tally::of(&full, None, &survivors);
        assert!((tally.ratio() - 96.0 / 99.0).abs() < 1e-12);
        tally.verdict().unwrap();
        survivors.equivalent.truncate(0);
        let mut mostly_missed = vec![(
            "worker/src/a.rs:1:1: replace m -> bool with true",
            "CaughtMutant",
        )];
        mostly_missed.extend(std::iter::repeat_n(
            ("worker/src/a.rs:2:1: delete ! in n", "MissedMutant"),
            1,
        ));
        let run = Run::parse(info("2026-12-05T20:00:00Z"), &outcomes(&mostly_missed)).unwrap();
        survivors.equivalent.push(Equivalent {
            mutant: "worker/src/a.rs: delete ! in n".into(),
            why: "because".into(),
        });
        let low = Tally::of(&run, None, &survivors)
            .verdict()
            .unwrap_err()
            .to_string();
        assert!(
            low.contains("the kill ratio 50.0% is below the target 95%"),
            "{low}"
        );
    }

    /// cargo-mutants adds the files of `--file` to the settings' `examine_globs`: with any
    /// there, every part would mutate them too.
    #[test]
    fn the_settings_leave_the_files_to_the_parts() {
        let settings: toml::Table = toml::from_str(&read_config().unwrap()).unwrap();
        assert!(!settings.contains_key("examine_globs"), "{settings:?}");
    }

    #[test]
    fn a_mutant_name_loses_its_line_and_column() {
        let name = |n: &str| mutant_name(&serde_json::json!({ "name": n }));
        assert_eq!(
            name("worker/src/tokens.rs:162:17: replace && with || in TextCodec::may_join_byte_run")
                .unwrap(),
            "worker/src/tokens.rs: replace && with || in TextCodec::may_join_byte_run"
        );
        assert_eq!(
            name("worker/src/a.rs:1:2: replace f -> &'static str with \"a: b\"").unwrap(),
            "worker/src/a.rs: replace f -> &'static str with \"a: b\""
        );
        assert!(name("no line").is_err());
    }
}
