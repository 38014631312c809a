//! `cargo xtask reference`: the transformers reference (ci/reference/reference.py, in its own
//! virtualenv with torch) of the fixtures, or of one fetched model.

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::paths::project_root;

#[derive(clap::Args)]
pub struct Args {
    /// A model fetched and verified by `cargo xtask fetch-models` (SafeTensors): write its
    /// reference into golden/reference/<ID>.* for `cargo xtask test --model ID`. Without it,
    /// the reference of every SafeTensors fixture is rewritten.
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// Regenerate the fixtures' reference into target/ and fail unless it equals golden/reference.
    #[arg(long, conflicts_with = "model")]
    pub check: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let script = "ci/reference/reference.py";
    match &args.model {
        Some(id) => {
            let folder = crate::models::verified_folder(id)?;
            if !folder.join("config.json").exists() {
                bail!(
                    "model `{id}` has no config.json (a GGUF model?): transformers gives the \
                     reference of SafeTensors models only; use the SafeTensors model it was \
                     quantized from"
                );
            }
            cmd!(sh, "python3 {script} --model {id} {folder}").run()?;
        }
        None => {
            crate::fixtures::write_missing()?;
            let check = args.check.then_some("--check");
            cmd!(sh, "python3 {script} {check...}").run()?;
        }
    }
    Ok(())
}
