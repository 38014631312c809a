//! Random-weight models with the shapes of real ones, for measuring speed and memory without
//! downloads: the real config.json's sizes, a tokenizer of the real vocabulary size (its
//! tokens are made up: speed does not depend on them), and weights streamed into
//! model.safetensors one tensor at a time, so a 7B model needs no more memory than its largest
//! tensor. The weights are deterministic, from ChaCha8 in fixed-size chunks (the same bytes
//! whatever the number of threads).

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::write_json;
use crate::backend::Dtype;
use crate::error::{Error, Result};
use crate::fixture::{Fill, Geometry, SPECIAL_TOKENS};
use crate::model::Architecture;
use crate::{arch, folder};

/// The file of a shape model that says what it is; `llm-worker-rbee bench` reads it.
pub const SHAPE_FILE: &str = "synth-shape.json";

/// Values per chunk of one random stream.
const CHUNK: usize = 1 << 20;

/// A real model whose shape can be synthesized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Shape {
    /// TinyLlama/TinyLlama-1.1B-Chat-v1.0: llama, 22 layers x 2048, GQA 32/4, vocab 32000.
    #[cfg_attr(feature = "clap", value(name = "tinyllama-1.1b"))]
    #[serde(rename = "tinyllama-1.1b")]
    TinyLlama,
    /// Qwen/Qwen2.5-0.5B: qwen2, 24 layers x 896, GQA 14/2, vocab 151936, tied output.
    #[cfg_attr(feature = "clap", value(name = "qwen2.5-0.5b"))]
    #[serde(rename = "qwen2.5-0.5b")]
    Qwen25,
    /// microsoft/phi-2: phi, 32 layers x 2560, 32 heads, vocab 51200.
    #[cfg_attr(feature = "clap", value(name = "phi-2"))]
    #[serde(rename = "phi-2")]
    Phi2,
    /// mistralai/Mistral-7B-v0.1: mistral, 32 layers x 4096, GQA 32/8, vocab 32000.
    #[cfg_attr(feature = "clap", value(name = "mistral-7b"))]
    #[serde(rename = "mistral-7b")]
    Mistral7b,
}

/// The sizes of a real model's config.json.
struct RealShape {
    architecture: &'static str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    max_positions: usize,
    tied: bool,
    rope_theta: f64,
    /// The keys of config.json beyond the sizes.
    extra: Value,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::TinyLlama => "tinyllama-1.1b",
            Shape::Qwen25 => "qwen2.5-0.5b",
            Shape::Phi2 => "phi-2",
            Shape::Mistral7b => "mistral-7b",
        }
    }

    pub fn all() -> [Shape; 4] {
        [
            Shape::TinyLlama,
            Shape::Qwen25,
            Shape::Phi2,
            Shape::Mistral7b,
        ]
    }

    fn real(self) -> RealShape {
        match self {
            Shape::TinyLlama => RealShape {
                architecture: "llama",
                hidden: 2048,
                intermediate: 5632,
                layers: 22,
                heads: 32,
                kv_heads: 4,
                vocab: 32000,
                max_positions: 2048,
                tied: false,
                rope_theta: 10000.0,
                extra: json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false, "mlp_bias": false}),
            },
            Shape::Qwen25 => RealShape {
                architecture: "qwen2",
                hidden: 896,
                intermediate: 4864,
                layers: 24,
                heads: 14,
                kv_heads: 2,
                vocab: 151936,
                max_positions: 32768,
                tied: true,
                rope_theta: 1000000.0,
                extra: json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 24}),
            },
            Shape::Phi2 => RealShape {
                architecture: "phi",
                hidden: 2560,
                intermediate: 10240,
                layers: 32,
                heads: 32,
                kv_heads: 32,
                vocab: 51200,
                max_positions: 2048,
                tied: false,
                rope_theta: 10000.0,
                extra: json!({"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.4, "qk_layernorm": false}),
            },
            Shape::Mistral7b => RealShape {
                architecture: "mistral",
                hidden: 4096,
                intermediate: 14336,
                layers: 32,
                heads: 32,
                kv_heads: 8,
                vocab: 32000,
                max_positions: 32768,
                tied: false,
                rope_theta: 10000.0,
                extra: json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "sliding_window": 4096}),
            },
        }
    }

    fn geometry(&self) -> (&'static dyn Architecture, Geometry) {
        let real = self.real();
        let architecture = arch::by_name(real.architecture).expect("a registered architecture");
        let geometry = Geometry {
            hidden: real.hidden,
            intermediate: real.intermediate,
            layers: real.layers,
            heads: real.heads,
            kv_heads: real.kv_heads,
            head_dim: real.hidden / real.heads,
            vocab: real.vocab,
            tied: real.tied,
            max_positions: real.max_positions,
        };
        (architecture, geometry)
    }

    /// Bytes of model.safetensors in `dtype`, less the header.
    pub fn weight_bytes(self, dtype: Dtype) -> u64 {
        let (arch, geometry) = self.geometry();
        let values: usize = arch
            .fixture_tensors(&geometry)
            .iter()
            .map(|(_, shape, _)| shape.iter().product::<usize>())
            .sum();
        values as u64 * dtype.size_in_bytes()
    }
}

/// What [`SHAPE_FILE`] holds.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ShapeInfo {
    pub shape: Shape,
    pub dtype: Dtype,
    pub seed: u64,
}

/// Reads the [`SHAPE_FILE`] of `dir`, if it has one.
pub fn read_shape_info(dir: &Path) -> Option<ShapeInfo> {
    let text = std::fs::read_to_string(dir.join(SHAPE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the model folder of `shape` with weights in `dtype` into `dir` (created if needed);
/// `progress` is told the weight bytes written so far and the total.
pub fn write_shape(
    shape: Shape,
    dtype: Dtype,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    let real = shape.real();
    let (arch, geometry) = shape.geometry();
    // The synthetic tokenizer's ids: specials come first.
    let (bos, eos) = (1, 2);
    let mut config = json!({
        "architectures": [arch.class_name()],
        "model_type": arch.name(),
        "vocab_size": real.vocab,
        "hidden_size": real.hidden,
        "intermediate_size": real.intermediate,
        "num_hidden_layers": real.layers,
        "num_attention_heads": real.heads,
        "num_key_value_heads": real.kv_heads,
        "max_position_embeddings": real.max_positions,
        "rope_theta": real.rope_theta,
        "tie_word_embeddings": real.tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": torch_dtype(dtype),
    });
    super::merge(&mut config, real.extra);
    write_json(&dir.join(folder::CONFIG), &config)?;
    write_json(
        &dir.join(folder::GENERATION_CONFIG),
        &json!({"bos_token_id": bos, "eos_token_id": eos}),
    )?;
    write_json(
        &dir.join(folder::TOKENIZER_CONFIG),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": SPECIAL_TOKENS[eos as usize],
            "model_max_length": real.max_positions,
            "clean_up_tokenization_spaces": false,
        }),
    )?;
    let tokenizer_path = dir.join(folder::TOKENIZER);
    tokenizer(real.vocab)?
        .save(&tokenizer_path, false)
        .map_err(|e| Error::file(&tokenizer_path, format!("cannot write: {e}")))?;

    let seed = 0;
    let total = shape.weight_bytes(dtype);
    let written = AtomicU64::new(0);
    let tensors: Vec<(String, LazyTensor)> = arch
        .fixture_tensors(&geometry)
        .into_iter()
        .enumerate()
        .map(|(index, (name, shape, fill))| {
            let tensor = LazyTensor {
                shape,
                fill,
                stream: seed ^ ((index as u64) << 32),
                dtype,
                written: &written,
                total,
                progress,
            };
            (name, tensor)
        })
        .collect();
    let weights_path = dir.join(folder::WEIGHTS);
    safetensors::serialize_to_file(tensors, None, &weights_path)
        .map_err(|e| Error::file(&weights_path, format!("cannot write: {e}")))?;
    write_json(
        &dir.join(SHAPE_FILE),
        &serde_json::to_value(ShapeInfo { shape, dtype, seed })
            .expect("a shape info always serializes"),
    )
}

fn torch_dtype(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "float32",
        Dtype::Bf16 => "bfloat16",
        Dtype::F16 => "float16",
    }
}

/// A byte-level tokenizer with `vocab` tokens: the special tokens, the 256 byte symbols, and
/// made-up tokens of two or three printable ASCII characters (so that any id decodes to text).
/// It has no merges: text encodes byte by byte.
fn tokenizer(vocab: usize) -> Result<Tokenizer> {
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect();
    let alphabet: Vec<char> = {
        let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        chars.sort_unstable();
        chars
    };
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let printable: Vec<char> = ('!'..='~').collect();
    'fill: for length in 2..=3 {
        let mut index = vec![0; length];
        loop {
            if tokens.len() >= vocab {
                break 'fill;
            }
            tokens.push(index.iter().map(|&i| printable[i]).collect());
            // The next combination, last position fastest.
            let mut at = length;
            loop {
                if at == 0 {
                    continue 'fill;
                }
                at -= 1;
                index[at] += 1;
                if index[at] < printable.len() {
                    break;
                }
                index[at] = 0;
            }
        }
    }
    let table: tokenizers::models::bpe::Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| (token, id as u32))
        .collect();
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::file(Path::new(folder::TOKENIZER), format!("cannot build: {e}"))
    };
    let bpe = BPE::builder()
        .vocab_and_merges(table, Vec::new())
        .build()
        .map_err(bad)?;
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(specials).map_err(bad)?;
    Ok(tokenizer)
}

/// A tensor whose bytes are made when the writer asks for them.
struct LazyTensor<'a> {
    shape: Vec<usize>,
    fill: Fill,
    /// The tensor's own random stream; chunk `c` uses stream + c.
    stream: u64,
    dtype: Dtype,
    written: &'a AtomicU64,
    total: u64,
    progress: &'a (dyn Fn(u64, u64) + Sync),
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::Bf16 => safetensors::Dtype::BF16,
            Dtype::F16 => safetensors::Dtype::F16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let count: usize = self.shape.iter().product();
        let size = self.dtype.size_in_bytes() as usize;
        let mut bytes = vec![0u8; count * size];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunks: Vec<(usize, &mut [u8])> = bytes.chunks_mut(CHUNK * size).enumerate().collect();
        let per_thread = chunks.len().div_ceil(threads).max(1);
        let mut chunks = chunks;
        std::thread::scope(|scope| {
            while !chunks.is_empty() {
                let rest = chunks.split_off(per_thread.min(chunks.len()));
                let mine = std::mem::replace(&mut chunks, rest);
                scope.spawn(move || {
                    for (c, out) in mine {
                        fill_chunk(self.fill, self.stream + c as u64, self.dtype, out);
                    }
                });
            }
        });
        let done = self
            .written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed)
            + bytes.len() as u64;
        (self.progress)(done, self.total);
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes() as usize
    }
}

fn fill_chunk(fill: Fill, stream: u64, dtype: Dtype, out: &mut [u8]) {
    let mut rng = ChaCha8Rng::seed_from_u64(stream);
    let size = dtype.size_in_bytes() as usize;
    for value in out.chunks_exact_mut(size) {
        // 24 random bits scaled by 2^-24: exact, in [0, 1).
        let unit = (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0);
        let symmetric = 2.0 * unit - 1.0;
        let x = match fill {
            Fill::Uniform(bound) => symmetric * bound,
            Fill::Around { center, half_width } => center + half_width * symmetric,
        };
        match dtype {
            Dtype::F32 => value.copy_from_slice(&x.to_le_bytes()),
            Dtype::Bf16 => value.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            Dtype::F16 => value.copy_from_slice(&half::f16::from_f32(x).to_le_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_has_the_real_vocabulary_size_and_decodes_any_id() {
        for shape in Shape::all() {
            let vocab = shape.real().vocab;
            let tokenizer = tokenizer(vocab).unwrap();
            assert_eq!(tokenizer.get_vocab_size(true), vocab, "{}", shape.name());
            let last = vocab as u32 - 1;
            let text = tokenizer.decode(&[last, 300, 7000 % last], true).unwrap();
            assert!(!text.is_empty() && text.is_ascii(), "{text:?}");
        }
    }

    #[test]
    fn weights_are_the_same_in_any_chunking_and_follow_the_fill() {
        let mut one = vec![0u8; 4 * 1000];
        fill_chunk(Fill::Uniform(0.5), 7, Dtype::F32, &mut one);
        let mut again = vec![0u8; 4 * 1000];
        fill_chunk(Fill::Uniform(0.5), 7, Dtype::F32, &mut again);
        assert_eq!(one, again);
        let values: Vec<f32> = one
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(values.iter().all(|v| (-0.5..0.5).contains(v)));
        assert!(values.iter().any(|v| *v > 0.25) && values.iter().any(|v| *v < -0.25));
    }

    #[test]
    fn the_tinyllama_shape_has_its_parameter_count() {
        // TinyLlama-1.1B has 1,100,048,384 parameters.
        assert_eq!(
            Shape::TinyLlama.weight_bytes(Dtype::Bf16),
            2 * 1_100_048_384
        );
        // Qwen2.5-0.5B: 494,032,768 parameters (tied output).
        assert_eq!(Shape::Qwen25.weight_bytes(Dtype::F32), 4 * 494_032_768);
    }
}
