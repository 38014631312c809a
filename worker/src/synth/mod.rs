//! Tiny random-weight models in the Hugging Face folder layout, one per architecture, made
//! deterministically so that the same bytes come out on every machine; and GGUF models
//! quantized from some of them.
//!
//! Weights come from ChaCha8 (whose output is specified, so portable) turned into floats with
//! integer arithmetic and exactly rounded IEEE operations only; no platform math is involved.
//! Quantizing is candle's block arithmetic on those floats, exactly rounded too.
//! The tokenizer is a byte-level BPE trained by the `tokenizers` crate on a fixed text.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::{Error, Result};
use crate::fixture::{
    Fill, FixtureRope, FixtureVariant, Geometry, BOS, ENDOFTEXT, HEADS, SPECIAL_TOKENS,
};
use crate::model::Architecture;
use crate::{arch, folder};

mod from_gguf;
pub mod shape;
mod to_gguf;

pub use self::from_gguf::write_safetensors;
pub use self::to_gguf::write_gguf;

pub const VOCAB_SIZE: usize = 512;
const MAX_POSITIONS: usize = 128;

/// The sizes of a fixture model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixtureSize {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
}

impl FixtureSize {
    /// Every architecture's fixture.
    pub const SMALL: FixtureSize = FixtureSize {
        hidden: 64,
        intermediate: 128,
        layers: 2,
    };
    /// Rows of 256 and 512 values: k-quants quantize blocks of 256.
    pub const WIDE: FixtureSize = FixtureSize {
        hidden: 256,
        intermediate: 512,
        layers: 2,
    };
}

/// One fixture model.
#[derive(Clone, Debug)]
pub struct FixtureSpec {
    /// The folder name under the fixtures directory, and the model id in test names.
    pub id: &'static str,
    pub architecture: &'static dyn Architecture,
    pub size: FixtureSize,
    /// Seed of the weights, chosen so that greedy decoding is far from ties (see
    /// `cargo xtask fixtures`).
    pub seed: u64,
    /// A small sliding window, for the variants whose prompts run past it.
    pub sliding_window: Option<usize>,
    /// Rotary settings in `rope_parameters` (transformers 5), in place of `rope_theta` 10000.
    pub rope: Option<FixtureRope>,
    pub description: &'static str,
}

/// The SafeTensors fixtures every worker test and the conformance suite run: each
/// architecture's plain fixture, then their variants (sliding windows), in registry order.
pub fn fixtures() -> Vec<FixtureSpec> {
    let spec = |architecture: &'static dyn Architecture, variant: &FixtureVariant| FixtureSpec {
        id: variant.id,
        architecture,
        size: FixtureSize::SMALL,
        seed: variant.seed,
        sliding_window: variant.sliding_window,
        rope: variant.rope,
        description: variant.description,
    };
    let plain = arch::ALL
        .iter()
        .filter_map(|a| a.fixtures().first().map(|v| spec(*a, v)));
    let variants = arch::ALL
        .iter()
        .flat_map(|a| a.fixtures().iter().skip(1).map(|v| spec(*a, v)));
    plain.chain(variants).collect()
}

/// SafeTensors fixtures made as the source of GGUF fixtures only, so not among [`fixtures`] (the
/// transformers configs of `worker/tests/data/hf-configs/` cover those).
pub fn wide_fixtures() -> Vec<FixtureSpec> {
    let qwen2 = arch::by_name("qwen2").expect("qwen2 is registered");
    vec![FixtureSpec {
        id: "qwen2-h256",
        architecture: qwen2,
        size: FixtureSize::WIDE,
        seed: 2,
        sliding_window: None,
        rope: None,
        description: "hidden size 256: the source of the k-quant GGUF fixture",
    }]
}

/// Every SafeTensors fixture `cargo xtask fixtures` writes, in the lock's order.
pub fn safetensors_fixtures() -> Vec<FixtureSpec> {
    fixtures().into_iter().chain(wide_fixtures()).collect()
}

pub fn fixture(id: &str) -> Option<FixtureSpec> {
    safetensors_fixtures().into_iter().find(|f| f.id == id)
}

/// The weights file of a GGUF fixture.
pub const GGUF_WEIGHTS: &str = "model.gguf";

/// A GGUF fixture: a SafeTensors fixture quantized.
#[derive(Clone, Debug)]
pub struct GgufFixtureSpec {
    /// The folder name under the fixtures directory.
    pub id: &'static str,
    /// The SafeTensors fixture it is made from.
    pub source: &'static str,
    /// The type of its 2-D weights; norms and biases stay f32.
    pub quantization: GgmlDType,
}

/// Every GGUF fixture `cargo xtask fixtures` writes: each architecture with a quantized candle
/// module in Q8_0 and Q4_0, and a k-quant (whose blocks need the wide source).
pub fn gguf_fixtures() -> Vec<GgufFixtureSpec> {
    let spec = |id, source, quantization| GgufFixtureSpec {
        id,
        source,
        quantization,
    };
    vec![
        spec("llama-q8_0", "llama", GgmlDType::Q8_0),
        spec("llama-q4_0", "llama", GgmlDType::Q4_0),
        spec("qwen2-q8_0", "qwen2", GgmlDType::Q8_0),
        spec("qwen2-q4_0", "qwen2", GgmlDType::Q4_0),
        spec("phi3-q8_0", "phi3", GgmlDType::Q8_0),
        spec("phi3-q4_0", "phi3", GgmlDType::Q4_0),
        spec("qwen2-h256-q4_k", "qwen2-h256", GgmlDType::Q4K),
    ]
}

pub fn gguf_fixture(id: &str) -> Option<GgufFixtureSpec> {
    gguf_fixtures().into_iter().find(|f| f.id == id)
}

/// Writes the GGUF fixture `spec` into `dir` (created if needed) from the folder of its source
/// fixture: `model.gguf`, and the source's tokenizer.json, tokenizer_config.json and
/// generation_config.json. No config.json: a GGUF file holds the settings.
pub fn write_gguf_fixture(spec: &GgufFixtureSpec, source_dir: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    write_gguf(source_dir, spec.quantization, &dir.join(GGUF_WEIGHTS))?;
    for name in [
        folder::TOKENIZER,
        folder::TOKENIZER_CONFIG,
        folder::GENERATION_CONFIG,
    ] {
        let from = source_dir.join(name);
        std::fs::copy(&from, dir.join(name))
            .map_err(|e| Error::file(&from, format!("cannot copy: {e}")))?;
    }
    Ok(())
}

/// Writes every fixture whose folder under `dir` lacks its weights file, SafeTensors fixtures
/// first and then the GGUF fixtures made from them, and returns the ids written. Folders that
/// exist are left alone (`cargo xtask fixtures` checks their bytes).
pub fn write_missing(dir: &Path) -> Result<Vec<&'static str>> {
    let mut written = Vec::new();
    for spec in safetensors_fixtures() {
        let folder = dir.join(spec.id);
        if !folder.join(folder::WEIGHTS).is_file() {
            write_fixture(&spec, &folder)?;
            written.push(spec.id);
        }
    }
    for spec in gguf_fixtures() {
        let folder = dir.join(spec.id);
        if !folder.join(GGUF_WEIGHTS).is_file() {
            write_gguf_fixture(&spec, &dir.join(spec.source), &folder)?;
            written.push(spec.id);
        }
    }
    Ok(written)
}

/// Writes the model folder of `spec` into `dir` (created if needed).
pub fn write_fixture(spec: &FixtureSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    let files = FixtureFiles::new(spec);
    write_json(&dir.join(folder::CONFIG), &files.config)?;
    write_json(
        &dir.join(folder::GENERATION_CONFIG),
        &files.generation_config,
    )?;
    write_json(&dir.join(folder::TOKENIZER_CONFIG), &files.tokenizer_config)?;
    let tokenizer_path = dir.join(folder::TOKENIZER);
    tokenizer(files.add_bos)?
        .save(&tokenizer_path, true)
        .map_err(|e| Error::file(&tokenizer_path, format!("cannot write: {e}")))?;
    let weights_path = dir.join(folder::WEIGHTS);
    let weights = weights(spec, &files.tensor_shapes)?;
    candle_core::safetensors::save(&weights, &weights_path)
        .map_err(|e| Error::file(&weights_path, format!("cannot write: {e}")))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    text.push('\n');
    std::fs::write(path, text).map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

/// The byte-level BPE tokenizer all fixtures share; with `add_bos`, its post-processor adds
/// `<s>` to every text, as the tokenizers of Llama and Gemma do.
pub fn tokenizer(add_bos: bool) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(VOCAB_SIZE)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| Error::file(Path::new(folder::TOKENIZER), format!("cannot build: {e}")))?;
    tokenizer
        .train(&mut trainer, TRAINING_TEXT.lines())
        .map_err(|e| Error::file(Path::new(folder::TOKENIZER), format!("cannot train: {e}")))?;
    let mut tokenizer = Tokenizer::from(tokenizer);
    if add_bos {
        let bos = SPECIAL_TOKENS[BOS as usize];
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| Error::file(Path::new(folder::TOKENIZER), format!("bad template: {e}")))?
            .special_tokens(vec![(bos, BOS)])
            .build()
            .map_err(|e| Error::file(Path::new(folder::TOKENIZER), format!("bad template: {e}")))?;
        tokenizer.with_post_processor(Some(template));
    }
    Ok(tokenizer)
}

/// The text the fixture tokenizer is trained on; it only shapes which merges exist.
const TRAINING_TEXT: &str = "\
hello world, hello there. The quick brown fox jumps over the lazy dog.
A worker loads a model folder, reads its config and generates tokens one by one.
Every request starts from an empty cache; the same request twice gives the same tokens.
the cat sat on the mat while the sun was warm and the wind was slow in the afternoon
Once upon a time there was a small model that could count: one, two, three, four, five.
def main():\n    print(\"hello, world\")\n    return 0
fn main() { println!(\"hello\"); let x = 42; }
Grüße aus Zürich, café crème, naïve façade, señor niño, 世界你好, こんにちは, ✓ ★ → ∑
numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.71 -1 +1 = == != <= >= && ||
the and of to in is it that for on with as was at by an be this which or from";

/// The files of one fixture, as JSON values and tensor shapes.
struct FixtureFiles {
    config: Value,
    generation_config: Value,
    tokenizer_config: Value,
    /// Tensor name, shape and how to fill it.
    tensor_shapes: Vec<(String, Vec<usize>, Fill)>,
    add_bos: bool,
}

impl FixtureFiles {
    fn new(spec: &FixtureSpec) -> Self {
        let arch = spec.architecture;
        let size = spec.size;
        let layout = arch.fixture_layout();
        let geometry = Geometry {
            hidden: size.hidden,
            intermediate: size.intermediate,
            layers: size.layers,
            heads: HEADS,
            kv_heads: layout.kv_heads,
            // The head size of the architectures that derive it from the hidden size.
            head_dim: layout.head_dim.unwrap_or(size.hidden / HEADS),
            vocab: VOCAB_SIZE,
            tied: layout.tied,
            max_positions: MAX_POSITIONS,
        };
        let bos = if layout.add_bos { BOS } else { ENDOFTEXT };
        let mut config = json!({
            "architectures": [arch.class_name()],
            "model_type": arch.name(),
            "vocab_size": VOCAB_SIZE,
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": HEADS,
            "num_key_value_heads": layout.kv_heads,
            "max_position_embeddings": MAX_POSITIONS,
            "rope_theta": 10000.0,
            "tie_word_embeddings": layout.tied,
            "bos_token_id": bos,
            "eos_token_id": layout.eos,
            "pad_token_id": 0,
            "torch_dtype": "float32",
        });
        merge(
            &mut config,
            arch.fixture_config(&geometry, spec.sliding_window),
        );
        if let Some(rope) = spec.rope {
            if let Some(config) = config.as_object_mut() {
                config.remove("rope_theta");
            }
            let mut parameters = json!({"rope_type": "default", "rope_theta": rope.theta});
            if let Some(l) = rope.llama3 {
                merge(
                    &mut parameters,
                    json!({
                        "rope_type": "llama3",
                        "factor": l.factor,
                        "low_freq_factor": l.low_freq_factor,
                        "high_freq_factor": l.high_freq_factor,
                        "original_max_position_embeddings": l.original_max_position_embeddings,
                    }),
                );
            }
            merge(&mut config, json!({ "rope_parameters": parameters }));
        }

        let eos_ids: Vec<u32> = std::iter::once(layout.eos)
            .chain(layout.extra_eos)
            .collect();
        let generation_config = json!({"bos_token_id": bos, "eos_token_id": if eos_ids.len() == 1 { json!(eos_ids[0]) } else { json!(eos_ids) }});
        // A template file's last newline is not the template's.
        let chat_template = layout
            .chat_template
            .strip_suffix('\n')
            .unwrap_or(layout.chat_template);
        let tokenizer_config = if layout.add_bos {
            json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "add_bos_token": true,
                "add_eos_token": false,
                "bos_token": SPECIAL_TOKENS[BOS as usize],
                "eos_token": SPECIAL_TOKENS[layout.eos as usize],
                "unk_token": SPECIAL_TOKENS[0],
                "model_max_length": MAX_POSITIONS,
                "clean_up_tokenization_spaces": false,
                "chat_template": chat_template,
            })
        } else {
            json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": SPECIAL_TOKENS[layout.eos as usize],
                "model_max_length": MAX_POSITIONS,
                "clean_up_tokenization_spaces": false,
                "chat_template": chat_template,
            })
        };
        Self {
            config,
            generation_config,
            tokenizer_config,
            tensor_shapes: arch.fixture_tensors(&geometry),
            add_bos: layout.add_bos,
        }
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// Fills every tensor from one ChaCha8 stream, in the order the architecture lists them.
fn weights(
    spec: &FixtureSpec,
    shapes: &[(String, Vec<usize>, Fill)],
) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut unit = move || {
        // 24 random bits scaled by 2^-24: exact, in [0, 1).
        (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    };
    shapes
        .iter()
        .map(|(name, shape, fill)| {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| {
                    let symmetric = 2.0 * unit() - 1.0;
                    match *fill {
                        Fill::Uniform(bound) => symmetric * bound,
                        Fill::Around { center, half_width } => center + half_width * symmetric,
                    }
                })
                .collect();
            let tensor = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?;
            Ok((name.clone(), tensor))
        })
        .collect()
}
