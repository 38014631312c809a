//! A model written from another model of the manifest: `llm-worker-rbee synth --from-gguf`
//! dequantizes a fetched GGUF into a SafeTensors folder, `twins/<id>/` beside the models folder,
//! whose files are checked against their pins like a package's.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::hub::sha256_file;
use super::manifest::FileSpec;

/// Writes the twin of the verified GGUF model in `gguf_folder` into `dir`, and keeps it only if
/// every file of `specs` matches its pins; a mismatch deletes what was written.
pub fn write(gguf_folder: &Path, dir: &Path, specs: &[FileSpec]) -> Result<()> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let sh = Shell::new()?;
    sh.change_dir(crate::paths::project_root());
    eprintln!("  synth --from-gguf {}", gguf_folder.display());
    cmd!(
        sh,
        "cargo run -q -p llm-worker-rbee -- synth --from-gguf {gguf_folder} --out {partial}"
    )
    .run()
    .context("llm-worker-rbee synth --from-gguf failed")?;
    for spec in specs {
        let path = partial.join(&spec.path);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("synth wrote no {}", path.display()))?
            .len();
        let sha256 = sha256_file(&path)?;
        if Some(size) != spec.size || Some(&sha256) != spec.sha256.as_ref() {
            std::fs::remove_dir_all(&partial)?;
            bail!(
                "{}: synth wrote {size} bytes with sha256 {sha256}, pinned {} bytes with sha256 \
                 {}; deleted. If the writer changed on purpose, pin the new file in \
                 conformance/models.toml after reviewing it",
                spec.path,
                spec.size.unwrap_or_default(),
                spec.sha256.as_deref().unwrap_or("-")
            );
        }
        eprintln!(
            "  {}: {size} bytes, sha256 {} matches the pin",
            spec.path,
            &sha256[..16]
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&partial, dir)?;
    Ok(())
}
