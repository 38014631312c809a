//! AVX-512 VNNI products of Q2_K tiles (`q2_k`), in `q2_k::dot`'s float steps. A run's integer
//! sum (4 values, |sum| <= 4 * 3 * 128, an i16) is formed by `vpdpbusd`, then multiplied by its
//! sub-block's scale (the low half of a 32-bit lane, the high half 0) and added to its lane's
//! sum by `_mm512_dpwssd_epi32`; lane `l`'s mins' sum is one `_mm512_dpwssd_epi32` of the
//! mins of sub-blocks `2l` and `2l + 1` (a lane's two halves) with the row's two sums.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::lanes::{broadcast, put_row};
use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q2k_tile::{BLOCK_BYTES, DMIN_AT, QS_AT, SCALES_AT};
use crate::format::{SUPER_BLOCK, TILE_ROWS};

/// The Q2_K tile's 16 rows times every row of `x`: `out[c * x_rows + t]`, in the float steps
/// of `q2_k::dot`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VNNI and F16C; `tile` is a Q2_K tile of
/// `x.blocks()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn q2k_tile_rows(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(tile.len(), x.blocks() * BLOCK_BYTES);
    assert_eq!(out.len(), TILE_ROWS * x_rows);
    for t in 0..x_rows {
        let row = x.row(t);
        assert!(row.qs.len() == x.blocks() * SUPER_BLOCK && row.bsums.len() == x.blocks() * 16);
    }
    // SAFETY (each call): the asserts above.
    if x_rows == 1 {
        put_row(out, 1, 0, unsafe { q2k_one(tile, x.row(0)) });
        return;
    }
    unsafe { q2k_many(tile, x, out) };
}

/// Values `32k + 4g..+4` of chunk `c` of a Q2_K tile's block: the 16 rows' 4 values `q`
/// (0..4) each.
///
/// # Safety
/// `block` is a Q2_K tile's block; c < 2, k < 4, g < 8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run(block: *const u8, c: usize, k: usize, g: usize) -> __m512i {
    // SAFETY: the caller's promise; the runs are 64 bytes each at `QS_AT`.
    let bytes = unsafe { _mm512_loadu_si512(block.add(QS_AT + 64 * (8 * c + g)).cast()) };
    let bytes = match k {
        0 => bytes,
        1 => _mm512_srli_epi16(bytes, 2),
        2 => _mm512_srli_epi16(bytes, 4),
        _ => _mm512_srli_epi16(bytes, 6),
    };
    _mm512_and_si512(bytes, _mm512_set1_epi8(3))
}

/// Sub-block `sub`'s 16 scales (`MIN = false`) or mins, each in the low half of a 32-bit lane.
///
/// # Safety
/// `block` is a Q2_K tile's block; sub < 16.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn nibbles<const MIN: bool>(block: *const u8, sub: usize) -> __m512i {
    // SAFETY: the caller's promise.
    let bytes = unsafe {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(
            block.add(SCALES_AT + sub * TILE_ROWS).cast(),
        ))
    };
    if MIN {
        _mm512_srli_epi32(bytes, 4)
    } else {
        _mm512_and_si512(bytes, _mm512_set1_epi32(0xF))
    }
}

/// Lane `l`'s mins: sub-block `2l`'s in the low half of each 32-bit lane, `2l + 1`'s in the
/// high one.
///
/// # Safety
/// As `nibbles`; l < 8.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn min_pair(block: *const u8, l: usize) -> __m512i {
    // SAFETY: the caller's promise.
    unsafe {
        let high = _mm512_slli_epi32(nibbles::<true>(block, 2 * l + 1), 16);
        _mm512_or_si512(nibbles::<true>(block, 2 * l), high)
    }
}

/// Block `b`'s `d_x d_w` and `-d_x dmin_w` for the 16 rows.
///
/// # Safety
/// `block` is a Q2_K tile's block; `x` holds block `b`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn block_scales(block: *const u8, x: &Q8KRow, b: usize) -> (__m512, __m512) {
    // SAFETY: the caller's promise.
    unsafe {
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(block.cast()));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(block.add(DMIN_AT).cast()));
        (
            _mm512_mul_ps(_mm512_set1_ps(x.d[b]), d),
            _mm512_mul_ps(_mm512_set1_ps(-x.d[b]), dmin),
        )
    }
}

/// Row `x`'s sums of sub-blocks `2l` and `2l + 1` of block `b`, in the halves of every 32-bit
/// lane (each |sum| <= 16 * 128, an i16).
#[inline]
#[target_feature(enable = "avx512f")]
fn sum_pair(x: &Q8KRow, b: usize, l: usize) -> __m512i {
    let (low, high) = (x.bsums[b * 16 + 2 * l], x.bsums[b * 16 + 2 * l + 1]);
    _mm512_set1_epi32((low & 0xFFFF) | high << 16)
}

/// Q2_K for one row of `x`, read from the tile: per block, the mins' term into each lane by
/// one FMA, then `dot`'s eight integer lanes for the 16 rows, each into its lane by one FMA.
///
/// # Safety
/// As `q2k_tile_rows`, for this row of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q2k_one(tile: &[u8], x: Q8KRow) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..x.d.len() {
        // SAFETY: block b of the tile is the `BLOCK_BYTES` at `b * BLOCK_BYTES`; the row's
        // values of block b at `b * 256` (the caller's promise).
        unsafe {
            let block = tile.as_ptr().add(b * BLOCK_BYTES);
            let (d, dmin) = block_scales(block, &x, b);
            for (l, acc) in acc.iter_mut().enumerate() {
                let mins = _mm512_dpwssd_epi32(
                    _mm512_setzero_si512(),
                    min_pair(block, l),
                    sum_pair(&x, b, l),
                );
                *acc = _mm512_fmadd_ps(dmin, _mm512_cvtepi32_ps(mins), *acc);
            }
            let mut sums = [_mm512_setzero_si512(); 8];
            for c in 0..2 {
                for k in 0..4 {
                    for half in 0..2 {
                        let scale = nibbles::<false>(block, 8 * c + 2 * k + half);
                        for (g, sum) in sums.iter_mut().enumerate().skip(4 * half).take(4) {
                            let at = b * SUPER_BLOCK + 128 * c + 32 * k + 4 * g;
                            let values = broadcast(x.qs, at);
                            let run = _mm512_dpbusd_epi32(
                                _mm512_setzero_si512(),
                                run(block, c, k, g),
                                values,
                            );
                            *sum = _mm512_dpwssd_epi32(*sum, run, scale);
                        }
                    }
                }
            }
            for (acc, sum) in acc.iter_mut().zip(sums) {
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), *acc);
            }
        }
    }
    lanes_sum(acc)
}

/// `q2_k::dot`'s horizontal sum of its 8 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes_sum(acc: [__m512; 8]) -> __m512 {
    _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
        _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
    )
}

/// A Q2_K tile's block unpacked for a prefill: its runs (64, chunk by chunk, then by shift
/// `k`, then run `g`), its sub-blocks' scales (16) and its lanes' min pairs (8).
const UNPACKED_BLOCK: usize = 64 + 16 + 8;

thread_local! {
    /// A Q2_K tile unpacked (`UNPACKED_BLOCK` vectors per block): what the rows of a prefill
    /// read again and again, kept from one tile to the next.
    static UNPACKED: RefCell<Vec<__m512i>> = const { RefCell::new(Vec::new()) };
}

/// Q2_K for every row of `x`: the tile unpacked once (in L1 or L2), then per two rows of `x`
/// (each run loaded once for them) `q2k_one`'s steps.
///
/// # Safety
/// As `q2k_tile_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q2k_many(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    UNPACKED.with_borrow_mut(|unpacked| {
        unpacked.clear();
        for b in 0..x.blocks() {
            // SAFETY: block b of the tile is the `BLOCK_BYTES` at `b * BLOCK_BYTES` (the
            // caller's promise).
            unsafe {
                let block = tile.as_ptr().add(b * BLOCK_BYTES);
                for c in 0..2 {
                    for k in 0..4 {
                        for g in 0..8 {
                            unpacked.push(run(block, c, k, g));
                        }
                    }
                }
                for sub in 0..16 {
                    unpacked.push(nibbles::<false>(block, sub));
                }
                for l in 0..8 {
                    unpacked.push(min_pair(block, l));
                }
            }
        }
        let x_rows = x.rows();
        let mut t = 0;
        // SAFETY (each call): the caller's promise.
        while t + 2 <= x_rows {
            let rows = [x.row(t), x.row(t + 1)];
            let sums = unsafe { q2k_rows(tile, unpacked, rows) };
            for (k, sums) in sums.into_iter().enumerate() {
                put_row(out, x_rows, t + k, sums);
            }
            t += 2;
        }
        for t in t..x_rows {
            let [sums] = unsafe { q2k_rows(tile, unpacked, [x.row(t)]) };
            put_row(out, x_rows, t, sums);
        }
    });
}

/// `q2k_one`'s sums of `T` rows of `x` over every block of the unpacked tile.
///
/// # Safety
/// As `q2k_tile_rows`, for these rows of `x`; `unpacked` is the tile's, unpacked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q2k_rows<const T: usize>(
    tile: &[u8],
    unpacked: &[__m512i],
    x: [Q8KRow; T],
) -> [__m512; T] {
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    for (b, unpacked) in unpacked.chunks_exact(UNPACKED_BLOCK).enumerate() {
        let (runs, rest) = unpacked.split_at(64);
        let (scales, min_pairs) = rest.split_at(16);
        for (acc, x) in acc.iter_mut().zip(&x) {
            // SAFETY: the caller's promise.
            let (_, dmin) = unsafe { block_scales(tile.as_ptr().add(b * BLOCK_BYTES), x, b) };
            for (l, (acc, pair)) in acc.iter_mut().zip(min_pairs).enumerate() {
                let mins = _mm512_dpwssd_epi32(_mm512_setzero_si512(), *pair, sum_pair(x, b, l));
                *acc = _mm512_fmadd_ps(dmin, _mm512_cvtepi32_ps(mins), *acc);
            }
        }
        let mut sums = [[_mm512_setzero_si512(); 8]; T];
        for (c, runs) in runs.chunks_exact(32).enumerate() {
            for (k, runs) in runs.chunks_exact(8).enumerate() {
                for (g, weights) in runs.iter().enumerate() {
                    let scale = scales[8 * c + 2 * k + g / 4];
                    for (sums, x) in sums.iter_mut().zip(&x) {
                        let at = b * SUPER_BLOCK + 128 * c + 32 * k + 4 * g;
                        // SAFETY: the caller's promise.
                        let values = unsafe { broadcast(x.qs, at) };
                        let run = _mm512_dpbusd_epi32(_mm512_setzero_si512(), *weights, values);
                        sums[g] = _mm512_dpwssd_epi32(sums[g], run, scale);
                    }
                }
            }
        }
        for ((acc, sums), x) in acc.iter_mut().zip(sums).zip(&x) {
            // SAFETY: the caller's promise.
            let (d, _) = unsafe { block_scales(tile.as_ptr().add(b * BLOCK_BYTES), x, b) };
            for (acc, sum) in acc.iter_mut().zip(sums) {
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), *acc);
            }
        }
    }
    let mut sums = [_mm512_setzero_ps(); T];
    for (sum, acc) in sums.iter_mut().zip(acc) {
        *sum = lanes_sum(acc);
    }
    sums
}
