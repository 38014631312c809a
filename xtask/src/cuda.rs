//! A CUDA toolkit to build against: an existing one (`CUDA_HOME`, or `nvcc` on PATH), else one
//! provisioned into target/cuda-toolkit from PyPI wheels, with a `libcuda` link stub so that a
//! machine without a GPU driver can link. At run time the driver's real `libcuda.so.1` is used.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::paths::target_dir;

/// CUDA 13.0 pieces: the newest toolkit the project's H100 machine's driver (580, CUDA 13.0)
/// accepts PTX from.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cublas==13.1.0.3",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-nvjitlink==13.0.88",
];

/// The wheels ship versioned sonames only; the linker wants `libX.so`.
const UNVERSIONED: &[(&str, u32)] = &[
    ("cudart", 13),
    ("cublas", 13),
    ("cublasLt", 13),
    ("curand", 10),
    ("nvrtc", 13),
    ("nvJitLink", 13),
];

/// `CUDA_HOME` for the build: found or provisioned.
pub fn toolkit(sh: &Shell) -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Ok(nvcc) = cmd!(sh, "which nvcc").quiet().ignore_stderr().read() {
        if let Some(home) = Path::new(nvcc.trim()).parent().and_then(Path::parent) {
            return Ok(home.to_path_buf());
        }
    }
    provision(sh)
}

fn provision(sh: &Shell) -> Result<PathBuf> {
    let root = target_dir().join("cuda-toolkit");
    let wheels = root.join("wheels");
    let home = wheels.join("nvidia/cu13");
    let stamp = root.join("installed.txt");
    let wanted = WHEELS.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!(
            "provisioning a CUDA 13.0 toolkit into {} (pip wheels)",
            root.display()
        );
        if wheels.exists() {
            std::fs::remove_dir_all(&wheels)?;
        }
        cmd!(
            sh,
            "python3 -m pip install --quiet --no-deps --target {wheels} {WHEELS...}"
        )
        .run()
        .context("installing the CUDA wheels with pip")?;
        for (lib, version) in UNVERSIONED {
            let link = home.join(format!("lib/lib{lib}.so"));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("lib{lib}.so.{version}"), &link)?;
        }
        link_stub(sh, &home)?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(home)
}

/// A `libcuda.so.1` that exports every driver function cudarc declares, each returning
/// CUDA_ERROR_STUB_LIBRARY (34): enough to link, never used at run time.
fn link_stub(sh: &Shell, home: &Path) -> Result<()> {
    let sys = cudarc_source(sh)?.join("src/driver/sys/mod.rs");
    let source =
        std::fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
    let mut names: Vec<&str> = source
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("fn "))
        .filter(|rest| rest.starts_with("cu"))
        .filter_map(|rest| rest.split_once('(').map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 100 {
        bail!(
            "found only {} driver functions in {}",
            names.len(),
            sys.display()
        );
    }
    let c: String = names
        .iter()
        .map(|n| format!("int {n}(void) {{ return 34; }}\n"))
        .collect();
    let stubs = home.join("lib/stubs");
    std::fs::create_dir_all(&stubs)?;
    let c_file = stubs.join("libcuda_stub.c");
    std::fs::write(&c_file, c)?;
    let so = stubs.join("libcuda.so");
    cmd!(
        sh,
        "gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o {so} {c_file}"
    )
    .run()?;
    Ok(())
}

/// Where cargo unpacked the cudarc crate the lock file pins.
fn cudarc_source(sh: &Shell) -> Result<PathBuf> {
    cmd!(sh, "cargo fetch").quiet().run()?;
    let metadata = cmd!(
        sh,
        "cargo metadata --format-version 1 --features llm-worker-rbee/cuda"
    )
    .quiet()
    .read()?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not in the dependency graph of the cuda feature")?;
    Ok(Path::new(manifest)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf())
}

/// The compute capability to build kernels for: given, else read from nvidia-smi, else 90
/// (H100/H200; the binary then runs only on compute capability 9.0).
pub fn compute_cap(sh: &Shell, given: Option<u32>) -> u32 {
    given
        .or_else(|| {
            let out = cmd!(
                sh,
                "nvidia-smi --query-gpu=compute_cap --format=csv,noheader"
            )
            .quiet()
            .ignore_stderr()
            .read()
            .ok()?;
            let first = out.lines().next()?.trim().replace('.', "");
            first.parse().ok()
        })
        .unwrap_or(90)
}
