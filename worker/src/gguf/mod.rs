//! GGUF models (llama.cpp's format) through candle-transformers' quantized modules: the
//! registry of the architectures that have one ([`ALL`]; each file here implements
//! [`GgufArchitecture`] for one). The file holds the model's settings as metadata and its
//! tensors, the 2-D ones usually quantized; the modules compute in f32.
//!
//! The metadata and the tensor list are checked here, before candle reads them, so that a file
//! the module would misread is refused with the key or tensor at fault: the modules themselves
//! ignore unknown tensors (rope scaling factors, biases) and settings (rope scaling) silently.

pub mod format;
mod llama;
mod phi3;
mod qwen2;
pub mod tokenizer;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use self::format::{
    GgufArchitecture, Header, Quirks, ARCHITECTURE_KEY, EMBEDDINGS, OUTPUT, OUTPUT_NORM,
};
use crate::backend::KvCache;
use crate::checkpoint::{holds_non_finite, layers_held, summarize_list};
use crate::config::{Rope, RopeScaling};
use crate::error::{without_backtrace, Error, Result};
use crate::fast::Engine;
use crate::model::{ArchConfig, Architecture, CausalLm, Dims, Window};

/// Every architecture with a quantized module.
pub const ALL: &[&dyn GgufArchitecture] = &[&llama::GgufLlama, &qwen2::GgufQwen2, &phi3::GgufPhi3];

/// The GGUF form of `architecture`, if it has one.
pub fn of(architecture: &dyn Architecture) -> Option<&'static dyn GgufArchitecture> {
    ALL.iter()
        .copied()
        .find(|g| g.architecture().name() == architecture.name())
}

fn supported_list() -> String {
    ALL.iter()
        .map(|g| g.architecture().name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// From `general.architecture`, among the architectures with a quantized module.
fn detect(header: &Header) -> Result<&'static dyn GgufArchitecture> {
    let supported = supported_list();
    let name = header.opt_string(ARCHITECTURE_KEY)?.ok_or_else(|| {
        header.error(
            ARCHITECTURE_KEY,
            format!("missing; supported GGUF architectures: {supported}"),
        )
    })?;
    ALL.iter()
        .copied()
        .find(|g| g.architecture().name() == name)
        .ok_or_else(|| {
            header.error(
                ARCHITECTURE_KEY,
                format!(
                    "architecture `{name}` is not supported in GGUF files; supported: \
                     {supported}"
                ),
            )
        })
}

/// The architecture's settings from the metadata, checked against what its quantized module
/// implements, and the tensor list checked against the settings; and the architecture, which
/// [`load`] builds the module of.
pub fn parse(header: &Header) -> Result<(ArchConfig, &'static dyn GgufArchitecture)> {
    let gguf = detect(header)?;
    let quirks = gguf.quirks();
    let name = gguf.architecture().name();
    let key = |key: &str| format!("{name}.{key}");
    let dims = read_dims(header, name)?;
    let rope = read_rope(header, name, &quirks, dims.head_dim)?;
    if let Some(experts) = header.opt_u32(&key("expert_count"))?.filter(|n| *n > 1) {
        return Err(header.error(
            &key("expert_count"),
            format!("is {experts}: mixture-of-experts models are not supported"),
        ));
    }
    header.opt_u32(&key("expert_used_count"))?;
    let rms_eps = key("attention.layer_norm_rms_epsilon");
    match header.opt_f32(&rms_eps)? {
        Some(eps) if eps > 0.0 && eps.is_finite() => {}
        Some(eps) => {
            return Err(header.error(
                &rms_eps,
                format!("is {eps}; it must be a positive, finite number"),
            ))
        }
        None => return Err(header.error(&rms_eps, "required, but missing")),
    }
    let window_size = if quirks.reads_sliding_window {
        header.opt_u32(&key("attention.sliding_window"))?
    } else {
        None
    };
    let window = match window_size {
        Some(size) if size > 0 && size < dims.max_position_embeddings => {
            Window::LimitsContext { size }
        }
        _ => Window::None,
    };
    let tie_word_embeddings = header.tensor_shape(OUTPUT).is_none();
    if tie_word_embeddings && !quirks.ties_missing_output {
        return Err(Error::weights(
            header.path(),
            format!("`{OUTPUT}` is missing; candle's {name} module needs it"),
        ));
    }
    check_tensors(header, gguf, &dims, tie_word_embeddings)?;
    let config = ArchConfig {
        architecture: gguf.architecture(),
        dims,
        tie_word_embeddings,
        rope,
        window,
    };
    Ok((config, gguf))
}

/// The sizes, from the metadata and the embeddings' shape; the modules derive the head size.
fn read_dims(header: &Header, name: &str) -> Result<Dims> {
    let key = |key: &str| format!("{name}.{key}");
    let hidden_size = header.positive(&key("embedding_length"))?;
    let num_heads = header.positive(&key("attention.head_count"))?;
    let num_kv_heads = header.positive(&key("attention.head_count_kv"))?;
    if num_heads % num_kv_heads != 0 {
        return Err(header.error(
            &key("attention.head_count_kv"),
            format!("is {num_kv_heads}; it must divide attention.head_count ({num_heads})"),
        ));
    }
    if hidden_size % num_heads != 0 {
        return Err(header.error(
            &key("attention.head_count"),
            format!("is {num_heads}, which does not divide embedding_length ({hidden_size})"),
        ));
    }
    let head_dim = hidden_size / num_heads;
    for name in ["attention.key_length", "attention.value_length"] {
        expect_head_dim(header, &key(name), head_dim)?;
    }
    let vocab_size = match header.tensor_shape(EMBEDDINGS) {
        Some([vocab, _]) => *vocab,
        _ => {
            return Err(Error::weights(
                header.path(),
                format!("`{EMBEDDINGS}` is missing or not a matrix"),
            ))
        }
    };
    if let Some(stated) = header.opt_u32(&key("vocab_size"))? {
        if stated != vocab_size {
            return Err(header.error(
                &key("vocab_size"),
                format!("is {stated}, but `{EMBEDDINGS}` has {vocab_size} rows"),
            ));
        }
    }
    Ok(Dims {
        vocab_size,
        hidden_size,
        intermediate_size: header.positive(&key("feed_forward_length"))?,
        num_layers: header.positive(&key("block_count"))?,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings: header.positive(&key("context_length"))?,
    })
}

/// The rotary settings: the whole head rotated, no scaling, the base the module uses.
fn read_rope(header: &Header, name: &str, quirks: &Quirks, head_dim: usize) -> Result<Rope> {
    let key = |key: &str| format!("{name}.{key}");
    let dimension_count = key("rope.dimension_count");
    if quirks.reads_rope_dimension_count {
        header.u32(&dimension_count)?;
    }
    expect_head_dim(header, &dimension_count, head_dim)?;
    let scaling = key("rope.scaling.type");
    match header.opt_string(&scaling)? {
        None | Some("none") => {}
        Some(other) => {
            return Err(header.error(
                &scaling,
                format!("rope scaling `{other}` is not implemented by the quantized modules"),
            ))
        }
    }
    let freq_base = key("rope.freq_base");
    let theta = match (header.opt_f32(&freq_base)?, quirks.fixed_freq_base) {
        (Some(theta), Some(fixed)) if theta != fixed => {
            return Err(header.error(
                &freq_base,
                format!("is {theta}, but candle's {name} module always uses {fixed}"),
            ))
        }
        (Some(theta), _) => theta,
        (None, fixed) => fixed.unwrap_or(10_000.0),
    };
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(header.error(
            &freq_base,
            format!("is {theta}; the rotary base must be a positive, finite number"),
        ));
    }
    Ok(Rope {
        theta,
        partial_rotary_factor: 1.0,
        scaling: RopeScaling::None,
    })
}

fn expect_head_dim(header: &Header, key: &str, head_dim: usize) -> Result<()> {
    match header.opt_u32(key)? {
        Some(n) if n != head_dim => Err(header.error(
            key,
            format!(
                "is {n}, but the module uses embedding_length / attention.head_count = \
                 {head_dim} for every head and rotates all of it"
            ),
        )),
        _ => Ok(()),
    }
}

/// The tensors the module reads, with their shapes (rows first), in the order llama.cpp writes
/// them.
pub fn expected_tensors(
    gguf: &dyn GgufArchitecture,
    dims: &Dims,
    tied: bool,
) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (dims.hidden_size, dims.vocab_size);
    let mut tensors = vec![(EMBEDDINGS.to_string(), vec![v, h])];
    for layer in 0..dims.num_layers {
        tensors.extend(
            gguf.block_tensors(dims)
                .into_iter()
                .map(|t| (format!("blk.{layer}.{}", t.name), t.shape)),
        );
    }
    tensors.push((OUTPUT_NORM.to_string(), vec![h]));
    if !tied {
        tensors.push((OUTPUT.to_string(), vec![v, h]));
    }
    tensors
}

/// Every tensor the module reads must be there with its shape, and every tensor of the file
/// must be read: the modules skip what they do not know, which would change the output.
fn check_tensors(
    header: &Header,
    gguf: &dyn GgufArchitecture,
    dims: &Dims,
    tied: bool,
) -> Result<()> {
    let architecture = gguf.architecture().name();
    // The blocks the file holds, checked first: the list below has an entry per tensor of every
    // block the metadata states, which for a block count of 2^32 would not fit in memory.
    let held = layers_held(header.tensor_names(), "blk.");
    if dims.num_layers > held {
        return Err(header.error(
            &format!("{architecture}.block_count"),
            format!(
                "is {}, but the file holds {held} blocks of tensors",
                dims.num_layers
            ),
        ));
    }
    let expected = expected_tensors(gguf, dims, tied);
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match header.tensor_shape(name) {
            Some(found) if found == shape.as_slice() => {}
            Some(found) => {
                problems.push(format!("`{name}` has shape {found:?}, expected {shape:?}"))
            }
            None => problems.push(format!("`{name}` (shape {shape:?}) is missing")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::weights(
            header.path(),
            format!(
                "the tensors do not match the {architecture} metadata: {}",
                summarize_list(&problems)
            ),
        ));
    }
    let names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unused: Vec<String> = header
        .tensor_names()
        .filter(|name| !names.contains(name))
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !unused.is_empty() {
        return Err(Error::weights(
            header.path(),
            format!(
                "candle's quantized {architecture} module does not use these tensors, so its \
                 output would not be the model's: {}",
                summarize_list(&unused)
            ),
        ));
    }
    Ok(())
}

/// Reads the tensors of the GGUF file at `path` onto `device` and builds the module of `gguf`.
pub fn load(
    path: &Path,
    gguf: &dyn GgufArchitecture,
    device: &Device,
    dtype: DType,
    engine: Engine,
    kv_cache: KvCache,
) -> Result<Box<dyn CausalLm>> {
    if dtype != DType::F32 {
        return Err(Error::weights(
            path,
            format!(
                "GGUF models run in f32 (candle's quantized modules compute their activations \
                 in f32); {} was asked for",
                format!("{dtype:?}").to_lowercase()
            ),
        ));
    }
    let content = format::read_content(path)?;
    let mut file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    check_float_tensors(path, &content, &mut file)?;
    gguf.load(content, &mut file, device, engine, kv_cache)
        .map_err(|e| {
            Error::weights(
                path,
                format!(
                    "cannot build the quantized {} model: {}",
                    gguf.architecture(),
                    without_backtrace(e)
                ),
            )
        })
}

/// Refuses a file whose floating-point tensors (the norms; the embeddings in some files) hold
/// NaN or infinity (one reduction a tensor). Quantized blocks are not scanned (that would
/// dequantize the whole model at every load); a NaN there reaches the logits, from which the
/// worker refuses to pick a token.
fn check_float_tensors(path: &Path, content: &Content, file: &mut File) -> Result<()> {
    let mut names: Vec<&String> = content
        .tensor_infos
        .iter()
        .filter(|(_, info)| {
            matches!(
                info.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            )
        })
        .map(|(name, _)| name)
        .collect();
    names.sort();
    let mut bad = Vec::new();
    for name in names {
        let mut finite = || -> candle_core::Result<bool> {
            let tensor = content.tensor(file, name, &Device::Cpu)?;
            Ok(!holds_non_finite(&tensor.dequantize(&Device::Cpu)?)?)
        };
        match finite() {
            Ok(true) => {}
            Ok(false) => bad.push(format!("`{name}` holds NaN or infinity")),
            // A file cut short, among others: the module's load says what is wrong.
            Err(_) => return Ok(()),
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::weights(
        path,
        format!(
            "the file holds values the model cannot compute with: {}",
            summarize_list(&bad)
        ),
    ))
}
