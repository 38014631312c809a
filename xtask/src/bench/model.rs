//! `cargo xtask bench --model M | --shape S`: builds the release worker for the backend and runs
//! its `bench` command; the figures go to target/bench/<model>-<backend>-<dtype>.json.

use std::path::PathBuf;

use anyhow::{bail, Result};
use llm_worker_rbee::synth::shape::Shape;
use llm_worker_rbee::{Backend, Dtype};
use xshell::{cmd, Shell};

use super::build_release;
use crate::{project_root, target_dir};

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Where to run; not `cpu` needs that backend's toolkit (cuda) or macOS (metal).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// A model folder, or the id of a model fetched by `cargo xtask fetch-models`.
    #[arg(long, value_name = "DIR|ID", conflicts_with = "shape")]
    model: Option<String>,
    /// A real model's shape with random weights, written into target/shapes/ when missing
    /// (`cargo xtask fixtures --shape`).
    #[arg(long, value_enum)]
    shape: Option<Shape>,
    /// The dtype of weights and activations [default: f32 on cpu, else bf16].
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Prompt lengths to measure, one set of runs each.
    #[arg(long, default_value = "128,512", value_name = "N,..")]
    prompt_len: String,
    /// Tokens generated per run (EOS ignored).
    #[arg(long, default_value_t = 128, value_name = "N")]
    gen: usize,
    /// Measured runs per prompt length, after one that is not measured.
    #[arg(long, default_value_t = 3, value_name = "N")]
    reps: usize,
    /// Skip the plain candle loop the worker is compared with.
    #[arg(long)]
    no_baseline: bool,
    /// Compare the figures with these targets (e.g. ci/bench/targets.toml); exit non-zero if
    /// one that applies is missed.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

pub fn run(args: &ModelArgs) -> Result<()> {
    let dtype = args.dtype.unwrap_or(match args.backend {
        Backend::Cpu => Dtype::F32,
        _ => Dtype::Bf16,
    });
    let (model, label) = match (&args.model, args.shape) {
        (Some(model), None) => {
            let name = PathBuf::from(model)
                .file_name()
                .map_or(model.clone(), |n| n.to_string_lossy().into_owned());
            (model.clone(), name)
        }
        (None, Some(shape)) => {
            let dir = crate::fixtures::write_shape_if_missing(shape, dtype)?;
            (dir.display().to_string(), shape.name().to_string())
        }
        _ => bail!("give --model DIR|ID or --shape NAME (or the `http` subcommand)"),
    };
    let worker = build_release(args.backend)?;
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let json = out.join(format!("{label}-{}-{dtype}.json", args.backend));
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let (backend, dtype) = (args.backend.name(), dtype.name());
    let (prompt_len, gen, reps) = (
        &args.prompt_len,
        args.gen.to_string(),
        args.reps.to_string(),
    );
    let mut extra: Vec<String> = Vec::new();
    if args.no_baseline {
        extra.push("--no-baseline".into());
    }
    if let Some(check) = &args.check {
        extra.extend(["--check".into(), check.display().to_string()]);
    }
    cmd!(
        sh,
        "{worker} bench --model {model} --backend {backend} --dtype {dtype} --prompt-len {prompt_len} --gen {gen} --reps {reps} --json {json} {extra...}"
    )
    .run()?;
    eprintln!("figures written to {}", json.display());
    Ok(())
}
