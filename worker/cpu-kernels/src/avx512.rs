//! AVX-512F products of f32 and f16 weights: the AVX2 kernels' loops in 16 lanes (f16 widened
//! with `vcvtph2ps`). The quantized products stay AVX2's, whose sums follow candle's order.

use std::arch::x86_64::*;

use crate::format::DenseFormat;

/// Rows of f32 or f16 weights times each row of `x`: see `Kernel::dense_rows`. A prefill takes
/// six weight rows by four rows of `x` per tile (24 sums in registers; per 16 values 10 loads
/// and 24 FMAs): each pass over the rows of `x` (from L2 in a long prompt) feeds 24 sums.
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
    for (weights, out) in weights.chunks(6).zip(out.chunks_mut(6 * x_rows)) {
        let mut t = 0;
        while t < x_rows {
            let tile = (x_rows - t).min(4);
            let rows = || std::array::from_fn(|k| row(t + k));
            let mut put = |c: usize, sums: &[f32; 4]| {
                out[c * x_rows + t..c * x_rows + t + 4].copy_from_slice(sums)
            };
            match (weights, tile) {
                (&[a, b, c, d, e, f], 4) => {
                    let sums = unsafe { dense_tile::<6, 4>(format, [a, b, c, d, e, f], rows()) };
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
    let whole = n - n % 16;
    // SAFETY (both): the rows hold `whole` values, asserted above.
    let acc = match format {
        DenseFormat::F32 => unsafe { tile_sums::<R, T, false>(weights, x, whole) },
        DenseFormat::F16 => unsafe { tile_sums::<R, T, true>(weights, x, whole) },
    };
    // The sums of sixteen vectors at a time in one vector: the same pairs added as
    // `_mm512_reduce_add_ps` adds them, in fewer shuffles (a last group's gaps filled with its
    // first vector, whose sums are not read).
    const MOST: usize = 32;
    assert!(R * T <= MOST, "a tile of at most {MOST} sums");
    let flat = |i: usize| acc[i / T][i % T];
    let mut lanes = [0.0f32; MOST];
    for (group, lanes) in lanes
        .chunks_exact_mut(16)
        .take((R * T).div_ceil(16))
        .enumerate()
    {
        let first = 16 * group;
        let sums = reduce_16(std::array::from_fn(|i| {
            // `reduce_16` puts vector 4j + k's sum in lane 4k + j.
            let at = first + 4 * (i % 4) + i / 4;
            flat(if at < R * T { at } else { first })
        }));
        // SAFETY: `lanes` holds the 16 values stored.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sums) };
    }
    let mut out: [[f32; T]; R] = std::array::from_fn(|r| std::array::from_fn(|t| lanes[r * T + t]));
    for (out, w) in out.iter_mut().zip(&weights) {
        for (out, x) in out.iter_mut().zip(&x) {
            for (j, x) in x.iter().enumerate().skip(whole) {
                *out += format.value(w, j) * x;
            }
        }
    }
    out
}

/// The 16-lane sums of `dense_tile` over values 0..whole, the format a constant (`HALF` for
/// f16) and the loop a function of its own: inlined into `dense_rows`, it tested the format
/// every 16 values and kept some of the sums on the stack (SmolLM2's f32 products at 128 rows:
/// 136 GFLOP/s on two cores, 155 without those, 185 in tiles of six weight rows).
///
/// # Safety
/// Every row holds `whole` values, a multiple of 16.
#[inline(never)]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn tile_sums<const R: usize, const T: usize, const HALF: bool>(
    weights: [&[u8]; R],
    x: [&[f32]; T],
    whole: usize,
) -> [[__m512; T]; R] {
    let format = if HALF {
        DenseFormat::F16
    } else {
        DenseFormat::F32
    };
    let mut acc = [[_mm512_setzero_ps(); T]; R];
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
    acc
}

/// The sums of sixteen vectors: lane `4k + j` holds the sum of `v[4j + k]`'s lanes, added in
/// `_mm512_reduce_add_ps`'s pairs (lane i with i + 8, then i + 4, i + 2, i + 1).
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce_16(v: [__m512; 16]) -> __m512 {
    // Lanes i + 8 of two vectors at once: a's eight sums, then b's.
    let halves = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    };
    // Lanes i + 4 of two such: four sums of each of the four vectors, quarter by quarter.
    let quarters = |u: __m512, w: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(u, w),
            _mm512_shuffle_f32x4::<0xDD>(u, w),
        )
    };
    // Lanes i + 2, then i + 1, within each quarter.
    let pairs = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    };
    let ones = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        )
    };
    let four = |i: usize| quarters(halves(v[i], v[i + 1]), halves(v[i + 2], v[i + 3]));
    ones(pairs(four(0), four(4)), pairs(four(8), four(12)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from a fixed sequence of mixed signs and magnitudes, so that the order of a sum's
    /// additions shows in its rounding.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(2_654_435_761) >> 8;
                (h % 20_000) as f32 / 997.0 - 10.0
            })
            .collect()
    }

    #[test]
    fn a_tiles_sums_are_one_rows_sums_bit_for_bit() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c")) {
            return;
        }
        // 7 weight rows by 5 x rows: a 6 x 4 tile, a 1 x 4, then the 1 x 1s of the last x row;
        // columns past 16 take the scalar tail.
        let (weight_rows, x_rows) = (7, 5);
        for cols in [16, 48, 576, 37] {
            for format in [DenseFormat::F32, DenseFormat::F16] {
                let weights: Vec<Vec<u8>> = (0..weight_rows)
                    .map(|r| {
                        let row = values(cols, 7 + r);
                        match format {
                            DenseFormat::F32 => row.iter().flat_map(|v| v.to_le_bytes()).collect(),
                            DenseFormat::F16 => row
                                .iter()
                                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                                .collect(),
                        }
                    })
                    .collect();
                let weights: Vec<&[u8]> = weights.iter().map(Vec::as_slice).collect();
                let x = values(x_rows * cols, 99);
                let mut tiled = vec![0.0; weight_rows as usize * x_rows];
                // SAFETY: the CPU has the features (checked above); the sizes agree.
                unsafe { dense_rows(format, &weights, &x, &mut tiled) };
                for (r, w) in weights.iter().enumerate() {
                    for t in 0..x_rows {
                        let row = &x[t * cols..(t + 1) * cols];
                        // SAFETY: as above.
                        let [[alone]] = unsafe { dense_tile(format, [*w], [row]) };
                        assert_eq!(
                            tiled[r * x_rows + t].to_bits(),
                            alone.to_bits(),
                            "{format:?} {cols} columns: weight row {r}, x row {t}"
                        );
                    }
                }
            }
        }
    }
}
