//! llama.cpp as the CPU peer: built from the trimmed source in the peer folder
//! (../shared/peers/llama.cpp: its source archive, `mkgguf.py` and `gguf-py`) into
//! target/peers/, with cmake and ninja from PyPI; then its `llama-quantize` and `llama-bench`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use llm_worker_rbee_api::process;
use serde_json::Value;
use xshell::{cmd, Shell};

use crate::paths::{project_root, target_dir};
use crate::tools::venv;

/// The build tools, pinned: cmake and ninja from PyPI, so a machine needs only a C++ compiler.
const BUILD_TOOLS: [&str; 2] = ["cmake==4.4.5", "ninja==1.13.2"];
/// What `mkgguf.py` and llama.cpp's `gguf-py` import.
const GGUF_PY: [&str; 2] = ["numpy==2.4.6", "pyyaml==6.0.4"];

/// A built llama.cpp.
pub struct LlamaCpp {
    /// `llama-bench`, `llama-quantize` and their shared libraries.
    bin: PathBuf,
    /// The folder the source came from (for `mkgguf.py`).
    peer_dir: PathBuf,
    /// The commit named in the source archive's name.
    pub commit: String,
    /// The cmake flags that chose its CPU code.
    pub cpu_flags: Vec<String>,
}

/// The default peer folder, beside the project.
pub fn default_peer_dir() -> PathBuf {
    project_root().join("../shared/peers/llama.cpp")
}

/// Builds llama.cpp from `peer_dir` unless the same build is in target/peers/ already.
pub fn build(sh: &Shell, peer_dir: &Path) -> Result<LlamaCpp> {
    let archive = source_archive(peer_dir)?;
    let commit = archive
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("llama-cpp-"))
        .and_then(|n| n.split('-').next())
        .unwrap_or("unknown")
        .to_string();
    let root = target_dir()
        .join("peers")
        .join(format!("llama.cpp-{commit}"));
    let build_dir = root.join("build-cpu");
    let bin = build_dir.join("bin");
    let cpu_flags = cpu_flags();
    let stamp = build_dir.join("built-with.txt");
    let wanted = cpu_flags.join("\n");
    let peer_dir = peer_dir.canonicalize()?;
    let built = LlamaCpp {
        bin: bin.clone(),
        peer_dir,
        commit,
        cpu_flags: cpu_flags.clone(),
    };
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
        && bin.join("llama-bench").is_file()
        && bin.join("llama-quantize").is_file()
    {
        return Ok(built);
    }
    let source = root.join("src");
    if !source.join("CMakeLists.txt").is_file() {
        let unpacked = root.join("unpacking");
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::create_dir_all(&unpacked)?;
        eprintln!("unpacking {}", archive.display());
        cmd!(sh, "tar -xJf {archive} -C {unpacked}").run()?;
        // The archive holds one folder (llama.cpp/).
        let top = std::fs::read_dir(&unpacked)?
            .next()
            .context("the source archive is empty")??
            .path();
        let _ = std::fs::remove_dir_all(&source);
        std::fs::rename(top, &source)?;
        std::fs::remove_dir_all(&unpacked)?;
    }
    let tools = venv(sh, "llama.cpp-build", &BUILD_TOOLS)?.join("bin");
    let (cmake, ninja) = (tools.join("cmake"), tools.join("ninja"));
    eprintln!(
        "building llama.cpp {} for this CPU ({}) into {}: a few minutes",
        built.commit,
        cpu_flags.join(" "),
        build_dir.display()
    );
    cmd!(
        sh,
        "{cmake} -S {source} -B {build_dir} -G Ninja -DCMAKE_MAKE_PROGRAM={ninja} -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF {cpu_flags...}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .context("configuring llama.cpp (needs a C and C++ compiler)")?;
    let jobs = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    cmd!(
        sh,
        "{cmake} --build {build_dir} -j {jobs} --target llama-bench llama-quantize"
    )
    .run()
    .context("building llama.cpp")?;
    std::fs::write(&stamp, wanted)?;
    Ok(built)
}

fn source_archive(peer_dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(peer_dir).with_context(|| {
        format!(
            "--peer-dir {}: cannot read it; give the folder with llama.cpp's source archive \
             (llama-cpp-<commit>-src-trimmed.tar.xz), mkgguf.py and gguf-py",
            peer_dir.display()
        )
    })?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("llama-cpp-") && name.ends_with("-src-trimmed.tar.xz") {
            return Ok(path);
        }
    }
    bail!(
        "--peer-dir {}: no llama-cpp-<commit>-src-trimmed.tar.xz in it",
        peer_dir.display()
    )
}

/// GGML's switches for the instruction sets this CPU has. Not `GGML_NATIVE`: `-march=native`
/// built a `llama-bench` that died of SIGILL on a VM whose CPU reports AMX and AVX-512 FP16
/// (which of them failed was not found). So the sets are named one by one and AMX is left out;
/// the rest the CPU has, llama.cpp uses, as a native build would.
fn cpu_flags() -> Vec<String> {
    let mut flags = vec!["-DGGML_NATIVE=OFF".to_string()];
    #[cfg(target_arch = "x86_64")]
    {
        let has = [
            ("GGML_AVX", std::arch::is_x86_feature_detected!("avx")),
            ("GGML_AVX2", std::arch::is_x86_feature_detected!("avx2")),
            ("GGML_FMA", std::arch::is_x86_feature_detected!("fma")),
            ("GGML_F16C", std::arch::is_x86_feature_detected!("f16c")),
            ("GGML_BMI2", std::arch::is_x86_feature_detected!("bmi2")),
            (
                "GGML_AVX512",
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512cd"),
            ),
            (
                "GGML_AVX512_VBMI",
                std::arch::is_x86_feature_detected!("avx512vbmi"),
            ),
            (
                "GGML_AVX512_VNNI",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
            (
                "GGML_AVX512_BF16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
            (
                "GGML_AVX_VNNI",
                std::arch::is_x86_feature_detected!("avxvnni"),
            ),
        ];
        for (flag, on) in has {
            flags.push(format!("-D{flag}={}", if on { "ON" } else { "OFF" }));
        }
    }
    flags
}

impl LlamaCpp {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.env("LD_LIBRARY_PATH", &self.bin);
        command
    }

    /// Writes `out`, a random-weight F16 GGUF of `shape`, with the peer folder's `mkgguf.py`.
    pub fn shape_gguf(&self, sh: &Shell, shape: &str, out: &Path) -> Result<()> {
        let python = venv(sh, "gguf-py", &GGUF_PY)?.join("bin/python");
        let script = self.peer_dir.join("mkgguf.py");
        let partial = out.with_extension("gguf.partial");
        eprintln!("writing {} (random weights, F16)", out.display());
        cmd!(sh, "{python} {script} {shape} {partial}")
            .env("PYTHONPATH", self.peer_dir.join("gguf-py"))
            .run()
            .with_context(|| format!("mkgguf.py cannot write the {shape} shape"))?;
        std::fs::rename(partial, out)?;
        Ok(())
    }

    /// Writes `out`, every tensor of `source` in the llama-quantize type `kind` (`--pure`: no
    /// mixture of types, so the run measures that format's products).
    pub fn quantize(&self, source: &Path, out: &Path, kind: &str) -> Result<()> {
        let partial = out.with_extension("gguf.partial");
        eprintln!("writing {} ({kind})", out.display());
        let status = self
            .command("llama-quantize")
            .args(["--allow-requantize", "--pure"])
            .arg(source)
            .arg(&partial)
            .arg(kind)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!(
                "llama-quantize could not write {} as {kind} ({status}); its types are listed \
                 by `{} --help`",
                source.display(),
                self.bin.join("llama-quantize").display()
            );
        }
        std::fs::rename(partial, out)?;
        Ok(())
    }

    /// `llama-bench` on `gguf` with these arguments; its JSON rows and its peak RSS.
    pub fn bench(&self, gguf: &Path, threads: usize, args: &[String]) -> Result<(Vec<Value>, u64)> {
        let mut command = self.command("llama-bench");
        command
            .arg("-m")
            .arg(gguf)
            .args(["-t", &threads.to_string(), "-o", "json"])
            .args(args)
            .stdout(Stdio::piped());
        eprintln!(
            "llama-bench -m {} -t {threads} {}",
            gguf.display(),
            args.join(" ")
        );
        let (output, peak_rss) = run_watching_memory(command)?;
        let rows: Vec<Value> = serde_json::from_slice(&output)
            .context("llama-bench printed no JSON list of results")?;
        Ok((rows, peak_rss))
    }
}

/// Runs `command` to its end, sampling its high-water mark of resident memory (`VmHWM`, which
/// only grows) while it runs; its stdout and the last sample.
pub fn run_watching_memory(mut command: Command) -> Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id().to_string();
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_end(&mut bytes);
        }
        bytes
    });
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak = peak.max(process::memory(&pid, "VmHWM").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = reader.join().expect("the reader does not panic");
    if !status.success() {
        bail!("{program} failed ({status})");
    }
    Ok((output, peak))
}
