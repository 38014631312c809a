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
    pub description: &'static str,
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
