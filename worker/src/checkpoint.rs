//! What a checkpoint's files declare, read from their headers only, for SafeTensors and GGUF
//! alike.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
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

/// How many layers a checkpoint's tensor names hold: one more than the highest `N` of the
/// names `{prefix}N.…`; 0 when no name has the prefix.
pub fn layers_held<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> usize {
    names
        .filter_map(|name| {
            name.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |last| last + 1)
}

/// Whether `tensor` holds NaN or infinity: x * 0 is NaN exactly there, and one sum finds it.
pub fn holds_non_finite(tensor: &Tensor) -> candle_core::Result<bool> {
    let sum = tensor.affine(0.0, 0.0)?.sum_all()?.to_dtype(DType::F32)?;
    Ok(sum.to_scalar::<f32>()?.is_nan())
}
