//! AVX2 + FMA + F16C dot products, ported from llama.cpp's `ggml/src/ggml-cpu/arch/x86/quants.c`
//! (MIT): 32 products per block summed in one register. Q4_0 and Q8_0 add one FMA per block into
//! 8 lanes and sum them per row, as candle's AVX2 kernels do; Q4_1 scales each block's integer
//! sum in candle's scalar order. Either way the results equal candle's `QMatMul` bit for bit.

use std::arch::x86_64::*;

use crate::activation::{Q8Row, Q8Rows, BLOCK};
use crate::format::{BlockFormat, DenseFormat};

/// One or two weight rows times every row of `x`: `out[c * x_rows + t]` for weight row `c` and
/// input row `t`, each equal to `dot` of the two bit for bit (each row's own steps, in `dot`'s
/// order). A lone input row meets two Q4_1 weight rows in one pass (the input loaded once);
/// otherwise four input rows meet one weight row at a time (each block unpacked once for the
/// four), and the last rows take `dot`.
///
/// # Safety
/// As `dot`, for every weight row and every row of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows(format: BlockFormat, weights: &[&[u8]], x: &Q8Rows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(out.len(), weights.len() * x_rows);
    // SAFETY (each kernel below): the caller's promise.
    if let (BlockFormat::Q4_1, &[a, b], 1) = (format, weights, x_rows) {
        let [[first], [second]] = unsafe { q4_1_tile([a, b], [x.row(0)]) };
        out.copy_from_slice(&[first, second]);
        return;
    }
    for (weights, out) in weights.iter().zip(out.chunks_exact_mut(x_rows)) {
        let mut t = 0;
        while t + 4 <= x_rows {
            let rows: [Q8Row; 4] = std::array::from_fn(|k| x.row(t + k));
            let sums = unsafe {
                match format {
                    BlockFormat::Q4_1 => {
                        let [sums] = q4_1_tile([weights], rows);
                        sums
                    }
                    _ => dot_tile(format, weights, rows),
                }
            };
            out[t..t + 4].copy_from_slice(&sums);
            t += 4;
        }
        for (t, out) in out.iter_mut().enumerate().skip(t) {
            *out = unsafe { dot(format, weights, x.row(t)) };
        }
    }
}

/// `dot` of one Q4_0 or Q8_0 weight row with `T` input rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_tile<const T: usize>(format: BlockFormat, weights: &[u8], x: [Q8Row; T]) -> [f32; T] {
    let size = format.block_bytes();
    let blocks = x[0].d.len();
    assert!(weights.len() >= blocks * size);
    assert!(x
        .iter()
        .all(|x| x.d.len() == blocks && x.qs.len() >= blocks * BLOCK));
    let w = weights.as_ptr();
    let mut acc = [_mm256_setzero_ps(); T];
    let eight = _mm256_set1_epi8(8);
    for b in 0..blocks {
        // SAFETY: block b's bytes lie at `w + b * size`, its activations at `b * 32` of each
        // row (asserted above).
        unsafe {
            let block = w.add(b * size);
            let qw = match format {
                BlockFormat::Q4_0 => _mm256_sub_epi8(nibbles(block.add(2)), eight),
                _ => _mm256_loadu_si256(block.add(2) as *const __m256i),
            };
            let dw = half(block);
            let magnitudes = _mm256_sign_epi8(qw, qw);
            for (acc, x) in acc.iter_mut().zip(&x) {
                let scale = _mm256_set1_ps(dw * x.d[b]);
                let qx = _mm256_loadu_si256(x.qs.as_ptr().add(b * BLOCK) as *const __m256i);
                let products =
                    pair_sums(_mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(qx, qw)));
                *acc = _mm256_fmadd_ps(scale, products, *acc);
            }
        }
    }
    // `+ 0.0` as `dot` ends, so that a sum of -0.0 comes out as it does there.
    acc.map(|acc| horizontal_sum(acc) + 0.0)
}

/// `dot` of `R` Q4_1 weight rows with `T` input rows: each block's weights unpacked once for
/// the `T` rows, each input block loaded once for the `R` rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_tile<const R: usize, const T: usize>(
    weights: [&[u8]; R],
    x: [Q8Row; T],
) -> [[f32; T]; R] {
    let size = BlockFormat::Q4_1.block_bytes();
    let blocks = x[0].d.len();
    assert!(weights.iter().all(|w| w.len() >= blocks * size));
    assert!(x
        .iter()
        .all(|x| { x.d.len() == blocks && x.s.len() == blocks && x.qs.len() >= blocks * BLOCK }));
    let ones = _mm256_set1_epi16(1);
    let whole = blocks - blocks % 8;
    let mut scalar = [[0.0f32; T]; R];
    let mut terms = [0.0f32; 8];
    // SAFETY (the loads): block b's bytes lie at `b * size` of each weight row, its activations
    // at `b * 32` of each input row, `d` and `s` at `b` (asserted above).
    unsafe {
        for first in (0..whole).step_by(8) {
            let mut sums = [[[_mm256_setzero_si256(); 8]; T]; R];
            let mut scales = [[0u32; 8]; R];
            for i in 0..8 {
                let at = (first + i) * BLOCK;
                let qx: [__m256i; T] = std::array::from_fn(|t| {
                    _mm256_loadu_si256(x[t].qs.as_ptr().add(at) as *const __m256i)
                });
                for ((sums, scales), w) in sums.iter_mut().zip(&mut scales).zip(&weights) {
                    let block = w.as_ptr().add((first + i) * size);
                    let q4 = nibbles(block.add(4));
                    scales[i] = std::ptr::read_unaligned(block as *const u32);
                    for (sums, qx) in sums.iter_mut().zip(&qx) {
                        sums[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, *qx), ones);
                    }
                }
            }
            for ((sums, scales), scalar) in sums.into_iter().zip(scales).zip(&mut scalar) {
                let (dw, mw) = halves(scales);
                for ((sums, x), scalar) in sums.into_iter().zip(&x).zip(scalar.iter_mut()) {
                    let sums = _mm256_cvtepi32_ps(lane_sums(sums));
                    let dx = _mm256_loadu_ps(x.d.as_ptr().add(first));
                    let sx = _mm256_loadu_ps(x.s.as_ptr().add(first));
                    let products = _mm256_mul_ps(_mm256_mul_ps(sums, dw), dx);
                    let t = _mm256_add_ps(products, _mm256_mul_ps(mw, sx));
                    _mm256_storeu_ps(terms.as_mut_ptr(), t);
                    for term in terms {
                        *scalar += term;
                    }
                }
            }
        }
        for b in whole..blocks {
            for (w, scalar) in weights.iter().zip(&mut scalar) {
                let block = w.as_ptr().add(b * size);
                let q4 = nibbles(block.add(4));
                for (x, scalar) in x.iter().zip(scalar.iter_mut()) {
                    let qx = _mm256_loadu_si256(x.qs.as_ptr().add(b * BLOCK) as *const __m256i);
                    let sum = integer_sum(_mm256_madd_epi16(_mm256_maddubs_epi16(q4, qx), ones));
                    *scalar += sum as f32 * half(block) * x.d[b] + half(block.add(2)) * x.s[b];
                }
            }
        }
    }
    // `0.0 +`: a sum of -0.0 comes out as +0.0, as candle's does.
    scalar.map(|row| row.map(|s| 0.0 + s))
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `weights` holds `x.d.len()` blocks of `format`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(format: BlockFormat, weights: &[u8], x: Q8Row) -> f32 {
    let size = format.block_bytes();
    let blocks = x.d.len();
    assert!(weights.len() >= blocks * size && x.qs.len() >= blocks * BLOCK);
    let (w, q8) = (weights.as_ptr(), x.qs.as_ptr());
    let mut acc = _mm256_setzero_ps();
    // SAFETY (the loads): block b's bytes lie at `w + b * size`, its activation at
    // `q8 + b * 32`, both within the slices (asserted above).
    unsafe {
        match format {
            BlockFormat::Q4_0 => {
                let eight = _mm256_set1_epi8(8);
                for b in 0..blocks {
                    let block = w.add(b * size);
                    let scale = _mm256_set1_ps(half(block) * x.d[b]);
                    let qw = _mm256_sub_epi8(nibbles(block.add(2)), eight);
                    let qx = _mm256_loadu_si256(q8.add(b * BLOCK) as *const __m256i);
                    acc = _mm256_fmadd_ps(scale, signed_products(qw, qx), acc);
                }
            }
            BlockFormat::Q4_1 => {
                // Each block's integer sum, then candle's scalar float steps in candle's order
                // (`k_quants::BlockQ4_1::vec_dot`): `q4_1_tile` for one row of each.
                let [[sum]] = q4_1_tile([weights], [x]);
                return sum;
            }
            BlockFormat::Q8_0 => {
                for b in 0..blocks {
                    let block = w.add(b * size);
                    let scale = _mm256_set1_ps(half(block) * x.d[b]);
                    let qw = _mm256_loadu_si256(block.add(2) as *const __m256i);
                    let qx = _mm256_loadu_si256(q8.add(b * BLOCK) as *const __m256i);
                    acc = _mm256_fmadd_ps(scale, signed_products(qw, qx), acc);
                }
            }
        }
    }
    // `+ 0.0`: a sum of -0.0 comes out as +0.0, as candle's does.
    horizontal_sum(acc) + 0.0
}

/// Rows of f32 or f16 weights times each row of `x`, in pairs: see `Kernel::dense_rows`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; every weight row holds the values of a row of `x`,
/// and `out` has a value per weight row and row of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    for (weights, out) in weights.chunks(2).zip(out.chunks_mut(2 * x_rows)) {
        let mut t = 0;
        while t < x_rows {
            let tile = (x_rows - t).min(4);
            let rows = || std::array::from_fn(|k| row(t + k));
            match (weights, tile) {
                ([a, b], 4) => {
                    let sums = unsafe { dense_tile::<2, 4>(format, [a, b], rows()) };
                    for (c, sums) in sums.iter().enumerate() {
                        out[c * x_rows + t..c * x_rows + t + 4].copy_from_slice(sums);
                    }
                }
                (_, 4) => {
                    for (c, w) in weights.iter().enumerate() {
                        let [sums] = unsafe { dense_tile::<1, 4>(format, [w], rows()) };
                        out[c * x_rows + t..c * x_rows + t + 4].copy_from_slice(&sums);
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

/// `R` weight rows times `T` rows of `x`, each weight value loaded once for the `T` rows and
/// each `x` value once for the `R` rows: one 8-lane FMA sum per pair, the tail in scalar.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_tile<const R: usize, const T: usize>(
    format: DenseFormat,
    weights: [&[u8]; R],
    x: [&[f32]; T],
) -> [[f32; T]; R] {
    let n = weights[0].len() / format.value_bytes();
    assert!(weights.iter().all(|w| w.len() == weights[0].len()) && x.iter().all(|x| x.len() == n));
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let whole = n - n % 8;
    for j in (0..whole).step_by(8) {
        // SAFETY: values j..j + 8 lie within every weight row and every x row.
        let xv: [__m256; T] =
            std::array::from_fn(|t| unsafe { _mm256_loadu_ps(x[t].as_ptr().add(j)) });
        for (acc, w) in acc.iter_mut().zip(&weights) {
            let wv = unsafe { dense_load(format, w.as_ptr(), j) };
            for (acc, xv) in acc.iter_mut().zip(&xv) {
                *acc = _mm256_fmadd_ps(wv, *xv, *acc);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for ((out, acc), w) in out.iter_mut().zip(&acc).zip(&weights) {
        for ((out, acc), x) in out.iter_mut().zip(acc).zip(&x) {
            *out = horizontal_sum(*acc);
            for (j, x) in x.iter().enumerate().skip(whole) {
                *out += format.value(w, j) * x;
            }
        }
    }
    out
}

/// Values j..j + 8 of a row of `format` at `w`, as f32.
///
/// # Safety
/// The row holds them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_load(format: DenseFormat, w: *const u8, j: usize) -> __m256 {
    unsafe {
        match format {
            DenseFormat::F32 => _mm256_loadu_ps(w.add(4 * j) as *const f32),
            DenseFormat::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * j) as *const __m128i)),
        }
    }
}

/// One row of f32 or f16 weights times an f32 row: four 8-lane FMA sums, the tail in scalar.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `weights` holds `x.len()` values of `format`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_dot(format: DenseFormat, weights: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(weights.len() >= n * format.value_bytes());
    let (w, xs) = (weights.as_ptr(), x.as_ptr());
    // SAFETY (the loads): value j of the row lies at `w + j * value_bytes`, and j < n.
    let load = |j: usize| unsafe { dense_load(format, w, j) };
    let mut acc = [_mm256_setzero_ps(); 4];
    let whole = n - n % 32;
    for j in (0..whole).step_by(32) {
        for (lane, acc) in acc.iter_mut().enumerate() {
            let at = j + 8 * lane;
            // SAFETY: at + 8 <= n.
            let xv = unsafe { _mm256_loadu_ps(xs.add(at)) };
            *acc = _mm256_fmadd_ps(load(at), xv, *acc);
        }
    }
    let mut sum = horizontal_sum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for (j, x) in x.iter().enumerate().skip(whole) {
        sum += format.value(weights, j) * x;
    }
    sum
}

/// The f16 at `p` (little-endian) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half(p: *const u8) -> f32 {
    // SAFETY: the caller's block holds two bytes at `p`.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// 16 bytes of nibbles at `p` as 32 bytes: the low nibbles, then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller's block holds 16 bytes at `p`.
    let packed = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
        _mm256_set1_epi8(0xF),
    )
}

/// Σ of adjacent i16 pairs, as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_sums(x: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(x, _mm256_set1_epi16(1)))
}

/// Products of signed bytes, summed by fours, as 8 f32: `maddubs` takes an unsigned operand,
/// so `|w|` meets `x` with `w`'s sign.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_products(w: __m256i, x: __m256i) -> __m256 {
    pair_sums(_mm256_maddubs_epi16(
        _mm256_sign_epi8(w, w),
        _mm256_sign_epi8(x, w),
    ))
}

/// Lane `i` of the result: the sum of the 8 lanes of `v[i]` (integers, so in any order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_sums(v: [__m256i; 8]) -> __m256i {
    // Per 128-bit half: [v0, v1, v2, v3] from the halves' pairs, then the same for v4..v7.
    let low = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let high = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256(low, high, 0x20),
        _mm256_permute2x128_si256(low, high, 0x31),
    )
}

/// Eight blocks' leading f16 pairs (`d` in the low 16 bits, `m` in the high) as f32 vectors
/// of their `d`s and their `m`s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves(pairs: [u32; 8]) -> (__m256, __m256) {
    // SAFETY: `pairs` is 32 bytes.
    let v = unsafe { _mm256_loadu_si256(pairs.as_ptr() as *const __m256i) };
    // In each 128-bit half: the low u16s to bytes 0..8, the high ones to bytes 8..16.
    let split = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3,
            6, 7, 10, 11, 14, 15,
        ),
    );
    // 64-bit quarters in the order [d0..4, d4..8, m0..4, m4..8].
    let ordered = _mm256_permute4x64_epi64(split, 0b11_01_10_00);
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(ordered)),
        _mm256_cvtph_ps(_mm256_extracti128_si256(ordered, 1)),
    )
}

/// The sum of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn integer_sum(x: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_extracti128_si256(x, 1), _mm256_castsi256_si128(x));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32(pair, 1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(x: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
