//! `cargo xtask build`: the worker binary and the conformance harness, for one backend.

use std::path::PathBuf;

use anyhow::{Context, Result};
use llm_worker_rbee_api::Backend;
use xshell::{cmd, Shell};

use crate::cuda;
use crate::paths::{project_root, target_dir};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    #[arg(long)]
    pub release: bool,
    /// CUDA compute capability to compile kernels for, e.g. 90 for H100 [default: read from
    /// nvidia-smi, else 90].
    #[arg(long, value_name = "N")]
    pub cuda_compute_cap: Option<u32>,
}

/// The worker's tests that need a CUDA device: each fused kernel against candle's ops, the fast
/// engine against the candle engine, and the load's check of the device's free memory.
const CUDA_CHECKS: [&str; 3] = ["cuda_ops", "cuda_engine", "cuda_memory"];

/// What a build produced.
pub struct Built {
    pub worker: PathBuf,
    pub harness: PathBuf,
    /// For cuda: the worker's checks that need a device (`CUDA_CHECKS`), by test name.
    pub cuda_checks: Vec<(&'static str, PathBuf)>,
}

pub fn run(args: &Args) -> Result<()> {
    let built = build(args, &[])?;
    println!("worker:  {}", built.worker.display());
    println!("harness: {}", built.harness.display());
    for (name, path) in &built.cuda_checks {
        println!("{name}: {}", path.display());
    }
    Ok(())
}

/// The worker feature a backend needs, if any.
pub fn backend_feature(backend: Backend) -> Option<String> {
    (backend != Backend::Cpu).then(|| format!("llm-worker-rbee/{backend}"))
}

/// Sets up `sh` to build for `backend` (for cuda: the toolkit's environment) and returns the
/// target directory: GPU backends get one of their own, so CPU builds are not redone.
pub fn prepare(sh: &Shell, backend: Backend, cuda_compute_cap: Option<u32>) -> Result<PathBuf> {
    if backend == Backend::Metal && !cfg!(target_os = "macos") {
        anyhow::bail!(
            "the metal backend builds only on macOS (candle's Metal support links Apple's \
             frameworks); this is {}",
            std::env::consts::OS
        );
    }
    if backend == Backend::Cuda {
        let home = cuda::toolkit(sh)?;
        let path = std::env::var("PATH").unwrap_or_default();
        sh.set_var("CUDA_HOME", &home);
        sh.set_var("PATH", format!("{}:{path}", home.join("bin").display()));
        sh.set_var(
            "CUDA_COMPUTE_CAP",
            cuda::compute_cap(sh, cuda_compute_cap).to_string(),
        );
        sh.set_var(
            "CUDAFORGE_HOME",
            target_dir().join("cuda-toolkit/cudaforge"),
        );
    }
    Ok(match backend {
        Backend::Cpu => target_dir(),
        Backend::Cuda | Backend::Metal => target_dir().join(backend.name()),
    })
}

/// Builds for `args.backend`, with the worker features `extra` on top (e.g. `fault-injection`).
pub fn build(args: &Args, extra: &[&str]) -> Result<Built> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let mut features: Vec<String> = extra
        .iter()
        .map(|f| format!("llm-worker-rbee/{f}"))
        .collect();
    features.extend(backend_feature(args.backend));
    let target = prepare(&sh, args.backend, args.cuda_compute_cap)?;
    let features = features.join(",");
    let profile: &[&str] = if args.release { &["--release"] } else { &[] };
    let feature_args: &[&str] = if features.is_empty() {
        &[]
    } else {
        &["--features", &features]
    };

    // One cargo invocation for both, so that they share one feature resolution: building the
    // binary apart (without the test dependencies) would compile candle a second time. The
    // worker's `cli` tests need its binary, which makes cargo build it here.
    let cuda_checks: Vec<&str> = if args.backend == Backend::Cuda {
        CUDA_CHECKS
            .iter()
            .flat_map(|name| ["--test", name])
            .collect()
    } else {
        Vec::new()
    };
    let messages = cmd!(
        sh,
        "cargo test --no-run --message-format=json-render-diagnostics -p conformance --test conformance -p llm-worker-rbee --test cli {cuda_checks...} {profile...} {feature_args...} --target-dir {target}"
    )
    .read()?;
    let artifacts: Vec<serde_json::Value> = messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .collect();
    let executable = |name: &str, kind: &str| {
        artifacts
            .iter()
            .filter(|m| m["target"]["name"] == name && m["target"]["kind"][0] == kind)
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo did not report the {kind} `{name}`"))
    };
    let worker = executable("llm-worker-rbee", "bin")?;
    let harness = executable("conformance", "test")?;
    let cuda_checks = match args.backend {
        Backend::Cuda => CUDA_CHECKS
            .iter()
            .map(|name| Ok((*name, executable(name, "test")?)))
            .collect::<Result<_>>()?,
        Backend::Cpu | Backend::Metal => Vec::new(),
    };
    Ok(Built {
        worker,
        harness,
        cuda_checks,
    })
}

/// Builds the release worker binary for `backend` (CUDA kernels for `cuda_compute_cap`) and
/// returns its path.
pub fn release_worker(backend: Backend, cuda_compute_cap: Option<u32>) -> Result<PathBuf> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let target = prepare(&sh, backend, cuda_compute_cap)?;
    let features: Vec<String> = backend_feature(backend)
        .map(|f| vec!["--features".into(), f])
        .unwrap_or_default();
    cmd!(
        sh,
        "cargo build --release -p llm-worker-rbee --bin llm-worker-rbee {features...} --target-dir {target}"
    )
    .run()?;
    Ok(target.join("release/llm-worker-rbee"))
}
