//! The CPU attention of the GGUF llama module's fast engine, read from the KV buffers in place.
//! candle's module repeats each grouped kv head n_rep times (a copy of the whole cache per token
//! and layer) so that its `matmul` sees one kv head per query head. Here each query head's two
//! products are the `gemm` calls candle's `matmul` makes for that head, with the same sizes,
//! strides and values, the kv head's rows read where the buffer holds them; a prefill's scaling,
//! causal mask and softmax are candle's arithmetic in one pass per row. The result is candle's
//! bit for bit (worker/tests/gguf.rs compares the engines' logits exactly). An f16 cache's heads
//! are widened to f32 first, the values candle's module widens them to.

use std::borrow::Cow;
use std::sync::OnceLock;

use candle_core::cpu::kernels::VecOps;
use candle_core::utils::barrier_pool;
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
    let per_head = PerHead {
        n_rep: heads / kv_heads,
        d,
        parallelism: candles_parallelism(),
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

/// `softmax(q·kᵀ / √d + mask)·v` for `tokens` positions from `offset`, each seeing the
/// positions up to its own (candle's `build_causal_mask`): `q` `(1, heads, tokens, d)` over `k`
/// and `v` `(1, kv_heads, offset + tokens, d)`, f32 or f16, whose rows are contiguous (the
/// buffers' views). Returns `(1, tokens, heads · d)`, the heads side by side as the output
/// product reads them.
pub fn prefill_attention(q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
    let (_, heads, tokens, d) = q.dims4()?;
    let (_, kv_heads, len, _) = k.dims4()?;
    if q.dims()[0] != 1 || k.dims() != v.dims() || k.dims()[3] != d || len != offset + tokens {
        candle_core::bail!(
            "prefill attention takes q (1, heads, tokens, d) and k, v (1, kv_heads, {offset} + tokens, d); got {:?}, {:?}, {:?}",
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
    let (q_storage, q_layout) = q.storage_and_layout();
    let q = &f32_values(&q_storage)?[q_layout.start_offset()..];
    let (k_storage, k_layout) = k.storage_and_layout();
    let keys = KvHeads::new(&k_storage, k_layout, len, d)?;
    let (v_storage, v_layout) = v.storage_and_layout();
    let values = KvHeads::new(&v_storage, v_layout, len, d)?;
    // candle's `affine` of `scores / √d`: the f64 factor as f32.
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let head_outs: Vec<OnceLock<Vec<f32>>> = (0..heads).map(|_| OnceLock::new()).collect();
    // The heads split over the pool that runs the products, each head's products on one
    // thread: gemm's sums do not depend on its parallelism, and a second pool's threads would
    // still be spinning when the output product starts.
    barrier_pool().execute_chunked(heads, |range| {
        let mut scores = vec![0f32; tokens * len];
        for h in range {
            let g = h / n_rep;
            product(
                Dims {
                    m: tokens,
                    n: len,
                    k: d,
                },
                &mut scores,
                Operand::row_major(&q[h * tokens * d..(h + 1) * tokens * d], d),
                Operand::column_major(keys.head(g), d),
                gemm::Parallelism::None,
            );
            for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                causal_softmax(row, offset + i + 1, scale);
            }
            let mut head_out = vec![0f32; tokens * d];
            product(
                Dims {
                    m: tokens,
                    n: d,
                    k: len,
                },
                &mut head_out,
                Operand::row_major(&scores, len),
                Operand::row_major(values.head(g), d),
                gemm::Parallelism::None,
            );
            let _first = head_outs[h].set(head_out);
        }
    });
    let mut out = vec![0f32; tokens * heads * d];
    for (h, head_out) in head_outs.iter().enumerate() {
        let Some(head_out) = head_out.get() else {
            candle_core::bail!("prefill attention: head {h} was not computed");
        };
        for (t, row) in head_out.chunks_exact(d).enumerate() {
            let at = (t * heads + h) * d;
            out[at..at + d].copy_from_slice(row);
        }
    }
    Tensor::from_vec(out, (1, tokens, heads * d), &Device::Cpu)
}

/// A row of scores made candle's module's probabilities: scaled by `scale` (`affine`), the
/// positions from `visible` on masked to -inf (`where_cond`), then `softmax_last_dim`'s steps:
/// the max, `exp(s - max)` (0 where masked), the sum over the whole row by candle's `vec_sum`,
/// each divided by it.
fn causal_softmax(row: &mut [f32], visible: usize, scale: f32) {
    let (seen, masked) = row.split_at_mut(visible);
    let mut max = f32::NEG_INFINITY;
    for s in seen.iter_mut() {
        *s = *s * scale + 0.0;
        max = max.max(*s);
    }
    for s in seen.iter_mut() {
        *s = (*s - max).exp();
    }
    masked.fill(0.0);
    let mut sum = 0.0;
    // SAFETY: `row` holds `row.len()` values.
    unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, row.len()) };
    for s in row[..visible].iter_mut() {
        *s /= sum;
    }
}

/// The parallelism candle's `matmul` passes gemm: its thread count.
fn candles_parallelism() -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
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

    /// The first `len` positions of a `(1, kv_heads, len + 5, d)` buffer in `dtype`: a view
    /// with room for more positions, as the KV buffers hand out.
    fn kv_view(kv_heads: usize, len: usize, d: usize, dtype: DType, seed: u64) -> Tensor {
        let capacity = len + 5;
        Tensor::from_vec(
            sequence(kv_heads * capacity * d, seed),
            (1, kv_heads, capacity, d),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .narrow(2, 0, len)
        .unwrap()
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
                let q =
                    Tensor::from_vec(sequence(heads * d, seed), (1, heads, 1, d), &device).unwrap();
                let (k, v) = (
                    kv_view(kv_heads, len, d, dtype, seed + 1),
                    kv_view(kv_heads, len, d, dtype, seed + 2),
                );
                let ours = decode_attention(&q, &k, &v).unwrap();
                let widened = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let theirs = reference(&q, &widened(&k), &widened(&v), heads / kv_heads);
                assert_eq!(ours.dims(), theirs.dims());
                if let Some(difference) = difference(&ours, &theirs) {
                    panic!("{dtype:?} len {len}, {heads} heads over {kv_heads}: {difference}");
                }
            }
        }
    }

    /// candle's module's attention over `tokens` positions from `offset`: the kv heads
    /// repeated, `matmul`, the causal mask by `where_cond`, the heads side by side.
    fn prefill_reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        n_rep: usize,
        offset: usize,
    ) -> Tensor {
        let (_, heads, tokens, d) = q.dims4().unwrap();
        let k = candle_transformers::utils::repeat_kv(k.clone(), n_rep).unwrap();
        let v = candle_transformers::utils::repeat_kv(v.clone(), n_rep).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let mask = candle_transformers::utils::build_causal_mask(tokens, offset, &Device::Cpu)
            .unwrap()
            .broadcast_as(scores.shape())
            .unwrap();
        let neg_inf = Tensor::new(f32::NEG_INFINITY, &Device::Cpu)
            .unwrap()
            .broadcast_as(scores.shape())
            .unwrap();
        let scores = mask.where_cond(&neg_inf, &scores).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        probs
            .matmul(&v.contiguous().unwrap())
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((1, tokens, heads * d))
            .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The first value whose bits differ, and how many differ.
    fn difference(ours: &Tensor, theirs: &Tensor) -> Option<String> {
        let (ours, theirs) = (bits(ours), bits(theirs));
        let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        let (at, (a, b)) = ours
            .iter()
            .zip(&theirs)
            .enumerate()
            .find(|(_, (a, b))| a != b)?;
        let value = |bits: &u32| f32::from_bits(*bits);
        Some(format!(
            "{differ} of {} values differ; the first, at {at}: {} against {}",
            ours.len(),
            value(a),
            value(b)
        ))
    }

    /// Prompts from position 0 and continuations after cached positions, across gemm's paths
    /// (lengths past 256, thousands of positions), f32 and f16 buffers.
    #[test]
    fn prefill_attention_equals_candles_masked_attention_bit_for_bit() {
        let device = Device::Cpu;
        let d = 64;
        let cases = [
            (2, 0),
            (3, 0),
            (17, 0),
            (128, 0),
            (300, 0),
            (5, 3),
            (40, 260),
            (9, 2091),
        ];
        for ((tokens, offset), dtype) in cases
            .into_iter()
            .flat_map(|case| [(case, DType::F32), (case, DType::F16)])
        {
            for (heads, kv_heads) in [(4, 4), (9, 3)] {
                let len = offset + tokens;
                let seed = (len * 31 + heads) as u64;
                let q = Tensor::from_vec(
                    sequence(heads * tokens * d, seed),
                    (1, heads, tokens, d),
                    &device,
                )
                .unwrap();
                let (k, v) = (
                    kv_view(kv_heads, len, d, dtype, seed + 1),
                    kv_view(kv_heads, len, d, dtype, seed + 2),
                );
                let ours = prefill_attention(&q, &k, &v, offset).unwrap();
                let widened = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let theirs =
                    prefill_reference(&q, &widened(&k), &widened(&v), heads / kv_heads, offset);
                assert_eq!(ours.dims(), theirs.dims());
                if let Some(difference) = difference(&ours, &theirs) {
                    panic!("{dtype:?} {tokens} tokens from {offset}, {heads} heads over {kv_heads}: {difference}");
                }
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
