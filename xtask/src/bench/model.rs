//! `cargo xtask bench --model M | --shape S`: builds the release worker for the backend and runs
//! its `bench` command; the figures go to target/bench/<model>-<backend>-<dtype>.json.

use std::path::PathBuf;

use anyhow::{bail, Result};
use llm_worker_rbee::bench::BenchOptions;
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
    #[command(flatten)]
    options: BenchOptions,
    /// Compare the figures with these targets (e.g. ci/bench/targets.toml); exit non-zero if
    /// one that applies is missed.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

pub fn run(args: &ModelArgs) -> Result<()> {
    // Checked here too, before the release build.
    args.options.check().map_err(anyhow::Error::msg)?;
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
    let mut extra = args.options.to_flags();
    if let Some(check) = &args.check {
        extra.extend(["--check".into(), check.display().to_string()]);
    }
    cmd!(
        sh,
        "{worker} bench --model {model} --backend {backend} --dtype {dtype} --json {json} {extra...}"
    )
    .run()?;
    eprintln!("figures written to {}", json.display());
    Ok(())
}
