//! The llama family's forward pass on the decode kernels: weights fused at load (Q/K/V as one
//! matrix, gate and up as one), every buffer a step touches allocated once, the KV cache laid
//! out for the attention kernel, and the one-token decode step captured as a CUDA graph and
//! replayed for every token. Position, length and token id live in device buffers written
//! before each step, so the graph's kernels and arguments never change. Prompts run through the
//! same kernels in chunks of several tokens, without a graph.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t;
use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use candle_core::cuda_backend::cudarc::driver::sys::{
    self, CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::{CudaGraph, CudaSlice, CudaStream, CudaView};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{splits, Element, Kernels, QkvExtra};
use super::shape::{LlamaShape, QkvKind};
use crate::model::{CausalLm, DecodeGraph};

/// The most prompt tokens one chunk runs: bounds the activation buffers.
const MAX_CHUNK_TOKENS: usize = 512;
/// The attention's scratch for a prompt chunk may take this many bytes; longer caches run
/// shorter chunks.
const MAX_PARTIAL_BYTES: usize = 64 << 20;
/// Positions the cache holds at first; it doubles (up to the context) when a sequence needs
/// more, and the graph is captured again.
const INITIAL_CAPACITY: usize = 4096;

/// What the kernels and cuBLAS need of a storage type.
pub trait FastElement: Element + CudaDType + candle_core::WithDType
where
    CudaBlas: Gemm<Self>,
{
}

impl FastElement for f32 {}
impl FastElement for half::bf16 {}
impl FastElement for half::f16 {}

/// Gives the device the memory its pool holds unused: loading frees the checkpoint's tensors
/// once they are copied into the engine's fused buffers, and the stream-ordered allocator keeps
/// freed memory for reuse, so a fast load would otherwise hold the weights twice.
pub fn release_pool_memory(device: &candle_core::Device) -> Result<()> {
    let stream = device.as_cuda_device()?.cuda_stream();
    stream.synchronize().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is written by the driver before it is read; trimming frees only memory no
    // allocation uses, after the stream has finished every free.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, stream.context().cu_device())
            .result()
            .w()?;
        sys::cuMemPoolTrimTo(pool, 0).result().w()?;
    }
    Ok(())
}

/// Loads the fast path for the dtype of `vb`.
pub fn load(vb: VarBuilder<'static>, shape: &LlamaShape) -> Result<Box<dyn CausalLm>> {
    Ok(match vb.dtype() {
        DType::F32 => Box::new(FastLlama::<f32>::load(vb, shape)?),
        DType::BF16 => Box::new(FastLlama::<half::bf16>::load(vb, shape)?),
        DType::F16 => Box::new(FastLlama::<half::f16>::load(vb, shape)?),
        other => candle_core::bail!("the fast path has no kernels for {other:?}"),
    })
}

struct Layer<T> {
    input_norm: CudaSlice<T>,
    /// (q + 2 kv) * head_dim rows of hidden.
    qkv: CudaSlice<T>,
    qkv_bias: Option<CudaSlice<T>>,
    q_norm: Option<CudaSlice<T>>,
    k_norm: Option<CudaSlice<T>>,
    o: CudaSlice<T>,
    post_norm: CudaSlice<T>,
    /// 2 * intermediate rows (gate, then up) of hidden.
    gate_up: CudaSlice<T>,
    down: CudaSlice<T>,
    /// (kv_heads, capacity, head_dim) each.
    k_cache: CudaSlice<T>,
    v_cache: CudaSlice<T>,
}

/// Activations of up to `rows` tokens.
struct Buffers<T> {
    rows: usize,
    ids: CudaSlice<u32>,
    /// [position of the first token, positions it sees (position + 1)].
    pos_len: CudaSlice<i32>,
    residual: CudaSlice<T>,
    normed: CudaSlice<T>,
    qkv: CudaSlice<T>,
    q: CudaSlice<T>,
    attention: CudaSlice<T>,
    projected: CudaSlice<T>,
    gate_up: CudaSlice<T>,
    activated: CudaSlice<T>,
    logits: CudaSlice<T>,
    partial_out: CudaSlice<f32>,
    partial_max_sum: CudaSlice<f32>,
}

pub struct FastLlama<T: FastElement>
where
    CudaBlas: Gemm<T>,
{
    shape: LlamaShape,
    cuda: CudaDevice,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    blas: Arc<CudaBlas>,
    embed: CudaSlice<T>,
    lm_head: Option<CudaSlice<T>>,
    final_norm: CudaSlice<T>,
    cos: CudaSlice<T>,
    sin: CudaSlice<T>,
    layers: Vec<Layer<T>>,
    capacity: usize,
    /// Prompt chunks.
    chunk: Buffers<T>,
    /// The decode step's (one token), which the graph reads and writes.
    step: Buffers<T>,
    graph: Option<Graph>,
    /// The token and position the decode step's inputs hold on the device, when the step's own
    /// argmax wrote them and the host has read the token: the next greedy step needs no copy.
    next: Option<(u32, usize)>,
}

/// The captured decode step.
struct Graph(CudaGraph);

// SAFETY: CUDA graphs may be used from any thread, one at a time; the model owns its graph and
// uses it only through `&mut self`.
unsafe impl Send for Graph {}

fn copy_out<T: FastElement>(cuda: &CudaDevice, tensor: &Tensor) -> Result<CudaSlice<T>>
where
    CudaBlas: Gemm<T>,
{
    let tensor = tensor.contiguous()?;
    let n = tensor.elem_count();
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else {
        candle_core::bail!("the fast path needs its weights on a CUDA device");
    };
    let source = storage.as_cuda_slice::<T>()?;
    let start = layout.start_offset();
    let mut owned = cuda.alloc_zeros::<T>(n)?;
    cuda.memcpy_dtod(&source.slice(start..start + n), &mut owned)?;
    Ok(owned)
}

impl<T: FastElement> Buffers<T>
where
    CudaBlas: Gemm<T>,
{
    fn new(cuda: &CudaDevice, shape: &LlamaShape, rows: usize, capacity: usize) -> Result<Self> {
        let heads = shape.heads;
        let q_width = heads.heads * heads.head_dim;
        let partial_rows = rows * heads.heads * splits(capacity);
        Ok(Self {
            rows,
            ids: cuda.alloc_zeros(rows)?,
            pos_len: cuda.alloc_zeros(2)?,
            residual: cuda.alloc_zeros(rows * shape.hidden)?,
            normed: cuda.alloc_zeros(rows * shape.hidden)?,
            qkv: cuda.alloc_zeros(rows * heads.qkv_width())?,
            q: cuda.alloc_zeros(rows * q_width)?,
            attention: cuda.alloc_zeros(rows * q_width)?,
            projected: cuda.alloc_zeros(rows * shape.hidden)?,
            gate_up: cuda.alloc_zeros(rows * 2 * shape.intermediate)?,
            activated: cuda.alloc_zeros(rows * shape.intermediate)?,
            logits: cuda.alloc_zeros(shape.vocab)?,
            partial_out: cuda.alloc_zeros(partial_rows * heads.head_dim)?,
            partial_max_sum: cuda.alloc_zeros(partial_rows * 2)?,
        })
    }
}

/// Rows of a prompt chunk whose attention scratch fits `MAX_PARTIAL_BYTES`.
fn chunk_rows(shape: &LlamaShape, capacity: usize) -> usize {
    let per_row = shape.heads.heads * splits(capacity) * (shape.heads.head_dim + 2) * 4;
    (MAX_PARTIAL_BYTES / per_row).clamp(1, MAX_CHUNK_TOKENS)
}

impl<T: FastElement> FastLlama<T>
where
    CudaBlas: Gemm<T>,
{
    pub fn load(vb: VarBuilder<'static>, shape: &LlamaShape) -> Result<Self> {
        let device = vb.device().clone();
        let cuda = device.as_cuda_device()?.clone();
        let (h, i) = (shape.hidden, shape.intermediate);
        let heads = shape.heads;
        let (q_rows, kv_rows) = (
            heads.heads * heads.head_dim,
            heads.kv_heads * heads.head_dim,
        );
        let get = |vb: &VarBuilder, dims: &[usize], name: &str| -> Result<CudaSlice<T>> {
            copy_out(&cuda, &vb.get(dims, name)?)
        };
        let capacity = INITIAL_CAPACITY.min(shape.max_positions);
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let vb = vb.pp(format!("model.layers.{l}"));
            let attn = vb.pp("self_attn");
            let mlp = vb.pp("mlp");
            let qkv = Tensor::cat(
                &[
                    attn.get((q_rows, h), "q_proj.weight")?,
                    attn.get((kv_rows, h), "k_proj.weight")?,
                    attn.get((kv_rows, h), "v_proj.weight")?,
                ],
                0,
            )?;
            let qkv_bias = match shape.qkv {
                QkvKind::Bias => Some(copy_out(
                    &cuda,
                    &Tensor::cat(
                        &[
                            attn.get(q_rows, "q_proj.bias")?,
                            attn.get(kv_rows, "k_proj.bias")?,
                            attn.get(kv_rows, "v_proj.bias")?,
                        ],
                        0,
                    )?,
                )?),
                QkvKind::Plain | QkvKind::Norm => None,
            };
            let (q_norm, k_norm) = match shape.qkv {
                QkvKind::Norm => (
                    Some(get(&attn, &[heads.head_dim], "q_norm.weight")?),
                    Some(get(&attn, &[heads.head_dim], "k_norm.weight")?),
                ),
                QkvKind::Plain | QkvKind::Bias => (None, None),
            };
            let gate_up = Tensor::cat(
                &[
                    mlp.get((i, h), "gate_proj.weight")?,
                    mlp.get((i, h), "up_proj.weight")?,
                ],
                0,
            )?;
            let cache = heads.kv_heads * capacity * heads.head_dim;
            layers.push(Layer {
                input_norm: get(&vb, &[h], "input_layernorm.weight")?,
                qkv: copy_out(&cuda, &qkv)?,
                qkv_bias,
                q_norm,
                k_norm,
                o: get(&attn, &[h, q_rows], "o_proj.weight")?,
                post_norm: get(&vb, &[h], "post_attention_layernorm.weight")?,
                gate_up: copy_out(&cuda, &gate_up)?,
                down: get(&mlp, &[h, i], "down_proj.weight")?,
                k_cache: cuda.alloc_zeros(cache)?,
                v_cache: cuda.alloc_zeros(cache)?,
            });
        }
        let embed = get(&vb, &[shape.vocab, h], "model.embed_tokens.weight")?;
        let lm_head = if shape.tie_embeddings {
            None
        } else {
            Some(get(&vb, &[shape.vocab, h], "lm_head.weight")?)
        };
        let final_norm = get(&vb, &[h], "model.norm.weight")?;

        // The tables of the candle modules: positions times frequencies in f32, then cos and
        // sin rounded to the dtype.
        let frequencies = Tensor::new(shape.inv_freq.as_slice(), &device)?;
        let positions = shape.max_positions;
        let angles = Tensor::arange(0, positions as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?
            .matmul(&frequencies.reshape((1, frequencies.elem_count()))?)?;
        let cos = copy_out(&cuda, &angles.cos()?.to_dtype(T::DTYPE)?)?;
        let sin = copy_out(&cuda, &angles.sin()?.to_dtype(T::DTYPE)?)?;

        let mut model = Self {
            chunk: Buffers::new(&cuda, shape, chunk_rows(shape, capacity), capacity)?,
            step: Buffers::new(&cuda, shape, 1, capacity)?,
            shape: shape.clone(),
            stream: cuda.cuda_stream(),
            kernels: Kernels::new(&cuda),
            blas: cuda.cublas_handle(),
            cuda,
            embed,
            lm_head,
            final_norm,
            cos,
            sin,
            layers,
            capacity,
            graph: None,
            next: None,
        };
        model.capture()?;
        Ok(model)
    }

    /// y (tokens, out) = x (tokens, in) w^T, for w (out, in) row-major as checkpoints store it:
    /// the one-token kernel for one token, cuBLAS for more.
    fn linear(
        (kernels, blas): (&Kernels, &CudaBlas),
        w: &CudaSlice<T>,
        x: &CudaView<T>,
        y: &mut CudaSlice<T>,
        (tokens, inputs, outputs): (usize, usize, usize),
    ) -> Result<()> {
        if tokens == 1 {
            return kernels.gemv(
                &w.as_view(),
                x,
                &mut y.slice_mut(..outputs),
                inputs,
                outputs,
            );
        }
        let config = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: outputs as i32,
            n: tokens as i32,
            k: inputs as i32,
            alpha: T::from_f64(1.0),
            lda: inputs as i32,
            ldb: inputs as i32,
            beta: T::from_f64(0.0),
            ldc: outputs as i32,
        };
        let mut y = y.slice_mut(..tokens * outputs);
        // SAFETY: the sizes match the buffers, allocated for at least `tokens` rows.
        unsafe { blas.gemm(config, w, x, &mut y) }.w()?;
        Ok(())
    }

    /// The forward pass of `n` tokens whose ids, position and length are in `buffers`; the
    /// last token's logits are left in `buffers.logits`.
    fn run(&mut self, n: usize, use_step: bool) -> Result<()> {
        let Self {
            shape,
            kernels,
            blas,
            embed,
            lm_head,
            final_norm,
            cos,
            sin,
            layers,
            capacity,
            chunk,
            step,
            ..
        } = self;
        let b = if use_step { step } else { chunk };
        let (h, i) = (shape.hidden, shape.intermediate);
        let heads = shape.heads;
        let q_width = heads.heads * heads.head_dim;
        let eps = shape.rms_eps as f32;
        let scale = 1.0 / (heads.head_dim as f32).sqrt();
        let pos = b.pos_len.slice(0..1);
        let len = b.pos_len.slice(1..2);
        kernels.embedding(
            &embed.as_view(),
            &b.ids.slice(..n),
            &mut b.residual.as_view_mut(),
            n,
            h,
        )?;
        for (l, layer) in layers.iter_mut().enumerate() {
            if l == 0 {
                kernels.rms_norm(
                    &b.residual.as_view(),
                    &mut b.normed.as_view_mut(),
                    &layer.input_norm.as_view(),
                    n,
                    h,
                    eps,
                )?;
            } else {
                kernels.add_rms_norm(
                    &b.projected.as_view(),
                    &mut b.residual.as_view_mut(),
                    &mut b.normed.as_view_mut(),
                    &layer.input_norm.as_view(),
                    n,
                    h,
                    eps,
                )?;
            }
            Self::linear(
                (kernels, blas),
                &layer.qkv,
                &b.normed.as_view(),
                &mut b.qkv,
                (n, h, heads.qkv_width()),
            )?;
            let (bias, q_norm, k_norm) = (
                layer.qkv_bias.as_ref().map(|b| b.as_view()),
                layer.q_norm.as_ref().map(|w| w.as_view()),
                layer.k_norm.as_ref().map(|w| w.as_view()),
            );
            let extra = match (&bias, &q_norm, &k_norm) {
                (Some(bias), _, _) => QkvExtra::Bias(bias),
                (None, Some(q), Some(k)) => QkvExtra::Norm { q, k, eps },
                _ => QkvExtra::None,
            };
            kernels.rope_write_kv(
                &b.qkv.as_view(),
                extra,
                &mut b.q.as_view_mut(),
                (
                    &mut layer.k_cache.as_view_mut(),
                    &mut layer.v_cache.as_view_mut(),
                ),
                (&cos.as_view(), &sin.as_view()),
                &pos,
                n,
                heads,
                *capacity,
            )?;
            kernels.attention(
                &b.q.as_view(),
                (&layer.k_cache.as_view(), &layer.v_cache.as_view()),
                (
                    &mut b.partial_out.as_view_mut(),
                    &mut b.partial_max_sum.as_view_mut(),
                ),
                &mut b.attention.as_view_mut(),
                &len,
                (n, heads),
                (*capacity, shape.window),
                scale,
            )?;
            Self::linear(
                (kernels, blas),
                &layer.o,
                &b.attention.as_view(),
                &mut b.projected,
                (n, q_width, h),
            )?;
            kernels.add_rms_norm(
                &b.projected.as_view(),
                &mut b.residual.as_view_mut(),
                &mut b.normed.as_view_mut(),
                &layer.post_norm.as_view(),
                n,
                h,
                eps,
            )?;
            Self::linear(
                (kernels, blas),
                &layer.gate_up,
                &b.normed.as_view(),
                &mut b.gate_up,
                (n, h, 2 * i),
            )?;
            kernels.silu_mul(&b.gate_up.as_view(), &mut b.activated.as_view_mut(), n, i)?;
            Self::linear(
                (kernels, blas),
                &layer.down,
                &b.activated.as_view(),
                &mut b.projected,
                (n, i, h),
            )?;
        }
        kernels.add_rms_norm(
            &b.projected.as_view(),
            &mut b.residual.as_view_mut(),
            &mut b.normed.as_view_mut(),
            &final_norm.as_view(),
            n,
            h,
            eps,
        )?;
        let last = b.normed.slice((n - 1) * h..n * h);
        let head = lm_head.as_ref().unwrap_or(embed);
        Self::linear(
            (kernels, blas),
            head,
            &last,
            &mut b.logits,
            (1, h, shape.vocab),
        )?;
        if use_step {
            // Greedy decoding's next token and position, ready for the next replay; the
            // sampler's steps overwrite both before they run.
            kernels.argmax(
                &b.logits.as_view(),
                &mut b.ids.slice_mut(..1),
                &mut b.pos_len.as_view_mut(),
                shape.vocab,
            )?;
        }
        Ok(())
    }

    /// Writes the ids, position and length of the next `n` tokens into `buffers`.
    fn set_inputs(&mut self, ids: &[u32], offset: usize, use_step: bool) -> Result<()> {
        let b = if use_step {
            &mut self.step
        } else {
            &mut self.chunk
        };
        let pos_len = [offset as i32, offset as i32 + 1];
        self.cuda
            .memcpy_htod(ids, &mut b.ids.slice_mut(..ids.len()))?;
        self.cuda.memcpy_htod(&pos_len, &mut b.pos_len)?;
        Ok(())
    }

    /// Runs the decode step once (loading its kernels and cuBLAS's), then captures it.
    fn capture(&mut self) -> Result<()> {
        self.graph = None;
        self.next = None;
        self.set_inputs(&[0], 0, true)?;
        self.run(1, true)?;
        self.stream.synchronize().w()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .w()?;
        let captured = self.run(1, true);
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0)).w()?;
        captured?;
        let graph =
            graph.ok_or_else(|| candle_core::Error::Msg("the capture made no graph".into()))?;
        graph.upload().w()?;
        self.graph = Some(Graph(graph));
        Ok(())
    }

    /// Makes the caches hold `positions`, keeping what they hold; buffers sized by the
    /// capacity are made again and the graph captured again.
    fn reserve(&mut self, positions: usize) -> Result<()> {
        if positions <= self.capacity {
            return Ok(());
        }
        if positions > self.shape.max_positions {
            candle_core::bail!(
                "{positions} positions, over the {} the model has",
                self.shape.max_positions
            );
        }
        let capacity = (2 * self.capacity)
            .max(positions)
            .min(self.shape.max_positions);
        let (kv, d) = (self.shape.heads.kv_heads, self.shape.heads.head_dim);
        for layer in &mut self.layers {
            for cache in [&mut layer.k_cache, &mut layer.v_cache] {
                let mut grown = self.cuda.alloc_zeros::<T>(kv * capacity * d)?;
                for head in 0..kv {
                    let from =
                        cache.slice(head * self.capacity * d..(head + 1) * self.capacity * d);
                    let mut to =
                        grown.slice_mut(head * capacity * d..(head * capacity + self.capacity) * d);
                    self.cuda.memcpy_dtod(&from, &mut to)?;
                }
                *cache = grown;
            }
        }
        self.capacity = capacity;
        self.chunk = Buffers::new(
            &self.cuda,
            &self.shape,
            chunk_rows(&self.shape, capacity),
            capacity,
        )?;
        self.step = Buffers::new(&self.cuda, &self.shape, 1, capacity)?;
        self.capture()
    }

    /// Runs `ids` at positions from `offset`: one token as the captured step (its inputs copied
    /// unless the last greedy step left them on the device), more as prompt chunks. True when
    /// it ran the step.
    fn run_tokens(&mut self, ids: &[u32], offset: usize) -> Result<bool> {
        if ids.is_empty() {
            candle_core::bail!("no tokens to run");
        }
        // Growing captures the step again, which forgets `next`.
        self.reserve(offset + ids.len())?;
        if let [id] = ids {
            if self.next != Some((*id, offset)) {
                self.set_inputs(ids, offset, true)?;
            }
            self.launch_step()?;
            return Ok(true);
        }
        let rows = self.chunk.rows;
        for (c, part) in ids.chunks(rows).enumerate() {
            self.set_inputs(part, offset + c * rows, false)?;
            self.run(part.len(), false)?;
        }
        Ok(false)
    }

    fn logits(&self, buffers_step: bool) -> Result<Tensor> {
        let b = if buffers_step {
            &self.step
        } else {
            &self.chunk
        };
        let mut copy = self.cuda.alloc_zeros::<T>(self.shape.vocab)?;
        self.cuda.memcpy_dtod(&b.logits, &mut copy)?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(copy, self.cuda.clone()));
        Tensor::from_storage(storage, (1, self.shape.vocab), BackpropOp::none(), false)
            .to_dtype(DType::F32)
    }
}

impl<T: FastElement> CausalLm for FastLlama<T>
where
    CudaBlas: Gemm<T>,
{
    fn forward(&mut self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let one = self.run_tokens(&ids, offset)?;
        self.next = None;
        self.logits(one)
    }

    fn forward_greedy(&mut self, ids: &[u32], offset: usize) -> Result<Option<u32>> {
        if self.run_tokens(ids, offset)? {
            // The step's argmax has written the token and advanced the position.
        } else {
            let end = (offset + ids.len()) as i32;
            let Self {
                kernels,
                chunk,
                step,
                shape,
                ..
            } = self;
            kernels.argmax(
                &chunk.logits.as_view(),
                &mut step.ids.slice_mut(..1),
                &mut chunk.pos_len.as_view_mut(),
                shape.vocab,
            )?;
            self.cuda
                .memcpy_htod(&[end, end + 1], &mut self.step.pos_len)?;
        }
        let id = self.stream.clone_dtoh(&self.step.ids.slice(..1)).w()?[0];
        self.next = Some((id, offset + ids.len()));
        Ok(Some(id))
    }

    fn reset(&mut self) -> Result<()> {
        // Positions are overwritten before they are read: nothing to clear.
        self.next = None;
        Ok(())
    }

    fn decode_graph(&mut self, position: usize) -> Result<Option<DecodeGraph>> {
        const REPLAYS: usize = 256;
        self.reserve(position + REPLAYS + 1)?;
        let (nodes, kernels) = self.graph_nodes()?;
        // One replay to settle clocks and caches, then the timed ones: each reads the token
        // and position the one before wrote, as greedy decoding does.
        self.set_inputs(&[0], position, true)?;
        self.launch_step()?;
        self.set_inputs(&[0], position, true)?;
        self.stream.synchronize().w()?;
        let start = std::time::Instant::now();
        for _ in 0..REPLAYS {
            self.launch_step()?;
        }
        self.stream.synchronize().w()?;
        let replay_us = start.elapsed().as_secs_f64() * 1e6 / REPLAYS as f64;
        self.next = None;
        Ok(Some(DecodeGraph {
            nodes,
            kernels,
            replays: REPLAYS,
            position,
            replay_us,
        }))
    }
}

impl<T: FastElement> FastLlama<T>
where
    CudaBlas: Gemm<T>,
{
    fn launch_step(&self) -> Result<()> {
        let graph = self.graph.as_ref().expect("captured at load and on growth");
        graph.0.launch().w()
    }

    /// The captured step's nodes, and how many of them are kernels.
    fn graph_nodes(&self) -> Result<(usize, usize)> {
        let graph = self.graph.as_ref().expect("captured at load and on growth");
        let handle = graph.0.cu_graph();
        let mut count = 0usize;
        // SAFETY: the graph lives as long as `self.graph`; the driver writes at most `count`
        // node handles into a buffer of that length, and one type per valid node.
        unsafe {
            sys::cuGraphGetNodes(handle, std::ptr::null_mut(), &mut count)
                .result()
                .w()?;
            let mut nodes: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); count];
            sys::cuGraphGetNodes(handle, nodes.as_mut_ptr(), &mut count)
                .result()
                .w()?;
            let mut kernels = 0;
            for &node in &nodes[..count] {
                let mut kind = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
                sys::cuGraphNodeGetType(node, &mut kind).result().w()?;
                kernels += usize::from(kind == sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL);
            }
            Ok((count, kernels))
        }
    }
}
