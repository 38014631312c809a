//! The tools CI runs that cargo does not ship (linters, formatters, the `openai` client): pinned
//! PyPI wheels, each set in its own virtualenv under target/ci-venvs/<name>, made again when its
//! pins change.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::paths::target_dir;

/// The virtualenv `name` with `packages` installed; its programs are in `bin/`.
pub fn venv(sh: &Shell, name: &str, packages: &[&str]) -> Result<PathBuf> {
    let dir = target_dir().join("ci-venvs").join(name);
    let stamp = dir.join("installed.txt");
    let wanted: String = packages.iter().map(|p| format!("{p}\n")).collect();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    eprintln!("setting up {} with {}", dir.display(), packages.join(", "));
    cmd!(sh, "python3 -m venv --clear {dir}")
        .run()
        .context("making a virtualenv (on Debian and Ubuntu it needs python3-venv)")?;
    let python = dir.join("bin/python");
    cmd!(
        sh,
        "{python} -m pip install --quiet --only-binary=:all: {packages...}"
    )
    .run()
    .with_context(|| format!("installing {} from PyPI", packages.join(", ")))?;
    std::fs::write(&stamp, wanted)?;
    Ok(dir)
}
