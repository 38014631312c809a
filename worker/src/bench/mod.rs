//! `llm-worker-rbee bench`: load time, warm-up, prefill and decode speed (median and spread over
//! repetitions, EOS ignored), host RSS, device memory on CUDA, the weight bytes each decoded
//! token reads and the fraction of the device's memory bandwidth that makes (the roofline), and
//! the same decode as a plain candle loop over the same weights, for comparison. Figures, not
//! tests: nothing here asserts a speed; `targets` compares them with ci/bench/targets.toml.

pub mod baseline;
pub mod device;
pub mod targets;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Unmeasured runs of each prompt length go on at least this long (the device's clocks and
/// the host's settle); then the measured ones.
pub const WARMUP: Duration = Duration::from_secs(2);

use crate::arch::Architecture;
use crate::backend::{Backend, Dtype};
use crate::error::Result;
use crate::folder::WeightsFormat;
use crate::synth::shape::{self, Shape};
use crate::{LoadOptions, Prompt, Request, Worker};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Prompt lengths, one set of runs each.
    pub prompt_lens: Vec<usize>,
    /// Tokens generated per run.
    pub gen: usize,
    /// Measured runs per prompt length (after [`WARMUP`] of runs that are not).
    pub reps: usize,
    /// Also run the plain candle loop.
    pub baseline: bool,
}

/// The median and the range of a figure over the repetitions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// The model as given (folder or id).
    pub model: String,
    /// The real model whose shape a synthesized folder has.
    pub shape: Option<Shape>,
    pub architecture: Architecture,
    pub backend: Backend,
    pub dtype: Dtype,
    pub device: String,
    /// Seconds since the Unix epoch when the bench started.
    pub started_unix_s: u64,
    pub load_ms: f64,
    /// The worker's warm-up at load (a 2-token prefill and one decode step).
    pub warmup_ms: f64,
    pub parameters: u64,
    /// The weights as loaded, in `dtype` (GGUF: the file's bytes).
    pub weight_bytes: u64,
    /// The KV cache at the longest run's full length, in `dtype`.
    pub kv_cache_bytes: u64,
    pub host_rss: Option<HostRss>,
    pub device_memory: Option<device::DeviceMemory>,
    pub peak_bandwidth: Option<device::Bandwidth>,
    pub runs: Vec<RunFigures>,
    pub baseline: Option<baseline::BaselineFigures>,
}

/// Host resident memory, bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct HostRss {
    pub after_load: u64,
    /// After every measured run, before the baseline loads its own copy.
    pub steady: u64,
    /// The process's high-water mark by then, loading included.
    pub peak: u64,
}

/// The figures of one prompt length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunFigures {
    pub prompt_len: usize,
    pub gen: usize,
    pub reps: usize,
    /// The prompt's forward pass and the choice of the first token.
    pub ttft_ms: Spread,
    pub prefill_tokens_per_s: Spread,
    /// Tokens after the first, per second.
    pub decode_tokens_per_s: Spread,
    /// Weights (less an untied embedding table, of which a token reads one row) and the KV
    /// cache at the run's mean length: what one decode step must read at least.
    pub bytes_per_token: u64,
    /// `bytes_per_token` times the median decode speed.
    pub achieved_bytes_per_s: f64,
    /// Of the device's peak memory bandwidth, where known.
    pub roofline_fraction: Option<f64>,
}

/// Measures the model in `model_dir` (named `model` in the report).
pub fn run(
    model_dir: &Path,
    model: &str,
    load: LoadOptions,
    options: &BenchOptions,
    log: &dyn Fn(&str),
) -> Result<BenchReport> {
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let probe = device::Probe::new(load.backend, load.device)?;
    let before_load = probe.memory_in_use();
    log(&format!(
        "loading {model} on {} {}",
        load.backend, load.dtype
    ));
    let mut worker = Worker::load(model_dir, load)?;
    let load_timings = worker.load_timings().clone();
    let after_load_device = probe.memory_in_use();
    let after_load_rss = host_rss_now();
    let info = worker.info().clone();
    let dims = &info.dims;
    let dtype_bytes = match load.dtype {
        Dtype::F32 => 4,
        Dtype::Bf16 | Dtype::F16 => 2,
    };
    let parameters = info.checkpoint.parameters;
    let weight_bytes = match info.format {
        WeightsFormat::Gguf => info.checkpoint.file_bytes,
        _ => parameters * dtype_bytes,
    };
    let kv_per_position = 2 * dims.num_layers * dims.num_kv_heads * dims.head_dim;
    let embedding_bytes = if info.tie_word_embeddings {
        0
    } else {
        (dims.vocab_size * dims.hidden_size) as u64 * dtype_bytes
    };
    let longest = options.prompt_lens.iter().max().copied().unwrap_or(0) + options.gen;
    let kv_cache_bytes = (kv_per_position * longest) as u64 * dtype_bytes;
    let bandwidth = probe.peak_bandwidth();
    let mut peak_device = after_load_device;

    let mut runs = Vec::new();
    for &prompt_len in &options.prompt_lens {
        let request = Request {
            ignore_eos: true,
            ..Request::greedy(
                Prompt::Ids(prompt_ids(prompt_len, dims.vocab_size)),
                options.gen,
            )
        };
        // Not measured: the first runs of a shape load kernels and size caches, and clocks
        // ramp up.
        let warming = Instant::now();
        loop {
            worker.generate(&request, |_| ControlFlow::Continue(()))?;
            if warming.elapsed() >= WARMUP {
                break;
            }
        }
        let (mut ttft, mut prefill, mut decode) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..options.reps {
            let last = options.gen - 1;
            let generation = worker.generate(&request, |token| {
                // Device memory at the first and the last token: after the prefill's
                // activations, and with the fullest cache.
                if token.index == 0 || token.index == last {
                    peak_device = max_of(peak_device, probe.memory_in_use());
                }
                ControlFlow::Continue(())
            })?;
            let t = &generation.timings;
            ttft.push(t.prefill_ms);
            prefill.push(prompt_len as f64 / (t.prefill_ms / 1000.0));
            decode.push(t.decode_tokens_per_s);
            log(&format!(
                "prompt {prompt_len}, run {}/{}: ttft {:.1} ms, decode {:.1} tokens/s",
                rep + 1,
                options.reps,
                t.prefill_ms,
                t.decode_tokens_per_s
            ));
        }
        let decode = Spread::of(&decode);
        let mean_length = prompt_len + options.gen / 2;
        let bytes_per_token =
            weight_bytes - embedding_bytes + (kv_per_position * mean_length) as u64 * dtype_bytes;
        let achieved_bytes_per_s = bytes_per_token as f64 * decode.median;
        runs.push(RunFigures {
            prompt_len,
            gen: options.gen,
            reps: options.reps,
            ttft_ms: Spread::of(&ttft),
            prefill_tokens_per_s: Spread::of(&prefill),
            decode_tokens_per_s: decode,
            bytes_per_token,
            achieved_bytes_per_s,
            roofline_fraction: bandwidth
                .as_ref()
                .map(|b| achieved_bytes_per_s / b.bytes_per_s),
        });
    }
    let host_rss = match (after_load_rss, host_rss_now()) {
        (Some(after_load), Some((steady, peak))) => Some(HostRss {
            after_load: after_load.0,
            steady,
            peak,
        }),
        _ => None,
    };
    let device_memory = match (before_load, after_load_device, peak_device) {
        (Some(before_load), Some(after_load), Some(peak)) => Some(device::DeviceMemory {
            before_load,
            after_load,
            peak_in_use: peak,
        }),
        _ => None,
    };
    let device_name = probe.name();

    let baseline = match options.prompt_lens.first() {
        Some(&prompt_len) if options.baseline => {
            let prompt = prompt_ids(prompt_len, dims.vocab_size);
            compare(&mut worker, model_dir, load, &prompt, options, log)?
        }
        _ => None,
    };
    drop(worker);

    Ok(BenchReport {
        model: model.to_string(),
        shape: shape::read_shape_info(model_dir).map(|s| s.shape),
        architecture: info.architecture,
        backend: load.backend,
        dtype: load.dtype,
        device: device_name,
        started_unix_s,
        load_ms: load_timings.load_ms,
        warmup_ms: load_timings.warmup_ms,
        parameters,
        weight_bytes,
        kv_cache_bytes,
        host_rss,
        device_memory,
        peak_bandwidth: bandwidth,
        runs,
        baseline,
    })
}

/// Loads the plain candle baseline beside the worker and runs the two in turns at one prompt
/// length: a machine whose speed drifts (clocks, neighbours) then slows both alike.
fn compare(
    worker: &mut Worker,
    model_dir: &Path,
    load: LoadOptions,
    prompt: &[u32],
    options: &BenchOptions,
    log: &dyn Fn(&str),
) -> Result<Option<baseline::BaselineFigures>> {
    log("plain candle loop, in turns with the worker");
    let Some(mut plain) = baseline::Baseline::load(model_dir, load, log)? else {
        return Ok(None);
    };
    let request = Request {
        ignore_eos: true,
        ..Request::greedy(Prompt::Ids(prompt.to_vec()), options.gen)
    };
    let warming = Instant::now();
    loop {
        plain.decode(prompt, options.gen)?;
        worker.generate(&request, |_| ControlFlow::Continue(()))?;
        if warming.elapsed() >= WARMUP {
            break;
        }
    }
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    let (mut issue, mut wait) = (Vec::new(), Vec::new());
    for rep in 1..=options.reps {
        let (speed, steps) = plain.decode(prompt, options.gen)?;
        let generation = worker.generate(&request, |_| ControlFlow::Continue(()))?;
        let own = generation.timings.decode_tokens_per_s;
        log(&format!(
            "run {rep}/{}: plain candle {speed:.1} tokens/s, worker {own:.1} tokens/s",
            options.reps
        ));
        theirs.push(speed);
        ours.push(own);
        issue.extend(steps.iter().map(|s| s.0));
        wait.extend(steps.iter().map(|s| s.1));
    }
    let (theirs, ours) = (Spread::of(&theirs), Spread::of(&ours));
    Ok(Some(baseline::BaselineFigures {
        module: plain.module(),
        prompt_len: prompt.len(),
        decode_tokens_per_s: theirs,
        issue_ms_per_token: Spread::of(&issue).median,
        wait_ms_per_token: Spread::of(&wait).median,
        worker_decode_tokens_per_s: ours,
        worker_relative: ours.median / theirs.median,
    }))
}

fn max_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A prompt of `len` ids spread over the vocabulary, past the special tokens.
pub fn prompt_ids(len: usize, vocab: usize) -> Vec<u32> {
    let first = 6.min(vocab - 1);
    (0..len)
        .map(|i| (first + (i * 7919 + 13) % (vocab - first)) as u32)
        .collect()
}

/// Resident and peak resident bytes of this process (Linux: /proc/self/status).
fn host_rss_now() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
