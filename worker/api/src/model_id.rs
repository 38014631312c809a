//! Models fetched by `cargo xtask fetch-models`, found by their manifest id.
//!
//! A fetched model is a folder `<models dir>/<id>/` of links into the Hugging Face cache and a
//! record, `verified.json`, that fetch-models writes only after every file's sha256 matched its
//! pin. The worker takes a model id only through that record, so a partial or mismatching
//! download is never used.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::FileError;

type Result<T> = std::result::Result<T, FileError>;

/// The record of a fetched model, in its folder.
pub const RECORD: &str = "verified.json";

/// What fetch-models verified for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifiedModel {
    pub id: String,
    pub architecture: String,
    pub format: String,
    pub files: Vec<VerifiedFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifiedFile {
    /// The file's name in the model folder.
    pub name: String,
    pub repo: String,
    /// The path in the repo.
    pub path: String,
    /// The commit it was fetched at.
    pub revision: String,
    pub size: u64,
    pub sha256: String,
    /// The file in the Hugging Face cache the folder links to.
    pub cached: PathBuf,
}

impl VerifiedModel {
    pub fn read(folder: &Path) -> Result<Self> {
        let path = folder.join(RECORD);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| FileError::new(&path, format!("cannot read: {e}")))?;
        serde_json::from_str(&text)
            .map_err(|e| FileError::new(&path, format!("not a fetch-models record: {e}")))
    }

    /// Checks that every recorded file is still in the folder with its recorded size; hashes
    /// are checked when fetching, not on every load.
    pub fn check_files(&self, folder: &Path) -> std::result::Result<(), String> {
        for file in &self.files {
            let path = folder.join(&file.name);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.len() == file.size => {}
                Ok(meta) => {
                    return Err(format!(
                        "{} is {} bytes, {} when verified",
                        path.display(),
                        meta.len(),
                        file.size
                    ))
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(())
    }
}

/// `LLM_WORKER_MODELS`, else `llm-worker-rbee/models` in the Hugging Face home (`HF_HOME`, else
/// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`), beside the shared hub cache.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLM_WORKER_MODELS") {
        return PathBuf::from(dir);
    }
    let hf_home = match (
        std::env::var_os("HF_HOME"),
        std::env::var_os("XDG_CACHE_HOME"),
    ) {
        (Some(home), _) => PathBuf::from(home),
        (None, Some(cache)) => PathBuf::from(cache).join("huggingface"),
        (None, None) => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache/huggingface")
        }
    };
    hf_home.join("llm-worker-rbee/models")
}

/// Whether `model` can only be an id: one path component, not `.` or `..`.
fn as_id(model: &Path) -> Option<&str> {
    let text = model.to_str()?;
    let is_id = !text.is_empty()
        && !text.contains(['/', '\\'])
        && text != "."
        && text != ".."
        && !text.ends_with(".gguf");
    is_id.then_some(text)
}

/// The folder to load for `--model`: an existing path as given, else the verified folder of the
/// fetched model with that id in [`models_dir`].
pub fn resolve(model: &Path) -> Result<PathBuf> {
    resolve_in(&models_dir(), model)
}

/// [`resolve`] with the fetched models in `models_dir`.
pub fn resolve_in(models_dir: &Path, model: &Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let Some(id) = as_id(model) else {
        return Ok(model.to_path_buf());
    };
    let folder = models_dir.join(id);
    let fetch = format!(
        "fetch it with `cargo xtask fetch-models {id}` (`cargo xtask models` lists the ids)"
    );
    if !folder.join(RECORD).is_file() {
        return Err(FileError::new(
            model,
            format!(
                "is neither a model folder nor a verified fetched model (no {}); {fetch}",
                folder.join(RECORD).display()
            ),
        ));
    }
    let record = VerifiedModel::read(&folder)?;
    record.check_files(&folder).map_err(|why| {
        FileError::new(
            &folder,
            format!("changed since it was verified ({why}); {fetch} again"),
        )
    })?;
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_components_are_ids() {
        assert_eq!(
            as_id(Path::new("qwen2.5-0.5b-instruct")),
            Some("qwen2.5-0.5b-instruct")
        );
        assert_eq!(as_id(Path::new("models/qwen2")), None);
        assert_eq!(as_id(Path::new("..")), None);
        assert_eq!(as_id(Path::new("model.gguf")), None);
    }

    #[test]
    fn a_record_whose_file_changed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let mut record = VerifiedModel {
            id: "m".into(),
            architecture: "llama".into(),
            format: "safetensors".into(),
            files: vec![VerifiedFile {
                name: "config.json".into(),
                repo: "o/m".into(),
                path: "config.json".into(),
                revision: "0".repeat(40),
                size: 2,
                sha256: String::new(),
                cached: dir.path().join("config.json"),
            }],
        };
        assert_eq!(record.check_files(dir.path()), Ok(()));
        record.files[0].size = 3;
        let err = record.check_files(dir.path()).unwrap_err();
        assert!(err.contains("2 bytes, 3 when verified"), "{err}");
        record.files[0].name = "gone.json".into();
        assert!(record.check_files(dir.path()).is_err());
    }
}
