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

use crate::arch::gguf::convert::write_gguf;
use crate::arch::Architecture;
use crate::error::{Error, Result};
use crate::folder;

pub mod shape;

/// Special tokens, with the ids they get (they come first in the vocabulary).
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<unk>",
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
];
const BOS: u32 = 1;
const EOS: u32 = 2;
const ENDOFTEXT: u32 = 3;
const IM_END: u32 = 5;

pub const VOCAB_SIZE: usize = 512;
const HEADS: usize = 4;
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
    pub architecture: Architecture,
    pub size: FixtureSize,
    /// Seed of the weights, chosen so that greedy decoding is far from ties (see
    /// `cargo xtask fixtures`).
    pub seed: u64,
    /// A small sliding window, for the variants whose prompts run past it.
    pub sliding_window: Option<usize>,
    pub description: &'static str,
}

/// The SafeTensors fixtures every worker test and the conformance suite run: one per
/// architecture, and sliding-window variants.
pub fn fixtures() -> Vec<FixtureSpec> {
    use Architecture::*;
    let base = |id, architecture, seed, description| FixtureSpec {
        id,
        architecture,
        size: FixtureSize::SMALL,
        seed,
        sliding_window: None,
        description,
    };
    let windowed = |id, architecture, seed, description| FixtureSpec {
        sliding_window: Some(8),
        ..base(id, architecture, seed, description)
    };
    vec![
        base("llama", Llama, 9, "GQA, BOS added, untied output"),
        base("mistral", Mistral, 11, "GQA, no window"),
        base(
            "phi",
            Phi,
            4,
            "partial rotary, parallel attention/MLP, biases",
        ),
        base(
            "phi3",
            Phi3,
            5,
            "fused projections; a 64-token window limits the context, as Phi-3-mini-4k's does",
        ),
        base(
            "qwen2",
            Qwen2,
            0,
            "GQA, q/k/v biases, tied output, two EOS ids",
        ),
        base(
            "qwen3",
            Qwen3,
            1,
            "q/k norms, head_dim 32 unlike hidden/heads, tied output",
        ),
        base(
            "gemma",
            Gemma,
            6,
            "multi-query attention, head_dim 32, scaled embeddings",
        ),
        base(
            "gemma2",
            Gemma2,
            0,
            "soft-capping, query_pre_attn_scalar unlike head_dim",
        ),
        base(
            "starcoder2",
            Starcoder2,
            6,
            "LayerNorm, biases, GELU MLP, tied output",
        ),
        base("stablelm", StableLm, 5, "quarter rotary, q/k/v biases"),
        windowed(
            "mistral-sw8",
            Mistral,
            5,
            "sliding window of 8 on every layer",
        ),
        windowed(
            "qwen2-sw8",
            Qwen2,
            3,
            "sliding_window 8 with use_sliding_window false, as the released Qwen2.5 configs: \
             transformers ignores the window, candle's module would apply it",
        ),
        windowed(
            "gemma2-sw8",
            Gemma2,
            1,
            "sliding window of 8 on every other layer",
        ),
        windowed(
            "starcoder2-sw8",
            Starcoder2,
            3,
            "sliding window of 8 on every layer",
        ),
    ]
}

/// SafeTensors fixtures made as the source of GGUF fixtures only, so not among [`fixtures`] (the
/// transformers configs of `worker/tests/data/hf-configs/` cover those).
pub fn wide_fixtures() -> Vec<FixtureSpec> {
    vec![FixtureSpec {
        id: "qwen2-h256",
        architecture: Architecture::Qwen2,
        size: FixtureSize::WIDE,
        seed: 2,
        sliding_window: None,
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

#[derive(Clone, Copy, Debug)]
enum Fill {
    /// Uniform in `[-bound, bound)`.
    Uniform(f32),
    /// Uniform in `[center - half_width, center + half_width)`.
    Around { center: f32, half_width: f32 },
}

/// Per-architecture choices of the fixture model.
struct Layout {
    kv_heads: usize,
    head_dim: usize,
    tied: bool,
    add_bos: bool,
    eos: u32,
    extra_eos: Option<u32>,
}

impl FixtureFiles {
    fn new(spec: &FixtureSpec) -> Self {
        use Architecture::*;
        let arch = spec.architecture;
        let size = spec.size;
        // The head size of the architectures that derive it from the hidden size.
        let derived = size.hidden / HEADS;
        let layout = match arch {
            Llama | Mistral => Layout {
                kv_heads: 2,
                head_dim: derived,
                tied: false,
                add_bos: true,
                eos: EOS,
                extra_eos: None,
            },
            Phi => Layout {
                kv_heads: HEADS,
                head_dim: derived,
                tied: false,
                add_bos: false,
                eos: ENDOFTEXT,
                extra_eos: None,
            },
            Phi3 => Layout {
                kv_heads: 2,
                head_dim: derived,
                tied: false,
                add_bos: false,
                eos: ENDOFTEXT,
                extra_eos: Some(IM_END),
            },
            Qwen2 => Layout {
                kv_heads: 2,
                head_dim: derived,
                tied: true,
                add_bos: false,
                eos: ENDOFTEXT,
                extra_eos: Some(IM_END),
            },
            Qwen3 => Layout {
                kv_heads: 2,
                head_dim: 32,
                tied: true,
                add_bos: false,
                eos: ENDOFTEXT,
                extra_eos: Some(IM_END),
            },
            Gemma => Layout {
                kv_heads: 1,
                head_dim: 32,
                tied: true,
                add_bos: true,
                eos: EOS,
                extra_eos: None,
            },
            Gemma2 => Layout {
                kv_heads: 2,
                head_dim: derived,
                tied: true,
                add_bos: true,
                eos: EOS,
                extra_eos: None,
            },
            Starcoder2 => Layout {
                kv_heads: 2,
                head_dim: derived,
                tied: true,
                add_bos: false,
                eos: ENDOFTEXT,
                extra_eos: None,
            },
            StableLm => Layout {
                kv_heads: 2,
                head_dim: derived,
                tied: false,
                add_bos: false,
                eos: ENDOFTEXT,
                extra_eos: None,
            },
        };
        let bos = if layout.add_bos { BOS } else { ENDOFTEXT };
        let mut config = json!({
            "architectures": [class_name(arch)],
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
        let extra = match arch {
            Llama => {
                json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false, "mlp_bias": false})
            }
            Mistral => {
                json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "head_dim": layout.head_dim, "sliding_window": spec.sliding_window})
            }
            Phi => {
                json!({"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.5, "qk_layernorm": false})
            }
            Phi3 => {
                json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "sliding_window": 64, "original_max_position_embeddings": MAX_POSITIONS, "rope_scaling": null})
            }
            Qwen2 => {
                json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "use_sliding_window": false, "sliding_window": spec.sliding_window.unwrap_or(MAX_POSITIONS), "max_window_layers": size.layers})
            }
            Qwen3 => {
                json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "head_dim": layout.head_dim, "attention_bias": false, "use_sliding_window": false, "sliding_window": null, "max_window_layers": size.layers})
            }
            Gemma => {
                json!({"hidden_act": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": layout.head_dim, "attention_bias": false})
            }
            Gemma2 => {
                json!({"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": layout.head_dim, "attention_bias": false, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": spec.sliding_window.unwrap_or(MAX_POSITIONS)})
            }
            Starcoder2 => {
                json!({"hidden_act": "gelu_pytorch_tanh", "norm_epsilon": 1e-5, "use_bias": true, "sliding_window": spec.sliding_window})
            }
            StableLm => {
                json!({"hidden_act": "silu", "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.25, "use_qkv_bias": true, "qk_layernorm": false, "use_parallel_residual": false})
            }
        };
        merge(&mut config, extra);

        let eos_ids: Vec<u32> = std::iter::once(layout.eos)
            .chain(layout.extra_eos)
            .collect();
        let generation_config = json!({"bos_token_id": bos, "eos_token_id": if eos_ids.len() == 1 { json!(eos_ids[0]) } else { json!(eos_ids) }});
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
            })
        } else {
            json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": SPECIAL_TOKENS[layout.eos as usize],
                "model_max_length": MAX_POSITIONS,
                "clean_up_tokenization_spaces": false,
            })
        };
        Self {
            config,
            generation_config,
            tokenizer_config,
            tensor_shapes: tensor_shapes(
                arch,
                &Geometry {
                    hidden: size.hidden,
                    intermediate: size.intermediate,
                    layers: size.layers,
                    heads: HEADS,
                    kv_heads: layout.kv_heads,
                    head_dim: layout.head_dim,
                    vocab: VOCAB_SIZE,
                    tied: layout.tied,
                },
            ),
            add_bos: layout.add_bos,
        }
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

fn class_name(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Phi => "PhiForCausalLM",
        Architecture::Phi3 => "Phi3ForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
        Architecture::Gemma => "GemmaForCausalLM",
        Architecture::Gemma2 => "Gemma2ForCausalLM",
        Architecture::Starcoder2 => "Starcoder2ForCausalLM",
        Architecture::StableLm => "StableLmForCausalLM",
    }
}

/// Output logits spread of about 4 (std): top-1 and top-2 stay apart without making sampling
/// collapse onto the greedy token.
const OUTPUT_BOUND: f32 = 0.8;
const BIAS_BOUND: f32 = 0.2;
/// sqrt(hidden size 64): the scale of Gemma's embeddings in the residual stream.
const GEMMA_BRANCH_GAIN: f32 = 8.0;

/// A weight for `fan_in` inputs with variance `gain^2 / fan_in`.
fn linear_bound(fan_in: usize, gain: f32) -> f32 {
    gain * (3.0 / fan_in as f32).sqrt()
}

/// The sizes that decide a model's tensor shapes.
struct Geometry {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    tied: bool,
}

/// The names and shapes of every tensor, in transformers' naming.
fn tensor_shapes(arch: Architecture, geometry: &Geometry) -> Vec<(String, Vec<usize>, Fill)> {
    use Architecture::*;
    let (h, i, v) = (geometry.hidden, geometry.intermediate, geometry.vocab);
    let q_dim = geometry.heads * geometry.head_dim;
    let kv_dim = geometry.kv_heads * geometry.head_dim;
    // Gemma stores norm weights as offsets from 1.
    let stored_offset = if matches!(arch, Gemma | Gemma2) {
        1.0
    } else {
        0.0
    };
    let norm = Fill::Around {
        center: 1.0 - stored_offset,
        half_width: 0.5,
    };
    // Zero-centred final norm weights keep a model with tied embeddings from predicting its
    // last input token at every step: the embedding carried through the residual stream no
    // longer lines up with its own output row.
    let final_norm_fill = Fill::Around {
        center: -stored_offset,
        half_width: 1.5,
    };
    let bias = Fill::Uniform(BIAS_BOUND);
    let mut t: Vec<(String, Vec<usize>, Fill)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, fill: Fill| t.push((name, shape, fill));

    add(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Fill::Uniform(OUTPUT_BOUND),
    );
    if !geometry.tied {
        add(
            "lm_head.weight".into(),
            vec![v, h],
            Fill::Uniform(OUTPUT_BOUND),
        );
        if arch == Phi {
            add("lm_head.bias".into(), vec![v], bias);
        }
    }
    let layer_norms = matches!(arch, Phi | Starcoder2 | StableLm);
    let final_norm = if arch == Phi {
        "model.final_layernorm"
    } else {
        "model.norm"
    };
    add(format!("{final_norm}.weight"), vec![h], final_norm_fill);
    if layer_norms {
        add(format!("{final_norm}.bias"), vec![h], bias);
    }

    for l in 0..geometry.layers {
        let p = format!("model.layers.{l}");
        let mut norm_at = |name: &str| {
            add(format!("{p}.{name}.weight"), vec![h], norm);
            if layer_norms {
                add(format!("{p}.{name}.bias"), vec![h], bias);
            }
        };
        norm_at("input_layernorm");
        if arch == Gemma2 {
            norm_at("pre_feedforward_layernorm");
            // Gemma 2 normalizes each branch before adding it to the residual stream, which
            // carries the embeddings scaled by sqrt(hidden); a large gain keeps the layers from
            // being drowned out (else the fixture degenerates into a bigram model).
            for branch in ["post_feedforward_layernorm", "post_attention_layernorm"] {
                add(
                    format!("{p}.{branch}.weight"),
                    vec![h],
                    Fill::Around {
                        center: GEMMA_BRANCH_GAIN - 1.0,
                        half_width: 0.5,
                    },
                );
            }
        } else if arch != Phi {
            norm_at("post_attention_layernorm");
        }

        let attn = format!("{p}.self_attn");
        let qk = Fill::Uniform(linear_bound(h, 1.5));
        let proj = Fill::Uniform(linear_bound(h, 1.0));
        if arch == Phi3 {
            add(
                format!("{attn}.qkv_proj.weight"),
                vec![q_dim + 2 * kv_dim, h],
                qk,
            );
        } else {
            add(format!("{attn}.q_proj.weight"), vec![q_dim, h], qk);
            add(format!("{attn}.k_proj.weight"), vec![kv_dim, h], qk);
            add(format!("{attn}.v_proj.weight"), vec![kv_dim, h], proj);
        }
        let qkv_bias = matches!(arch, Phi | Qwen2 | Starcoder2 | StableLm);
        if qkv_bias {
            add(format!("{attn}.q_proj.bias"), vec![q_dim], bias);
            add(format!("{attn}.k_proj.bias"), vec![kv_dim], bias);
            add(format!("{attn}.v_proj.bias"), vec![kv_dim], bias);
        }
        // Gemma's embeddings enter the residual stream scaled by sqrt(hidden): its layers need
        // the same gain to matter.
        let branch_gain = if arch == Gemma {
            GEMMA_BRANCH_GAIN
        } else {
            1.0
        };
        let out_proj = if arch == Phi { "dense" } else { "o_proj" };
        add(
            format!("{attn}.{out_proj}.weight"),
            vec![h, q_dim],
            Fill::Uniform(linear_bound(q_dim, branch_gain)),
        );
        if matches!(arch, Phi | Starcoder2) {
            add(format!("{attn}.{out_proj}.bias"), vec![h], bias);
        }
        if arch == Qwen3 {
            add(
                format!("{attn}.q_norm.weight"),
                vec![geometry.head_dim],
                norm,
            );
            add(
                format!("{attn}.k_norm.weight"),
                vec![geometry.head_dim],
                norm,
            );
        }

        let mlp = format!("{p}.mlp");
        let up = Fill::Uniform(linear_bound(h, 1.0));
        let down = Fill::Uniform(linear_bound(i, branch_gain));
        match arch {
            Phi => {
                add(format!("{mlp}.fc1.weight"), vec![i, h], up);
                add(format!("{mlp}.fc1.bias"), vec![i], bias);
                add(format!("{mlp}.fc2.weight"), vec![h, i], down);
                add(format!("{mlp}.fc2.bias"), vec![h], bias);
            }
            Starcoder2 => {
                add(format!("{mlp}.c_fc.weight"), vec![i, h], up);
                add(format!("{mlp}.c_fc.bias"), vec![i], bias);
                add(format!("{mlp}.c_proj.weight"), vec![h, i], down);
                add(format!("{mlp}.c_proj.bias"), vec![h], bias);
            }
            Phi3 => {
                add(format!("{mlp}.gate_up_proj.weight"), vec![2 * i, h], up);
                add(format!("{mlp}.down_proj.weight"), vec![h, i], down);
            }
            _ => {
                add(format!("{mlp}.gate_proj.weight"), vec![i, h], up);
                add(format!("{mlp}.up_proj.weight"), vec![i, h], up);
                add(format!("{mlp}.down_proj.weight"), vec![h, i], down);
            }
        }
    }
    t
}

/// Fills every tensor from one ChaCha8 stream, in the order `tensor_shapes` lists them.
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
