//! Launches of the decode kernels. Every launch is asynchronous on candle's stream and takes
//! only device pointers and sizes that stay fixed from token to token (positions and lengths
//! are read from device buffers), so a decode step made of them can be captured as a graph.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// The module name the PTX is loaded under in candle's device.
const MODULE: &str = "llm_worker_rbee_decode";

/// Positions one block of the split attention covers (`ATTENTION_CHUNK` in decode.cu).
pub const ATTENTION_CHUNK: usize = 256;

/// Output rows per block of the one-token product, a warp each (`GEMV_ROWS` in decode.cu).
const GEMV_ROWS: usize = 4;

/// Threads per block of the row kernels: enough to keep a row's loads in flight.
const ROW_THREADS: u32 = 256;

/// A storage type the kernels are compiled for.
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    const SUFFIX: &'static str;
}

impl Element for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Element for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

impl Element for half::f16 {
    const SUFFIX: &'static str = "f16";
}

pub use super::shape::Heads;

/// The splits of the attention over a cache of `capacity` positions.
pub fn splits(capacity: usize) -> usize {
    capacity.div_ceil(ATTENTION_CHUNK)
}

/// What is applied to the fused Q/K/V rows before the rotation.
#[derive(Clone, Copy, Debug)]
pub enum QkvExtra<'a, 'b, T> {
    None,
    /// The product's bias (qwen2), `(heads + 2 kv_heads) * head_dim`.
    Bias(&'a CudaView<'b, T>),
    /// An RMSNorm over each q and each k head (qwen3), weights of `head_dim`.
    Norm {
        q: &'a CudaView<'b, T>,
        k: &'a CudaView<'b, T>,
        eps: f32,
    },
}

/// The decode kernels on one device.
#[derive(Clone, Debug)]
pub struct Kernels {
    device: CudaDevice,
    stream: Arc<CudaStream>,
}

fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what} {n} is over i32")))
}

/// Values of a row each thread of the norm kernels holds (`ROW_VALUES` in decode.cu).
const ROW_VALUES: usize = 16;

/// The norm kernels' launch over `rows` rows of `hidden`: two values a thread where the row
/// allows, up to 1,024 threads, which hold at most `ROW_VALUES` values each.
fn norm_config(rows: usize, hidden: usize) -> Result<LaunchConfig> {
    let threads = hidden.div_ceil(2).next_multiple_of(32).clamp(32, 1024);
    if hidden > threads * ROW_VALUES {
        candle_core::bail!(
            "hidden {hidden} is over the {} the norm kernels hold",
            threads * ROW_VALUES
        );
    }
    Ok(LaunchConfig {
        grid_dim: (blocks(rows, "rows")?, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn blocks(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what} {n} is over u32")))
}

impl Kernels {
    pub fn new(device: &CudaDevice) -> Self {
        Self {
            device: device.clone(),
            stream: device.cuda_stream(),
        }
    }

    fn function<T: Element>(&self, name: &str) -> Result<CudaFunction> {
        let name = format!("{name}_{}", T::SUFFIX);
        Ok(self
            .device
            .get_or_load_custom_func(&name, MODULE, ptx::DECODE)?
            .into_cuda_function())
    }

    /// out = rmsnorm(x) * weight, per row of `hidden` (x and out: rows x hidden).
    pub fn rms_norm<T: Element>(
        &self,
        x: &CudaView<T>,
        out: &mut CudaViewMut<T>,
        weight: &CudaView<T>,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let f = self.function::<T>("rms_norm")?;
        let hidden = int(hidden, "hidden")?;
        let config = norm_config(rows, hidden as usize)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(out).arg(weight).arg(&hidden).arg(&eps);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// residual += x (rounded to T, the residual stream updated in place); out =
    /// rmsnorm(residual) * weight, per row of `hidden`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm<T: Element>(
        &self,
        x: &CudaView<T>,
        residual: &mut CudaViewMut<T>,
        out: &mut CudaViewMut<T>,
        weight: &CudaView<T>,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let f = self.function::<T>("add_rms_norm")?;
        let hidden = int(hidden, "hidden")?;
        let config = norm_config(rows, hidden as usize)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(residual)
            .arg(out)
            .arg(weight)
            .arg(&hidden)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// Rotates q and k of `tokens` fused Q/K/V rows (after `extra`) at positions
    /// `pos[0]..pos[0] + tokens`; q into `q_out` (tokens, heads, head_dim), k and v into the
    /// caches (kv_heads, capacity, head_dim). `cos`, `sin`: (positions, head_dim / 2).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_write_kv<T: Element>(
        &self,
        qkv: &CudaView<T>,
        extra: QkvExtra<'_, '_, T>,
        q_out: &mut CudaViewMut<T>,
        (k_cache, v_cache): (&mut CudaViewMut<T>, &mut CudaViewMut<T>),
        (cos, sin): (&CudaView<T>, &CudaView<T>),
        pos: &CudaView<i32>,
        tokens: usize,
        heads: Heads,
        capacity: usize,
    ) -> Result<()> {
        let f = self.function::<T>(match extra {
            QkvExtra::None => "rope_write_kv",
            QkvExtra::Bias(_) => "rope_write_kv_bias",
            QkvExtra::Norm { .. } => "rope_write_kv_norm",
        })?;
        let config = LaunchConfig {
            grid_dim: (
                blocks(tokens, "tokens")?,
                blocks(heads.heads + heads.kv_heads, "heads")?,
                1,
            ),
            block_dim: (
                blocks((heads.head_dim / 2).next_multiple_of(32), "head dim")?,
                1,
                1,
            ),
            shared_mem_bytes: 0,
        };
        let (h, kv, d, c) = (
            int(heads.heads, "heads")?,
            int(heads.kv_heads, "kv heads")?,
            int(heads.head_dim, "head dim")?,
            int(capacity, "capacity")?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(qkv);
        match &extra {
            QkvExtra::None => {}
            QkvExtra::Bias(bias) => {
                b.arg(*bias);
            }
            QkvExtra::Norm { q, k, eps } => {
                b.arg(*q).arg(*k).arg(eps);
            }
        }
        b.arg(q_out)
            .arg(k_cache)
            .arg(v_cache)
            .arg(cos)
            .arg(sin)
            .arg(pos)
            .arg(&h)
            .arg(&kv)
            .arg(&d)
            .arg(&c);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// Causal attention of `tokens` query tokens q (tokens, heads, head_dim), the first at
    /// position `len[0] - 1`, over the caches (kv_heads, capacity, head_dim) (token t sees
    /// `len[0] + t` positions, or the last `window` of them): softmax(q k^T * scale) v in f32,
    /// into out (tokens, heads, head_dim). `partial_out` (tokens * heads * splits * head_dim)
    /// and `partial_max_sum` (tokens * heads * splits * 2) are scratch, with splits =
    /// `Heads::splits(capacity)`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention<T: Element>(
        &self,
        q: &CudaView<T>,
        (k_cache, v_cache): (&CudaView<T>, &CudaView<T>),
        (partial_out, partial_max_sum): (&mut CudaViewMut<f32>, &mut CudaViewMut<f32>),
        out: &mut CudaViewMut<T>,
        len: &CudaView<i32>,
        (tokens, heads): (usize, Heads),
        (capacity, window): (usize, Option<usize>),
        scale: f32,
    ) -> Result<()> {
        let splits = splits(capacity);
        let window = int(window.unwrap_or(0), "window")?;
        let (h, kv, d, c, s) = (
            int(heads.heads, "heads")?,
            int(heads.kv_heads, "kv heads")?,
            int(heads.head_dim, "head dim")?,
            int(capacity, "capacity")?,
            int(splits, "splits")?,
        );
        let split = self.function::<T>("attention_split")?;
        let config = LaunchConfig {
            grid_dim: (
                blocks(heads.heads, "heads")?,
                blocks(splits, "splits")?,
                blocks(tokens, "tokens")?,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: ((heads.head_dim + ATTENTION_CHUNK) * 4) as u32,
        };
        let mut b = self.stream.launch_builder(&split);
        b.arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&mut *partial_out)
            .arg(&mut *partial_max_sum)
            .arg(len)
            .arg(&h)
            .arg(&kv)
            .arg(&d)
            .arg(&c)
            .arg(&window)
            .arg(&scale);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;

        let combine = self.function::<T>("attention_combine")?;
        let config = LaunchConfig {
            grid_dim: (blocks(heads.heads, "heads")?, blocks(tokens, "tokens")?, 1),
            block_dim: ((heads.head_dim as u32).clamp(32, 1024), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&combine);
        b.arg(&mut *partial_out)
            .arg(&mut *partial_max_sum)
            .arg(out)
            .arg(len)
            .arg(&s)
            .arg(&d);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// out (rows, inter) = silu(gate) * up of the fused gate/up product (rows, 2 * inter).
    pub fn silu_mul<T: Element>(
        &self,
        gate_up: &CudaView<T>,
        out: &mut CudaViewMut<T>,
        rows: usize,
        inter: usize,
    ) -> Result<()> {
        let f = self.function::<T>("silu_mul")?;
        let n = rows * inter;
        let config = LaunchConfig {
            grid_dim: (
                blocks(n.div_ceil(ROW_THREADS as usize).min(65_535), "blocks")?,
                1,
                1,
            ),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, i) = (int(rows, "rows")?, int(inter, "intermediate size")?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate_up).arg(out).arg(&r).arg(&i);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// out (tokens, hidden): the rows of `table` (vocab, hidden) that `ids` (tokens) name.
    pub fn embedding<T: Element>(
        &self,
        table: &CudaView<T>,
        ids: &CudaView<u32>,
        out: &mut CudaViewMut<T>,
        tokens: usize,
        hidden: usize,
    ) -> Result<()> {
        let f = self.function::<T>("embedding")?;
        let config = LaunchConfig {
            grid_dim: (blocks(tokens, "tokens")?, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let hidden = int(hidden, "hidden")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(table).arg(ids).arg(out).arg(&hidden);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// y (outputs) = w (outputs, inputs) x (inputs): one token's product with a weight matrix
    /// stored row-major, as checkpoints store it.
    pub fn gemv<T: Element>(
        &self,
        w: &CudaView<T>,
        x: &CudaView<T>,
        y: &mut CudaViewMut<T>,
        inputs: usize,
        outputs: usize,
    ) -> Result<()> {
        let f = self.function::<T>("gemv")?;
        let config = LaunchConfig {
            grid_dim: (blocks(outputs.div_ceil(GEMV_ROWS), "rows")?, 1, 1),
            block_dim: (32 * GEMV_ROWS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (inputs, outputs) = (int(inputs, "inputs")?, int(outputs, "outputs")?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(w).arg(x).arg(y).arg(&inputs).arg(&outputs);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }

    /// out[0] = the index of the largest of the `n` logits, the lowest among equals; then both
    /// values of `pos_len` (a decode step's position and length) grow by one.
    pub fn argmax<T: Element>(
        &self,
        logits: &CudaView<T>,
        out: &mut CudaViewMut<u32>,
        pos_len: &mut CudaViewMut<i32>,
        n: usize,
    ) -> Result<()> {
        let f = self.function::<T>("argmax")?;
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = int(n, "logits")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(logits).arg(out).arg(pos_len).arg(&n);
        // SAFETY: the arguments match the kernel's signature in decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok(())
    }
}
