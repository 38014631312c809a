//! `cargo xtask bench --peer llama.cpp`: the worker and llama.cpp's `llama-bench` in turns on
//! the same GGUF file with the same number of threads, on this machine's CPU. Each turn runs
//! the worker's bench, then llama-bench's prefill of the same prompt lengths and its decode of
//! the same token count after them (`-d`), with as many repetitions; the ratios of each turn
//! and their median go to target/bench/<gguf>-cpu-peer-llama.cpp.json, with both programs'
//! figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use xshell::{cmd, Shell};

use super::llama_cpp::{self, LlamaCpp};
use crate::paths::target_dir;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// llama.cpp's `llama-bench`, built for this CPU from the peer folder's source.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

/// What `--peer` needs from the bench's arguments.
pub struct PeerRun<'a> {
    pub worker: &'a Path,
    pub peer_dir: PathBuf,
    /// The worker's model (an id, a folder or a .gguf) or a shape's name.
    pub source: Source<'a>,
    pub quantize: Option<&'a str>,
    pub threads: usize,
    pub turns: usize,
    pub engines: Vec<Option<&'a str>>,
    pub options: &'a [String],
    pub check: Option<&'a Path>,
}

pub enum Source<'a> {
    Model(&'a str),
    Shape(&'a str),
}

/// One ratio of the worker's figure to llama.cpp's, per turn, and their median.
#[derive(Serialize)]
struct Ratio {
    engine: String,
    prompt_len: usize,
    gen: usize,
    worker_prefill_tokens_per_s: Vec<f64>,
    peer_prefill_tokens_per_s: Vec<f64>,
    prefill_ratio: Vec<f64>,
    worker_decode_tokens_per_s: Vec<f64>,
    peer_decode_tokens_per_s: Vec<f64>,
    decode_ratio: Vec<f64>,
    worker_peak_rss_bytes: Vec<u64>,
    peer_peak_rss_bytes: Vec<u64>,
    peak_rss_ratio: Vec<f64>,
    median_prefill_ratio: f64,
    median_decode_ratio: f64,
    median_peak_rss_ratio: f64,
}

/// A target on a ratio to a peer (`[[peer_targets]]` of ci/bench/targets.toml).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerTarget {
    what: String,
    peer: String,
    /// The GGUF's weight type (`q4_1`, `f16`, ...); any when absent.
    weights: Option<String>,
    /// Only for runs of this prompt length; every run when absent (the worst counts).
    prompt_len: Option<usize>,
    figure: PeerFigure,
    min: Option<f64>,
    max: Option<f64>,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
enum PeerFigure {
    #[serde(rename = "decode_ratio")]
    Decode,
    #[serde(rename = "prefill_ratio")]
    Prefill,
    #[serde(rename = "peak_rss_ratio")]
    PeakRss,
}

#[derive(Deserialize)]
struct TargetsFile {
    #[serde(default)]
    peer_targets: Vec<PeerTarget>,
}

#[derive(Serialize)]
struct Verdict {
    what: String,
    value: f64,
    bound: String,
    met: bool,
}

pub fn run(sh: &Shell, run: &PeerRun) -> Result<()> {
    if run.turns == 0 || run.threads == 0 {
        bail!("--turns and --threads must be at least 1");
    }
    let targets = match run.check {
        Some(path) => Some(load_targets(path)?),
        None => None,
    };
    let peer = llama_cpp::build(sh, &run.peer_dir)?;
    let (gguf, label) = gguf_file(sh, run, &peer)?;
    let weights = weight_type(sh, run.worker, &gguf)?;
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;

    let mut turns = Vec::new();
    let mut ratios: BTreeMap<(String, usize), Ratio> = BTreeMap::new();
    for turn in 1..=run.turns {
        eprintln!("turn {turn} of {}", run.turns);
        let mut workers = Vec::new();
        for engine in &run.engines {
            workers.push(worker_bench(run, &gguf, *engine)?);
        }
        let (first, _) = &workers[0];
        let runs = first["runs"]
            .as_array()
            .context("the worker's JSON has no runs")?;
        let prompts: Vec<usize> = runs.iter().map(|r| as_usize(&r["prompt_len"])).collect();
        let gen = as_usize(&runs[0]["gen"]);
        let reps = as_usize(&runs[0]["reps"]).to_string();
        let lens = prompts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let (prefill_rows, prefill_rss) = peer.bench(
            &gguf,
            run.threads,
            &[
                "-p".into(),
                lens.clone(),
                "-n".into(),
                "0".into(),
                "-r".into(),
                reps.clone(),
            ],
        )?;
        let (decode_rows, decode_rss) = peer.bench(
            &gguf,
            run.threads,
            &[
                "-p".into(),
                "0".into(),
                "-n".into(),
                gen.to_string(),
                "-d".into(),
                lens,
                "-r".into(),
                reps,
            ],
        )?;
        let peer_rss = prefill_rss.max(decode_rss);
        let rows: Vec<Value> = prefill_rows.into_iter().chain(decode_rows).collect();
        for (report, worker_rss) in &workers {
            let engine = report["engine"].as_str().unwrap_or("candle").to_string();
            for r in report["runs"].as_array().into_iter().flatten() {
                let prompt_len = as_usize(&r["prompt_len"]);
                let peer_prefill = peer_speed(&rows, prompt_len, 0, 0)?;
                let peer_decode = peer_speed(&rows, 0, gen, prompt_len)?;
                let worker_prefill = r["prefill_tokens_per_s"]["median"].as_f64().unwrap_or(0.0);
                let worker_decode = r["decode_tokens_per_s"]["median"].as_f64().unwrap_or(0.0);
                let ratio = ratios
                    .entry((engine.clone(), prompt_len))
                    .or_insert_with(|| Ratio::new(&engine, prompt_len, gen));
                ratio.worker_prefill_tokens_per_s.push(worker_prefill);
                ratio.peer_prefill_tokens_per_s.push(peer_prefill);
                ratio.prefill_ratio.push(worker_prefill / peer_prefill);
                ratio.worker_decode_tokens_per_s.push(worker_decode);
                ratio.peer_decode_tokens_per_s.push(peer_decode);
                ratio.decode_ratio.push(worker_decode / peer_decode);
                ratio.worker_peak_rss_bytes.push(*worker_rss);
                ratio.peer_peak_rss_bytes.push(peer_rss);
                ratio
                    .peak_rss_ratio
                    .push(*worker_rss as f64 / peer_rss as f64);
                eprintln!(
                    "turn {turn}, engine {engine}, prompt {prompt_len}: prefill {worker_prefill:.1} / \
                     llama.cpp {peer_prefill:.1} tokens/s = {:.2}x; decode {worker_decode:.1} / \
                     {peer_decode:.1} = {:.2}x; peak RSS {:.1} / {:.1} MiB = {:.2}x",
                    worker_prefill / peer_prefill,
                    worker_decode / peer_decode,
                    *worker_rss as f64 / MIB,
                    peer_rss as f64 / MIB,
                    *worker_rss as f64 / peer_rss as f64
                );
            }
        }
        turns.push(json!({
            "worker": workers.iter().map(|(report, rss)| json!({"report": report, "peak_rss_bytes": rss})).collect::<Vec<_>>(),
            "llama_bench": rows,
            "llama_bench_peak_rss_bytes": peer_rss,
        }));
    }
    let ratios: Vec<Ratio> = ratios.into_values().map(Ratio::finish).collect();
    println!(
        "{label} ({weights}), {} threads, {} turns, median over the turns (worker / llama.cpp {}):",
        run.threads, run.turns, peer.commit
    );
    for r in &ratios {
        println!(
            "  engine {}, prompt {}, {} generated: prefill {:.2}x, decode {:.2}x, peak RSS {:.2}x",
            r.engine,
            r.prompt_len,
            r.gen,
            r.median_prefill_ratio,
            r.median_decode_ratio,
            r.median_peak_rss_ratio
        );
    }
    let verdicts = targets.map(|t| check(&t, &weights, &ratios));
    let stem = gguf
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_lowercase();
    let json_path = out.join(format!("{stem}-cpu-peer-llama.cpp.json"));
    let summary = json!({
        "model": label,
        "host_cpu": host_cpu(),
        "gguf": gguf,
        "weights": weights,
        "threads": run.threads,
        "turns": run.turns,
        "peer": {
            "name": "llama.cpp",
            "commit": peer.commit,
            "cmake_cpu_flags": peer.cpu_flags,
        },
        "ratios": ratios,
        "verdicts": verdicts,
        "runs": turns,
    });
    std::fs::write(
        &json_path,
        format!("{}\n", serde_json::to_string_pretty(&summary)?),
    )?;
    eprintln!("figures written to {}", json_path.display());
    if let Some(verdicts) = verdicts {
        eprintln!("peer targets ({} apply here):", verdicts.len());
        for v in &verdicts {
            let mark = if v.met { "met" } else { "MISSED" };
            eprintln!("  {mark}: {} ({:.3}, target {})", v.what, v.value, v.bound);
        }
        let missed = verdicts.iter().filter(|v| !v.met).count();
        if missed > 0 {
            bail!("{missed} of {} peer targets missed", verdicts.len());
        }
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

impl Ratio {
    fn new(engine: &str, prompt_len: usize, gen: usize) -> Ratio {
        Ratio {
            engine: engine.to_string(),
            prompt_len,
            gen,
            worker_prefill_tokens_per_s: vec![],
            peer_prefill_tokens_per_s: vec![],
            prefill_ratio: vec![],
            worker_decode_tokens_per_s: vec![],
            peer_decode_tokens_per_s: vec![],
            decode_ratio: vec![],
            worker_peak_rss_bytes: vec![],
            peer_peak_rss_bytes: vec![],
            peak_rss_ratio: vec![],
            median_prefill_ratio: f64::NAN,
            median_decode_ratio: f64::NAN,
            median_peak_rss_ratio: f64::NAN,
        }
    }

    fn finish(mut self) -> Ratio {
        self.median_prefill_ratio = median(&self.prefill_ratio);
        self.median_decode_ratio = median(&self.decode_ratio);
        self.median_peak_rss_ratio = median(&self.peak_rss_ratio);
        self
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn as_usize(value: &Value) -> usize {
    value.as_u64().unwrap_or(0) as usize
}

/// llama-bench's mean tokens/s of its test with these lengths.
fn peer_speed(rows: &[Value], n_prompt: usize, n_gen: usize, depth: usize) -> Result<f64> {
    rows.iter()
        .find(|r| {
            as_usize(&r["n_prompt"]) == n_prompt
                && as_usize(&r["n_gen"]) == n_gen
                && as_usize(&r["n_depth"]) == depth
        })
        .and_then(|r| r["avg_ts"].as_f64())
        .with_context(|| {
            format!("llama-bench gave no result for {n_prompt} prompt and {n_gen} generated tokens at depth {depth}")
        })
}

/// The GGUF both programs run, and the name of the results: the model's (or the shape's
/// written by mkgguf.py), converted to `--quantize`'s type when given, under target/bench/gguf/.
fn gguf_file(sh: &Shell, run: &PeerRun, peer: &LlamaCpp) -> Result<(PathBuf, String)> {
    let dir = target_dir().join("bench").join("gguf");
    std::fs::create_dir_all(&dir)?;
    let (source, label) = match run.source {
        Source::Model(model) => {
            let info = inspect(sh, run.worker, model)?;
            let file = info["checkpoint"]["files"][0].as_str().map(PathBuf::from);
            let Some(file) = file.filter(|f| info["format"] == "gguf" && f.is_file()) else {
                bail!("--model {model}: --peer compares the two on one GGUF file, and this model is {} (give a .gguf, a folder with one, or its id)", info["format"]);
            };
            let label = file
                .file_stem()
                .map_or(model.to_string(), |s| s.to_string_lossy().to_lowercase());
            (file, label)
        }
        Source::Shape(shape) => {
            let file = dir.join(format!("{shape}-f16.gguf"));
            if !file.is_file() {
                peer.shape_gguf(sh, shape, &file)?;
            }
            (file, shape.to_string())
        }
    };
    let Some(kind) = run.quantize else {
        return Ok((source, label));
    };
    let out = dir.join(format!("{label}-{}.gguf", kind.to_lowercase()));
    if !out.is_file() {
        peer.quantize(&source, &out, kind)?;
    }
    Ok((out, label))
}

fn inspect(sh: &Shell, worker: &Path, model: impl AsRef<std::ffi::OsStr>) -> Result<Value> {
    let model = model.as_ref();
    let text = cmd!(sh, "{worker} inspect --model {model} --format json")
        .read()
        .context("the worker cannot read the model")?;
    Ok(serde_json::from_str(&text)?)
}

/// The GGUF's weight type: the most common tensor type other than f32 (norms are f32), else f32.
fn weight_type(sh: &Shell, worker: &Path, gguf: &Path) -> Result<String> {
    let info = inspect(sh, worker, gguf)?;
    let dtypes = info["checkpoint"]["dtypes"]
        .as_object()
        .context("`inspect` gave no tensor types")?;
    Ok(dtypes
        .iter()
        .filter(|(name, _)| name.as_str() != "f32")
        .max_by_key(|(_, count)| count.as_u64())
        .map_or("f32".to_string(), |(name, _)| name.clone()))
}

/// The worker's bench on `gguf` (its JSON) and its process's peak RSS.
fn worker_bench(run: &PeerRun, gguf: &Path, engine: Option<&str>) -> Result<(Value, u64)> {
    let json = target_dir().join("bench").join("peer-turn-worker.json");
    let mut command = Command::new(run.worker);
    command
        .args([
            "bench",
            "--backend",
            "cpu",
            "--dtype",
            "f32",
            "--no-baseline",
            "--model",
        ])
        .arg(gguf)
        .arg("--json")
        .arg(&json)
        .args(engine.map(|e| ["--engine", e]).into_iter().flatten())
        .args(run.options)
        // candle's pools, and so the worker's, take their size from these.
        .env("RAYON_NUM_THREADS", run.threads.to_string())
        .env("CANDLE_NUM_THREADS", run.threads.to_string())
        .stdout(Stdio::inherit());
    let (_, peak_rss) = llama_cpp::run_watching_memory(command)?;
    let report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    Ok((report, peak_rss))
}

fn load_targets(path: &Path) -> Result<Vec<PeerTarget>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: TargetsFile = toml::from_str(&text)
        .with_context(|| format!("{}: `[[peer_targets]]` not valid", path.display()))?;
    for t in &file.peer_targets {
        if t.min.is_none() == t.max.is_none() {
            bail!(
                "{}: peer target `{}`: give exactly one of `min` and `max`",
                path.display(),
                t.what
            );
        }
    }
    Ok(file.peer_targets)
}

/// The verdicts of the llama.cpp targets for these weights; a figure is the worst median over
/// the engines and prompt lengths it covers.
fn check(targets: &[PeerTarget], weights: &str, ratios: &[Ratio]) -> Vec<Verdict> {
    targets
        .iter()
        .filter(|t| t.peer == "llama.cpp" && t.weights.as_deref().is_none_or(|w| w == weights))
        .map(|t| {
            let values = ratios
                .iter()
                .filter(|r| t.prompt_len.is_none_or(|p| p == r.prompt_len))
                .map(|r| match t.figure {
                    PeerFigure::Decode => r.median_decode_ratio,
                    PeerFigure::Prefill => r.median_prefill_ratio,
                    PeerFigure::PeakRss => r.median_peak_rss_ratio,
                });
            let (value, met, bound) = match (t.min, t.max) {
                (Some(min), _) => {
                    let v = values.fold(f64::INFINITY, f64::min);
                    (v, v >= min, format!(">= {min}"))
                }
                (_, Some(max)) => {
                    let v = values.fold(f64::NEG_INFINITY, f64::max);
                    (v, v <= max, format!("<= {max}"))
                }
                (None, None) => unreachable!("load_targets checks one bound is given"),
            };
            Verdict {
                what: t.what.clone(),
                value,
                bound,
                met: met && value.is_finite(),
            }
        })
        .collect()
}

/// The CPU's model name, as /proc/cpuinfo gives it.
fn host_cpu() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::project_root;

    fn ratio(engine: &str, prompt_len: usize, decode: &[f64], prefill: &[f64]) -> Ratio {
        let mut r = Ratio::new(engine, prompt_len, 64);
        r.decode_ratio = decode.to_vec();
        r.prefill_ratio = prefill.to_vec();
        r.peak_rss_ratio = vec![1.1; decode.len()];
        r.finish()
    }

    #[test]
    fn the_committed_peer_targets_load() {
        let targets = load_targets(&project_root().join("ci/bench/targets.toml")).unwrap();
        assert!(targets.iter().any(|t| t.weights.as_deref() == Some("q4_1")));
        assert!(targets.iter().all(|t| t.peer == "llama.cpp"));
    }

    #[test]
    fn a_target_takes_the_worst_median_of_the_runs_it_covers() {
        let targets: TargetsFile = toml::from_str(
            r#"
            [[peer_targets]]
            what = "decode"
            peer = "llama.cpp"
            weights = "q4_1"
            figure = "decode_ratio"
            min = 1.0
            [[peer_targets]]
            what = "prefill at 128"
            peer = "llama.cpp"
            prompt_len = 128
            figure = "prefill_ratio"
            min = 0.8
            [[peer_targets]]
            what = "memory"
            peer = "llama.cpp"
            figure = "peak_rss_ratio"
            max = 1.2
            "#,
        )
        .unwrap();
        // Medians: decode 1.2 and 0.95 (two turns each, so the mean of the two), prefill
        // 0.9 at 128 and 0.5 at 512.
        let ratios = [
            ratio("fast", 128, &[1.1, 1.3], &[0.8, 1.0]),
            ratio("fast", 512, &[0.9, 1.0], &[0.5, 0.5]),
        ];
        let verdicts = check(&targets.peer_targets, "q4_1", &ratios);
        let got: Vec<(&str, f64, bool)> = verdicts
            .iter()
            .map(|v| (v.what.as_str(), (v.value * 1000.0).round() / 1000.0, v.met))
            .collect();
        assert_eq!(
            got,
            [
                ("decode", 0.95, false),
                ("prefill at 128", 0.9, true),
                ("memory", 1.1, true)
            ]
        );
        // Another weight type: the q4_1 target does not apply.
        assert_eq!(check(&targets.peer_targets, "f16", &ratios).len(), 2);
    }
}
