//! A SafeTensors model folder of an architecture with a GGUF form written as one GGUF file, laid out as
//! llama.cpp's `convert_hf_to_gguf.py` lays it out: its tensor names and order, llama's q/k rows
//! permuted for the interleaved rotation, its metadata keys. 2-D weights are quantized to the
//! type asked for, norms and biases stay f32. No vocabulary is written: the worker reads
//! tokenizer.json. This makes the GGUF fixtures.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::Value as Json;

use crate::config::HfConfig;
use crate::error::{Error, Result};
use crate::gguf::format::{GgufArchitecture, ARCHITECTURE_KEY, EMBEDDINGS, OUTPUT, OUTPUT_NORM};
use crate::model::ArchConfig;
use crate::weights::LM_HEAD;
use crate::{arch, folder, gguf};

/// Writes the model of the SafeTensors folder `source` (config.json and model.safetensors) to
/// the GGUF file `out`, its 2-D weights quantized to `quantization`.
pub fn write_gguf(source: &Path, quantization: GgmlDType, out: &Path) -> Result<()> {
    let config = HfConfig::load(&source.join(folder::CONFIG))?;
    let arch = arch::parse(&config)?.config;
    let kind = gguf::of(arch.architecture).ok_or_else(|| {
        config.error(
            "model_type",
            format!(
                "no quantized candle module for `{}`: it has no GGUF form here",
                arch.architecture
            ),
        )
    })?;
    let weights_path = source.join(folder::WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .map_err(|e| Error::weights(&weights_path, format!("cannot read: {e}")))?;
    if arch.tie_word_embeddings {
        // A copy of the embeddings at most (the loader checks it); GGUF leaves it out.
        tensors.remove(LM_HEAD);
    }

    let mut quantized = Vec::new();
    let quirks = kind.quirks();
    for (name, shape) in gguf::expected_tensors(kind, &arch.dims, arch.tie_word_embeddings) {
        let source_name = source_name(kind, &arch, &name);
        let tensor = tensors
            .remove(&source_name)
            .ok_or_else(|| Error::weights(&weights_path, format!("`{source_name}` is missing")))?;
        let tensor = match rotated_heads(&name, &arch.dims) {
            Some(heads) if quirks.interleaved_rope => permute_for_interleaved_rope(&tensor, heads)?,
            _ => tensor,
        };
        if tensor.dims() != shape.as_slice() {
            return Err(Error::weights(
                &weights_path,
                format!(
                    "`{source_name}` has shape {:?}, expected {shape:?}",
                    tensor.dims()
                ),
            ));
        }
        let dtype = if shape.len() == 2 {
            quantization
        } else {
            GgmlDType::F32
        };
        let qtensor = QTensor::quantize(&tensor, dtype).map_err(|e| {
            Error::weights(
                &weights_path,
                format!("cannot quantize `{source_name}`: {e}"),
            )
        })?;
        quantized.push((name, qtensor));
    }
    let unused: BTreeSet<&String> = tensors
        .keys()
        .filter(|name| {
            !arch
                .architecture
                .harmless_tensors()
                .iter()
                .any(|s| name.ends_with(s))
        })
        .collect();
    if !unused.is_empty() {
        return Err(Error::weights(
            &weights_path,
            format!("tensors without a GGUF counterpart: {unused:?}"),
        ));
    }

    let metadata = metadata(source, &config, &arch, kind)?;
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let quantized: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = File::create(out).map_err(|e| Error::file(out, format!("cannot create: {e}")))?;
    let mut writer = BufWriter::new(file);
    gguf_file::write(&mut writer, &metadata, &quantized)
        .map_err(|e| Error::file(out, format!("cannot write: {e}")))?;
    writer
        .into_inner()
        .map_err(|e| Error::file(out, format!("cannot write: {e}")))?;
    Ok(())
}

/// The transformers name of a GGUF tensor.
pub(super) fn source_name(
    kind: &dyn GgufArchitecture,
    arch: &ArchConfig,
    gguf_name: &str,
) -> String {
    match gguf_name {
        EMBEDDINGS => return "model.embed_tokens.weight".into(),
        OUTPUT_NORM => return "model.norm.weight".into(),
        OUTPUT => return LM_HEAD.into(),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.").unwrap_or(gguf_name);
    let (layer, block_name) = rest.split_once('.').unwrap_or(("", rest));
    let hf_name = kind
        .block_tensors(&arch.dims)
        .into_iter()
        .find(|t| t.name == block_name)
        .map_or(block_name, |t| t.source);
    format!("model.layers.{layer}.{hf_name}")
}

/// llama.cpp's `permute` for llama's q/k projections: within each head, the row of the `i`-th
/// rotated pair's first half moves to `2i` and its second half to `2i + 1`.
fn permute_for_interleaved_rope(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    Ok(weight
        .reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The heads of a GGUF tensor whose rows llama.cpp permutes for its interleaved rope: the
/// query's and the key's weights (`blk.N.attn_q.weight`, `blk.N.attn_k.weight`).
pub(super) fn rotated_heads(gguf_name: &str, dims: &crate::model::Dims) -> Option<usize> {
    match gguf_name.rsplit('.').nth(1) {
        Some("attn_q") => Some(dims.num_heads),
        Some("attn_k") => Some(dims.num_kv_heads),
        _ => None,
    }
}

/// The inverse of [`permute_for_interleaved_rope`].
pub(super) fn unpermute_for_interleaved_rope(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    Ok(weight
        .reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

fn metadata(
    source: &Path,
    config: &HfConfig,
    arch: &ArchConfig,
    kind: &dyn GgufArchitecture,
) -> Result<Vec<(String, Value)>> {
    let name = arch.architecture.name();
    let quirks = kind.quirks();
    let dims = &arch.dims;
    let u32_of = |n: usize| Value::U32(n as u32);
    let key = |k: &str| format!("{name}.{k}");
    let mut metadata = vec![
        (
            ARCHITECTURE_KEY.to_string(),
            Value::String(name.to_string()),
        ),
        (key("context_length"), u32_of(dims.max_position_embeddings)),
        (key("embedding_length"), u32_of(dims.hidden_size)),
        (key("block_count"), u32_of(dims.num_layers)),
        (key("feed_forward_length"), u32_of(dims.intermediate_size)),
        (key("attention.head_count"), u32_of(dims.num_heads)),
        (key("attention.head_count_kv"), u32_of(dims.num_kv_heads)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(config.f64("rms_norm_eps")? as f32),
        ),
        (key("rope.freq_base"), Value::F32(arch.rope.theta as f32)),
    ];
    // As llama.cpp: the rotated dimensions and the window where the module reads them.
    if quirks.reads_rope_dimension_count {
        metadata.push((key("rope.dimension_count"), u32_of(dims.head_dim)));
    }
    if quirks.reads_sliding_window {
        let window = config.opt_usize("sliding_window")?.unwrap_or(0);
        metadata.push((key("attention.sliding_window"), u32_of(window)));
    }
    let add_bos = read_json(&source.join(folder::TOKENIZER_CONFIG))?
        .and_then(|tc| tc.get("add_bos_token").and_then(Json::as_bool))
        .unwrap_or(false);
    let first_id = |key: &str| -> Result<Option<Value>> {
        Ok(config.token_ids(key)?.first().map(|id| Value::U32(*id)))
    };
    metadata.extend(
        [
            ("tokenizer.ggml.bos_token_id", first_id("bos_token_id")?),
            ("tokenizer.ggml.eos_token_id", first_id("eos_token_id")?),
            ("tokenizer.ggml.add_bos_token", Some(Value::Bool(add_bos))),
            ("tokenizer.ggml.add_eos_token", Some(Value::Bool(false))),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
    );
    Ok(metadata)
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))
}
