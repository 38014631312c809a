//! `llm-worker-rbee bench`: runs the library's bench, prints a table (or JSON), writes the JSON
//! file and checks targets.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use llm_worker_rbee::bench::figures::{BenchReport, Spread};
use llm_worker_rbee::bench::{self, targets};
use llm_worker_rbee::KvCache;

use super::args::{DeviceArgs, Format, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub options: llm_worker_rbee::bench::BenchOptions,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Compare the figures with the targets of this file (ci/bench/targets.toml) that apply to
    /// this backend, dtype and shape; exit 1 if one is missed.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
    /// `text`: progress on stderr, a table on stdout; `json`: the figures on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: BenchArgs) -> Result<()> {
    args.options.check().map_err(anyhow::Error::msg)?;
    let targets = match &args.check {
        Some(path) => Some(targets::load(path)?),
        None => None,
    };
    let folder = args.model.folder()?;
    let name = args.model.model.display().to_string();
    let log = |line: &str| eprintln!("bench: {line}");
    let report = bench::run(
        &folder,
        &name,
        args.device.load_options(),
        &args.options,
        &log,
    )?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))?;
    }
    match args.format {
        Format::Json => println!("{json}"),
        Format::Text => print!("{}", table(&report)),
    }
    if let Some(targets) = targets {
        let verdicts = targets::check(&report, &targets);
        let missed = verdicts.iter().filter(|v| !v.met).count();
        eprintln!("targets ({} apply here):", verdicts.len());
        for v in &verdicts {
            let value = v.value.map_or("unknown".to_string(), |x| format!("{x:.3}"));
            let mark = if v.met { "met" } else { "MISSED" };
            eprintln!("  {mark}: {} ({value}, target {})", v.what, v.bound);
        }
        if missed > 0 {
            bail!("{missed} of {} targets missed", verdicts.len());
        }
    }
    Ok(())
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

fn spread(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.d$} ({:.d$}-{:.d$})",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    let shape = r
        .shape
        .map_or(String::new(), |s| format!(", {} shape", s.name()));
    out += &format!(
        "model {} ({}{shape}) on {} {}, {}\n",
        r.model, r.architecture, r.backend, r.dtype, r.device
    );
    out += &format!(
        "load {:.0} ms, warm-up {:.0} ms; {:.3} B parameters, {} of weights, KV cache {} ({}) at the longest run\n",
        r.load_ms,
        r.warmup_ms,
        r.parameters as f64 / 1e9,
        gb(r.weight_bytes),
        gb(r.kv_cache_bytes),
        kv_type(r)
    );
    if let Some(rss) = r.host_rss {
        out += &format!(
            "host RSS: after load {}, steady {}, peak {}\n",
            gb(rss.after_load),
            gb(rss.steady),
            gb(rss.peak)
        );
    }
    if let Some(m) = r.device_memory {
        out += &format!(
            "device memory in use: before load {}, after load {}, peak {}\n",
            gb(m.before_load),
            gb(m.after_load),
            gb(m.peak_in_use)
        );
    }
    if let Some(b) = &r.peak_bandwidth {
        out += &format!(
            "peak memory bandwidth: {:.2} TB/s ({})\n",
            b.bytes_per_s / 1e12,
            b.source
        );
    }
    out += &format!(
        "{:>6} {:>5}  {:<24} {:<24} {:<24} {:>9} {:>8}\n",
        "prompt", "gen", "ttft ms", "prefill tokens/s", "decode tokens/s", "GB/token", "roofline"
    );
    for run in &r.runs {
        let roofline = run
            .roofline_fraction
            .map_or("-".to_string(), |f| format!("{:.1}%", f * 100.0));
        out += &format!(
            "{:>6} {:>5}  {:<24} {:<24} {:<24} {:>9.3} {:>8}\n",
            run.prompt_len,
            run.gen,
            spread(&run.ttft_ms, 1),
            spread(&run.prefill_tokens_per_s, 0),
            spread(&run.decode_tokens_per_s, 1),
            run.bytes_per_token as f64 / 1e9,
            roofline
        );
    }
    if let Some(g) = &r.decode_graph {
        out += &format!(
            "decode graph: {} nodes, {} kernels; {} replays from position {}: {:.1} us each ({:.0} tokens/s with no host work between tokens)\n",
            g.nodes,
            g.kernels,
            g.replays,
            g.position,
            g.replay_us,
            1e6 / g.replay_us
        );
    }
    if let Some(b) = &r.baseline {
        out += &format!(
            "plain candle ({}), prompt {}, in turns with the worker: decode {} tokens/s against the worker's {}; per token {:.2} ms issuing + {:.2} ms waiting; the worker is {:.2}x its speed\n",
            b.module,
            b.prompt_len,
            spread(&b.decode_tokens_per_s, 1),
            spread(&b.worker_decode_tokens_per_s, 1),
            b.issue_ms_per_token,
            b.wait_ms_per_token,
            b.worker_relative
        );
    }
    out
}

/// The KV cache's type in words: `f16`, or the activations' type.
fn kv_type(r: &BenchReport) -> String {
    match r.kv_cache {
        KvCache::F16 => "f16".into(),
        KvCache::Activations => r.dtype.to_string(),
    }
}
