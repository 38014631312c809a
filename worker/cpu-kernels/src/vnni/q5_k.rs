//! AVX-512 VNNI products of Q5_K tiles (`q5_k`), in `q5_k::dot`'s float steps. A run's integer
//! sum (4 values, |sum| <= 4 * 31 * 128, an i16) is formed by `vpdpbusd`, then multiplied by its
//! sub-block's scale (the low half of a 32-bit lane, the high half 0) and added to its lane's
//! sum by `_mm512_dpwssd_epi32` (which LLVM, tuned for no CPU in particular, emits as
//! `vpmaddwd` and `vpaddd`). Variants measured slower in a prefill of the tinyllama shape and
//! not kept: two sub-blocks' run sums packed in one lane's halves for one `vpdpwssd`; the
//! `vpdpwssd` in assembly; four or eight rows of `x` at once.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::lanes::{broadcast, put_row};
use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q4k_tile::{DMIN_AT, MINS_AT, NIBBLES_AT, SCALES_AT};
use crate::format::q5k_tile::{BLOCK_BYTES, HIGH_AT};
use crate::format::{SUBS, SUPER_BLOCK, TILE_ROWS};

/// The Q5_K tile's 16 rows times every row of `x`: `out[c * x_rows + t]`, in the float steps
/// of `q5_k::dot`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VNNI and F16C; `tile` is a Q5_K tile of
/// `x.blocks()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn q5k_tile_rows(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(tile.len(), x.blocks() * BLOCK_BYTES);
    assert_eq!(out.len(), TILE_ROWS * x_rows);
    for t in 0..x_rows {
        let row = x.row(t);
        assert!(
            row.qs.len() == x.blocks() * SUPER_BLOCK && row.sub_sums.len() == x.blocks() * SUBS
        );
    }
    // SAFETY (each call): the asserts above.
    if x_rows == 1 {
        put_row(out, 1, 0, unsafe { q5k_one(tile, x.row(0)) });
        return;
    }
    unsafe { q5k_many(tile, x, out) };
}

/// Run `g` of sub-block `s` of a Q5_K tile's block: the 16 rows' 4 values `q` (0..32) each.
///
/// # Safety
/// `block` is a Q5_K tile's block; s < 8, g < 8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run(block: *const u8, s: usize, g: usize) -> __m512i {
    // SAFETY: the caller's promise; the runs are 64 bytes each at `NIBBLES_AT` and `HIGH_AT`.
    unsafe {
        let low = _mm512_loadu_si512(block.add(NIBBLES_AT + 64 * (8 * (s / 2) + g)).cast());
        let high = _mm512_loadu_si512(block.add(HIGH_AT + 64 * g).cast());
        let low = if s.is_multiple_of(2) {
            low
        } else {
            _mm512_srli_epi16(low, 4)
        };
        // Bit s of each high byte to bit 4.
        let high = match s {
            0 => _mm512_slli_epi16(high, 4),
            1 => _mm512_slli_epi16(high, 3),
            2 => _mm512_slli_epi16(high, 2),
            3 => _mm512_slli_epi16(high, 1),
            4 => high,
            5 => _mm512_srli_epi16(high, 1),
            6 => _mm512_srli_epi16(high, 2),
            _ => _mm512_srli_epi16(high, 3),
        };
        _mm512_or_si512(
            _mm512_and_si512(low, _mm512_set1_epi8(0xF)),
            _mm512_and_si512(high, _mm512_set1_epi8(0x10)),
        )
    }
}

/// Sub-block `s`'s 16 scales (`at = SCALES_AT`) or mins (`MINS_AT`) of a tile's block, each in
/// the low half of a 32-bit lane.
///
/// # Safety
/// `block` is a Q5_K tile's block; s < 8.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bytes(block: *const u8, at: usize, s: usize) -> __m512i {
    // SAFETY: the caller's promise.
    unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(block.add(at + s * TILE_ROWS).cast())) }
}

/// `q5_k::dot`'s horizontal sum of its 8 lanes, then the mins' running sum.
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes_sum(acc: [__m512; 8], mins: __m512) -> __m512 {
    let sum = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
        _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
    );
    _mm512_add_ps(sum, mins)
}

/// Block `b`'s `d_x d_w` and `-d_x dmin_w` for the 16 rows, and the mins' integer sum with the
/// row's sub-block sums.
///
/// # Safety
/// As `run`; `x` holds block `b`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn block_scales(block: *const u8, x: &Q8KRow, b: usize) -> (__m512, __m512, __m512i) {
    // SAFETY: the caller's promise.
    unsafe {
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(block.cast()));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(block.add(DMIN_AT).cast()));
        let mut mins = _mm512_setzero_si512();
        for s in 0..SUBS {
            let sums = _mm512_set1_epi32(x.sub_sums[b * SUBS + s]);
            mins = _mm512_add_epi32(mins, _mm512_mullo_epi32(bytes(block, MINS_AT, s), sums));
        }
        (
            _mm512_mul_ps(_mm512_set1_ps(x.d[b]), d),
            _mm512_mul_ps(_mm512_set1_ps(-x.d[b]), dmin),
            mins,
        )
    }
}

/// Q5_K for one row of `x`, read from the tile: per block, `dot`'s eight integer lanes for the
/// 16 rows, each added to its f32 lane by one FMA, and the mins' term to its running sum.
///
/// # Safety
/// As `q5k_tile_rows`, for this row of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q5k_one(tile: &[u8], x: Q8KRow) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut mins_total = _mm512_setzero_ps();
    for b in 0..x.d.len() {
        // SAFETY: block b of the tile is the `BLOCK_BYTES` at `b * BLOCK_BYTES`; the row's
        // values of block b at `b * 256` (the caller's promise).
        unsafe {
            let block = tile.as_ptr().add(b * BLOCK_BYTES);
            let mut sums = [_mm512_setzero_si512(); 8];
            for s in 0..SUBS {
                let scale = bytes(block, SCALES_AT, s);
                for (g, sum) in sums.iter_mut().enumerate() {
                    let values = broadcast(x.qs, b * SUPER_BLOCK + 32 * s + 4 * g);
                    let run = _mm512_dpbusd_epi32(_mm512_setzero_si512(), run(block, s, g), values);
                    *sum = _mm512_dpwssd_epi32(*sum, run, scale);
                }
            }
            let (d, dmin, mins) = block_scales(block, &x, b);
            mins_total = _mm512_add_ps(mins_total, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mins)));
            for (acc, sum) in acc.iter_mut().zip(sums) {
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), *acc);
            }
        }
    }
    lanes_sum(acc, mins_total)
}

thread_local! {
    /// A Q5_K tile's runs put together (64 per block, sub-block by sub-block) and its scales
    /// (8 per block): what the rows of a prefill read again and again, kept from one tile to
    /// the next.
    static UNPACKED: RefCell<(Vec<__m512i>, Vec<__m512i>)> = const {
        RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Q5_K for every row of `x`: the tile's runs put together and its scales once (in L1 or L2),
/// then per two rows of `x` (each run loaded once for them) `q5k_one`'s steps.
///
/// # Safety
/// As `q5k_tile_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q5k_many(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let blocks = x.blocks();
    UNPACKED.with_borrow_mut(|(runs, scales)| {
        runs.clear();
        scales.clear();
        for b in 0..blocks {
            // SAFETY: block b of the tile is the `BLOCK_BYTES` at `b * BLOCK_BYTES` (the
            // caller's promise).
            unsafe {
                let block = tile.as_ptr().add(b * BLOCK_BYTES);
                for s in 0..SUBS {
                    for g in 0..8 {
                        runs.push(run(block, s, g));
                    }
                    scales.push(bytes(block, SCALES_AT, s));
                }
            }
        }
        let x_rows = x.rows();
        let mut t = 0;
        // SAFETY (each call): the caller's promise.
        while t + 2 <= x_rows {
            let rows = [x.row(t), x.row(t + 1)];
            let sums = unsafe { q5k_rows(tile, runs, scales, rows) };
            for (k, sums) in sums.into_iter().enumerate() {
                put_row(out, x_rows, t + k, sums);
            }
            t += 2;
        }
        for t in t..x_rows {
            let [sums] = unsafe { q5k_rows(tile, runs, scales, [x.row(t)]) };
            put_row(out, x_rows, t, sums);
        }
    });
}

/// `q5k_one`'s sums of `T` rows of `x` over every block of the unpacked tile.
///
/// # Safety
/// As `q5k_tile_rows`, for these rows of `x`; `runs` and `scales` are the tile's, unpacked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q5k_rows<const T: usize>(
    tile: &[u8],
    runs: &[__m512i],
    scales: &[__m512i],
    x: [Q8KRow; T],
) -> [__m512; T] {
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    let mut mins_total = [_mm512_setzero_ps(); T];
    for (b, (runs, scales)) in runs
        .chunks_exact(SUPER_BLOCK / 4)
        .zip(scales.chunks_exact(SUBS))
        .enumerate()
    {
        let mut sums = [[_mm512_setzero_si512(); 8]; T];
        for (s, (runs, scale)) in runs.chunks_exact(8).zip(scales).enumerate() {
            for (g, weights) in runs.iter().enumerate() {
                for (sums, x) in sums.iter_mut().zip(&x) {
                    // SAFETY: the caller's promise.
                    let values = unsafe { broadcast(x.qs, b * SUPER_BLOCK + 32 * s + 4 * g) };
                    let run = _mm512_dpbusd_epi32(_mm512_setzero_si512(), *weights, values);
                    sums[g] = _mm512_dpwssd_epi32(sums[g], run, *scale);
                }
            }
        }
        for ((acc, mins_total), (sums, x)) in
            acc.iter_mut().zip(&mut mins_total).zip(sums.iter().zip(&x))
        {
            // SAFETY: the caller's promise.
            let (d, dmin, mins) = unsafe { block_scales(tile.as_ptr().add(b * BLOCK_BYTES), x, b) };
            *mins_total = _mm512_add_ps(*mins_total, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mins)));
            for (acc, sum) in acc.iter_mut().zip(sums) {
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(*sum), *acc);
            }
        }
    }
    let mut sums = [_mm512_setzero_ps(); T];
    for ((sum, acc), mins_total) in sums.iter_mut().zip(acc).zip(mins_total) {
        *sum = lanes_sum(acc, mins_total);
    }
    sums
}
