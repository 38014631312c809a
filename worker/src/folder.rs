//! The files of a model folder in the Hugging Face layout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

#[derive(Clone, Debug)]
pub struct ModelFolder {
    pub root: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub weights: Weights,
}

/// Where the tensors are: one file, or shards listed by an index.
#[derive(Clone, Debug)]
pub enum Weights {
    Single(PathBuf),
    Sharded {
        index: PathBuf,
        /// Tensor name to shard file, as the index lists them.
        weight_map: Vec<(String, PathBuf)>,
    },
}

impl Weights {
    /// Every weight file, each once.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Weights::Single(path) => vec![path.clone()],
            Weights::Sharded { weight_map, .. } => weight_map
                .iter()
                .map(|(_, file)| file.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: std::collections::BTreeMap<String, String>,
}

impl ModelFolder {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            let what = if root.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(Error::file(
                root,
                format!("{what}; --model takes a folder with config.json, tokenizer.json and *.safetensors"),
            ));
        }
        for required in [CONFIG, TOKENIZER] {
            if !root.join(required).is_file() {
                return Err(Error::file(
                    &root.join(required),
                    format!("missing: a model folder needs {CONFIG}, {TOKENIZER} and its weights"),
                ));
            }
        }
        let optional = |name: &str| Some(root.join(name)).filter(|p| p.is_file());
        Ok(Self {
            root: root.to_path_buf(),
            tokenizer_config: optional(TOKENIZER_CONFIG),
            generation_config: optional(GENERATION_CONFIG),
            weights: find_weights(root)?,
        })
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.root.join(TOKENIZER)
    }
}

fn find_weights(root: &Path) -> Result<Weights> {
    let single = root.join(WEIGHTS);
    if single.is_file() {
        return Ok(Weights::Single(single));
    }
    let index = root.join(WEIGHTS_INDEX);
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| Error::file(&index, format!("cannot read: {e}")))?;
        let parsed: Index = serde_json::from_str(&text)
            .map_err(|e| Error::file(&index, format!("not a valid safetensors index: {e}")))?;
        if parsed.weight_map.is_empty() {
            return Err(Error::file(&index, "weight_map lists no tensors"));
        }
        let mut weight_map = Vec::with_capacity(parsed.weight_map.len());
        for (tensor, file) in parsed.weight_map {
            let path = root.join(&file);
            if !path.is_file() {
                return Err(Error::file(
                    &path,
                    format!("missing shard, listed in {WEIGHTS_INDEX} for tensor `{tensor}`"),
                ));
            }
            weight_map.push((tensor, path));
        }
        return Ok(Weights::Sharded { index, weight_map });
    }
    let others: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::file(root, format!("cannot list: {e}")))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            [".bin", ".pt", ".pth", ".gguf", ".ggml"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
        .collect();
    let hint = if others.is_empty() {
        String::new()
    } else {
        format!(
            " (found {}: only SafeTensors weights are loaded; convert them first)",
            others.join(", ")
        )
    };
    Err(Error::file(
        root,
        format!("no weights: expected {WEIGHTS} or {WEIGHTS_INDEX}{hint}"),
    ))
}
