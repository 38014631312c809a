//! The fixture models' quality: every fixture written afresh, its bytes checked against
//! conformance/fixtures.lock, and greedy decoding of every prompt of cases.toml kept far from
//! ties, so that goldens do not flip on a rounding. `cargo xtask fixtures` runs it (through
//! `examples/fixtures.rs`).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use llm_worker_rbee::synth::{self, FixtureSpec};
use llm_worker_rbee::{LoadOptions, Request, Worker};
use sha2::{Digest, Sha256};

use crate::cases::{Cases, PromptCase};
use crate::hash::hex;

/// Greedy decoding must keep the top two logits this far apart at every step...
const MIN_MARGIN: f32 = 0.02;
/// ...and produce this many distinct tokens per prompt.
const MIN_DISTINCT: usize = 8;
/// The prompts written after the seeds were chosen (chats, context edges) have their content
/// picked so that every fixture keeps this margin; their token counts and EOS are not held.
const MIN_MARGIN_LATER: f32 = 0.01;

/// Whether the fixtures' seeds were chosen on `prompt` (see [`MIN_MARGIN_LATER`]).
fn seeded(prompt: &PromptCase) -> bool {
    prompt.messages.is_none() && prompt.context_edge.is_none()
}

/// Writes every fixture into `out`, checks their bytes against the lock at `lock_path` (or, with
/// `update_lock`, rewrites it) and prints each fixture's decoding margins; fails when a fixture
/// falls short.
pub fn check_all(cases: &Cases, out: &Path, lock_path: &Path, update_lock: bool) -> Result<()> {
    let specs = synth::safetensors_fixtures();
    let ggufs = synth::gguf_fixtures();
    for spec in &specs {
        synth::write_fixture(spec, &out.join(spec.id))?;
    }
    for spec in &ggufs {
        synth::write_gguf_fixture(spec, &out.join(spec.source), &out.join(spec.id))?;
    }
    let ids: Vec<&str> = specs
        .iter()
        .map(|s| s.id)
        .chain(ggufs.iter().map(|g| g.id))
        .collect();
    let lock = lock_lines(out, &ids)?;
    if update_lock {
        std::fs::write(lock_path, &lock)
            .with_context(|| format!("cannot write {}", lock_path.display()))?;
        eprintln!("wrote {}", lock_path.display());
    } else {
        verify_lock(lock_path, &lock)?;
        eprintln!(
            "{} fixtures in {}: bytes match {}",
            ids.len(),
            out.display(),
            lock_path.display()
        );
    }

    println!(
        "{:<16} {:>5}  {:>10}  {:<22} {:>8}  eos",
        "fixture", "seed", "min margin", "at", "distinct"
    );
    let mut short = Vec::new();
    let mut reports = HashMap::new();
    for spec in &specs {
        let report = check(&out.join(spec.id), cases)
            .with_context(|| format!("checking fixture `{}`", spec.id))?;
        println!("{:<16} {:>5}  {}", spec.id, spec.seed, report.columns());
        if !report.passes() {
            short.push(spec.id);
        }
        reports.insert(spec.id, report);
    }
    // GGUF fixtures are reported, not held to the margin, distinct-token and EOS checks: their
    // weights are their source's, whose seed the lock fixes, and quantizing moves the logits by
    // up to about 0.5 (Q8_0) or 8 (4-bit) against the source's, so where the source nears a tie
    // the quantized model has ties and flips of its own. Each greedy token must still be the
    // top logit (`check` fails otherwise).
    println!(
        "\n{:<16} {:<10}  {:>10}  {:<22} {:>8}  {:<4}  steps equal to the source's, per prompt",
        "gguf fixture", "source", "min margin", "at", "distinct", "eos"
    );
    for spec in &ggufs {
        let report = check(&out.join(spec.id), cases)
            .with_context(|| format!("checking fixture `{}`", spec.id))?;
        let agreement = agreement(&reports[spec.source], &report);
        println!(
            "{:<16} {:<10}  {}  {}",
            spec.id,
            spec.source,
            report.columns(),
            agreement
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if !short.is_empty() {
        bail!(
            "fixtures {} fall short: every greedy step needs a top-1/top-2 logit margin of at \
             least {MIN_MARGIN} ({MIN_MARGIN_LATER} for chats and context edges), every other \
             prompt at least {MIN_DISTINCT} distinct tokens and no EOS; pick another seed with \
             `cargo xtask fixtures --search-seed ID`",
            short.join(", ")
        );
    }
    Ok(())
}

/// `sha256sum` lines for every file of every fixture, so `sha256sum -c` can check them too.
fn lock_lines(out: &Path, ids: &[&str]) -> Result<String> {
    let mut lines = String::new();
    for id in ids {
        let dir = out.join(id);
        let mut names: Vec<String> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let bytes = std::fs::read(dir.join(&name))?;
            let digest = Sha256::digest(&bytes);
            writeln!(lines, "{}  {id}/{name}", hex(&digest))?;
        }
    }
    Ok(lines)
}

fn verify_lock(path: &Path, actual: &str) -> Result<()> {
    let expected = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}; create it with `cargo xtask fixtures --update-lock`",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    let expected: BTreeSet<&str> = expected.lines().collect();
    let actual: BTreeSet<&str> = actual.lines().collect();
    let mut report = String::new();
    for line in expected.difference(&actual) {
        writeln!(report, "  locked:    {line}")?;
    }
    for line in actual.difference(&expected) {
        writeln!(report, "  generated: {line}")?;
    }
    bail!(
        "the fixtures written now differ from {}:\n{report}If the change is deliberate, run \
         `cargo xtask fixtures --update-lock` and commit the lock.",
        path.display()
    )
}

struct Report {
    min_margin: f32,
    min_margin_at: String,
    /// Prompts with a step under their margin (`MIN_MARGIN` or `MIN_MARGIN_LATER`).
    below: Vec<String>,
    min_distinct: usize,
    /// Prompts whose greedy tokens include an EOS id.
    eos_hits: Vec<String>,
    /// The greedy tokens of each prompt.
    tokens: Vec<Vec<u32>>,
}

impl Report {
    fn passes(&self) -> bool {
        self.below.is_empty() && self.min_distinct >= MIN_DISTINCT && self.eos_hits.is_empty()
    }

    /// Margin, where, distinct tokens and EOS hits, as table columns.
    fn columns(&self) -> String {
        format!(
            "{:>10.4}  {:<22} {:>8}  {:<4}",
            self.min_margin,
            self.min_margin_at,
            self.min_distinct,
            if self.eos_hits.is_empty() {
                "none".to_string()
            } else {
                self.eos_hits.join(",")
            },
        )
    }
}

/// Per prompt, how many greedy steps of `quantized` give the tokens of `source`.
fn agreement(source: &Report, quantized: &Report) -> Vec<usize> {
    source
        .tokens
        .iter()
        .zip(&quantized.tokens)
        .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
        .collect()
}

/// Greedy decoding of every prompt that generates without a penalty (a penalty only reorders the
/// logits of the same text, which `long` checks), with the top-1/top-2 margin of each step.
fn check(dir: &Path, cases: &Cases) -> Result<Report> {
    let mut worker = Worker::load(dir, LoadOptions::default())?;
    let mut report = Report {
        min_margin: f32::INFINITY,
        min_margin_at: String::new(),
        below: Vec::new(),
        min_distinct: usize::MAX,
        eos_hits: Vec::new(),
        tokens: Vec::new(),
    };
    let plain = cases
        .prompts
        .iter()
        .filter(|p| p.refused.is_none() && p.repeat_penalty.is_none());
    for case in plain {
        let prompt = case.prompt(worker.info().context_length, cases.max_tokens);
        let mut request = Request::greedy(prompt, cases.max_tokens);
        request.ignore_eos = true;
        let request = worker.prepare(&request)?;
        let generation = worker.generate(&request, |_| ControlFlow::Continue(()))?;
        let tokens = &generation.token_ids;
        let steps = worker.step_logits(&generation.prompt_ids, &tokens[..tokens.len() - 1])?;
        for (step, (logits, token)) in steps.iter().zip(tokens).enumerate() {
            let (top, margin) = top_margin(logits);
            if top != *token as usize {
                bail!(
                    "prompt `{}` step {step}: generated {token}, but the top logit is {top}",
                    case.id
                );
            }
            if margin < report.min_margin {
                report.min_margin = margin;
                report.min_margin_at = format!("{}@{step}", case.id);
            }
            let floor = if seeded(case) {
                MIN_MARGIN
            } else {
                MIN_MARGIN_LATER
            };
            if margin < floor && !report.below.contains(&case.id) {
                report.below.push(case.id.clone());
            }
        }
        if seeded(case) {
            let distinct = tokens.iter().collect::<BTreeSet<_>>().len();
            report.min_distinct = report.min_distinct.min(distinct);
            if tokens.iter().any(|t| worker.codec().eos_ids().contains(t)) {
                report.eos_hits.push(case.id.clone());
            }
        }
        report.tokens.push(generation.token_ids);
    }
    Ok(report)
}

/// The index of the largest logit and its lead over the second largest.
fn top_margin(logits: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    let mut second = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            second = best.1;
            best = (i, v);
        } else if v > second {
            second = v;
        }
    }
    (best.0, best.1 - second)
}

/// Tries seeds of fixture `id` from `from` up and prints the first whose decoding passes.
pub fn search_seed(id: &str, from: u64, cases: &Cases, scratch: &Path) -> Result<()> {
    let Some(spec) = synth::fixture(id) else {
        let ids: Vec<_> = synth::fixtures().iter().map(|f| f.id).collect();
        bail!("no fixture `{id}`; fixtures: {}", ids.join(", "));
    };
    let dir = scratch.join(id);
    for seed in from..from + 1000 {
        let candidate = FixtureSpec {
            seed,
            ..spec.clone()
        };
        synth::write_fixture(&candidate, &dir)?;
        let report = check(&dir, cases)?;
        eprintln!(
            "seed {seed}: min margin {:.4} at {}, min distinct {}, eos {:?}",
            report.min_margin, report.min_margin_at, report.min_distinct, report.eos_hits
        );
        if report.passes() {
            println!("{id}: seed {seed}");
            return Ok(());
        }
    }
    bail!("no seed in {from}..{} passes for `{id}`", from + 1000)
}
