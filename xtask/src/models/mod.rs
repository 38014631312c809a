//! Real models: the manifest and its lock, `cargo xtask fetch-models`, and `cargo xtask models`,
//! which lists them without touching the network. Both need hf-hub, whose client (xet, TLS) is
//! most of what xtask would build: they are behind the `fetch` feature, and without it this
//! build runs `cargo run -p xtask --features fetch` with the same arguments.

mod args;
#[cfg(feature = "fetch")]
pub mod fetch;
#[cfg(feature = "fetch")]
mod hub;
#[cfg(feature = "fetch")]
mod list;
#[cfg(feature = "fetch")]
pub mod manifest;
#[cfg(feature = "fetch")]
mod package;
#[cfg(feature = "fetch")]
mod twin;

use std::path::PathBuf;

use anyhow::Result;
use llm_worker_rbee_api::model_id::{self, VerifiedModel};

pub use self::args::{Args, FetchArgs};

/// `cargo xtask models`.
pub fn run(args: &Args) -> Result<()> {
    #[cfg(feature = "fetch")]
    return list::run(args);
    #[cfg(not(feature = "fetch"))]
    {
        let _ = args;
        with_fetch()
    }
}

/// `cargo xtask fetch-models`.
pub fn fetch_models(args: &FetchArgs) -> Result<()> {
    #[cfg(feature = "fetch")]
    return fetch::run(args);
    #[cfg(not(feature = "fetch"))]
    {
        let _ = args;
        with_fetch()
    }
}

/// Runs this command again in a build of xtask with the `fetch` feature.
#[cfg(not(feature = "fetch"))]
fn with_fetch() -> Result<()> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(crate::paths::project_root());
    let args: Vec<String> = std::env::args().skip(1).collect();
    xshell::cmd!(sh, "cargo run -q -p xtask --features fetch -- {args...}").run()?;
    Ok(())
}

/// The folder of a fetched model whose files were all verified, or why there is none.
pub fn verified_folder(id: &str) -> Result<PathBuf> {
    let folder = model_id::models_dir().join(id);
    let record = VerifiedModel::read(&folder).map_err(|_| {
        anyhow::anyhow!(
            "model `{id}` is not fetched and verified here (no {}); run `cargo xtask fetch-models \
             {id}` (`cargo xtask models` lists the ids)",
            folder.join(model_id::RECORD).display()
        )
    })?;
    record.check_files(&folder).map_err(|why| {
        anyhow::anyhow!("model `{id}` changed since it was verified ({why}); run `cargo xtask fetch-models {id}` again")
    })?;
    Ok(folder)
}
