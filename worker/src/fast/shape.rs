//! What the fast path needs to know of a llama-family module. The architectures it covers
//! describe themselves with it (`ModuleConfig::llama_shape`) on every backend; only the kernels
//! need CUDA.

/// The geometry of one layer's attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// The width of a fused Q/K/V row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// What the Q/K/V product carries beyond the llama layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvKind {
    Plain,
    /// Biases on q, k and v (qwen2).
    Bias,
    /// An RMSNorm of each q and k head before the rotation (qwen3).
    Norm,
}

/// A decoder of llama's form: RMSNorm, rotary attention with grouped KV heads, SiLU-gated MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub layers: usize,
    pub heads: Heads,
    pub rms_eps: f64,
    /// The rotary frequencies, one per pair of rotated values (scaling already applied).
    pub inv_freq: Vec<f32>,
    /// Positions the rotary tables cover: the model's context.
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// A sliding window the module applies, if any.
    pub window: Option<usize>,
    pub qkv: QkvKind,
}

/// The frequencies of the standard rotation: theta^(-2i / head_dim).
pub fn default_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / (theta as f32).powf(i as f32 / head_dim as f32))
        .collect()
}
