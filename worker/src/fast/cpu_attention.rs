//! One decoded position's attention on the CPU, read from the KV buffers in place. candle's
//! module repeats each grouped kv head n_rep times (a copy of the whole cache per token and
//! layer) so that its `matmul` sees one kv head per query head. Here each query head's two
//! products are the `gemm` calls candle's `matmul` makes for that head, with the same sizes,
//! strides and values, the kv head's rows read where the buffer holds them: the result is
//! candle's bit for bit (worker/tests/gguf.rs compares the engines' logits exactly). An f16
//! cache's heads are widened to f32 first, the values candle's module widens them to.

use std::borrow::Cow;

use candle_core::{CpuStorage, Device, Layout, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;

/// `softmax(q·kᵀ / √d)·v` for one position: `q` `(1, heads, 1, d)` over `k` and `v`
/// `(1, kv_heads, len, d)`, f32 or f16, whose rows are contiguous (the buffers' views), query
/// head `h` reading
/// kv head `h / (heads / kv_heads)`. Returns `(1, heads, 1, d)`.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_, heads, _, d) = q.dims4()?;
    let (_, kv_heads, len, _) = k.dims4()?;
    if q.dims()[0] != 1 || q.dims()[2] != 1 || k.dims() != v.dims() || k.dims()[3] != d {
        candle_core::bail!(
            "decode attention takes q (1, heads, 1, d) and k, v (1, kv_heads, len, d); got {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!("{heads} query heads are not groups of {kv_heads} kv heads");
    }
    let n_rep = heads / kv_heads;
    // candle's `matmul` passes gemm its thread count; read once here for every head.
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let per_head = PerHead {
        n_rep,
        d,
        parallelism,
    };
    // q_h (1 x d) · k_gᵀ (d x len): column j of kᵀ is row j of k, as candle's `k.t()` of the
    // repeated heads hands it to gemm.
    let scores = per_head.products(&q.contiguous()?, k, len, |head, d| {
        Operand::column_major(head, d)
    })?;
    let scores = Tensor::from_vec(scores, (1, heads, 1, len), &Device::Cpu)?;
    let probs = candle_nn::ops::softmax_last_dim(&(scores / (d as f64).sqrt())?)?;
    // p_h (1 x len) · v_g (len x d).
    let y = per_head.products(&probs, v, d, |head, d| Operand::row_major(head, d))?;
    Tensor::from_vec(y, (1, heads, 1, d), &Device::Cpu)
}

/// One product per query head against its kv head.
struct PerHead {
    n_rep: usize,
    d: usize,
    parallelism: gemm::Parallelism,
}

impl PerHead {
    /// Row h of `rows` (`(1, heads, 1, inner)`, contiguous) times kv head `h / n_rep` of `kv`
    /// (`(1, kv_heads, len, d)`) read as `rhs(head, d)`: `n` values per head, head after head.
    fn products(
        &self,
        rows: &Tensor,
        kv: &Tensor,
        n: usize,
        rhs: fn(&[f32], usize) -> Operand<'_>,
    ) -> Result<Vec<f32>> {
        let (_, heads, _, inner) = rows.dims4()?;
        let (_, _, len, _) = kv.dims4()?;
        let (row_storage, row_layout) = rows.storage_and_layout();
        if !row_layout.is_contiguous() {
            candle_core::bail!("decode attention needs a contiguous tensor here");
        }
        let rows = &f32_values(&row_storage)?[row_layout.start_offset()..];
        let (kv_storage, kv_layout) = kv.storage_and_layout();
        let kv = KvHeads::new(&kv_storage, kv_layout, len, self.d)?;
        let mut out = vec![0f32; heads * n];
        for (h, out) in out.chunks_exact_mut(n).enumerate() {
            product(
                Dims { m: 1, n, k: inner },
                out,
                Operand::row_major(&rows[h * inner..(h + 1) * inner], inner),
                rhs(kv.head(h / self.n_rep), self.d),
                self.parallelism,
            );
        }
        Ok(out)
    }
}

/// The values of an f32 tensor's storage in host memory.
fn f32_values(storage: &Storage) -> Result<&[f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(values)) => Ok(values),
        _ => candle_core::bail!("decode attention runs on f32 tensors in host memory"),
    }
}

/// The heads of a `(1, kv_heads, len, d)` view whose rows of `d` are contiguous: f32 read in
/// place, f16 widened.
struct KvHeads<'a> {
    values: Cow<'a, [f32]>,
    head_stride: usize,
    len: usize,
    d: usize,
}

impl<'a> KvHeads<'a> {
    fn new(storage: &'a Storage, layout: &Layout, len: usize, d: usize) -> Result<Self> {
        let stride = layout.stride();
        let kv_heads = layout.dims()[1];
        if stride[3] != 1 || (len > 1 && stride[2] != d) || (kv_heads > 1 && stride[1] < len * d) {
            candle_core::bail!("decode attention needs rows of {d} contiguous; strides {stride:?}");
        }
        let held = |count: usize| {
            if (kv_heads - 1) * stride[1] + len * d > count - layout.start_offset().min(count) {
                candle_core::bail!("decode attention: the kv heads are out of their storage");
            }
            Ok(())
        };
        let (values, head_stride) = match storage {
            Storage::Cpu(CpuStorage::F16(values)) => {
                held(values.len())?;
                let values = &values[layout.start_offset()..];
                let mut widened = vec![0f32; kv_heads * len * d];
                for (g, head) in widened.chunks_exact_mut(len * d).enumerate() {
                    values[g * stride[1]..g * stride[1] + len * d].convert_to_f32_slice(head);
                }
                (Cow::Owned(widened), len * d)
            }
            storage => {
                let values = f32_values(storage)?;
                held(values.len())?;
                (Cow::Borrowed(&values[layout.start_offset()..]), stride[1])
            }
        };
        Ok(Self {
            values,
            head_stride,
            len,
            d,
        })
    }

    /// Head g's `len` rows.
    fn head(&self, g: usize) -> &[f32] {
        let start = g * self.head_stride;
        &self.values[start..start + self.len * self.d]
    }
}

struct Dims {
    m: usize,
    n: usize,
    k: usize,
}

/// A matrix operand as gemm reads it: values and (column, row) strides.
struct Operand<'a> {
    values: &'a [f32],
    col_stride: usize,
    row_stride: usize,
}

impl<'a> Operand<'a> {
    fn row_major(values: &'a [f32], row_stride: usize) -> Self {
        Self {
            values,
            col_stride: 1,
            row_stride,
        }
    }

    /// The transpose of a row-major matrix whose rows are `col_stride` apart.
    fn column_major(values: &'a [f32], col_stride: usize) -> Self {
        Self {
            values,
            col_stride,
            row_stride: 1,
        }
    }

    /// The last element's offset, for an `rows x cols` matrix.
    fn last(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// `dst (m x n, row-major) = lhs (m x k) · rhs (k x n)`: the call candle's CPU `matmul` makes
/// (alpha 0, beta 1, its parallelism), so that the summation order is gemm's as candle runs it.
fn product(
    dims: Dims,
    dst: &mut [f32],
    lhs: Operand,
    rhs: Operand,
    parallelism: gemm::Parallelism,
) {
    let Dims { m, n, k } = dims;
    assert!(m > 0 && n > 0 && k > 0, "an empty product");
    assert_eq!(dst.len(), m * n, "the destination's length");
    assert!(lhs.last(m, k) < lhs.values.len(), "lhs out of bounds");
    assert!(rhs.last(k, n) < rhs.values.len(), "rhs out of bounds");
    // SAFETY: every element gemm reads or writes is in bounds (asserted above), and `dst` is
    // borrowed mutably, apart from `lhs` and `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.values.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, IndexOp};

    use super::*;

    /// Deterministic values in [-2, 2).
    fn sequence(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// candle's attention for one position: the kv heads repeated, then `matmul`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, n_rep: usize) -> Tensor {
        let k = candle_transformers::utils::repeat_kv(k.clone(), n_rep).unwrap();
        let v = candle_transformers::utils::repeat_kv(v.clone(), n_rep).unwrap();
        let d = q.dim(3).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        probs.matmul(&v.contiguous().unwrap()).unwrap()
    }

    /// f32 buffers, and f16 ones against candle's path on the same values widened to f32 (as
    /// the GGUF module's f16 cache is read).
    #[test]
    fn decode_attention_equals_candles_repeated_heads_bit_for_bit() {
        let device = Device::Cpu;
        let d = 64;
        // Lengths on both sides of gemm's paths: 2 and 3 (its k <= 2 kernel for p·v), 256 and
        // 257 (its small-product kernel for q·kᵀ up to 256 outputs).
        for (len, dtype) in [1, 2, 3, 17, 255, 256, 257, 700, 2100]
            .into_iter()
            .flat_map(|len| [(len, DType::F32), (len, DType::F16)])
        {
            for (heads, kv_heads) in [(4, 4), (9, 3), (8, 1)] {
                let seed = (len * 31 + heads) as u64;
                let capacity = len + 5;
                let q =
                    Tensor::from_vec(sequence(heads * d, seed), (1, heads, 1, d), &device).unwrap();
                // Views of a buffer with room for more positions, as the KV buffers hand out.
                let buffer = |seed| {
                    Tensor::from_vec(
                        sequence(kv_heads * capacity * d, seed),
                        (1, kv_heads, capacity, d),
                        &device,
                    )
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .narrow(2, 0, len)
                    .unwrap()
                };
                let (k, v) = (buffer(seed + 1), buffer(seed + 2));
                let ours = decode_attention(&q, &k, &v).unwrap();
                let widened = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let theirs = reference(&q, &widened(&k), &widened(&v), heads / kv_heads);
                assert_eq!(ours.dims(), theirs.dims());
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(
                    bits(&ours),
                    bits(&theirs),
                    "{dtype:?} len {len}, {heads} heads over {kv_heads}"
                );
            }
        }
    }

    #[test]
    fn shapes_that_are_not_one_position_are_refused() {
        let device = Device::Cpu;
        let q = Tensor::zeros((1, 4, 2, 8), DType::F32, &device).unwrap();
        let k = Tensor::zeros((1, 2, 5, 8), DType::F32, &device).unwrap();
        let err = decode_attention(&q, &k, &k).unwrap_err().to_string();
        assert!(err.contains("q (1, heads, 1, d)"), "{err}");
        let q = q.i((.., .., 0..1, ..)).unwrap();
        let k3 = Tensor::zeros((1, 3, 5, 8), DType::F32, &device).unwrap();
        let err = decode_attention(&q, &k3, &k3).unwrap_err().to_string();
        assert!(err.contains("not groups of 3"), "{err}");
    }
}
