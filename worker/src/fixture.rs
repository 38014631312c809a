//! What an architecture tells `synth` about its fixture models, as data: the variants, the
//! layout of heads and special tokens, and the tensors of its checkpoints. `synth` turns these
//! into files; the architectures only choose.

/// The fixture tokenizer's special tokens; their ids are their places in this list (they come
/// first in the vocabulary).
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<unk>",
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
];
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const ENDOFTEXT: u32 = 3;
pub const IM_END: u32 = 5;

/// The attention heads of every fixture.
pub const HEADS: usize = 4;

/// One fixture model of an architecture.
#[derive(Clone, Copy, Debug)]
pub struct FixtureVariant {
    /// The folder name under the fixtures directory, and the model id in test names.
    pub id: &'static str,
    /// Seed of the weights, chosen so that greedy decoding is far from ties (see
    /// `cargo xtask fixtures --search-seed`).
    pub seed: u64,
    /// A small sliding window, for the variants whose prompts run past it.
    pub sliding_window: Option<usize>,
    /// Rotary settings in transformers 5's `rope_parameters`, in place of `rope_theta` 10000.
    pub rope: Option<FixtureRope>,
    pub description: &'static str,
}

/// A fixture's `rope_parameters`: its base, and Llama 3's frequency scaling where set.
#[derive(Clone, Copy, Debug)]
pub struct FixtureRope {
    pub theta: f64,
    pub llama3: Option<Llama3Scaling>,
}

#[derive(Clone, Copy, Debug)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The choices of an architecture's fixture models beyond their sizes.
#[derive(Clone, Copy, Debug)]
pub struct FixtureLayout {
    pub kv_heads: usize,
    /// `None`: `hidden / HEADS`, as the architectures that derive it.
    pub head_dim: Option<usize>,
    pub tied: bool,
    /// The tokenizer adds `<s>` to every text, as Llama's and Gemma's do.
    pub add_bos: bool,
    pub eos: u32,
    pub extra_eos: Option<u32>,
    /// The chat template of the family's released checkpoints, as their tokenizer_config.json
    /// ships it (its special tokens are plain text to the fixture's tokenizer).
    pub chat_template: &'static str,
}

/// The sizes that decide a model's config and tensor shapes.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    pub max_positions: usize,
}

/// The tensors of an architecture's checkpoints, in transformers' naming.
#[derive(Clone, Copy, Debug)]
pub struct TensorLayout {
    /// LayerNorm (weight and bias) rather than RMSNorm (weight).
    pub layer_norm: bool,
    /// Norm weights stored as offsets from 1, as Gemma's.
    pub norm_offset: bool,
    /// The final norm's prefix: `model.norm`, or Phi's `model.final_layernorm`.
    pub final_norm: &'static str,
    pub lm_head_bias: bool,
    pub block_norms: BlockNorms,
    pub attention: AttentionTensors,
    pub mlp: MlpTensors,
    /// The gain of the attention output and MLP down projections: Gemma's embeddings enter the
    /// residual stream scaled by sqrt(hidden), and its layers need the same gain to matter.
    pub branch_gain: f32,
}

/// The norms of a block besides `input_layernorm`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlockNorms {
    /// `post_attention_layernorm`, before the MLP.
    PostAttention,
    /// None: attention and MLP read the same normalized input (Phi).
    Parallel,
    /// Gemma 2: `pre_feedforward_layernorm`, and each branch normalized before it joins the
    /// residual stream, with weights around `gain`.
    Sandwich { gain: f32 },
}

#[derive(Clone, Copy, Debug)]
pub struct AttentionTensors {
    /// One `qkv_proj` instead of `q_proj`, `k_proj` and `v_proj` (Phi-3).
    pub fused_qkv: bool,
    pub qkv_bias: bool,
    /// The output projection: `o_proj`, or Phi's `dense`.
    pub output: &'static str,
    pub output_bias: bool,
    /// Per-head `q_norm` and `k_norm` (Qwen3).
    pub qk_norm: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MlpTensors {
    /// `gate_proj`, `up_proj`, `down_proj`.
    GatedUpDown,
    /// `gate_up_proj` (gate rows, then up rows) and `down_proj` (Phi-3).
    FusedGateUp,
    /// Two projections with biases: `up` then `down` (Phi's `fc1`/`fc2`, StarCoder2's
    /// `c_fc`/`c_proj`).
    UpDown {
        up: &'static str,
        down: &'static str,
    },
}

impl TensorLayout {
    /// Llama's: RMSNorm, separate q/k/v without biases, a gated MLP.
    pub const LLAMA: TensorLayout = TensorLayout {
        layer_norm: false,
        norm_offset: false,
        final_norm: "model.norm",
        lm_head_bias: false,
        block_norms: BlockNorms::PostAttention,
        attention: AttentionTensors {
            fused_qkv: false,
            qkv_bias: false,
            output: "o_proj",
            output_bias: false,
            qk_norm: false,
        },
        mlp: MlpTensors::GatedUpDown,
        branch_gain: 1.0,
    };
}

/// How a fixture tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// Uniform in `[-bound, bound)`.
    Uniform(f32),
    /// Uniform in `[center - half_width, center + half_width)`.
    Around { center: f32, half_width: f32 },
}

/// A tensor of a fixture checkpoint: its name, shape and how its values are drawn.
pub type FixtureTensor = (String, Vec<usize>, Fill);

/// Output logits spread of about 4 (std): top-1 and top-2 stay apart without making sampling
/// collapse onto the greedy token.
pub const OUTPUT_BOUND: f32 = 0.8;
pub const BIAS_BOUND: f32 = 0.2;

/// A weight for `fan_in` inputs with variance `gain^2 / fan_in`.
pub fn linear_bound(fan_in: usize, gain: f32) -> f32 {
    gain * (3.0 / fan_in as f32).sqrt()
}

impl TensorLayout {
    /// The names, shapes and fills of every tensor of a checkpoint of `geometry`, in
    /// transformers' naming and in the order synth draws them.
    pub fn tensors(&self, geometry: &Geometry) -> Vec<FixtureTensor> {
        let (h, i, v) = (geometry.hidden, geometry.intermediate, geometry.vocab);
        let q_dim = geometry.heads * geometry.head_dim;
        let kv_dim = geometry.kv_heads * geometry.head_dim;
        let stored_offset = if self.norm_offset { 1.0 } else { 0.0 };
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
            if self.lm_head_bias {
                add("lm_head.bias".into(), vec![v], bias);
            }
        }
        let final_norm = self.final_norm;
        add(format!("{final_norm}.weight"), vec![h], final_norm_fill);
        if self.layer_norm {
            add(format!("{final_norm}.bias"), vec![h], bias);
        }

        let attention = &self.attention;
        for l in 0..geometry.layers {
            let p = format!("model.layers.{l}");
            let mut norm_at = |name: &str| {
                add(format!("{p}.{name}.weight"), vec![h], norm);
                if self.layer_norm {
                    add(format!("{p}.{name}.bias"), vec![h], bias);
                }
            };
            norm_at("input_layernorm");
            match self.block_norms {
                BlockNorms::PostAttention => norm_at("post_attention_layernorm"),
                BlockNorms::Parallel => {}
                BlockNorms::Sandwich { gain } => {
                    norm_at("pre_feedforward_layernorm");
                    for branch in ["post_feedforward_layernorm", "post_attention_layernorm"] {
                        add(
                            format!("{p}.{branch}.weight"),
                            vec![h],
                            Fill::Around {
                                center: gain - 1.0,
                                half_width: 0.5,
                            },
                        );
                    }
                }
            }

            let attn = format!("{p}.self_attn");
            let qk = Fill::Uniform(linear_bound(h, 1.5));
            let proj = Fill::Uniform(linear_bound(h, 1.0));
            if attention.fused_qkv {
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
            if attention.qkv_bias {
                add(format!("{attn}.q_proj.bias"), vec![q_dim], bias);
                add(format!("{attn}.k_proj.bias"), vec![kv_dim], bias);
                add(format!("{attn}.v_proj.bias"), vec![kv_dim], bias);
            }
            let out_proj = attention.output;
            add(
                format!("{attn}.{out_proj}.weight"),
                vec![h, q_dim],
                Fill::Uniform(linear_bound(q_dim, self.branch_gain)),
            );
            if attention.output_bias {
                add(format!("{attn}.{out_proj}.bias"), vec![h], bias);
            }
            if attention.qk_norm {
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
            let down = Fill::Uniform(linear_bound(i, self.branch_gain));
            match self.mlp {
                MlpTensors::UpDown {
                    up: up_name,
                    down: down_name,
                } => {
                    add(format!("{mlp}.{up_name}.weight"), vec![i, h], up);
                    add(format!("{mlp}.{up_name}.bias"), vec![i], bias);
                    add(format!("{mlp}.{down_name}.weight"), vec![h, i], down);
                    add(format!("{mlp}.{down_name}.bias"), vec![h], bias);
                }
                MlpTensors::FusedGateUp => {
                    add(format!("{mlp}.gate_up_proj.weight"), vec![2 * i, h], up);
                    add(format!("{mlp}.down_proj.weight"), vec![h, i], down);
                }
                MlpTensors::GatedUpDown => {
                    add(format!("{mlp}.gate_proj.weight"), vec![i, h], up);
                    add(format!("{mlp}.up_proj.weight"), vec![i, h], up);
                    add(format!("{mlp}.down_proj.weight"), vec![h, i], down);
                }
            }
        }
        t
    }
}
