//! GGUF models (llama.cpp's format) through candle-transformers' quantized modules: llama, qwen2
//! and phi3. The file holds the model's settings as metadata and its tensors, the 2-D ones
//! usually quantized; the modules compute in f32.
//!
//! The metadata and the tensor list are checked here, before candle reads them, so that a file
//! the module would misread is refused with the key or tensor at fault: the modules themselves
//! ignore unknown tensors (rope scaling factors, biases) and settings (rope scaling) silently.

pub mod convert;
mod llama;
mod phi3;
mod qwen2;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result as CandleResult, Tensor};

use super::{ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::config::{Rope, RopeScaling};
use crate::error::{Error, Result};
use crate::tokens::{ExplicitSpecials, ModelSpecials};
use crate::weights::{summarize_list, CheckpointSummary};

/// The architectures with a quantized module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Llama,
    Qwen2,
    Phi3,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Llama, Kind::Qwen2, Kind::Phi3];

    pub fn of(architecture: Architecture) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.architecture() == architecture)
    }

    pub fn architecture(self) -> Architecture {
        match self {
            Kind::Llama => Architecture::Llama,
            Kind::Qwen2 => Architecture::Qwen2,
            Kind::Phi3 => Architecture::Phi3,
        }
    }

    /// The name in `general.architecture` and in the metadata keys: the architecture's.
    pub fn name(self) -> &'static str {
        self.architecture().name()
    }

    fn quirks(self) -> &'static Quirks {
        match self {
            Kind::Llama => &llama::QUIRKS,
            Kind::Qwen2 => &qwen2::QUIRKS,
            Kind::Phi3 => &phi3::QUIRKS,
        }
    }

    fn layer_tensors(self, dims: &Dims) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            Kind::Llama => llama::layer_tensors(dims),
            Kind::Qwen2 => qwen2::layer_tensors(dims),
            Kind::Phi3 => phi3::layer_tensors(dims),
        }
    }

    fn supported_list() -> String {
        Kind::ALL.map(Kind::name).join(", ")
    }
}

pub const ARCHITECTURE_KEY: &str = "general.architecture";
pub const EMBEDDINGS: &str = "token_embd.weight";
pub const OUTPUT: &str = "output.weight";
pub const OUTPUT_NORM: &str = "output_norm.weight";

/// What differs between the quantized modules, beyond their per-layer tensors.
struct Quirks {
    /// Positions covered by rotary tables of a fixed size, whatever `context_length` says.
    table_positions: Option<usize>,
    /// A rope base the module uses whatever `rope.freq_base` says.
    fixed_freq_base: Option<f64>,
    /// Whether the module reads `rope.dimension_count` (it must then be the head size).
    reads_rope_dimension_count: bool,
    /// Whether `output.weight` may be absent, the embeddings then serving as the output layer.
    ties_missing_output: bool,
    /// Whether `attention.sliding_window` limits the context: the module applies no window,
    /// so sequences stay within it, where it masks nothing.
    reads_sliding_window: bool,
}

/// What an [`ArchConfig`] of a GGUF model needs besides the common settings.
#[derive(Clone, Debug)]
pub struct Config {
    kind: Kind,
    /// The longest sequence the module's rotary tables cover.
    pub table_positions: usize,
}

/// The metadata and tensor list of a GGUF file, read from its header; remembers which keys were
/// read so that settings nobody looked at can be reported.
pub struct Header {
    path: PathBuf,
    content: Content,
    read: RefCell<BTreeSet<String>>,
}

impl Header {
    pub fn read(path: &Path) -> Result<Self> {
        let content = read_content(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            read: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::field(&self.path, key, message)
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.content.metadata.get(key)
    }

    /// An integer key, stored as a u32 as llama.cpp writes it and candle reads it.
    fn opt_u32(&self, key: &str) -> Result<Option<usize>> {
        self.value(key)
            .map(|v| match v {
                Value::U32(n) => Ok(*n as usize),
                v => Err(self.error(key, format!("expected a u32, found {v:?}"))),
            })
            .transpose()
    }

    fn u32(&self, key: &str) -> Result<usize> {
        self.opt_u32(key)?
            .ok_or_else(|| self.error(key, "required, but missing"))
    }

    fn positive(&self, key: &str) -> Result<usize> {
        match self.u32(key)? {
            0 => Err(self.error(key, "must be positive")),
            n => Ok(n),
        }
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f64>> {
        self.value(key)
            .map(|v| match v {
                Value::F32(x) => Ok(*x as f64),
                v => Err(self.error(key, format!("expected an f32, found {v:?}"))),
            })
            .transpose()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.value(key)
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                v => Err(self.error(key, format!("expected a bool, found {v:?}"))),
            })
            .transpose()
    }

    fn opt_string(&self, key: &str) -> Result<Option<&str>> {
        self.value(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.error(key, format!("expected a string, found {v:?}"))),
            })
            .transpose()
    }

    /// From `general.architecture`, among the architectures with a quantized module.
    pub fn kind(&self) -> Result<Kind> {
        let supported = Kind::supported_list();
        let name = self.opt_string(ARCHITECTURE_KEY)?.ok_or_else(|| {
            self.error(
                ARCHITECTURE_KEY,
                format!("missing; supported GGUF architectures: {supported}"),
            )
        })?;
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                self.error(
                    ARCHITECTURE_KEY,
                    format!(
                        "architecture `{name}` is not supported in GGUF files; supported: \
                         {supported}"
                    ),
                )
            })
    }

    fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims())
    }

    /// Keys of the architecture's own namespace (`llama.*`, ...) that nothing read: settings the
    /// worker does not know. `general.*` and `tokenizer.*` keys describe the file and the
    /// vocabulary (tokenizer.json is used instead) and are not listed.
    pub fn unread_keys(&self) -> Vec<String> {
        let read = self.read.borrow();
        let Some(Value::String(arch)) = self.content.metadata.get(ARCHITECTURE_KEY) else {
            return Vec::new();
        };
        let prefix = format!("{arch}.");
        let mut keys: Vec<String> = self
            .content
            .metadata
            .keys()
            .filter(|k| k.starts_with(&prefix) && !read.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// The EOS id and the special tokens to add to text prompts, as the metadata gives them.
    pub fn special_tokens(&self) -> Result<ModelSpecials> {
        const BOS: &str = "tokenizer.ggml.bos_token_id";
        const EOS: &str = "tokenizer.ggml.eos_token_id";
        const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
        const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
        let bos = self.opt_u32(BOS)?.map(|id| id as u32);
        let eos = self.opt_u32(EOS)?.map(|id| id as u32);
        let (add_bos, add_eos) = (self.opt_bool(ADD_BOS)?, self.opt_bool(ADD_EOS)?);
        let added =
            |flag: Option<bool>, id: Option<u32>, id_key: &str, flag_key: &str| match (flag, id) {
                (Some(true), None) => {
                    Err(self.error(id_key, format!("missing, but {flag_key} is true")))
                }
                (Some(true), id) => Ok(id),
                _ => Ok(None),
            };
        let explicit = if add_bos.is_some() || add_eos.is_some() {
            Some(ExplicitSpecials {
                bos: added(add_bos, bos, BOS, ADD_BOS)?,
                eos: added(add_eos, eos, EOS, ADD_EOS)?,
            })
        } else {
            None
        };
        Ok(ModelSpecials {
            eos_ids: eos.into_iter().collect(),
            explicit,
        })
    }

    /// Tensor count, parameters and the tensor count per GGML type ("q8_0", "f32", ...).
    pub fn summary(&self) -> CheckpointSummary {
        let mut summary = CheckpointSummary {
            files: vec![self.path.clone()],
            file_bytes: std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            tensors: self.content.tensor_infos.len(),
            parameters: 0,
            dtypes: BTreeMap::new(),
        };
        for info in self.content.tensor_infos.values() {
            summary.parameters += info.shape.elem_count() as u64;
            *summary
                .dtypes
                .entry(type_name(info.ggml_dtype).to_string())
                .or_default() += 1;
        }
        summary
    }
}

fn read_content(path: &Path) -> Result<Content> {
    let mut file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    Content::read(&mut file)
        .map_err(|e| Error::weights(path, format!("not a readable GGUF file: {e}")))
}

/// llama.cpp's name of a GGML type, as in `Q4_K_M` file names but lowercase.
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// The architecture's settings from the metadata, checked against what its quantized module
/// implements, and the tensor list checked against the settings.
pub fn parse(header: &Header) -> Result<ArchConfig> {
    let kind = header.kind()?;
    let quirks = kind.quirks();
    let key = |name: &str| format!("{}.{name}", kind.name());
    let dims = read_dims(header, kind)?;
    let rope = read_rope(header, kind, dims.head_dim)?;
    if let Some(experts) = header.opt_u32(&key("expert_count"))?.filter(|n| *n > 1) {
        return Err(header.error(
            &key("expert_count"),
            format!("is {experts}: mixture-of-experts models are not supported"),
        ));
    }
    header.opt_u32(&key("expert_used_count"))?;
    let rms_eps = key("attention.layer_norm_rms_epsilon");
    match header.opt_f32(&rms_eps)? {
        Some(eps) if eps > 0.0 => {}
        Some(eps) => return Err(header.error(&rms_eps, format!("is {eps}; it must be positive"))),
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
            format!(
                "`{OUTPUT}` is missing; candle's {} module needs it",
                kind.name()
            ),
        ));
    }
    check_tensors(header, kind, &dims, tie_word_embeddings)?;
    let table_positions = quirks
        .table_positions
        .unwrap_or(dims.max_position_embeddings);
    Ok(ArchConfig {
        architecture: kind.architecture(),
        dims,
        tie_word_embeddings,
        rope,
        window,
        module: ModuleConfig::Gguf(Config {
            kind,
            table_positions,
        }),
    })
}

/// The sizes, from the metadata and the embeddings' shape; the modules derive the head size.
fn read_dims(header: &Header, kind: Kind) -> Result<Dims> {
    let key = |name: &str| format!("{}.{name}", kind.name());
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
fn read_rope(header: &Header, kind: Kind, head_dim: usize) -> Result<Rope> {
    let key = |name: &str| format!("{}.{name}", kind.name());
    let quirks = kind.quirks();
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
                format!(
                    "is {theta}, but candle's {} module always uses {fixed}",
                    kind.name()
                ),
            ))
        }
        (Some(theta), _) => theta,
        (None, fixed) => fixed.unwrap_or(10_000.0),
    };
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
pub fn expected_tensors(kind: Kind, dims: &Dims, tied: bool) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (dims.hidden_size, dims.vocab_size);
    let mut tensors = vec![(EMBEDDINGS.to_string(), vec![v, h])];
    for layer in 0..dims.num_layers {
        tensors.extend(
            kind.layer_tensors(dims)
                .into_iter()
                .map(|(name, shape)| (format!("blk.{layer}.{name}"), shape)),
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
fn check_tensors(header: &Header, kind: Kind, dims: &Dims, tied: bool) -> Result<()> {
    let architecture = kind.name();
    let expected = expected_tensors(kind, dims, tied);
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
        .content
        .tensor_infos
        .keys()
        .filter(|name| !names.contains(name.as_str()))
        .cloned()
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

/// A loaded quantized model; each variant owns its KV cache.
pub enum Model {
    Llama(llama::Model),
    Qwen2(qwen2::Model),
    Phi3(phi3::Model),
}

/// Reads the tensors of the GGUF file at `path` onto `device` and builds the model `config`
/// describes ([`ArchConfig::gguf`]).
pub fn load(path: &Path, config: &Config, device: &Device, dtype: DType) -> Result<Model> {
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
    let content = read_content(path)?;
    let mut file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let model = match config.kind {
        Kind::Llama => llama::Model::load(content, &mut file, device).map(Model::Llama),
        Kind::Qwen2 => qwen2::Model::load(content, &mut file, device).map(Model::Qwen2),
        Kind::Phi3 => phi3::Model::load(content, &mut file, device).map(Model::Phi3),
    };
    model.map_err(|e| {
        Error::weights(
            path,
            format!(
                "cannot build the quantized {} model: {e}",
                config.kind.name()
            ),
        )
    })
}

impl Model {
    /// The logits of the last position of `ids`, at positions from `offset`.
    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> CandleResult<Tensor> {
        match self {
            Model::Llama(m) => m.forward(ids, offset),
            Model::Qwen2(m) => m.forward(ids, offset),
            Model::Phi3(m) => m.forward(ids, offset),
        }
    }

    /// Every quantized module also starts a new cache by itself when a forward starts at
    /// position 0, as every request and step of the worker does.
    pub fn reset(&mut self) {
        match self {
            Model::Llama(m) => m.reset(),
            Model::Qwen2(m) => m.reset(),
            Model::Phi3(m) => m.reset(),
        }
    }
}
