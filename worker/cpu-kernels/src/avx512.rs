//! AVX-512F products of f32 and f16 weights: the AVX2 kernels' loops in 16 lanes (f16 widened
//! with `vcvtph2ps`). The quantized products stay AVX2's, whose sums follow candle's order.

use std::arch::x86_64::*;

use crate::format::DenseFormat;

/// Rows of f32 or f16 weights times each row of `x`: see `Kernel::dense_rows`. A prefill takes
/// four weight rows per tile, so that each pass over the rows of `x` (from L2 in a long
/// prompt) feeds 16 sums where the AVX2 tier's two rows feed 8.
///
/// # Safety
/// The CPU must have AVX-512F and F16C; every weight row holds the values of a row of `x`, and
/// `out` has a value per weight row and row of `x`.
#[target_feature(enable = "avx512f,f16c")]
pub unsafe fn dense_rows(format: DenseFormat, weights: &[&[u8]], x: &[f32], out: &mut [f32]) {
    let cols = weights[0].len() / format.value_bytes();
    let x_rows = x.len() / cols;
    assert!(weights.iter().all(|w| w.len() == weights[0].len()));
    assert_eq!(out.len(), weights.len() * x_rows);
    // SAFETY (each kernel below): the asserts above.
    if x_rows == 1 {
        for (w, out) in weights.iter().zip(out) {
            *out = unsafe { dense_dot(format, w, x) };
        }
        return;
    }
    let row = |t: usize| &x[t * cols..(t + 1) * cols];
    for (weights, out) in weights.chunks(4).zip(out.chunks_mut(4 * x_rows)) {
        let mut t = 0;
        while t < x_rows {
            let tile = (x_rows - t).min(4);
            let rows = || std::array::from_fn(|k| row(t + k));
            let mut put = |c: usize, sums: &[f32; 4]| {
                out[c * x_rows + t..c * x_rows + t + 4].copy_from_slice(sums)
            };
            match (weights, tile) {
                ([a, b, c, d], 4) => {
                    let sums = unsafe { dense_tile::<4, 4>(format, [a, b, c, d], rows()) };
                    sums.iter().enumerate().for_each(|(c, sums)| put(c, sums));
                }
                ([a, b], 4) => {
                    let sums = unsafe { dense_tile::<2, 4>(format, [a, b], rows()) };
                    sums.iter().enumerate().for_each(|(c, sums)| put(c, sums));
                }
                (_, 4) => {
                    for (c, w) in weights.iter().enumerate() {
                        let [sums] = unsafe { dense_tile::<1, 4>(format, [w], rows()) };
                        put(c, &sums);
                    }
                }
                _ => {
                    for (c, w) in weights.iter().enumerate() {
                        for k in t..t + tile {
                            let [[sum]] = unsafe { dense_tile(format, [w], [row(k)]) };
                            out[c * x_rows + k] = sum;
                        }
                    }
                }
            }
            t += tile;
        }
    }
}

/// `R` weight rows times `T` rows of `x`: one 16-lane FMA sum per pair, the tail in scalar.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dense_tile<const R: usize, const T: usize>(
    format: DenseFormat,
    weights: [&[u8]; R],
    x: [&[f32]; T],
) -> [[f32; T]; R] {
    let n = weights[0].len() / format.value_bytes();
    assert!(weights.iter().all(|w| w.len() == weights[0].len()) && x.iter().all(|x| x.len() == n));
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let whole = n - n % 16;
    for j in (0..whole).step_by(16) {
        // SAFETY: values j..j + 16 lie within every weight row and every x row.
        let xv: [__m512; T] =
            std::array::from_fn(|t| unsafe { _mm512_loadu_ps(x[t].as_ptr().add(j)) });
        for (acc, w) in acc.iter_mut().zip(&weights) {
            let wv = unsafe { load(format, w.as_ptr(), j) };
            for (acc, xv) in acc.iter_mut().zip(&xv) {
                *acc = _mm512_fmadd_ps(wv, *xv, *acc);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for ((out, acc), w) in out.iter_mut().zip(&acc).zip(&weights) {
        for ((out, acc), x) in out.iter_mut().zip(acc).zip(&x) {
            *out = _mm512_reduce_add_ps(*acc);
            for (j, x) in x.iter().enumerate().skip(whole) {
                *out += format.value(w, j) * x;
            }
        }
    }
    out
}

/// One row of f32 or f16 weights times an f32 row: four 16-lane FMA sums, the tail in scalar.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dense_dot(format: DenseFormat, weights: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(weights.len() >= n * format.value_bytes());
    let w = weights.as_ptr();
    let mut acc = [_mm512_setzero_ps(); 4];
    let whole = n - n % 64;
    // The weights stream from memory once per decode step: the lines 512 values ahead are asked
    // for (past a row's end, the next row's, which a thread reads next), SmolLM2 decode in
    // alternating rounds: faster in 7 of 8 in f32, 3 of 3 in f16.
    let step_bytes = 64 * format.value_bytes();
    for j in (0..whole).step_by(64) {
        let ahead = w.wrapping_add((j + 512) * format.value_bytes());
        for line in (0..step_bytes).step_by(64) {
            // A hint only: it faults on no address.
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
        }
        for (lane, acc) in acc.iter_mut().enumerate() {
            let at = j + 16 * lane;
            // SAFETY: at + 16 <= n.
            let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(at)) };
            *acc = _mm512_fmadd_ps(unsafe { load(format, w, at) }, xv, *acc);
        }
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ));
    for (j, x) in x.iter().enumerate().skip(whole) {
        sum += format.value(weights, j) * x;
    }
    sum
}

/// Values j..j + 16 of a row of `format` at `w`, as f32.
///
/// # Safety
/// The row holds them.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn load(format: DenseFormat, w: *const u8, j: usize) -> __m512 {
    unsafe {
        match format {
            DenseFormat::F32 => _mm512_loadu_ps(w.add(4 * j) as *const f32),
            DenseFormat::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * j) as *const __m256i)),
        }
    }
}
