//! One decoded position's attention on the CPU, read from the KV buffers in place. candle's
//! module repeats each grouped kv head n_rep times (a copy of the whole cache per token and
//! layer) so that its `matmul` sees one kv head per query head. Here each query head's two
//! products are the `gemm` calls candle's `matmul` makes for that head, with the same sizes,
//! strides and values, the kv head's rows read where the buffer holds them: the result is
//! candle's bit for bit (worker/tests/gguf.rs compares the engines' logits exactly).

use candle_core::{CpuStorage, Device, Layout, Result, Storage, Tensor};

/// `softmax(q·kᵀ / √d)·v` for one position: `q` `(1, heads, 1, d)` over `k` and `v`
/// `(1, kv_heads, len, d)` whose rows are contiguous (the buffers' views), query head `h` reading
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
    let q = q.contiguous()?;
    let mut scores = vec![0f32; heads * len];
    {
        let (q_storage, q_layout) = q.storage_and_layout();
        let q = values(&q_storage, q_layout)?;
        let (k_storage, k_layout) = k.storage_and_layout();
        let k = KvHeads::new(&k_storage, k_layout, len, d)?;
        for (h, scores) in scores.chunks_exact_mut(len).enumerate() {
            // q_h (1 x d) · k_gᵀ (d x len): column j of kᵀ is row j of k, as candle's `k.t()`
            // of the repeated heads hands it to gemm.
            product(
                Dims { m: 1, n: len, k: d },
                scores,
                Operand::row_major(&q[h * d..(h + 1) * d], d),
                Operand::column_major(k.head(h / n_rep), d),
            );
        }
    }
    let scores = Tensor::from_vec(scores, (1, heads, 1, len), &Device::Cpu)?;
    let probs = candle_nn::ops::softmax_last_dim(&(scores / (d as f64).sqrt())?)?;
    let mut y = vec![0f32; heads * d];
    {
        let (p_storage, p_layout) = probs.storage_and_layout();
        let probs = values(&p_storage, p_layout)?;
        let (v_storage, v_layout) = v.storage_and_layout();
        let v = KvHeads::new(&v_storage, v_layout, len, d)?;
        for (h, y) in y.chunks_exact_mut(d).enumerate() {
            // p_h (1 x len) · v_g (len x d).
            product(
                Dims { m: 1, n: d, k: len },
                y,
                Operand::row_major(&probs[h * len..(h + 1) * len], len),
                Operand::row_major(v.head(h / n_rep), d),
            );
        }
    }
    Tensor::from_vec(y, (1, heads, 1, d), &Device::Cpu)
}

/// The values of a contiguous f32 tensor in host memory.
fn values<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(CpuStorage::F32(values)) = storage else {
        candle_core::bail!("decode attention runs on f32 tensors in host memory");
    };
    if !layout.is_contiguous() {
        candle_core::bail!("decode attention needs a contiguous tensor here");
    }
    Ok(&values[layout.start_offset()..])
}

/// The heads of a `(1, kv_heads, len, d)` view whose rows of `d` are contiguous.
struct KvHeads<'a> {
    values: &'a [f32],
    head_stride: usize,
    len: usize,
    d: usize,
}

impl<'a> KvHeads<'a> {
    fn new(storage: &'a Storage, layout: &Layout, len: usize, d: usize) -> Result<Self> {
        let Storage::Cpu(CpuStorage::F32(values)) = storage else {
            candle_core::bail!("decode attention runs on f32 tensors in host memory");
        };
        let stride = layout.stride();
        let kv_heads = layout.dims()[1];
        if stride[3] != 1 || (len > 1 && stride[2] != d) || (kv_heads > 1 && stride[1] < len * d) {
            candle_core::bail!("decode attention needs rows of {d} contiguous; strides {stride:?}");
        }
        let values = &values[layout.start_offset()..];
        if (kv_heads - 1) * stride[1] + len * d > values.len() {
            candle_core::bail!("decode attention: the kv heads are out of their storage");
        }
        Ok(Self {
            values,
            head_stride: stride[1],
            len,
            d,
        })
    }

    /// Head g's `len` rows.
    fn head(&self, g: usize) -> &'a [f32] {
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
fn product(dims: Dims, dst: &mut [f32], lhs: Operand, rhs: Operand) {
    let Dims { m, n, k } = dims;
    assert!(m > 0 && n > 0 && k > 0, "an empty product");
    assert_eq!(dst.len(), m * n, "the destination's length");
    assert!(lhs.last(m, k) < lhs.values.len(), "lhs out of bounds");
    assert!(rhs.last(k, n) < rhs.values.len(), "rhs out of bounds");
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
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
    fn values(n: usize, seed: u64) -> Vec<f32> {
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

    #[test]
    fn decode_attention_equals_candles_repeated_heads_bit_for_bit() {
        let device = Device::Cpu;
        let d = 64;
        // Lengths on both sides of gemm's paths: 2 and 3 (its k <= 2 kernel for p·v), 256 and
        // 257 (its small-product kernel for q·kᵀ up to 256 outputs).
        for len in [1, 2, 3, 17, 255, 256, 257, 700, 2100] {
            for (heads, kv_heads) in [(4, 4), (9, 3), (8, 1)] {
                let seed = (len * 31 + heads) as u64;
                let capacity = len + 5;
                let q =
                    Tensor::from_vec(values(heads * d, seed), (1, heads, 1, d), &device).unwrap();
                // Views of a buffer with room for more positions, as the KV buffers hand out.
                let buffer = |seed| {
                    Tensor::from_vec(
                        values(kv_heads * capacity * d, seed),
                        (1, kv_heads, capacity, d),
                        &device,
                    )
                    .unwrap()
                    .narrow(2, 0, len)
                    .unwrap()
                };
                let (k, v) = (buffer(seed + 1), buffer(seed + 2));
                let ours = decode_attention(&q, &k, &v).unwrap();
                let theirs = reference(&q, &k, &v, heads / kv_heads);
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
                    "len {len}, {heads} heads over {kv_heads}"
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
