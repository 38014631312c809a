//! AVX-512 VNNI products of Q3_K tiles (`q3_k`), in `q3_k::dot`'s float steps. For one row
//! of `x`, a run's integer sum of `8u = 8q + 32` is formed by `vpdpbusd` started at the row's
//! `-32 Σx` of the run (Q6_K's offsets): 8 times the sum of `q`, at most 16,384 in magnitude
//! (an i16); each lane's sum is divided by 8 (exactly) once per block. In a prefill, the runs
//! hold the signed `q` and the activations are biased to unsigned `x + 128` (a run's sum at
//! most 4,080 in magnitude), each lane's sum started at what the bias adds, so that a run takes
//! no offset of its own. Each run's sum is then multiplied by its sub-block's signed scale (the
//! low half of a 32-bit lane, the high half 0) and added to its lane's sum by
//! `_mm512_dpwssd_epi32`.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::lanes::{broadcast, put_row};
use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q3k_tile::{BLOCK_BYTES, HIGH_AT, QS_AT, SCALES_AT};
use crate::format::{SUPER_BLOCK, TILE_ROWS};

/// The Q3_K tile's 16 rows times every row of `x`: `out[c * x_rows + t]`, in the float steps
/// of `q3_k::dot`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VNNI and F16C; `tile` is a Q3_K tile of
/// `x.blocks()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn q3k_tile_rows(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(tile.len(), x.blocks() * BLOCK_BYTES);
    assert_eq!(out.len(), TILE_ROWS * x_rows);
    for t in 0..x_rows {
        let row = x.row(t);
        assert!(
            row.qs.len() == x.blocks() * SUPER_BLOCK
                && row.run_offsets.len() == x.blocks() * SUPER_BLOCK / 4
        );
    }
    // SAFETY (each call): the asserts above.
    if x_rows == 1 {
        put_row(out, 1, 0, unsafe { q3k_one(tile, x.row(0)) });
        return;
    }
    unsafe { q3k_many(tile, x, out) };
}

/// Values `32k + 4g..+4` of chunk `c` of a Q3_K tile's block: the 16 rows' 4 stored values `u`
/// (0..8) each, times 8 where `TIMES_8`.
///
/// # Safety
/// `block` is a Q3_K tile's block; c < 2, k < 4, g < 8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run<const TIMES_8: bool>(block: *const u8, c: usize, k: usize, g: usize) -> __m512i {
    // SAFETY: the caller's promise; the runs are 64 bytes each at `QS_AT` and `HIGH_AT`.
    let (low, high) = unsafe {
        (
            _mm512_loadu_si512(block.add(QS_AT + 64 * (8 * c + g)).cast()),
            _mm512_loadu_si512(block.add(HIGH_AT + 64 * g).cast()),
        )
    };
    if TIMES_8 {
        // Bits 2k..2k + 2 of each low byte to bits 3..5, bit 4c + k of each high byte to bit 5.
        let low = match k {
            0 => _mm512_slli_epi16(low, 3),
            1 => _mm512_slli_epi16(low, 1),
            2 => _mm512_srli_epi16(low, 1),
            _ => _mm512_srli_epi16(low, 3),
        };
        let high = match 4 * c + k {
            0 => _mm512_slli_epi16(high, 5),
            1 => _mm512_slli_epi16(high, 4),
            2 => _mm512_slli_epi16(high, 3),
            3 => _mm512_slli_epi16(high, 2),
            4 => _mm512_slli_epi16(high, 1),
            5 => high,
            6 => _mm512_srli_epi16(high, 1),
            _ => _mm512_srli_epi16(high, 2),
        };
        return _mm512_or_si512(
            _mm512_and_si512(low, _mm512_set1_epi8(0x18)),
            _mm512_and_si512(high, _mm512_set1_epi8(0x20)),
        );
    }
    let low = match k {
        0 => low,
        1 => _mm512_srli_epi16(low, 2),
        2 => _mm512_srli_epi16(low, 4),
        _ => _mm512_srli_epi16(low, 6),
    };
    // Bit 4c + k of each high byte to bit 2.
    let high = match 4 * c + k {
        0 => _mm512_slli_epi16(high, 2),
        1 => _mm512_slli_epi16(high, 1),
        2 => high,
        3 => _mm512_srli_epi16(high, 1),
        4 => _mm512_srli_epi16(high, 2),
        5 => _mm512_srli_epi16(high, 3),
        6 => _mm512_srli_epi16(high, 4),
        _ => _mm512_srli_epi16(high, 5),
    };
    _mm512_or_si512(
        _mm512_and_si512(low, _mm512_set1_epi8(3)),
        _mm512_and_si512(high, _mm512_set1_epi8(4)),
    )
}

/// Sub-block `sub`'s 16 signed scales, each in the low half of a 32-bit lane (the high half 0).
///
/// # Safety
/// `block` is a Q3_K tile's block; sub < 16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scales(block: *const u8, sub: usize) -> __m512i {
    // SAFETY: the caller's promise.
    let bytes = unsafe { _mm_loadu_si128(block.add(SCALES_AT + sub * TILE_ROWS).cast()) };
    _mm512_cvtepu16_epi32(_mm256_cvtepi8_epi16(bytes))
}

/// Block `b`'s `d_x d_w` for the 16 rows.
///
/// # Safety
/// `block` is a Q3_K tile's block; `x` holds block `b`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn block_scale(block: *const u8, x: &Q8KRow, b: usize) -> __m512 {
    // SAFETY: the caller's promise.
    let d = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(block.cast())) };
    _mm512_mul_ps(_mm512_set1_ps(x.d[b]), d)
}

/// The 4 bytes of `bytes` at `at`, in every 32-bit lane.
///
/// # Safety
/// `bytes` holds 4 values at `at`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn broadcast_bytes(bytes: &[u8], at: usize) -> __m512i {
    // SAFETY: the caller's promise.
    unsafe { _mm512_set1_epi32(std::ptr::read_unaligned(bytes.as_ptr().add(at).cast())) }
}

/// `q3_k::dot`'s horizontal sum of its 8 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes_sum(acc: [__m512; 8]) -> __m512 {
    _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
        _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
    )
}

/// Q3_K for one row of `x`, read from the tile: per block, `dot`'s eight integer lanes for the
/// 16 rows, each into its lane by one FMA.
///
/// # Safety
/// As `q3k_tile_rows`, for this row of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q3k_one(tile: &[u8], x: Q8KRow) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..x.d.len() {
        // SAFETY: block b of the tile is the `BLOCK_BYTES` at `b * BLOCK_BYTES`; the row's
        // values of block b at `b * 256` (the caller's promise).
        unsafe {
            let block = tile.as_ptr().add(b * BLOCK_BYTES);
            let mut sums = [_mm512_setzero_si512(); 8];
            for c in 0..2 {
                for k in 0..4 {
                    for half in 0..2 {
                        let scale = scales(block, 8 * c + 2 * k + half);
                        for (g, sum) in sums.iter_mut().enumerate().skip(4 * half).take(4) {
                            let at = b * SUPER_BLOCK + 128 * c + 32 * k + 4 * g;
                            // 8 (Σ ux - 4 Σx): 8 times the run's sum of q.
                            let start = _mm512_set1_epi32(x.run_offsets[at / 4]);
                            let values = broadcast(x.qs, at);
                            let run =
                                _mm512_dpbusd_epi32(start, run::<true>(block, c, k, g), values);
                            *sum = _mm512_dpwssd_epi32(*sum, run, scale);
                        }
                    }
                }
            }
            let d = block_scale(block, &x, b);
            for (acc, sum) in acc.iter_mut().zip(sums) {
                // The sums of 8q, each a multiple of 8: exactly the lane's sum of q.
                let sum = _mm512_srai_epi32(sum, 3);
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), *acc);
            }
        }
    }
    lanes_sum(acc)
}

/// A Q3_K tile's block unpacked for a prefill: its runs of `q` (64, signed, chunk by chunk,
/// then by shift `k`, then run `g`), its sub-blocks' scales (16), and per lane `g` where its
/// sum starts (8): `-128 Σ sc Σq` over the lane's runs, which takes off what the activations'
/// bias (`x + 128`) adds.
const UNPACKED_BLOCK: usize = 64 + 16 + 8;

thread_local! {
    /// A Q3_K tile unpacked (`UNPACKED_BLOCK` vectors per block): what the rows of a prefill
    /// read again and again, kept from one tile to the next.
    static UNPACKED: RefCell<Vec<__m512i>> = const { RefCell::new(Vec::new()) };
}

/// Q3_K for every row of `x`: the tile unpacked once (in L1 or L2), then per two rows of `x`
/// (each run loaded once for them) `q3k_one`'s steps.
///
/// # Safety
/// As `q3k_tile_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q3k_many(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
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
                            let u = run::<false>(block, c, k, g);
                            unpacked.push(_mm512_sub_epi8(u, _mm512_set1_epi8(4)));
                        }
                    }
                }
                for sub in 0..16 {
                    unpacked.push(scales(block, sub));
                }
                let mut starts = [_mm512_setzero_si512(); 8];
                for c in 0..2 {
                    for k in 0..4 {
                        for (g, start) in starts.iter_mut().enumerate() {
                            let q = unpacked[unpacked.len() - 16 - 64 + 32 * c + 8 * k + g];
                            let sum =
                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), q);
                            let scale = scales(block, 8 * c + 2 * k + g / 4);
                            *start = _mm512_dpwssd_epi32(*start, sum, scale);
                        }
                    }
                }
                for start in starts {
                    unpacked.push(_mm512_mullo_epi32(start, _mm512_set1_epi32(-128)));
                }
            }
        }
        let x_rows = x.rows();
        let mut t = 0;
        // SAFETY (each call): the caller's promise.
        while t + 2 <= x_rows {
            let rows = [x.row(t), x.row(t + 1)];
            let sums = unsafe { q3k_rows(tile, unpacked, rows) };
            for (k, sums) in sums.into_iter().enumerate() {
                put_row(out, x_rows, t + k, sums);
            }
            t += 2;
        }
        for t in t..x_rows {
            let [sums] = unsafe { q3k_rows(tile, unpacked, [x.row(t)]) };
            put_row(out, x_rows, t, sums);
        }
    });
}

/// `q3k_one`'s sums of `T` rows of `x` over every block of the unpacked tile.
///
/// # Safety
/// As `q3k_tile_rows`, for these rows of `x`; `unpacked` is the tile's, unpacked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q3k_rows<const T: usize>(
    tile: &[u8],
    unpacked: &[__m512i],
    x: [Q8KRow; T],
) -> [__m512; T] {
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    for (b, unpacked) in unpacked.chunks_exact(UNPACKED_BLOCK).enumerate() {
        let (runs, rest) = unpacked.split_at(64);
        let (scales, starts) = rest.split_at(16);
        let mut sums = [[_mm512_setzero_si512(); 8]; T];
        for sums in &mut sums {
            sums.copy_from_slice(starts);
        }
        for (c, runs) in runs.chunks_exact(32).enumerate() {
            for (k, runs) in runs.chunks_exact(8).enumerate() {
                for (g, weights) in runs.iter().enumerate() {
                    let scale = scales[8 * c + 2 * k + g / 4];
                    for (sums, x) in sums.iter_mut().zip(&x) {
                        let at = b * SUPER_BLOCK + 128 * c + 32 * k + 4 * g;
                        // SAFETY: the caller's promise.
                        let values = unsafe { broadcast_bytes(x.biased_qs, at) };
                        let run = _mm512_dpbusd_epi32(_mm512_setzero_si512(), values, *weights);
                        sums[g] = _mm512_dpwssd_epi32(sums[g], run, scale);
                    }
                }
            }
        }
        for ((acc, sums), x) in acc.iter_mut().zip(sums).zip(&x) {
            // SAFETY: the caller's promise.
            let d = unsafe { block_scale(tile.as_ptr().add(b * BLOCK_BYTES), x, b) };
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
