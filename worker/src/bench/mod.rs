//! `llm-worker-rbee bench`: load time, warm-up, prefill and decode speed (median and spread over
//! repetitions, EOS ignored), host RSS, device memory on CUDA, the weight bytes each decoded
//! token reads and the fraction of the device's memory bandwidth that makes (the roofline), and
//! the same decode as a plain candle loop over the same weights, for comparison. Figures, not
//! tests: nothing here asserts a speed; `targets` compares them with ci/bench/targets.toml.

pub mod baseline;
pub mod device;
pub mod figures;
pub mod targets;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

/// Unmeasured runs of each prompt length go on at least this long (the device's clocks and
/// the host's settle); then the measured ones.
pub const WARMUP: Duration = Duration::from_secs(2);

use llm_worker_rbee_api::process;

use self::figures::{BaselineFigures, BenchReport, HostRss, RunFigures, Spread};
use crate::error::Result;
use crate::fixture::SPECIAL_TOKENS;
use crate::folder::WeightsFormat;
use crate::request::{Prompt, Request};
use crate::synth::shape;
use crate::worker::{LoadOptions, Worker};

/// What to measure: the flags of `llm-worker-rbee bench`, which `cargo xtask bench` passes on.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Prompt lengths to measure, one set of runs each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "128,512",
        value_name = "N,.."
    )]
    pub prompt_len: Vec<usize>,
    /// Tokens generated per run (EOS is ignored).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub gen: usize,
    /// Measured runs per prompt length, after at least 2 s of runs that are not.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub reps: usize,
    /// Skip the plain candle loop the worker is compared with.
    #[arg(long)]
    pub no_baseline: bool,
}

impl BenchOptions {
    /// What cannot be measured, in words.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.prompt_len.is_empty() || self.prompt_len.contains(&0) {
            return Err("--prompt-len: give one or more lengths above 0, e.g. 128,512".into());
        }
        if self.gen < 2 || self.reps == 0 {
            return Err(
                "--gen must be at least 2 (a decode speed needs a second token), --reps at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// These options as the flags that give them.
    pub fn to_flags(&self) -> Vec<String> {
        let lens: Vec<String> = self.prompt_len.iter().map(|n| n.to_string()).collect();
        let mut flags = vec![
            "--prompt-len".to_string(),
            lens.join(","),
            "--gen".into(),
            self.gen.to_string(),
            "--reps".into(),
            self.reps.to_string(),
        ];
        if self.no_baseline {
            flags.push("--no-baseline".into());
        }
        flags
    }
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
    let engine = worker.engine();
    log(&format!("engine: {engine}"));
    let load_timings = worker.load_timings().clone();
    let after_load_device = probe.memory_in_use();
    let after_load_rss = host_rss_now();
    let info = worker.info().clone();
    let dims = &info.dims;
    let dtype_bytes = load.dtype.size_in_bytes();
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
    let longest = options.prompt_len.iter().max().copied().unwrap_or(0) + options.gen;
    let kv_cache_bytes =
        (kv_per_position * longest) as u64 * load.kv_cache.size_in_bytes(load.dtype);
    let bandwidth = probe.peak_bandwidth();
    let mut peak_device = after_load_device;

    let mut runs = Vec::new();
    for &prompt_len in &options.prompt_len {
        let request = bench_request(prompt_ids(prompt_len, dims.vocab_size), options.gen);
        let request = worker.prepare(&request)?;
        warm_up(|| {
            worker.generate(&request, |_| ControlFlow::Continue(()))?;
            Ok(())
        })?;
        let (mut ttft, mut prefill, mut decode) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..options.reps {
            let last = options.gen - 1;
            let generation = worker.generate(&request, |token| {
                // Device memory at the first and the last token: after the prefill's
                // activations, and with the fullest cache.
                if token.index == 0 || token.index == last {
                    peak_device = peak_device.max(probe.memory_in_use());
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
    let decode_graph = match options.prompt_len.first() {
        Some(&prompt_len) => worker.decode_graph(prompt_len)?,
        None => None,
    };

    let baseline = match options.prompt_len.first() {
        Some(&prompt_len) if !options.no_baseline => {
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
        engine,
        device: device_name,
        started_unix_s,
        load_ms: load_timings.load_ms,
        warmup_ms: load_timings.warmup_ms,
        parameters,
        weight_bytes,
        kv_cache: load.kv_cache,
        kv_cache_bytes,
        host_rss,
        device_memory,
        peak_bandwidth: bandwidth,
        runs,
        decode_graph,
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
) -> Result<Option<BaselineFigures>> {
    log("plain candle loop, in turns with the worker");
    let Some(mut plain) = baseline::Baseline::load(model_dir, load, log)? else {
        return Ok(None);
    };
    let request = worker.prepare(&bench_request(prompt.to_vec(), options.gen))?;
    warm_up(|| {
        plain.decode(prompt, options.gen)?;
        worker.generate(&request, |_| ControlFlow::Continue(()))?;
        Ok(())
    })?;
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
    Ok(Some(BaselineFigures {
        module: plain.module(),
        prompt_len: prompt.len(),
        decode_tokens_per_s: theirs,
        issue_ms_per_token: Spread::of(&issue).median,
        wait_ms_per_token: Spread::of(&wait).median,
        worker_decode_tokens_per_s: ours,
        worker_relative: ours.median / theirs.median,
    }))
}

/// Runs `run` again and again, unmeasured, until [`WARMUP`] has passed (at least once): the
/// first runs of a shape load kernels and size caches, and clocks ramp up.
fn warm_up(mut run: impl FnMut() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    loop {
        run()?;
        if started.elapsed() >= WARMUP {
            return Ok(());
        }
    }
}

/// Greedy, `gen` tokens whatever EOS says.
fn bench_request(prompt: Vec<u32>, gen: usize) -> Request {
    Request {
        ignore_eos: true,
        ..Request::greedy(Prompt::Ids(prompt), gen)
    }
}

/// A prompt of `len` ids spread over the vocabulary, past the synthetic tokenizers' special
/// tokens.
pub fn prompt_ids(len: usize, vocab: usize) -> Vec<u32> {
    let first = SPECIAL_TOKENS.len().min(vocab - 1);
    (0..len)
        .map(|i| (first + (i * 7919 + 13) % (vocab - first)) as u32)
        .collect()
}

/// Resident and peak resident bytes of this process.
fn host_rss_now() -> Option<(u64, u64)> {
    Some((
        process::memory("self", "VmRSS")?,
        process::memory("self", "VmHWM")?,
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        options: BenchOptions,
    }

    fn parse(flags: &[&str]) -> BenchOptions {
        Flags::parse_from(std::iter::once("bench").chain(flags.iter().copied())).options
    }

    #[test]
    fn the_options_pass_on_as_the_flags_that_give_them() {
        let options = parse(&[
            "--prompt-len",
            "16,64",
            "--gen",
            "9",
            "--reps",
            "5",
            "--no-baseline",
        ]);
        assert_eq!(options.prompt_len, [16, 64]);
        let flags = options.to_flags();
        let again = parse(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(again.to_flags(), flags);
        assert!(again.no_baseline && again.gen == 9 && again.reps == 5);
        assert_eq!(
            parse(&[]).to_flags(),
            ["--prompt-len", "128,512", "--gen", "128", "--reps", "3"]
        );
    }

    #[test]
    fn options_that_measure_nothing_are_refused() {
        assert!(parse(&[]).check().is_ok());
        assert!(parse(&["--prompt-len", "0"])
            .check()
            .unwrap_err()
            .contains("--prompt-len"));
        assert!(parse(&["--gen", "1"])
            .check()
            .unwrap_err()
            .contains("--gen"));
        assert!(parse(&["--reps", "0"])
            .check()
            .unwrap_err()
            .contains("--reps"));
    }
}
