//! `cargo xtask ci`: everything the linux-cpu CI job runs, in order, stopping at the first
//! failure.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::project_root;

type Step = fn(&Shell) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("formatting", |sh| {
        Ok(cmd!(sh, "cargo fmt --all --check").run()?)
    }),
    ("clippy", |sh| {
        Ok(cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?)
    }),
    ("fixtures", |_| crate::fixtures::run(&Default::default())),
    ("tests", |sh| Ok(cmd!(sh, "cargo test --workspace").run()?)),
];

pub fn run() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    for (name, step) in STEPS {
        eprintln!("==> ci: {name}");
        step(&sh).with_context(|| format!("ci step `{name}` failed"))?;
    }
    eprintln!("==> ci: all steps passed");
    Ok(())
}
