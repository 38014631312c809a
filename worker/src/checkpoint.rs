//! What a checkpoint's files declare, read from their headers only, for SafeTensors and GGUF
//! alike.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// What the checkpoint files declare, read from their headers only.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointSummary {
    pub files: Vec<PathBuf>,
    pub file_bytes: u64,
    pub tensors: usize,
    pub parameters: u64,
    /// Tensor count per stored dtype: "f32", "bf16", ...; for GGUF the GGML types, "q4_k", ...
    pub dtypes: BTreeMap<String, usize>,
}

/// The first few items, and how many more there are.
pub fn summarize_list(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > SHOWN {
        text.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    text
}
