//! `cargo xtask bench --model M | --shape S`: builds the release worker for the backend and runs
//! its `bench` command, once per engine asked for; the figures go to
//! target/bench/<model>-<backend>-<dtype>[-engine-<engine>].json.

use std::path::PathBuf;

use anyhow::{bail, Result};
use llm_worker_rbee_api::{Backend, Dtype, Engine};
use xshell::{cmd, Shell};

use super::llama_cpp::default_peer_dir;
use super::peer::{self, Peer, PeerRun, Source};
use crate::build::release_worker;
use crate::paths::{project_root, shape_dir, target_dir};

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Where to run; not `cpu` needs that backend's toolkit (cuda) or macOS (metal).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// A model folder, or the id of a model fetched by `cargo xtask fetch-models`.
    #[arg(long, value_name = "DIR|ID", conflicts_with = "shape")]
    model: Option<String>,
    /// A real model's shape with random weights (tinyllama-1.1b, qwen2.5-0.5b, phi-2,
    /// mistral-7b), written into target/shapes/ when missing (`cargo xtask fixtures --shape`).
    #[arg(long, value_name = "NAME")]
    shape: Option<String>,
    /// The dtype of weights and activations [default: f32 on cpu, else bf16].
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Run the bench on this engine (`fast` or `candle`; repeatable: each in turn, its figures
    /// in a file of its own) [default: the worker's choice].
    #[arg(long = "engine", value_name = "ENGINE")]
    engines: Vec<Engine>,
    /// Compare the figures with these targets (e.g. ci/bench/targets.toml); exit non-zero if
    /// one that applies is missed. With --peer: its `[[peer_targets]]`, the ratios.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Measure llama.cpp beside the worker, in turns, on the same GGUF file and threads, and
    /// report each ratio (target/bench/<gguf>-cpu-peer-llama.cpp.json). Built on
    /// first use from the trimmed source in --peer-dir into target/peers/ (cmake from PyPI).
    /// With --shape, the GGUF is the peer's mkgguf.py's random-weight F16 file of that shape.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// The peer's folder: its source archive, mkgguf.py and gguf-py [default:
    /// ../shared/peers/llama.cpp beside the project].
    #[arg(long, value_name = "DIR", requires = "peer")]
    peer_dir: Option<PathBuf>,
    /// With --peer: first convert the GGUF to this llama-quantize type, every tensor in it
    /// (F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, ...; written once under target/bench/gguf/).
    #[arg(long, value_name = "TYPE", requires = "peer")]
    quantize: Option<String>,
    /// With --peer: the threads of both programs [default: this machine's cores].
    #[arg(long, value_name = "N", requires = "peer")]
    threads: Option<usize>,
    /// With --peer: how many times each program runs, taking turns.
    #[arg(long, value_name = "N", default_value_t = 2)]
    turns: usize,
    /// What to measure, passed on to `llm-worker-rbee bench` (its `--help` lists them):
    /// `-- --prompt-len 128,512 --gen 128 --reps 3 --no-baseline`.
    #[arg(last = true, value_name = "BENCH FLAGS")]
    options: Vec<String>,
}

pub fn run(args: &ModelArgs) -> Result<()> {
    let dtype = args.dtype.unwrap_or(match args.backend {
        Backend::Cpu => Dtype::F32,
        _ => Dtype::Bf16,
    });
    let worker = release_worker(args.backend, None)?;
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let engines: Vec<Option<&str>> = match args.engines.as_slice() {
        [] => vec![None],
        named => named.iter().map(|e| Some(e.name())).collect(),
    };
    if args.peer.is_some() {
        if args.backend != Backend::Cpu || args.dtype.is_some_and(|d| d != Dtype::F32) {
            bail!("--peer measures the CPU with f32 activations (a GGUF's weights keep their type); on a GPU host use the bundle's `bench.sh --peer`");
        }
        let source = match (&args.model, &args.shape) {
            (Some(model), None) => Source::Model(model),
            (None, Some(shape)) => Source::Shape(shape),
            _ => bail!("give --model GGUF|DIR|ID or --shape NAME"),
        };
        return peer::run(
            &sh,
            &PeerRun {
                worker: &worker,
                peer_dir: args.peer_dir.clone().unwrap_or_else(default_peer_dir),
                source,
                quantize: args.quantize.as_deref(),
                threads: args
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                turns: args.turns,
                engines,
                options: &args.options,
                check: args.check.as_deref(),
            },
        );
    }
    let (model, label) = match (&args.model, &args.shape) {
        (Some(model), None) => {
            let name = PathBuf::from(model)
                .file_name()
                .map_or(model.clone(), |n| n.to_string_lossy().into_owned());
            (model.clone(), name)
        }
        (None, Some(shape)) => {
            let dir = shape_dir(shape, dtype.name());
            let dtype = dtype.name();
            cmd!(
                sh,
                "{worker} synth --shape {shape} --dtype {dtype} --missing --out {dir}"
            )
            .run()?;
            (dir.display().to_string(), shape.clone())
        }
        _ => bail!("give --model DIR|ID or --shape NAME (or the `http` subcommand)"),
    };
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let (backend, dtype) = (args.backend.name(), dtype.name());
    let mut extra = args.options.clone();
    if let Some(check) = &args.check {
        extra.extend(["--check".into(), check.display().to_string()]);
    }
    // Each engine's run completes before the next starts, so a failed target does not hide
    // the figures of the engines after it.
    let mut failed = Vec::new();
    for engine in engines {
        let suffix = engine.map_or(String::new(), |e| format!("-engine-{e}"));
        let json = out.join(format!("{label}-{backend}-{dtype}{suffix}.json"));
        let engine_flag: Vec<&str> = engine.map_or(vec![], |e| vec!["--engine", e]);
        let extra = &extra;
        let ran = cmd!(
            sh,
            "{worker} bench --model {model} --backend {backend} --dtype {dtype} {engine_flag...} --json {json} {extra...}"
        )
        .run();
        eprintln!("figures written to {}", json.display());
        if ran.is_err() {
            failed.push(engine.unwrap_or("default"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "the bench failed or missed a target on: {}",
            failed.join(", ")
        );
    }
    Ok(())
}
