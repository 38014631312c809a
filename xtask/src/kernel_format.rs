//! The CUDA kernels' formatting (worker/kernels/, style in its .clang-format), checked by
//! clang-format from PyPI, since CI builds no CUDA and would not otherwise read them.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::paths::project_root;
use crate::tools;

const CLANG_FORMAT: &str = "clang-format==21.1.8";

pub fn check(sh: &Shell) -> Result<()> {
    let venv = tools::venv(sh, "clang-format", &[CLANG_FORMAT])?;
    let clang_format = venv.join("bin/clang-format");
    let dir = project_root().join("worker/kernels");
    let mut sources: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"));
    sources.sort();
    let count = sources.len();
    cmd!(sh, "{clang_format} --dry-run --Werror {sources...}")
        .run()
        .with_context(|| {
            format!(
                "worker/kernels/ is not formatted; `{} -i worker/kernels/*.cu` formats it",
                clang_format.display()
            )
        })?;
    eprintln!("formatting: {} kernel sources pass clang-format", count);
    Ok(())
}
