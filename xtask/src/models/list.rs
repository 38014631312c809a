//! `cargo xtask models`: the manifest's models and where each stands here, without the network.

use std::path::{Path, PathBuf};

use anyhow::Result;
use llm_worker_rbee_api::model_id::{self, VerifiedModel};
use serde::Serialize;

use super::args::{Args, Format};
use super::hub;
use super::manifest::{self, FileSpec, Lock, Manifest, Model};

/// Where a model stands on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Every file verified against its pin; the worker and the suite take its id.
    Verified,
    /// Every file is in the Hugging Face cache, not verified yet: fetch-models checks them.
    Present,
    /// Some files are in the cache.
    Partial,
    Absent,
}

#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub architecture: String,
    pub format: &'static str,
    /// The sum of the files' sizes, when the manifest or the lock knows each.
    pub size_bytes: Option<u64>,
    pub state: State,
    /// The folder the worker loads for this id, when verified.
    pub folder: Option<PathBuf>,
    pub note: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let (manifest, lock, _) = manifest::load(args.manifest.as_deref())?;
    let listed = list(
        &manifest,
        &lock,
        &model_id::models_dir(),
        &hf_hub::resolve_cache_dir(),
    )?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&listed)?),
        Format::Table => print!("{}", table(&listed)),
    }
    Ok(())
}

pub fn list(
    manifest: &Manifest,
    lock: &Lock,
    models_dir: &Path,
    cache: &Path,
) -> Result<Vec<Listed>> {
    manifest
        .models
        .iter()
        .map(|model| {
            let files = model.files(lock)?;
            let state = state(model, &files, models_dir, cache);
            Ok(Listed {
                id: model.id.clone(),
                architecture: model.architecture.clone(),
                format: model.format.name(),
                size_bytes: files.iter().map(|f| f.size).sum(),
                state,
                folder: (state == State::Verified).then(|| models_dir.join(&model.id)),
                note: model.note.clone(),
            })
        })
        .collect()
}

fn state(model: &Model, files: &[FileSpec], models_dir: &Path, cache: &Path) -> State {
    let folder = models_dir.join(&model.id);
    let record = VerifiedModel::read(&folder).ok();
    let verified = record.as_ref().is_some_and(|record| {
        record.check_files(&folder).is_ok()
            && files.iter().all(|spec| {
                record.files.iter().any(|f| {
                    f.name == spec.name
                        && f.repo == spec.repo
                        && f.path == spec.path
                        && spec.sha256.as_ref().is_none_or(|s| *s == f.sha256)
                })
            })
    });
    if verified {
        return State::Verified;
    }
    let cached = files.iter().filter(|spec| in_cache(spec, cache)).count();
    match cached {
        0 => State::Absent,
        n if n == files.len() => State::Present,
        _ => State::Partial,
    }
}

/// Whether the cache has a snapshot of the file at its pinned commit, else at the commit its
/// `main` ref names; for a package's file, whether it is unpacked.
fn in_cache(spec: &FileSpec, cache: &Path) -> bool {
    if spec.unpacked.is_some() {
        return super::package::unpacked(spec).is_some();
    }
    let repo_dir = hub::repo_dir(cache, &spec.repo);
    let commit = spec.revision.clone().or_else(|| {
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .ok()
            .map(|c| c.trim().to_string())
    });
    commit.is_some_and(|c| {
        repo_dir
            .join("snapshots")
            .join(c)
            .join(&spec.path)
            .is_file()
    })
}

fn table(listed: &[Listed]) -> String {
    let mut out = format!(
        "{:<30} {:<10} {:<12} {:>10}  {:<9} note\n",
        "id", "arch", "format", "size", "state"
    );
    for m in listed {
        let size = m
            .size_bytes
            .map_or("unknown".into(), |b| indicatif::HumanBytes(b).to_string());
        let state = match m.state {
            State::Verified => "verified",
            State::Present => "present",
            State::Partial => "partial",
            State::Absent => "absent",
        };
        out.push_str(&format!(
            "{:<30} {:<10} {:<12} {:>10}  {:<9} {}\n",
            m.id,
            m.architecture,
            m.format,
            size,
            state,
            m.note.as_deref().unwrap_or("")
        ));
    }
    out
}
