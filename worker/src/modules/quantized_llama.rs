//! Llama-family GGUF models, derived from candle-transformers' `quantized_llama` (dense blocks,
//! the interleaved rotation llama.cpp's converter prepares the weights for). Two differences:
//! - the rotary tables cover the file's `llama.context_length` (candle's stop at 4,096
//!   positions whatever the file says);
//! - the embeddings are looked up in the quantized table, a row dequantized per token (candle
//!   holds an f32 copy of the whole table, 113 MB for SmolLM2-135M, beside the quantized one a
//!   tied model's output product reads). The rows are the same values either way.
//!
//! With the fast engine on the CPU, the Q4_0, Q4_1, Q8_0, Q2_K to Q6_K, f32 and f16 products
//! run on `fast::cpu`'s kernels, Q/K/V in one pass and gate/up in another (a quantized
//! input quantized once for each); candle's `QMatMul` runs the rest, and all of them with the
//! candle engine (the reference). Attention then reads the KV buffers in place
//! (`fast::cpu_attention`) where candle's repeats the grouped heads, a prefill's mask and softmax
//! in one pass per row, and `silu(gate) · up` is one pass over the threads
//! (`fast::cpu::silu_mul`); the logits are the same.
//!
//! The KV cache holds f32, or f16 (`KvCache::F16`): keys and values rounded to f16 as they are
//! written, widened to f32 where attention reads them, on both engines alike.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{ggml_file, gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::build_causal_mask;

use llm_worker_rbee_cpu_kernels::{PackedMatrix, BLOCK};

use super::kv_buffer::{repeat_kv, Buffer};
use crate::backend::KvCache;
use crate::fast::cpu::{forward_shared, silu_mul, KernelLinear};
use crate::fast::cpu_attention::{decode_attention, prefill_attention};
use crate::fast::Engine;

/// The settings the module reads, from the metadata (checked by `gguf::parse` first).
pub struct Settings {
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub hidden_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    /// Positions the rotary tables cover.
    pub context_length: usize,
}

impl Settings {
    pub fn read(content: &gguf_file::Content) -> Result<Self> {
        let get = |key: &str| match content.metadata.get(&format!("llama.{key}")) {
            Some(value) => Ok(value),
            None => candle_core::bail!("cannot find llama.{key} in the metadata"),
        };
        let count = |key: &str| get(key).and_then(|v| v.to_u32()).map(|n| n as usize);
        Ok(Self {
            num_layers: count("block_count")?,
            num_heads: count("attention.head_count")?,
            num_kv_heads: count("attention.head_count_kv")?,
            hidden_size: count("embedding_length")?,
            rms_norm_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_theta: get("rope.freq_base")
                .and_then(|v| v.to_f32())
                .unwrap_or(10_000.0),
            context_length: count("context_length")?,
        })
    }
}

/// The embedding table, quantized; the rows a forward pass needs are dequantized.
struct QuantizedEmbeddings {
    rows: TableRows,
    dtype: GgmlDType,
    device: Device,
    row_bytes: usize,
    hidden_size: usize,
}

/// Where the table's rows are read.
enum TableRows {
    /// The loaded tensor; `host`: its bytes on the host when it lives on a device (read once; on
    /// the CPU they are the tensor's own).
    Tensor {
        table: Arc<QTensor>,
        host: Option<Vec<u8>>,
    },
    /// The tiles a tied output product repacked the table into, which replace it.
    Tiles(Arc<PackedMatrix>),
}

impl QuantizedEmbeddings {
    fn new(table: Arc<QTensor>) -> Result<Self> {
        let (rows, hidden_size) = table.shape().dims2()?;
        let dtype = table.dtype();
        if hidden_size % dtype.block_size() != 0 {
            candle_core::bail!("embedding rows of {hidden_size} are not whole {dtype:?} blocks")
        }
        let host = match table.device() {
            Device::Cpu => None,
            _ => Some(table.data()?.into_owned()),
        };
        let row_bytes = hidden_size / dtype.block_size() * dtype.type_size();
        let held = host
            .as_ref()
            .map_or(table.storage_size_in_bytes(), Vec::len);
        if held != rows * row_bytes {
            candle_core::bail!("the embedding table has {held} bytes, not {rows} x {row_bytes}")
        }
        Ok(Self {
            device: table.device(),
            rows: TableRows::Tensor { table, host },
            dtype,
            row_bytes,
            hidden_size,
        })
    }

    /// The table read from the tiles of the tied output product (on the CPU).
    fn from_tiles(tiles: Arc<PackedMatrix>) -> Self {
        let (format, hidden_size) = (tiles.format(), tiles.cols());
        Self {
            row_bytes: hidden_size / BLOCK * format.block_bytes(),
            rows: TableRows::Tiles(tiles),
            dtype: format.ggml_dtype(),
            device: Device::Cpu,
            hidden_size,
        }
    }

    /// `[batch, tokens]` ids to `[batch, tokens, hidden]` f32.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let gathered = match &self.rows {
            TableRows::Tensor { table, host } => {
                let bytes: Cow<[u8]> = match host {
                    Some(host) => Cow::Borrowed(host),
                    None => table.data()?,
                };
                let size = self.row_bytes;
                gather(&ids, bytes.len() / size, |id| {
                    Cow::Borrowed(&bytes[id * size..(id + 1) * size])
                })?
            }
            TableRows::Tiles(tiles) => {
                gather(&ids, tiles.rows(), |id| Cow::Owned(tiles.unpacked_row(id)))?
            }
        };
        let dims = vec![batch * tokens, self.hidden_size];
        ggml_file::qtensor_from_ggml(self.dtype, &gathered, dims, &self.device)?
            .dequantize(&self.device)?
            .reshape((batch, tokens, self.hidden_size))
    }
}

/// The bytes of rows `ids` of a table of `rows_held` rows, one after another.
fn gather<'a>(
    ids: &[u32],
    rows_held: usize,
    row: impl Fn(usize) -> Cow<'a, [u8]>,
) -> Result<Vec<u8>> {
    let mut gathered = Vec::new();
    for &id in ids {
        let id = id as usize;
        if id >= rows_held {
            candle_core::bail!("token id {id} is past the {rows_held} embeddings")
        }
        gathered.extend_from_slice(&row(id));
    }
    Ok(gathered)
}

/// A product of the model: candle's, or the CPU kernels' over the same quantized tensor.
enum Product {
    Candle(QMatMul),
    Kernels(KernelLinear),
}

impl Product {
    fn new(weights: Arc<QTensor>, engine: Engine) -> Result<Self> {
        let weights = match engine {
            Engine::Fast => match KernelLinear::new(weights) {
                Ok(linear) => return Ok(Self::Kernels(linear)),
                Err(weights) => weights,
            },
            Engine::Candle => weights,
        };
        QMatMul::from_arc(weights).map(Self::Candle)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [y] = forward_all([self], x)?;
        Ok(y)
    }
}

/// The products of one input: in one pass when the CPU kernels run them all (a quantized
/// product's input quantized once).
fn forward_all<const N: usize>(products: [&Product; N], x: &Tensor) -> Result<[Tensor; N]> {
    let linears: Vec<&KernelLinear> = products
        .iter()
        .filter_map(|p| match p {
            Product::Kernels(linear) => Some(linear),
            Product::Candle(_) => None,
        })
        .collect();
    if let Ok(linears) = <[&KernelLinear; N]>::try_from(linears) {
        if linears.iter().all(|l| l.shares_a_pass_with(linears[0])) {
            return forward_shared(linears, x);
        }
    }
    let results = products
        .iter()
        .map(|p| match p {
            Product::Candle(matmul) => matmul.forward(x),
            Product::Kernels(linear) => forward_shared([linear], x).map(|[y]| y),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(results
        .try_into()
        .unwrap_or_else(|_| unreachable!("one result per product")))
}

struct Mlp {
    gate: Product,
    down: Product,
    up: Product,
    /// `silu(gate) · up` in one pass over the CPU's threads (`fast::cpu::silu_mul`).
    fused_activation: bool,
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let [gate, up] = forward_all([&self.gate, &self.up], xs)?;
        let activated = match self.fused_activation {
            true => silu_mul(&gate, &up)?,
            false => (candle_nn::ops::silu(&gate)? * up)?,
        };
        self.down.forward(&activated)
    }
}

struct Layer {
    q: Product,
    k: Product,
    v: Product,
    o: Product,
    attention_norm: RmsNorm,
    mlp: Mlp,
    ffn_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    /// Positions the cache may grow to (the rotary tables' length).
    max_len: usize,
    /// Attention reads the buffers in place (`fast::cpu_attention`).
    attention_in_place: bool,
    /// The type `keys` and `values` hold.
    kv_dtype: DType,
    keys: Option<Buffer>,
    values: Option<Buffer>,
}

impl Layer {
    fn clear_kv_cache(&mut self) {
        Buffer::clear(&mut self.keys);
        Buffer::clear(&mut self.values);
    }

    fn rotate(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, _, tokens, _) = x.dims4()?;
        let cos = self.cos.narrow(0, offset, tokens)?;
        let sin = self.sin.narrow(0, offset, tokens)?;
        candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)
    }

    fn attention(&mut self, x: &Tensor, mask: Option<&Tensor>, offset: usize) -> Result<Tensor> {
        let (batch, tokens, hidden) = x.dims3()?;
        let heads = |t: Tensor, n: usize| {
            t.reshape((batch, tokens, n, self.head_dim))?
                .transpose(1, 2)
        };
        let [q, k, v] = forward_all([&self.q, &self.k, &self.v], x)?;
        let q = heads(q, self.num_heads)?;
        let k = heads(k, self.num_kv_heads)?;
        let v = heads(v, self.num_kv_heads)?;
        let q = self.rotate(&q, offset)?;
        let k = self.rotate(&k, offset)?;
        // A request from position 0 starts a new cache, whatever an earlier one left.
        if offset == 0 {
            self.clear_kv_cache();
        }
        let k = Buffer::append(&mut self.keys, &k.to_dtype(self.kv_dtype)?, self.max_len)?;
        let v = Buffer::append(&mut self.values, &v.to_dtype(self.kv_dtype)?, self.max_len)?;
        if self.attention_in_place {
            let y = match tokens {
                1 => decode_attention(&q, &k, &v)?,
                _ => prefill_attention(&q, &k, &v, offset)?,
            };
            return self.o.forward(&y.reshape((batch, tokens, hidden))?);
        }
        let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let groups = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(k, groups)?;
        let v = repeat_kv(v, groups)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = match mask {
            None => scores,
            Some(mask) => {
                let mask = mask.broadcast_as(scores.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(scores.shape())?, &scores)?
            }
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((batch, tokens, hidden))?;
        self.o.forward(&y)
    }
}

pub struct QuantizedLlama {
    embeddings: QuantizedEmbeddings,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Product,
}

/// cos and sin of every position up to `positions` for each rotated pair. Computed in f32 as
/// candle's quantized llama computes them (not with `modules::rotary`, which works in f64), so
/// that GGUF logits stay those of candle's module.
fn rotary_tables(
    head_dim: usize,
    theta: f32,
    positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
        .collect();
    let inv_freq = Tensor::new(inv_freq.as_slice(), device)?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&inv_freq.reshape((1, inv_freq.elem_count()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

impl QuantizedLlama {
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: gguf_file::Content,
        reader: &mut R,
        device: &Device,
        engine: Engine,
        kv_cache: KvCache,
    ) -> Result<Self> {
        let settings = Settings::read(&content)?;
        let kv_dtype = match kv_cache {
            KvCache::Activations => DType::F32,
            KvCache::F16 => DType::F16,
        };
        let head_dim = settings.hidden_size / settings.num_heads;
        let (cos, sin) = rotary_tables(
            head_dim,
            settings.rope_theta,
            settings.context_length,
            device,
        )?;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?;
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let table = Arc::new(tensor("token_embd.weight")?);
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, settings.rms_norm_eps)?;
        // Without `output.weight` the output product is the embedding table (tied): repacked
        // into tiles for it, the table's rows are read from them.
        let tied = !content.tensor_infos.contains_key("output.weight");
        let output = match tied {
            false => Arc::new(tensor("output.weight")?),
            true => table.clone(),
        };
        let output = Product::new(output, engine)?;
        let embeddings = match &output {
            Product::Kernels(linear) if tied => match linear.tiles() {
                Some(tiles) => {
                    // Freed before the layers load, so that peak memory holds the table once.
                    drop(table);
                    QuantizedEmbeddings::from_tiles(tiles)
                }
                None => QuantizedEmbeddings::new(table)?,
            },
            _ => QuantizedEmbeddings::new(table)?,
        };
        let mut layers = Vec::with_capacity(settings.num_layers);
        for layer in 0..settings.num_layers {
            let mut weight = |name: &str| tensor(&format!("blk.{layer}.{name}.weight"));
            let mut product =
                |name: &str| weight(name).and_then(|w| Product::new(Arc::new(w), engine));
            let (q, k, v, o) = (
                product("attn_q")?,
                product("attn_k")?,
                product("attn_v")?,
                product("attn_output")?,
            );
            let mlp = Mlp {
                gate: product("ffn_gate")?,
                down: product("ffn_down")?,
                up: product("ffn_up")?,
                fused_activation: engine == Engine::Fast && device.is_cpu(),
            };
            let eps = settings.rms_norm_eps;
            layers.push(Layer {
                q,
                k,
                v,
                o,
                attention_norm: RmsNorm::from_qtensor(weight("attn_norm")?, eps)?,
                mlp,
                ffn_norm: RmsNorm::from_qtensor(weight("ffn_norm")?, eps)?,
                num_heads: settings.num_heads,
                num_kv_heads: settings.num_kv_heads,
                head_dim,
                cos: cos.clone(),
                sin: sin.clone(),
                neg_inf: neg_inf.clone(),
                max_len: settings.context_length,
                attention_in_place: engine == Engine::Fast && device.is_cpu(),
                kv_dtype,
                keys: None,
                values: None,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            norm,
            output,
        })
    }

    pub fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.clear_kv_cache();
        }
    }

    /// The logits of the last token of `ids` (`[batch, tokens]`), at positions from `offset`.
    pub fn forward(&mut self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, tokens) = ids.dims2()?;
        let mask = match tokens {
            1 => None,
            _ => Some(build_causal_mask(tokens, offset, ids.device())?),
        };
        let mut hidden = self.embeddings.forward(ids)?;
        for layer in &mut self.layers {
            let attention = layer.attention(
                &layer.attention_norm.forward(&hidden)?,
                mask.as_ref(),
                offset,
            )?;
            let hidden_attended = (attention + &hidden)?;
            let mlp = layer
                .mlp
                .forward(&layer.ffn_norm.forward(&hidden_attended)?)?;
            hidden = (mlp + hidden_attended)?;
        }
        let last = self.norm.forward(&hidden)?.i((.., tokens - 1, ..))?;
        self.output.forward(&last)
    }
}
