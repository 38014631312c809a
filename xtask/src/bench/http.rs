//! `cargo xtask bench http` starts a release `llm-worker-rbee serve`, warms it up, then sends requests
//! from concurrent clients and reports throughput, latency quantiles and the server's memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conformance::cases::{default_path, Cases};
use conformance::http::{Api, HttpWorker};
use llm_worker_rbee_api::{process, Backend, Dtype, Prompt, Request};
use serde::Serialize;

use crate::build::release_worker;
use crate::paths::{fixtures_dir, target_dir};

#[derive(clap::Args)]
pub struct HttpArgs {
    /// A model folder, or the id of a fixture in target/fixtures (written if missing).
    #[arg(long, value_name = "DIR|FIXTURE", default_value = "llama")]
    model: String,
    /// Where the server runs; not `cpu` needs that backend compiled in and a device.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// The dtype of weights and activations.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Requests measured, after the warm-up.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    requests: usize,
    /// Requests sent before measuring, so that the figures are of a warm server.
    #[arg(long, default_value_t = 50, value_name = "N")]
    warmup: usize,
    /// Clients sending at the same time, each one request after the other.
    #[arg(long, default_value_t = 16, value_name = "N")]
    clients: usize,
    /// Tokens per request (EOS ignored, so every request generates as many).
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_tokens: usize,
    /// `text` prints a table; `json` prints what target/bench/http.json holds.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Serialize)]
struct HttpBench {
    model: String,
    backend: Backend,
    dtype: Dtype,
    clients: usize,
    requests: usize,
    max_tokens: usize,
    errors: usize,
    wall_s: f64,
    requests_per_s: f64,
    tokens_per_s: f64,
    latency_ms: Quantiles,
    rss_after_warmup_bytes: u64,
    rss_at_end_bytes: u64,
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

pub fn run(args: &HttpArgs) -> Result<()> {
    if args.clients == 0 || args.requests == 0 {
        bail!("--clients and --requests must be at least 1");
    }
    let model_dir = model_dir(&args.model)?;
    let worker = release_worker(args.backend, None)?;
    eprintln!(
        "starting {} serve on {}",
        worker.display(),
        model_dir.display()
    );
    let server = HttpWorker::start(
        &worker,
        &model_dir,
        args.backend,
        args.dtype,
        None,
        Api::Execute,
    )
    .map_err(anyhow::Error::msg)?;
    let prompts = ["hello", "The quick brown fox", "one two three four", "x"];
    let request = |i: usize| {
        let prompt = Prompt::Text(prompts[i % prompts.len()].into());
        let mut request = Request::greedy(prompt, args.max_tokens);
        request.ignore_eos = true;
        request
    };
    let (_, warmup_errors) = send(&server, args.clients, args.warmup, &request);
    if warmup_errors > 0 {
        bail!(
            "{warmup_errors} of the {} warm-up requests failed",
            args.warmup
        );
    }
    let rss_after_warmup = memory(server.pid(), "VmRSS")?;
    eprintln!(
        "sending {} requests from {} clients, {} tokens each",
        args.requests, args.clients, args.max_tokens
    );
    let started = Instant::now();
    let (mut latencies, errors) = send(&server, args.clients, args.requests, &request);
    let wall = started.elapsed().as_secs_f64();
    let rss_at_end = memory(server.pid(), "VmRSS")?;
    let peak_rss = memory(server.pid(), "VmHWM")?;
    drop(server);

    latencies.sort_by(f64::total_cmp);
    let done = latencies.len();
    let bench = HttpBench {
        model: args.model.clone(),
        backend: args.backend,
        dtype: args.dtype,
        clients: args.clients,
        requests: args.requests,
        max_tokens: args.max_tokens,
        errors,
        wall_s: wall,
        requests_per_s: done as f64 / wall,
        tokens_per_s: (done * args.max_tokens) as f64 / wall,
        latency_ms: Quantiles {
            p50: quantile(&latencies, 0.50),
            p90: quantile(&latencies, 0.90),
            p99: quantile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(f64::NAN),
        },
        rss_after_warmup_bytes: rss_after_warmup,
        rss_at_end_bytes: rss_at_end,
        peak_rss_bytes: peak_rss,
    };
    let json = serde_json::to_string_pretty(&bench)?;
    let out = target_dir().join("bench/http.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, format!("{json}\n"))?;
    match args.format {
        Format::Json => println!("{json}"),
        Format::Text => print_http(&bench, &out),
    }
    if errors > 0 {
        bail!("{errors} of {} requests failed", args.requests);
    }
    Ok(())
}

fn print_http(b: &HttpBench, out: &std::path::Path) {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{} on {} {}: {} requests of {} tokens from {} clients",
        b.model, b.backend, b.dtype, b.requests, b.max_tokens, b.clients
    );
    println!(
        "  throughput  {:.1} requests/s, {:.0} tokens/s ({:.2} s)",
        b.requests_per_s, b.tokens_per_s, b.wall_s
    );
    let l = &b.latency_ms;
    println!(
        "  latency     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.p50, l.p90, l.p99, l.max
    );
    println!(
        "  server RSS  {:.1} MiB after warm-up, {:.1} MiB at the end, peak {:.1} MiB",
        mib(b.rss_after_warmup_bytes),
        mib(b.rss_at_end_bytes),
        mib(b.peak_rss_bytes)
    );
    println!("  errors      {}", b.errors);
    println!("written to {}", out.display());
}

/// Sends `count` requests from `clients` threads; returns each success's latency in ms and the
/// number of failures (the first few are printed).
fn send(
    server: &HttpWorker,
    clients: usize,
    count: usize,
    request: &(dyn Fn(usize) -> Request + Sync),
) -> (Vec<f64>, usize) {
    let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut errors = 0;
                    for i in (client..count).step_by(clients) {
                        let started = Instant::now();
                        match server.generate(&request(i)) {
                            Ok(_) => latencies.push(ms(started.elapsed())),
                            Err(e) => {
                                if errors < 3 {
                                    eprintln!("request {i} failed: {e}");
                                }
                                errors += 1;
                            }
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect()
    });
    let errors = results.iter().map(|(_, e)| e).sum();
    (results.into_iter().flat_map(|(l, _)| l).collect(), errors)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: u32, field: &str) -> Result<u64> {
    process::memory(&pid.to_string(), field)
        .with_context(|| format!("/proc/{pid}/status is missing or has no {field} line"))
}

/// A model folder as given, or a fixture's folder (writing the fixtures if missing).
fn model_dir(model: &str) -> Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.is_dir() {
        return Ok(path);
    }
    let cases = Cases::load(&default_path())?;
    if !cases.models.ids().iter().any(|id| id == model) {
        bail!("--model {model}: neither a folder nor a fixture id (see `cargo xtask fixtures`)");
    }
    crate::fixtures::write_missing()?;
    Ok(fixtures_dir().join(model))
}
