//! `cargo xtask bundle`: one compressed archive that runs the conformance suite and the bench on
//! a machine with no Rust and no network: stripped binaries, fixtures, cases, goldens,
//! reference, `run.sh` (ci/bundle-run.sh), `bench.sh` (ci/bundle-bench.sh) and the bench
//! targets. `--bench-only` packs only what `bench.sh` needs.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use liblzma::stream::{Check, Filters, LzmaOptions, Stream, PRESET_EXTREME};
use liblzma::write::XzEncoder;
use llm_worker_rbee_api::Backend;
use xshell::{cmd, Shell};

use crate::build::{self, Built};
use crate::harness;
use crate::paths::{project_root, target_dir};

/// The size a bundle may have, to travel to the GPU machine with room to spare.
const MAX_BYTES: u64 = 60 * 1000 * 1000;

/// The xz dictionary: the CUDA bundle's binaries (about 70 MB each) share most of their code, and
/// only a window that spans one binary finds the next one's copy (86 MB gzipped, 14 MB so).
const XZ_DICT_BYTES: u32 = 384 << 20;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Cuda)]
    backend: Backend,
    /// CUDA compute capability to compile kernels for [default: nvidia-smi, else 90].
    #[arg(long, value_name = "N")]
    cuda_compute_cap: Option<u32>,
    /// Where to write the archive [default: target/bundle/llm-worker-rbee-<backend>.tar.xz].
    #[arg(long, value_name = "FILE", conflicts_with = "folder_only")]
    out: Option<PathBuf>,
    /// Only lay out the bundle's folder, target/bundle/llm-worker-rbee-<backend>/, without
    /// packing it (what a `binaries = "source"` host of `cargo xtask test --host` runs from).
    #[arg(long)]
    folder_only: bool,
    /// Only the worker binary and the bench (bench.sh, targets.toml): no harness, fixtures or
    /// goldens, so it travels to a GPU machine beside a peer's binaries
    /// (llm-worker-rbee-<backend>-bench).
    #[arg(long)]
    bench_only: bool,
}

/// What a bundle holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// The suite and the bench.
    Full,
    /// The worker binary and the bench scripts.
    Bench,
}

pub fn run(args: &Args) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let contents = if args.bench_only {
        Contents::Bench
    } else {
        Contents::Full
    };
    let (name, stage) = stage(&sh, args.backend, args.cuda_compute_cap, contents)?;
    if args.folder_only {
        println!("{}: run.sh in it runs the suite", stage.display());
        return Ok(());
    }

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bundle").join(format!("{name}.tar.xz")));
    println!("packing {} (xz -9e, a few minutes)", out.display());
    let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut archive = tar::Builder::new(XzEncoder::new_stream(file, xz_stream()?));
    archive.append_dir_all(&name, &stage)?;
    archive.into_inner()?.finish()?;
    let size = std::fs::metadata(&out)?.len();
    if size > MAX_BYTES {
        bail!(
            "{} is {size} bytes, over the {MAX_BYTES} a bundle may have",
            out.display()
        );
    }
    let command = match contents {
        Contents::Full => "run.sh --dtype f32 --dtype bf16 --fault-injection",
        Contents::Bench => "bench.sh --check",
    };
    println!(
        "{} ({:.1} MB): on the GPU machine, `tar xJf {} && {name}/{command}`",
        out.display(),
        size as f64 / 1e6,
        out.file_name().unwrap_or_default().to_string_lossy(),
    );
    Ok(())
}

/// An xz stream at `xz -9e` with the larger dictionary.
fn xz_stream() -> Result<Stream> {
    let mut options = LzmaOptions::new_preset(9 | PRESET_EXTREME)?;
    options.dict_size(XZ_DICT_BYTES);
    let mut filters = Filters::new();
    filters.lzma2(&options);
    Ok(Stream::new_stream_encoder(&filters, Check::Crc64)?)
}

/// Builds the release binaries for `backend` and lays out the bundle's folder,
/// target/bundle/<name>/; returns its name and path.
pub fn stage(
    sh: &Shell,
    backend: Backend,
    cuda_compute_cap: Option<u32>,
    contents: Contents,
) -> Result<(String, PathBuf)> {
    let build_args = build::Args {
        backend,
        release: true,
        cuda_compute_cap,
    };
    let name = match contents {
        Contents::Full => format!("llm-worker-rbee-{backend}"),
        Contents::Bench => format!("llm-worker-rbee-{backend}-bench"),
    };
    let stage = target_dir().join("bundle").join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(stage.join("bin"))?;
    let copy = |from: &Path, to: &str| -> Result<()> {
        let dest = stage.join("bin").join(to);
        std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        cmd!(sh, "strip {dest}").run()?;
        Ok(())
    };
    if contents == Contents::Bench {
        copy(
            &build::release_worker(backend, cuda_compute_cap)?,
            "llm-worker-rbee",
        )?;
        write_bench(sh, &stage, backend)?;
        return Ok((name, stage));
    }
    // The fault-injection build writes its worker binary over the same path, so the plain
    // binaries are copied before it runs.
    let Built {
        worker,
        harness,
        cuda_checks,
    } = build::build(&build_args, &[])?;
    copy(&worker, "llm-worker-rbee")?;
    copy(&harness, "conformance")?;
    for (name, path) in &cuda_checks {
        copy(path, name)?;
    }
    let faulty = build::build(&build_args, &["fault-injection"])?;
    copy(&faulty.harness, "conformance-fault-injection")?;
    let root = project_root();
    copy_tree(
        &root.join("golden/snapshots"),
        &stage.join("golden/snapshots"),
    )?;
    copy_tree(
        &root.join("golden/reference"),
        &stage.join("golden/reference"),
    )?;
    std::fs::create_dir_all(stage.join("conformance"))?;
    // The fixtures' random weights do not compress: run.sh has the harness make them and
    // checks them against the lock.
    for file in ["cases.toml", "fixtures.lock"] {
        std::fs::copy(
            root.join("conformance").join(file),
            stage.join("conformance").join(file),
        )?;
    }
    write_script(&stage, "run.sh", include_str!("../../ci/bundle-run.sh"))?;
    write_bench(sh, &stage, backend)?;
    Ok((name, stage))
}

/// The bench's scripts and targets, and bundle.env, which run.sh reads too.
fn write_bench(sh: &Shell, stage: &Path, backend: Backend) -> Result<()> {
    write_script(stage, "bench.sh", include_str!("../../ci/bundle-bench.sh"))?;
    write_script(
        stage,
        "cuda-env.sh",
        include_str!("../../ci/bundle-cuda-env.sh"),
    )?;
    std::fs::copy(
        project_root().join("ci/bench/targets.toml"),
        stage.join("targets.toml"),
    )?;
    let (commit, dirty) = harness::git_state(sh);
    std::fs::write(
        stage.join("bundle.env"),
        format!(
            "BACKEND={}\nGIT_COMMIT={commit}\nGIT_DIRTY={dirty}\n",
            backend
        ),
    )?;
    Ok(())
}

fn write_script(stage: &Path, name: &str, text: &str) -> Result<()> {
    let path = stage.join(name);
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if !entry.file_name().to_string_lossy().ends_with(".snap.new") {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
