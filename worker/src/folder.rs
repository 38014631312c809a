//! The files of a model folder: the Hugging Face layout with SafeTensors weights, or one GGUF
//! file (named itself, or alone in its folder), whose metadata holds its settings and, unless a
//! `tokenizer.json` is beside it, its tokenizer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// Where transformers 5 saves the chat template (4.x wrote it into tokenizer_config.json).
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const GGUF_EXTENSION: &str = "gguf";

#[derive(Clone, Debug)]
pub struct ModelFolder {
    pub root: PathBuf,
    /// Required beside SafeTensors weights; beside a GGUF file it replaces the file's own.
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub weights: Weights,
}

/// Where the tensors are: one SafeTensors file, SafeTensors shards listed by an index, or one
/// GGUF file (which also holds the model's settings, in place of config.json).
#[derive(Clone, Debug)]
pub enum Weights {
    Single(PathBuf),
    Sharded {
        index: PathBuf,
        /// Tensor name to shard file, as the index lists them.
        weight_map: Vec<(String, PathBuf)>,
    },
    Gguf(PathBuf),
}

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsFormat {
    SafeTensors,
    Gguf,
}

impl Weights {
    pub fn format(&self) -> WeightsFormat {
        match self {
            Weights::Single(_) | Weights::Sharded { .. } => WeightsFormat::SafeTensors,
            Weights::Gguf(_) => WeightsFormat::Gguf,
        }
    }

    /// Every weight file, each once.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Weights::Single(path) | Weights::Gguf(path) => vec![path.clone()],
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
    /// A model folder, or a `.gguf` file (its folder's other files are read as they are beside
    /// a GGUF file in a folder of its own).
    pub fn open(path: &Path) -> Result<Self> {
        let is_gguf = |p: &Path| {
            p.extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case(GGUF_EXTENSION))
        };
        if path.is_file() && is_gguf(path) {
            let root = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            return Ok(Self::with_weights(root, Weights::Gguf(path.to_path_buf())));
        }
        let root = path;
        if !root.is_dir() {
            let what = if root.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(Error::file(
                root,
                format!(
                    "{what}; --model takes a folder with config.json, tokenizer.json and \
                     *.safetensors, or a .gguf file, or a folder with one .gguf file"
                ),
            ));
        }
        let weights = find_weights(root)?;
        // A GGUF file holds the model's settings and tokenizer itself; a config.json beside it
        // is not read.
        let required: &[&str] = match weights {
            Weights::Gguf(_) => &[],
            _ => &[CONFIG, TOKENIZER],
        };
        for name in required {
            if !root.join(name).is_file() {
                return Err(Error::file(
                    &root.join(name),
                    format!(
                        "missing: a model folder needs {CONFIG}, {TOKENIZER} and SafeTensors \
                         weights, or one .gguf file"
                    ),
                ));
            }
        }
        Ok(Self::with_weights(root, weights))
    }

    fn with_weights(root: &Path, weights: Weights) -> Self {
        let optional = |name: &str| Some(root.join(name)).filter(|p| p.is_file());
        Self {
            root: root.to_path_buf(),
            tokenizer: optional(TOKENIZER),
            tokenizer_config: optional(TOKENIZER_CONFIG),
            chat_template: optional(CHAT_TEMPLATE),
            generation_config: optional(GENERATION_CONFIG),
            weights,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }
}

/// SafeTensors weights if the folder has them, else its one GGUF file. A folder with both, or
/// with several GGUF files, is refused: which one is meant cannot be guessed.
fn find_weights(root: &Path) -> Result<Weights> {
    let names = file_names(root)?;
    let ggufs: Vec<&String> = names
        .iter()
        .filter(|name| {
            Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case(GGUF_EXTENSION))
        })
        .collect();
    let safetensors = [WEIGHTS, WEIGHTS_INDEX]
        .into_iter()
        .find(|name| root.join(name).is_file());
    match (safetensors, ggufs.as_slice()) {
        (Some(safetensors), [gguf, ..]) => Err(Error::file(
            root,
            format!(
                "holds both SafeTensors weights ({safetensors}) and a GGUF file ({gguf}); keep \
                 one of them"
            ),
        )),
        (Some(_), []) => find_safetensors(root),
        (None, [gguf]) => Ok(Weights::Gguf(root.join(gguf))),
        (None, [_, _, ..]) => Err(Error::file(
            root,
            format!(
                "holds {} GGUF files ({}); a model folder holds exactly one",
                ggufs.len(),
                ggufs
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        (None, []) => {
            let others: Vec<&String> = names
                .iter()
                .filter(|name| {
                    [".bin", ".pt", ".pth", ".ggml"]
                        .iter()
                        .any(|ext| name.ends_with(ext))
                })
                .collect();
            let hint = if others.is_empty() {
                String::new()
            } else {
                format!(
                    " (found {}: only SafeTensors and GGUF weights are loaded; convert them first)",
                    others
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Err(Error::file(
                root,
                format!("no weights: expected {WEIGHTS}, {WEIGHTS_INDEX} or one .gguf file{hint}"),
            ))
        }
    }
}

/// The names of the files in `root`, sorted.
fn file_names(root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::file(root, format!("cannot list: {e}")))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn find_safetensors(root: &Path) -> Result<Weights> {
    let single = root.join(WEIGHTS);
    if single.is_file() {
        return Ok(Weights::Single(single));
    }
    let index = root.join(WEIGHTS_INDEX);
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
    Ok(Weights::Sharded { index, weight_map })
}

/// A JSON file of the folder whose top level is an object (tokenizer_config.json,
/// generation_config.json).
pub fn read_json_object(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::file(path, "expected a JSON object at the top level")),
        Err(e) => Err(Error::file(path, format!("not valid JSON: {e}"))),
    }
}
