//! What every GGUF architecture shares: the [`GgufArchitecture`] trait each file of `gguf/`
//! implements, the differences between candle's quantized modules ([`Quirks`]), and the reader
//! of a file's metadata and tensor list ([`Header`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Result as CandleResult};

use crate::backend::KvCache;
use crate::checkpoint::CheckpointSummary;
use crate::error::{Error, Result};
use crate::fast::Engine;
use crate::model::{Architecture, CausalLm, Dims};
use crate::tokens::{ExplicitSpecials, ModelSpecials};

pub const ARCHITECTURE_KEY: &str = "general.architecture";
pub const EMBEDDINGS: &str = "token_embd.weight";
pub const OUTPUT: &str = "output.weight";
pub const OUTPUT_NORM: &str = "output_norm.weight";
pub const BOS: &str = "tokenizer.ggml.bos_token_id";
pub const EOS: &str = "tokenizer.ggml.eos_token_id";

/// An architecture with a quantized candle module. `gguf::ALL` lists every implementation once.
pub trait GgufArchitecture: Send + Sync {
    /// The same models in SafeTensors; its name is `general.architecture` and the prefix of the
    /// metadata keys.
    fn architecture(&self) -> &'static dyn Architecture;

    fn quirks(&self) -> Quirks;

    /// The tensors of one block, in the order llama.cpp writes them.
    fn block_tensors(&self, dims: &Dims) -> Vec<BlockTensor>;

    /// Whether the fast engine runs this module's products on the CPU (`fast::cpu`).
    fn runs_cpu_kernels(&self) -> bool {
        false
    }

    /// Whether the module's KV cache can hold f16 (`KvCache::F16`); the others are candle's
    /// modules, whose caches hold the activations' type.
    fn holds_an_f16_kv_cache(&self) -> bool {
        false
    }

    /// Builds the module from the file's tensors, for `engine` (where the module has a fast
    /// path), its KV cache of type `kv_cache` (f16 only where `holds_an_f16_kv_cache`).
    fn load(
        &self,
        content: Content,
        file: &mut File,
        device: &Device,
        engine: Engine,
        kv_cache: KvCache,
    ) -> CandleResult<Box<dyn CausalLm>>;
}

/// A tensor of one block: its GGUF name (after `blk.N.`), the name of the transformers tensor
/// it is written from (after `model.layers.N.`), and its shape (rows first).
#[derive(Clone, Debug)]
pub struct BlockTensor {
    pub name: &'static str,
    pub source: &'static str,
    pub shape: Vec<usize>,
}

/// What differs between the quantized modules, beyond their per-block tensors.
#[derive(Clone, Copy, Debug)]
pub struct Quirks {
    /// A rope base the module uses whatever `rope.freq_base` says.
    pub fixed_freq_base: Option<f64>,
    /// Whether the module reads `rope.dimension_count` (it must then be the head size).
    pub reads_rope_dimension_count: bool,
    /// Whether `output.weight` may be absent, the embeddings then serving as the output layer.
    pub ties_missing_output: bool,
    /// Whether `attention.sliding_window` limits the context: the module applies no window,
    /// so sequences stay within it, where it masks nothing.
    pub reads_sliding_window: bool,
    /// Whether the module rotates interleaved pairs, so that llama.cpp's converter permutes the
    /// rows of `attn_q` and `attn_k` (llama).
    pub interleaved_rope: bool,
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

    /// The parsed file: metadata and tensor infos, for reading tensors.
    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::field(&self.path, key, message)
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.content.metadata.get(key)
    }

    /// An integer key, stored as a u32 as llama.cpp writes it and candle reads it.
    pub fn opt_u32(&self, key: &str) -> Result<Option<usize>> {
        self.value(key)
            .map(|v| match v {
                Value::U32(n) => Ok(*n as usize),
                v => Err(self.error(key, format!("expected a u32, found {v:?}"))),
            })
            .transpose()
    }

    pub fn u32(&self, key: &str) -> Result<usize> {
        self.opt_u32(key)?
            .ok_or_else(|| self.error(key, "required, but missing"))
    }

    pub fn positive(&self, key: &str) -> Result<usize> {
        match self.u32(key)? {
            0 => Err(self.error(key, "must be positive")),
            n => Ok(n),
        }
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f64>> {
        self.value(key)
            .map(|v| match v {
                Value::F32(x) => Ok(*x as f64),
                v => Err(self.error(key, format!("expected an f32, found {v:?}"))),
            })
            .transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.value(key)
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                v => Err(self.error(key, format!("expected a bool, found {v:?}"))),
            })
            .transpose()
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<&str>> {
        self.value(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.error(key, format!("expected a string, found {v:?}"))),
            })
            .transpose()
    }

    /// An array of strings (the vocabulary, the merges).
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.value(key) {
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(self.error(key, format!("expected strings, found {v:?}"))),
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected an array, found {v:?}"))),
            None => Err(self.error(key, "required, but missing")),
        }
    }

    /// An array of f32 (the SentencePiece scores).
    pub fn f32s(&self, key: &str) -> Result<Vec<f32>> {
        match self.value(key) {
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    v => Err(self.error(key, format!("expected f32 values, found {v:?}"))),
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected an array, found {v:?}"))),
            None => Err(self.error(key, "required, but missing")),
        }
    }

    /// An array of i32 (the token types).
    pub fn opt_i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
        match self.value(key) {
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Value::I32(n) => Ok(*n),
                    v => Err(self.error(key, format!("expected i32 values, found {v:?}"))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.error(key, format!("expected an array, found {v:?}"))),
            None => Ok(None),
        }
    }

    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims())
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// Keys of the architecture's own namespace (`llama.*`, ...) that nothing read: settings the
    /// worker does not know. `general.*` and `tokenizer.*` keys describe the file and the
    /// vocabulary and are not listed.
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

pub fn read_content(path: &Path) -> Result<Content> {
    let mut file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    Content::read(&mut file).map_err(|e| {
        let message = e.to_string();
        let unknown = message
            .strip_prefix("unknown dtype for tensor ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse::<u32>().ok());
        match unknown {
            Some(id) => Error::weights(
                path,
                format!(
                    "holds tensors of GGML type {} (id {id}), which candle cannot read; \
                     readable: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K \
                     (requantize the file, e.g. with llama-quantize)",
                    unreadable_type_name(id)
                ),
            ),
            None => Error::weights(path, format!("not a readable GGUF file: {message}")),
        }
    })
}

/// ggml's name of a type id candle does not read (`enum ggml_type` in ggml.h).
fn unreadable_type_name(id: u32) -> &'static str {
    match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown to this build",
    }
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
