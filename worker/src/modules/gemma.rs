//! Gemma and Gemma 2, derived from candle-transformers 0.11.1 `models::gemma2` (MIT OR
//! Apache-2.0). Gemma's block is Gemma 2's without the norms of the attention's and the MLP's
//! outputs, scaled by `head_dim ** -0.5`, with no soft-capping and no window.
//!
//! Changed from the original, each to match transformers:
//! - sliding-window attention on the layers `layer_types` marks (by default every other layer,
//!   starting with the first), with the window also applied while decoding; the original applied
//!   a window one token too wide to every layer, and only during prefill;
//! - attention scores scaled by `query_pre_attn_scalar ** -0.5` (the original used `head_dim`);
//! - rotary tables computed in f32 and then cast to the model dtype (candle's `models::gemma`
//!   computes Gemma's in the model dtype: in bf16, its logits left the reference's by an NMSE of
//!   5.6e-2 at 128 positions).

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result as CandleResult, Tensor, D};
use candle_nn::kv_cache::ConcatKvCache;
use candle_nn::{linear_b as linear, Activation, Linear, VarBuilder};

use super::{mask, rotary};
use crate::model::{CausalLm, ModuleConfig};

#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) attention_bias: bool,
    pub(crate) head_dim: usize,
    pub(crate) hidden_activation: Activation,
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_key_value_heads: usize,
    pub(crate) rms_norm_eps: f64,
    pub(crate) rope_theta: f64,
    pub(crate) vocab_size: usize,
    pub(crate) final_logit_softcapping: Option<f64>,
    pub(crate) attn_logit_softcapping: Option<f64>,
    pub(crate) query_pre_attn_scalar: f64,
    pub(crate) max_position_embeddings: usize,
    /// The window size, and for each layer whether it slides.
    pub(crate) window: Option<(usize, Vec<bool>)>,
    /// Gemma 2's norms of the attention's and the MLP's outputs, the MLP's input norm then being
    /// `pre_feedforward_layernorm`. Gemma has neither: its `post_attention_layernorm` is the
    /// MLP's input norm.
    pub(crate) output_norms: bool,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> CandleResult<Self> {
        let weight = vb.get(dim, "weight")?;
        Ok(Self { weight, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let x_dtype = x.dtype();
        let internal_dtype = match x_dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let hidden_size = x.dim(D::Minus1)?;
        let x = x.to_dtype(internal_dtype)?;
        let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? / hidden_size as f64)?;
        let x_normed = x.broadcast_div(&(norm_x + self.eps)?.sqrt()?)?;
        x_normed
            .to_dtype(x_dtype)?
            .broadcast_mul(&(&self.weight + 1.0)?)
    }
}

#[derive(Debug, Clone)]
struct RotaryEmbedding {
    sin: Tensor,
    cos: Tensor,
}

impl RotaryEmbedding {
    fn new(dtype: DType, cfg: &Config, dev: &Device) -> CandleResult<Self> {
        let (cos, sin) = rotary::tables(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.max_position_embeddings,
            dtype,
            dev,
        )?;
        Ok(Self { sin, cos })
    }

    fn apply_rotary_emb_qkv(
        &self,
        q: &Tensor,
        k: &Tensor,
        seqlen_offset: usize,
    ) -> CandleResult<(Tensor, Tensor)> {
        let (_b_sz, _h, seq_len, _n_embd) = q.dims4()?;
        let cos = self.cos.narrow(0, seqlen_offset, seq_len)?;
        let sin = self.sin.narrow(0, seqlen_offset, seq_len)?;
        let q_embed = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
        let k_embed = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
        Ok((q_embed, k_embed))
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act_fn: Activation,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> CandleResult<Self> {
        let hidden_sz = cfg.hidden_size;
        let intermediate_sz = cfg.intermediate_size;
        Ok(Self {
            gate_proj: linear(hidden_sz, intermediate_sz, false, vb.pp("gate_proj"))?,
            up_proj: linear(hidden_sz, intermediate_sz, false, vb.pp("up_proj"))?,
            down_proj: linear(intermediate_sz, hidden_sz, false, vb.pp("down_proj"))?,
            act_fn: cfg.hidden_activation,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> CandleResult<Tensor> {
        let lhs = xs.apply(&self.gate_proj)?.apply(&self.act_fn)?;
        let rhs = xs.apply(&self.up_proj)?;
        (lhs * rhs)?.apply(&self.down_proj)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    num_kv_groups: usize,
    head_dim: usize,
    scale: f64,
    attn_logit_softcapping: Option<f64>,
    rotary_emb: Arc<RotaryEmbedding>,
    kv_cache: ConcatKvCache,
}

impl Attention {
    fn new(rotary_emb: Arc<RotaryEmbedding>, cfg: &Config, vb: VarBuilder) -> CandleResult<Self> {
        let hidden_sz = cfg.hidden_size;
        let num_heads = cfg.num_attention_heads;
        let num_kv_heads = cfg.num_key_value_heads;
        let head_dim = cfg.head_dim;
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: linear(hidden_sz, num_heads * head_dim, bias, vb.pp("q_proj"))?,
            k_proj: linear(hidden_sz, num_kv_heads * head_dim, bias, vb.pp("k_proj"))?,
            v_proj: linear(hidden_sz, num_kv_heads * head_dim, bias, vb.pp("v_proj"))?,
            o_proj: linear(num_heads * head_dim, hidden_sz, bias, vb.pp("o_proj"))?,
            num_heads,
            num_kv_heads,
            num_kv_groups: num_heads / num_kv_heads,
            head_dim,
            scale: cfg.query_pre_attn_scalar.powf(-0.5),
            attn_logit_softcapping: cfg.attn_logit_softcapping,
            rotary_emb,
            kv_cache: ConcatKvCache::new(2),
        })
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        attention_mask: Option<&Tensor>,
        seqlen_offset: usize,
    ) -> CandleResult<Tensor> {
        let (b_sz, q_len, _) = xs.dims3()?;

        let query_states = self.q_proj.forward(xs)?;
        let key_states = self.k_proj.forward(xs)?;
        let value_states = self.v_proj.forward(xs)?;

        let query_states = query_states
            .reshape((b_sz, q_len, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let key_states = key_states
            .reshape((b_sz, q_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let value_states = value_states
            .reshape((b_sz, q_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;

        let (query_states, key_states) =
            self.rotary_emb
                .apply_rotary_emb_qkv(&query_states, &key_states, seqlen_offset)?;

        let (key_states, value_states) = self.kv_cache.append(&key_states, &value_states)?;

        let key_states =
            candle_transformers::utils::repeat_kv(key_states, self.num_kv_groups)?.contiguous()?;
        let value_states = candle_transformers::utils::repeat_kv(value_states, self.num_kv_groups)?
            .contiguous()?;

        let attn_weights = (query_states.matmul(&key_states.transpose(2, 3)?)? * self.scale)?;
        let attn_weights = match self.attn_logit_softcapping {
            None => attn_weights,
            Some(sc) => ((attn_weights / sc)?.tanh()? * sc)?,
        };
        let attn_weights = match attention_mask {
            None => attn_weights,
            Some(mask) => attn_weights.broadcast_add(mask)?,
        };
        let attn_weights = candle_nn::ops::softmax_last_dim(&attn_weights)?;
        attn_weights
            .matmul(&value_states)?
            .transpose(1, 2)?
            .reshape((b_sz, q_len, ()))?
            .apply(&self.o_proj)
    }

    fn clear_kv_cache(&mut self) {
        self.kv_cache.reset()
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    /// The MLP's input norm.
    feedforward_layernorm: RmsNorm,
    /// Gemma 2's norms of the attention's and the MLP's outputs.
    output_norms: Option<OutputNorms>,
    sliding: bool,
}

#[derive(Debug, Clone)]
struct OutputNorms {
    post_attention_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(
        rotary_emb: Arc<RotaryEmbedding>,
        sliding: bool,
        cfg: &Config,
        vb: VarBuilder,
    ) -> CandleResult<Self> {
        let norm = |name: &str| RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp(name));
        let (feedforward_layernorm, output_norms) = if cfg.output_norms {
            let output_norms = OutputNorms {
                post_attention_layernorm: norm("post_attention_layernorm")?,
                post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
            };
            (norm("pre_feedforward_layernorm")?, Some(output_norms))
        } else {
            (norm("post_attention_layernorm")?, None)
        };
        Ok(Self {
            self_attn: Attention::new(rotary_emb, cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: norm("input_layernorm")?,
            feedforward_layernorm,
            output_norms,
            sliding,
        })
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        attention_mask: Option<&Tensor>,
        seqlen_offset: usize,
    ) -> CandleResult<Tensor> {
        let residual = xs;
        let xs = self.input_layernorm.forward(xs)?;
        let mut xs = self.self_attn.forward(&xs, attention_mask, seqlen_offset)?;
        if let Some(norms) = &self.output_norms {
            xs = xs.apply(&norms.post_attention_layernorm)?;
        }
        let xs = (xs + residual)?;
        let residual = &xs;
        let xs = xs.apply(&self.feedforward_layernorm)?;
        let mut xs = xs.apply(&self.mlp)?;
        if let Some(norms) = &self.output_norms {
            xs = xs.apply(&norms.post_feedforward_layernorm)?;
        }
        residual + xs
    }
}

pub struct Model {
    embed_tokens: candle_nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    final_logit_softcapping: Option<f64>,
    device: Device,
    dtype: DType,
    hidden_size: usize,
    window_size: Option<usize>,
}

impl Model {
    pub fn load(cfg: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        let vb_m = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb_m.pp("embed_tokens"))?;
        let rotary_emb = Arc::new(RotaryEmbedding::new(vb.dtype(), cfg, vb_m.device())?);
        let vb_l = vb_m.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let sliding = cfg.window.as_ref().is_some_and(|(_, layers)| layers[i]);
                DecoderLayer::new(rotary_emb.clone(), sliding, cfg, vb_l.pp(i))
            })
            .collect::<CandleResult<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb_m.pp("norm"))?;
        let lm_head = Linear::new(embed_tokens.embeddings().clone(), None);
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            final_logit_softcapping: cfg.final_logit_softcapping,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            hidden_size: cfg.hidden_size,
            window_size: cfg.window.as_ref().map(|(size, _)| *size),
        })
    }
}

impl CausalLm for Model {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> CandleResult<Tensor> {
        let (_, seq_len) = input_ids.dims2()?;
        let full_mask = mask::causal(seq_len, seqlen_offset, None, &self.device, self.dtype)?;
        let sliding_mask = match self.window_size {
            Some(w) => mask::causal(seq_len, seqlen_offset, Some(w), &self.device, self.dtype)?,
            None => None,
        };
        let xs = self.embed_tokens.forward(input_ids)?;
        let mut xs = (xs * (self.hidden_size as f64).sqrt())?;
        for layer in self.layers.iter_mut() {
            let mask = if layer.sliding {
                sliding_mask.as_ref()
            } else {
                full_mask.as_ref()
            };
            xs = layer.forward(&xs, mask, seqlen_offset)?
        }
        let logits = xs
            .narrow(1, seq_len - 1, 1)?
            .apply(&self.norm)?
            .apply(&self.lm_head)?;
        match self.final_logit_softcapping {
            None => Ok(logits),
            Some(sc) => (logits / sc)?.tanh()? * sc,
        }
    }

    fn reset(&mut self) -> CandleResult<()> {
        for layer in self.layers.iter_mut() {
            layer.self_attn.clear_kv_cache();
        }
        Ok(())
    }
}

impl ModuleConfig for Config {
    fn load(&self, vb: VarBuilder<'static>) -> CandleResult<Box<dyn CausalLm>> {
        Ok(Box::new(Model::load(self, vb)?))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
