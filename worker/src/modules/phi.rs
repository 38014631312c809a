//! Phi-1, Phi-1.5 and Phi-2, derived from candle-transformers 0.11.1 `models::phi` (MIT OR
//! Apache-2.0).
//!
//! Changed from the original: the rotary tables are computed in f32 and cast to the model
//! dtype, so the model runs in bf16 and f16 too (the original kept them in f32, which the rope
//! kernel refuses next to bf16 activations). The attention mask also covers tokens already in
//! the cache.

use candle_core::{DType, Device, IndexOp, Module, Result as CandleResult, Tensor, D};
use candle_nn::kv_cache::ConcatKvCache;
use candle_nn::{layer_norm, linear, Activation, Embedding, LayerNorm, Linear, VarBuilder};

use super::{mask, rotary};
use crate::model::CausalLm;

#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) num_key_value_heads: usize,
    pub(crate) hidden_act: Activation,
    pub(crate) max_position_embeddings: usize,
    pub(crate) layer_norm_eps: f64,
    pub(crate) rope_theta: f64,
    pub(crate) partial_rotary_factor: f64,
    pub(crate) qk_layernorm: bool,
}

impl Config {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Debug, Clone)]
struct RotaryEmbedding {
    dim: usize,
    sin: Tensor,
    cos: Tensor,
}

impl RotaryEmbedding {
    fn new(cfg: &Config, dtype: DType, dev: &Device) -> CandleResult<Self> {
        let dim = (cfg.partial_rotary_factor * cfg.head_dim() as f64) as usize;
        let (cos, sin) =
            rotary::tables(dim, cfg.rope_theta, cfg.max_position_embeddings, dtype, dev)?;
        Ok(Self { dim, sin, cos })
    }

    fn apply_rotary_emb(&self, xs: &Tensor, seqlen_offset: usize) -> CandleResult<Tensor> {
        let (_b_size, _num_heads, seq_len, _headdim) = xs.dims4()?;
        let xs_rot = xs.i((.., .., .., ..self.dim))?.contiguous()?;
        let xs_pass = xs.i((.., .., .., self.dim..))?;
        let c = self.cos.narrow(0, seqlen_offset, seq_len)?;
        let s = self.sin.narrow(0, seqlen_offset, seq_len)?;
        let xs_rot = candle_nn::rotary_emb::rope(&xs_rot, &c, &s)?;
        Tensor::cat(&[&xs_rot, &xs_pass], D::Minus1)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> CandleResult<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> CandleResult<Tensor> {
        xs.apply(&self.fc1)?.apply(&self.act)?.apply(&self.fc2)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    dense: Linear,
    kv_cache: ConcatKvCache,
    q_layernorm: Option<LayerNorm>,
    k_layernorm: Option<LayerNorm>,
    rotary_emb: RotaryEmbedding,
    softmax_scale: f64,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> CandleResult<Self> {
        let num_heads = cfg.num_attention_heads;
        let num_kv_heads = cfg.num_key_value_heads;
        let head_dim = cfg.head_dim();
        let (q_layernorm, k_layernorm) = if cfg.qk_layernorm {
            (
                Some(layer_norm(
                    head_dim,
                    cfg.layer_norm_eps,
                    vb.pp("q_layernorm"),
                )?),
                Some(layer_norm(
                    head_dim,
                    cfg.layer_norm_eps,
                    vb.pp("k_layernorm"),
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: linear(cfg.hidden_size, num_heads * head_dim, vb.pp("q_proj"))?,
            k_proj: linear(cfg.hidden_size, num_kv_heads * head_dim, vb.pp("k_proj"))?,
            v_proj: linear(cfg.hidden_size, num_kv_heads * head_dim, vb.pp("v_proj"))?,
            dense: linear(num_heads * head_dim, cfg.hidden_size, vb.pp("dense"))?,
            kv_cache: ConcatKvCache::new(2),
            q_layernorm,
            k_layernorm,
            rotary_emb: RotaryEmbedding::new(cfg, vb.dtype(), vb.device())?,
            softmax_scale: 1f64 / (head_dim as f64).sqrt(),
            num_heads,
            num_kv_heads,
            head_dim,
        })
    }

    fn forward(&mut self, xs: &Tensor, mask: Option<&Tensor>) -> CandleResult<Tensor> {
        let (b_size, seq_len, _n_embd) = xs.dims3()?;
        let query_states = self.q_proj.forward(xs)?;
        let key_states = self.k_proj.forward(xs)?;
        let value_states = self.v_proj.forward(xs)?;

        let query_states = match &self.q_layernorm {
            None => query_states,
            Some(ln) => query_states.apply(ln)?,
        };
        let key_states = match &self.k_layernorm {
            None => key_states,
            Some(ln) => key_states.apply(ln)?,
        };

        let query_states = query_states
            .reshape((b_size, seq_len, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let key_states = key_states
            .reshape((b_size, seq_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let value_states = value_states
            .reshape((b_size, seq_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;

        let seqlen_offset = self.kv_cache.current_seq_len();
        let query_states = self
            .rotary_emb
            .apply_rotary_emb(&query_states, seqlen_offset)?;
        let key_states = self
            .rotary_emb
            .apply_rotary_emb(&key_states, seqlen_offset)?;

        let (key_states, value_states) = self.kv_cache.append(&key_states, &value_states)?;

        let groups = self.num_heads / self.num_kv_heads;
        let key_states = candle_transformers::utils::repeat_kv(key_states, groups)?.contiguous()?;
        let value_states =
            candle_transformers::utils::repeat_kv(value_states, groups)?.contiguous()?;

        let attn_weights = (query_states
            .to_dtype(DType::F32)?
            .contiguous()?
            .matmul(&key_states.to_dtype(DType::F32)?.t()?)?
            * self.softmax_scale)?;
        let attn_weights = match mask {
            None => attn_weights,
            Some(mask) => attn_weights.broadcast_add(mask)?,
        };
        let attn_weights =
            candle_nn::ops::softmax_last_dim(&attn_weights)?.to_dtype(value_states.dtype())?;
        let attn_output = attn_weights.matmul(&value_states)?;
        let attn_output = attn_output
            .transpose(1, 2)?
            .reshape((b_size, seq_len, ()))?;
        attn_output.apply(&self.dense)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: LayerNorm,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> CandleResult<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("input_layernorm"),
            )?,
        })
    }

    fn forward(&mut self, xs: &Tensor, mask: Option<&Tensor>) -> CandleResult<Tensor> {
        let residual = xs;
        let xs = xs.apply(&self.input_layernorm)?;
        let attn_outputs = self.self_attn.forward(&xs, mask)?;
        let feed_forward_hidden_states = self.mlp.forward(&xs)?;
        attn_outputs + feed_forward_hidden_states + residual
    }
}

pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    final_layernorm: LayerNorm,
    lm_head: Linear,
    device: Device,
}

impl Model {
    pub fn load(cfg: &Config, vb: VarBuilder<'static>) -> CandleResult<Self> {
        let vb_m = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb_m.pp("embed_tokens"))?;
        let final_layernorm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb_m.pp("final_layernorm"),
        )?;
        let vb_l = vb_m.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb_l.pp(i)))
            .collect::<CandleResult<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            final_layernorm,
            lm_head: linear(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?,
            device: vb.device().clone(),
        })
    }
}

impl CausalLm for Model {
    fn forward(&mut self, xs: &Tensor, seqlen_offset: usize) -> CandleResult<Tensor> {
        let (_b_size, seq_len) = xs.dims2()?;
        let mut xs = xs.apply(&self.embed_tokens)?;
        // Attention runs in f32, so the mask is f32 whatever the model dtype.
        let mask = mask::causal(seq_len, seqlen_offset, None, &self.device, DType::F32)?;
        for layer in self.layers.iter_mut() {
            xs = layer.forward(&xs, mask.as_ref())?;
        }
        xs.apply(&self.final_layernorm)?
            .narrow(1, seq_len - 1, 1)?
            .apply(&self.lm_head)?
            .squeeze(1)
    }

    fn reset(&mut self) -> CandleResult<()> {
        for layer in self.layers.iter_mut() {
            layer.self_attn.kv_cache.reset();
        }
        Ok(())
    }
}
