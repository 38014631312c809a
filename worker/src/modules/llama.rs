//! The Llama module: candle-transformers' `models::llama` with the same arithmetic, op for op
//! on the same shapes (so its outputs are bit-identical), and fewer kernels per decoded token.
//! Measured on CUDA (`llm-worker-rbee bench`, ncu), candle's module issues 44 kernels per layer
//! and token, 20 of them copies: `Tensor::cat` of the whole KV cache with the new position
//! (two copies each for keys and values) and `repeat_kv` (a `cat` of n_rep copies each). Decode
//! is bound by the host issuing kernels, not by memory bandwidth, so copies cost their launch.
//! Here the cache is a buffer with room to grow, written in place (one copy each, see
//! `kv_buffer`), and the grouped keys and values are repeated by one broadcast copy each, after
//! their cast to f32.

use std::collections::HashMap;
use std::f32::consts::PI;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{embedding, linear_no_bias as linear, Embedding, Linear, RmsNorm, VarBuilder};
use candle_transformers::models::llama::{Config, Llama3RopeConfig, Llama3RopeType};

use super::kv_buffer::{repeat_kv, Buffer};

/// The KV cache, rotary tables and masks of one sequence. Clone only an empty one (as the
/// worker does for each request): a clone shares the buffers, which are written in place.
#[derive(Clone, Debug)]
pub struct Cache {
    masks: HashMap<(usize, usize), Tensor>,
    kvs: Vec<(Option<Buffer>, Option<Buffer>)>,
    cos: Tensor,
    sin: Tensor,
    max_len: usize,
    device: Device,
}

fn default_inv_freq(cfg: &Config) -> Vec<f32> {
    let head_dim = cfg.hidden_size / cfg.num_attention_heads;
    (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / head_dim as f32))
        .collect()
}

/// The rotary frequencies of candle's `llama::Cache` (llama3 scaling applied).
pub fn rope_frequencies(config: &Config) -> Vec<f32> {
    match &config.rope_scaling {
        None
        | Some(Llama3RopeConfig {
            rope_type: Llama3RopeType::Default,
            ..
        }) => default_inv_freq(config),
        Some(scaling) => {
            let original = scaling.original_max_position_embeddings as f32;
            let low_freq_wavelen = original / scaling.low_freq_factor;
            let high_freq_wavelen = original / scaling.high_freq_factor;
            default_inv_freq(config)
                .into_iter()
                .map(|freq| {
                    let wavelen = 2. * PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / scaling.factor
                    } else {
                        let smooth = (original / wavelen - scaling.low_freq_factor)
                            / (scaling.high_freq_factor - scaling.low_freq_factor);
                        (1. - smooth) * freq / scaling.factor + smooth * freq
                    }
                })
                .collect()
        }
    }
}

impl Cache {
    /// As candle's `llama::Cache::new`, the same tables.
    pub fn new(dtype: DType, config: &Config, device: &Device) -> Result<Self> {
        let theta = rope_frequencies(config);
        let theta = Tensor::new(theta, device)?;
        let positions = config.max_position_embeddings;
        let idx_theta = Tensor::arange(0, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?
            .matmul(&theta.reshape((1, theta.elem_count()))?)?;
        Ok(Self {
            masks: HashMap::new(),
            kvs: vec![(None, None); config.num_hidden_layers],
            cos: idx_theta.cos()?.to_dtype(dtype)?,
            sin: idx_theta.sin()?.to_dtype(dtype)?,
            max_len: positions,
            device: device.clone(),
        })
    }

    fn mask(&mut self, seq_len: usize, index_pos: usize) -> Result<Tensor> {
        let key = (seq_len, index_pos + seq_len);
        if let Some(mask) = self.masks.get(&key) {
            return Ok(mask.clone());
        }
        let mask = candle_transformers::utils::build_causal_mask(seq_len, index_pos, &self.device)?;
        self.masks.insert(key, mask.clone());
        Ok(mask)
    }
}

#[derive(Clone, Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let head_dim = cfg.hidden_size / cfg.num_attention_heads;
        let q = head_dim * cfg.num_attention_heads;
        let kv = head_dim * cfg.num_key_value_heads;
        Ok(Self {
            q_proj: linear(cfg.hidden_size, q, vb.pp("q_proj"))?,
            k_proj: linear(cfg.hidden_size, kv, vb.pp("k_proj"))?,
            v_proj: linear(cfg.hidden_size, kv, vb.pp("v_proj"))?,
            o_proj: linear(q, cfg.hidden_size, vb.pp("o_proj"))?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim,
        })
    }

    fn rope(&self, x: &Tensor, index_pos: usize, cache: &Cache) -> Result<Tensor> {
        let (_, _, seq_len, _) = x.dims4()?;
        let cos = cache.cos.narrow(0, index_pos, seq_len)?;
        let sin = cache.sin.narrow(0, index_pos, seq_len)?;
        candle_nn::rotary_emb::rope(x, &cos, &sin)
    }

    fn forward(
        &self,
        x: &Tensor,
        index_pos: usize,
        layer: usize,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let (b, seq_len, hidden) = x.dims3()?;
        let split = |t: Tensor, heads: usize| {
            t.reshape((b, seq_len, heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(self.q_proj.forward(x)?, self.heads)?.contiguous()?;
        let k = split(self.k_proj.forward(x)?, self.kv_heads)?.contiguous()?;
        let v = split(self.v_proj.forward(x)?, self.kv_heads)?;
        let q = self.rope(&q, index_pos, cache)?;
        let k = self.rope(&k, index_pos, cache)?;

        let max_len = cache.max_len;
        let (k_buffer, v_buffer) = &mut cache.kvs[layer];
        let k = Buffer::append(k_buffer, &k, max_len)?;
        let v = Buffer::append(v_buffer, &v, max_len)?;

        // Attention in f32, as candle's module computes it; the cast is exact, so casting
        // before the repeat gives the same values from fewer bytes.
        let n_rep = self.heads / self.kv_heads;
        let in_dtype = q.dtype();
        let q = q.to_dtype(DType::F32)?;
        let k = repeat_kv(k.to_dtype(DType::F32)?, n_rep)?;
        let v = repeat_kv(v.to_dtype(DType::F32)?, n_rep)?;
        let att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let att = if seq_len == 1 {
            att
        } else {
            let mask = cache.mask(seq_len, index_pos)?.broadcast_as(att.shape())?;
            let neg_inf =
                Tensor::new(f32::NEG_INFINITY, att.device())?.broadcast_as(att.shape())?;
            mask.where_cond(&neg_inf, &att)?
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.to_dtype(in_dtype)?;
        let y = y.transpose(1, 2)?.reshape((b, seq_len, hidden))?;
        self.o_proj.forward(&y)
    }
}

#[derive(Clone, Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: linear(h, i, vb.pp("gate_proj"))?,
            up: linear(h, i, vb.pp("up_proj"))?,
            down: linear(i, h, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&x)
    }
}

#[derive(Clone, Debug)]
struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    post_attention_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let norm = |name| candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp(name));
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_norm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        index_pos: usize,
        layer: usize,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let residual = x;
        let x = self.input_norm.forward(x)?;
        let x = (self.attn.forward(&x, index_pos, layer, cache)? + residual)?;
        let residual = &x;
        self.mlp.forward(&self.post_attention_norm.forward(&x)?)? + residual
    }
}

#[derive(Clone, Debug)]
pub struct Llama {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
}

impl Llama {
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let embed = embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("model.embed_tokens"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            linear(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let norm = candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(vb.pp(format!("model.layers.{i}")), cfg))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed,
            blocks,
            norm,
            lm_head,
        })
    }

    /// The last position's logits, in f32.
    pub fn forward(&self, x: &Tensor, index_pos: usize, cache: &mut Cache) -> Result<Tensor> {
        let (_, seq_len) = x.dims2()?;
        let mut x = self.embed.forward(x)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, index_pos, layer, cache)?;
        }
        let x = self.norm.forward(&x)?;
        let x = x.i((.., seq_len - 1, ..))?.contiguous()?;
        self.lm_head.forward(&x)?.to_dtype(DType::F32)
    }
}

#[cfg(all(test, feature = "synth"))]
mod tests {
    use candle_transformers::models::llama as candle_llama;

    use super::*;
    use crate::arch::llama::Config as LlamaConfig;
    use crate::config::HfConfig;
    use crate::synth;

    #[test]
    fn logits_are_bit_identical_to_candle_llama_in_prefill_and_decode() {
        let dir = tempfile::tempdir().unwrap();
        let spec = synth::fixture("llama").unwrap();
        synth::write_fixture(&spec, dir.path()).unwrap();
        let hf = HfConfig::load(&dir.path().join("config.json")).unwrap();
        let parsed = crate::arch::parse(&hf).unwrap();
        let Some(LlamaConfig(config)) = parsed.module.as_any().downcast_ref() else {
            panic!("the llama fixture is a llama");
        };
        let device = Device::Cpu;
        let weights = [dir.path().join("model.safetensors")];
        // SAFETY: a file this test wrote and nothing else touches.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &device) }.unwrap();
        let theirs = candle_llama::Llama::load(vb.clone(), config).unwrap();
        let mut their_cache = candle_llama::Cache::new(true, DType::F32, config, &device).unwrap();
        let ours = Llama::load(vb, config).unwrap();
        let mut our_cache = Cache::new(DType::F32, config, &device).unwrap();

        let prompt = Tensor::new(&[[1u32, 40, 41, 300, 7]], &device).unwrap();
        let mut logits = (
            theirs.forward(&prompt, 0, &mut their_cache).unwrap(),
            ours.forward(&prompt, 0, &mut our_cache).unwrap(),
        );
        for step in 0..40 {
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (a, b) = (values(&logits.0), values(&logits.1));
            assert_eq!(a, b, "step {step}");
            let next = a
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap()
                .0 as u32;
            let input = Tensor::new(&[[next]], &device).unwrap();
            logits = (
                theirs.forward(&input, 5 + step, &mut their_cache).unwrap(),
                ours.forward(&input, 5 + step, &mut our_cache).unwrap(),
            );
        }
    }
}
