//! AVX-512 VNNI products of the 16-row tiles of `packed`: one `vpdpbusd` forms a run of 4
//! products for the 16 rows, and lane `c` of each vector is row `c`. Every row's float steps
//! are those of `avx2::dot`, in its order, so the sums are its (and candle's) bit for bit:
//! - Q4_0 and Q8_0: eight accumulators, one per run of 4 values (`dot`'s 8 lanes), one FMA per
//!   block, then `dot`'s horizontal sum;
//! - Q4_1: the block's integer sum, then `(sum · d_w) · d_x + m_w · s_x` added to the row's
//!   running sum block by block;
//! - Q4_K (`k_quants`' tiles): per sub-block of 32, the integer sum, then `k_quants::dot`'s
//!   two fused steps, candle's own x86 Q4_K order;
//! - Q6_K (`q6_k`'s tiles): for one activation row, `q6_k::dot_one`'s eight lanes (each run's
//!   integer sum times its sub-block's scale); for several, per sub-block of 16 the integer
//!   sum and `q6_k::dot_many`'s FMA;
//! - Q2_K, Q3_K and Q5_K (`q2_k`'s, `q3_k`'s and `q5_k`'s tiles, in `vnni::q2_k` and its
//!   siblings): their `dot`'s eight lanes (and mins' terms).

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::activation::{Q8KRow, Q8KRows, Q8Row, Q8Rows, BLOCK, RUNS};
use crate::format::q4k_tile::{
    BLOCK_BYTES as TILE_BLOCK_BYTES, DMIN_AT, MINS_AT, NIBBLES_AT, SCALES_AT,
};
use crate::format::q6k_tile::{
    BLOCK_BYTES as Q6K_BLOCK_BYTES, HIGH_AT as Q6K_HIGH_AT, LOW_AT as Q6K_LOW_AT,
    SCALES_AT as Q6K_SCALES_AT,
};
use crate::format::{BlockFormat, SUBS, SUPER_BLOCK, TILE_ROWS};

mod lanes;
mod q2_k;
mod q3_k;
mod q5_k;
use lanes::{broadcast, put_row};
pub use q2_k::q2k_tile_rows;
pub use q3_k::q3k_tile_rows;
pub use q5_k::q5k_tile_rows;

/// The tile's 16 rows times every row of `x`: `out[c * x_rows + t]`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VNNI and F16C; `tile` is a tile of `format`
/// of `x.blocks()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn tile_rows(format: BlockFormat, tile: &[u8], x: &Q8Rows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(tile.len(), TILE_ROWS * x.blocks() * format.block_bytes());
    assert_eq!(out.len(), TILE_ROWS * x_rows);
    for t in 0..x_rows {
        let row = x.row(t);
        let runs = x.blocks() * RUNS;
        assert!(
            row.qs.len() == x.blocks() * BLOCK
                && row.nibble_offsets.len() == runs
                && row.byte_offsets.len() == runs
        );
    }
    let mut put = |t: usize, sums: __m512| put_row(out, x_rows, t, sums);
    // Rows of `x` in threes (Q4_1: fours), each weight loaded once for them; then one by one.
    // SAFETY (each kernel): the asserts above.
    let mut t = 0;
    match format {
        BlockFormat::Q4_1 => {
            while t + 4 <= x_rows {
                let sums = unsafe { q4_1(tile, std::array::from_fn::<_, 4, _>(|k| x.row(t + k))) };
                sums.into_iter()
                    .enumerate()
                    .for_each(|(k, s)| put(t + k, s));
                t += 4;
            }
            for t in t..x_rows {
                let [sums] = unsafe { q4_1(tile, [x.row(t)]) };
                put(t, sums);
            }
        }
        _ => {
            while t + 3 <= x_rows {
                let rows = std::array::from_fn::<_, 3, _>(|k| x.row(t + k));
                let sums = unsafe { q4_0_q8_0(format, tile, rows) };
                sums.into_iter()
                    .enumerate()
                    .for_each(|(k, s)| put(t + k, s));
                t += 3;
            }
            for t in t..x_rows {
                let [sums] = unsafe { q4_0_q8_0(format, tile, [x.row(t)]) };
                put(t, sums);
            }
        }
    }
}

/// Q4_0 or Q8_0: `dot`'s eight lanes per row, each a vector of the 16 rows, for `T` rows of
/// `x`.
///
/// # Safety
/// As `tile_rows`, for these rows of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_0_q8_0<const T: usize>(
    format: BlockFormat,
    tile: &[u8],
    x: [Q8Row; T],
) -> [__m512; T] {
    // A block of the tile: the 16 rows' blocks.
    let size = TILE_ROWS * format.block_bytes();
    let mut acc = [[_mm512_setzero_ps(); RUNS]; T];
    let nibble = _mm512_set1_epi8(0xF);
    // What the stored values (q + 8, q + 128) add to each run's sum, taken off by starting the
    // sum there.
    let offsets = x.map(|x| match format {
        BlockFormat::Q8_0 => x.byte_offsets,
        _ => x.nibble_offsets,
    });
    for b in 0..x[0].d.len() {
        // SAFETY: block b of the tile is the `size` bytes at `b * size`; the rows' values of
        // block b at `b * 32` (the caller's promise).
        unsafe {
            let block = tile.as_ptr().add(b * size);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(block as *const __m256i));
            let scales: [__m512; T] =
                std::array::from_fn(|t| _mm512_mul_ps(d, _mm512_set1_ps(x[t].d[b])));
            let mut step = |g: usize, weights: __m512i| {
                for (((acc, x), scale), offsets) in
                    acc.iter_mut().zip(&x).zip(&scales).zip(&offsets)
                {
                    let start = _mm512_set1_epi32(offsets[b * RUNS + g]);
                    let sum = _mm512_dpbusd_epi32(start, weights, run(x, b, g));
                    acc[g] = _mm512_fmadd_ps(*scale, _mm512_cvtepi32_ps(sum), acc[g]);
                }
            };
            let runs = block.add(32) as *const __m512i;
            match format {
                BlockFormat::Q8_0 => {
                    for g in 0..RUNS {
                        step(g, _mm512_loadu_si512(runs.add(g)));
                    }
                }
                _ => {
                    for g in 0..RUNS / 2 {
                        let v = _mm512_loadu_si512(runs.add(g));
                        step(g, _mm512_and_si512(v, nibble));
                        step(g + 4, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
                    }
                }
            }
        }
    }
    // `dot`'s horizontal sum of its 8 lanes, `((x4 + x0) + (x6 + x2)) + ((x5 + x1) + (x7 + x3))`,
    // then its `+ 0.0`.
    acc.map(|acc| {
        let sum = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
            _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
        );
        _mm512_add_ps(sum, _mm512_setzero_ps())
    })
}

/// Q4_1: `dot`'s running sum per row, a vector of the 16 rows, for `T` rows of `x`.
///
/// # Safety
/// As `tile_rows`, for these rows of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_1<const T: usize>(tile: &[u8], x: [Q8Row; T]) -> [__m512; T] {
    let size = TILE_ROWS * BlockFormat::Q4_1.block_bytes();
    let mut acc = [_mm512_setzero_ps(); T];
    let nibble = _mm512_set1_epi8(0xF);
    for b in 0..x[0].d.len() {
        // SAFETY: as in `q4_0_q8_0`.
        unsafe {
            let block = tile.as_ptr().add(b * size);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(block as *const __m256i));
            let m = _mm512_cvtph_ps(_mm256_loadu_si256(block.add(32) as *const __m256i));
            let runs = block.add(64) as *const __m512i;
            let mut sums = [_mm512_setzero_si512(); T];
            for g in 0..RUNS / 2 {
                let v = _mm512_loadu_si512(runs.add(g));
                let low = _mm512_and_si512(v, nibble);
                let high = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                for (sum, x) in sums.iter_mut().zip(&x) {
                    *sum = _mm512_dpbusd_epi32(*sum, low, run(x, b, g));
                    *sum = _mm512_dpbusd_epi32(*sum, high, run(x, b, g + 4));
                }
            }
            for ((acc, sum), x) in acc.iter_mut().zip(sums).zip(&x) {
                let products = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(sum), d),
                    _mm512_set1_ps(x.d[b]),
                );
                let term = _mm512_add_ps(products, _mm512_mul_ps(m, _mm512_set1_ps(x.s[b])));
                *acc = _mm512_add_ps(*acc, term);
            }
        }
    }
    // `dot` returns its (zero) vector sum plus the running sum.
    acc.map(|acc| _mm512_add_ps(_mm512_setzero_ps(), acc))
}

/// Run `g` (4 values) of block `b` of `x`, in every 32-bit lane.
///
/// # Safety
/// `x` holds block `b`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn run(x: &Q8Row, b: usize, g: usize) -> __m512i {
    // SAFETY: the caller's promise; 4 bytes at `b * 32 + 4 g`, g < 8.
    unsafe {
        let at = x.qs.as_ptr().add(b * BLOCK + 4 * g) as *const i32;
        _mm512_set1_epi32(std::ptr::read_unaligned(at))
    }
}

/// The Q4_K tile's 16 rows times every row of `x`: `out[c * x_rows + t]`, in the float steps
/// of `k_quants::dot`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VNNI and F16C; `tile` is a Q4_K tile of
/// `x.blocks()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn q4k_tile_rows(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(tile.len(), x.blocks() * TILE_BLOCK_BYTES);
    assert_eq!(out.len(), TILE_ROWS * x_rows);
    for t in 0..x_rows {
        let row = x.row(t);
        assert!(
            row.qs.len() == x.blocks() * SUPER_BLOCK && row.sub_sums.len() == x.blocks() * SUBS
        );
    }
    let mut put = |t: usize, sums: __m512| put_row(out, x_rows, t, sums);
    // Rows of `x` in fours, each weight loaded once for them; then one by one.
    // SAFETY (each call): the asserts above.
    let mut t = 0;
    while t + 4 <= x_rows {
        let sums = unsafe { q4k(tile, std::array::from_fn::<_, 4, _>(|k| x.row(t + k))) };
        sums.into_iter()
            .enumerate()
            .for_each(|(k, s)| put(t + k, s));
        t += 4;
    }
    for t in t..x_rows {
        let [sums] = unsafe { q4k(tile, [x.row(t)]) };
        put(t, sums);
    }
}

/// Q4_K: the running sum per row, a vector of the 16 rows, for `T` rows of `x`; a chunk's two
/// sub-blocks in separate integer sums, then each sub-block's two fused steps in order.
///
/// # Safety
/// As `q4k_tile_rows`, for these rows of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4k<const T: usize>(tile: &[u8], x: [Q8KRow; T]) -> [__m512; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    let nibble = _mm512_set1_epi8(0xF);
    for b in 0..x[0].d.len() {
        // SAFETY: block b of the tile is the `TILE_BLOCK_BYTES` at `b * TILE_BLOCK_BYTES`; the
        // rows' values of block b at `b * 256` (the caller's promise).
        unsafe {
            let block = tile.as_ptr().add(b * TILE_BLOCK_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(block as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(block.add(DMIN_AT) as *const __m256i));
            let runs = block.add(NIBBLES_AT) as *const __m512i;
            for c in 0..4 {
                let mut low = [_mm512_setzero_si512(); T];
                let mut high = [_mm512_setzero_si512(); T];
                for g in 0..8 {
                    let v = _mm512_loadu_si512(runs.add(8 * c + g));
                    let (l, h) = (
                        _mm512_and_si512(v, nibble),
                        _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble),
                    );
                    for t in 0..T {
                        let at = b * SUPER_BLOCK + 64 * c + 4 * g;
                        low[t] = _mm512_dpbusd_epi32(low[t], l, broadcast(x[t].qs, at));
                        high[t] = _mm512_dpbusd_epi32(high[t], h, broadcast(x[t].qs, at + 32));
                    }
                }
                for (j, sums) in [(2 * c, low), (2 * c + 1, high)] {
                    let byte = |at: usize| {
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                            block.add(at + j * TILE_ROWS) as *const __m128i,
                        )))
                    };
                    let scale = _mm512_mul_ps(d, byte(SCALES_AT));
                    let min = _mm512_mul_ps(dmin, byte(MINS_AT));
                    for t in 0..T {
                        let dx = x[t].d[b];
                        let f = _mm512_cvtepi32_ps(sums[t]);
                        acc[t] =
                            _mm512_fmadd_ps(f, _mm512_mul_ps(scale, _mm512_set1_ps(dx)), acc[t]);
                        let offset = dx * x[t].sub_sums[b * SUBS + j] as f32;
                        acc[t] = _mm512_fnmadd_ps(min, _mm512_set1_ps(offset), acc[t]);
                    }
                }
            }
        }
    }
    acc
}

/// The Q6_K tile's 16 rows times every row of `x`: `out[c * x_rows + t]`, in the float steps of
/// `q6_k::dot_one` for one row of `x`, else those of `q6_k::dot_many`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW, AVX-512 VNNI and F16C; `tile` is a Q6_K tile of
/// `x.blocks()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn q6k_tile_rows(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let x_rows = x.rows();
    assert_eq!(tile.len(), x.blocks() * Q6K_BLOCK_BYTES);
    assert_eq!(out.len(), TILE_ROWS * x_rows);
    for t in 0..x_rows {
        let row = x.row(t);
        assert!(
            row.qs.len() == x.blocks() * SUPER_BLOCK
                && row.run_offsets.len() == x.blocks() * SUPER_BLOCK / 4
                && row.bsums.len() == x.blocks() * 16
        );
    }
    // SAFETY (each call): the asserts above.
    if x_rows == 1 {
        put_row(out, 1, 0, unsafe { q6k_one(tile, x.row(0)) });
        return;
    }
    unsafe { q6k_many(tile, x, out) };
}

/// Run `g` of chunk `c` of half `h` of a Q6_K tile's block: the 16 rows' 4 stored values
/// (`q + 32`, 0..64) each.
///
/// # Safety
/// `block` is a Q6_K tile's block; h < 2, c < 4, g < 8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q6k_run(block: *const u8, h: usize, c: usize, g: usize) -> __m512i {
    // SAFETY: the caller's promise; the runs are 64 bytes each at `LOW_AT` and `HIGH_AT`.
    unsafe {
        let low = _mm512_loadu_si512(
            block
                .add(Q6K_LOW_AT + 64 * (8 * (2 * h + c % 2) + g))
                .cast(),
        );
        let high = _mm512_loadu_si512(block.add(Q6K_HIGH_AT + 64 * (8 * h + g)).cast());
        let low = if c < 2 {
            low
        } else {
            _mm512_srli_epi16(low, 4)
        };
        // Bits 2c..2c + 2 of each high byte to bits 4..6.
        let high = match c {
            0 => _mm512_slli_epi16(high, 4),
            1 => _mm512_slli_epi16(high, 2),
            2 => high,
            _ => _mm512_srli_epi16(high, 2),
        };
        _mm512_or_si512(
            _mm512_and_si512(low, _mm512_set1_epi8(0xF)),
            _mm512_and_si512(high, _mm512_set1_epi8(0x30)),
        )
    }
}

/// Q6_K for one row of `x`: per block, `dot_one`'s eight integer lanes for the 16 rows, each
/// added to its f32 lane by one FMA; the lanes summed as `dot_one` sums them.
///
/// # Safety
/// As `q6k_tile_rows`, for this row of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q6k_one(tile: &[u8], x: Q8KRow) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..x.d.len() {
        // SAFETY: block b of the tile is the `Q6K_BLOCK_BYTES` at `b * Q6K_BLOCK_BYTES`; the
        // row's values of block b at `b * 256` (the caller's promise).
        unsafe {
            let block = tile.as_ptr().add(b * Q6K_BLOCK_BYTES);
            // Each scale in the low half of its 32-bit lane, the high half 0: `vpmaddwd` then
            // multiplies a run's sum (|sum| <= 4 * 32 * 128, an i16) by it in one step.
            let scales: [__m512i; 16] = std::array::from_fn(|sub| {
                _mm512_cvtepu16_epi32(_mm256_cvtepi8_epi16(_mm_loadu_si128(
                    block.add(Q6K_SCALES_AT + sub * TILE_ROWS).cast(),
                )))
            });
            let mut sums = [_mm512_setzero_si512(); 8];
            for h in 0..2 {
                for c in 0..4 {
                    for (g, sum) in sums.iter_mut().enumerate() {
                        let v = 128 * h + 32 * c + 4 * g;
                        let at = b * SUPER_BLOCK + v;
                        let start = _mm512_set1_epi32(x.run_offsets[at / 4]);
                        let run = _mm512_dpbusd_epi32(
                            start,
                            q6k_run(block, h, c, g),
                            broadcast(x.qs, at),
                        );
                        *sum = _mm512_add_epi32(*sum, _mm512_madd_epi16(run, scales[v / 16]));
                    }
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(block.cast()));
            let scale = _mm512_mul_ps(_mm512_set1_ps(x.d[b]), d);
            for (acc, sum) in acc.iter_mut().zip(sums) {
                *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), *acc);
            }
        }
    }
    _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
        _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
    )
}

thread_local! {
    /// A Q6_K tile's runs put together (64 per block), and its rows' `d sc` (16 per block):
    /// what the rows of a prefill read again and again, kept from one tile to the next.
    static Q6K_UNPACKED: RefCell<(Vec<__m512i>, Vec<__m512>)> = const {
        RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Q6_K for every row of `x`: the tile's runs put together and its scales once (in L1 or
/// L2), then per four rows of `x` (each run loaded once for them), block and sub-block of 16,
/// the integer sum (started at the row's offsets) and `dot_many`'s FMA into the row's running
/// sum, a vector of the 16 rows.
///
/// # Safety
/// As `q6k_tile_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q6k_many(tile: &[u8], x: &Q8KRows, out: &mut [f32]) {
    let blocks = x.blocks();
    Q6K_UNPACKED.with_borrow_mut(|(runs, scales)| {
        runs.clear();
        scales.clear();
        for b in 0..blocks {
            // SAFETY: block b of the tile is the `Q6K_BLOCK_BYTES` at `b * Q6K_BLOCK_BYTES`
            // (the caller's promise).
            unsafe {
                let block = tile.as_ptr().add(b * Q6K_BLOCK_BYTES);
                // Run i holds values 4i..4i + 4: half i / 32, chunk i / 8 % 4, run i % 8.
                runs.extend((0..SUPER_BLOCK / 4).map(|i| q6k_run(block, i / 32, i / 8 % 4, i % 8)));
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(block.cast()));
                scales.extend((0..16).map(|sub| {
                    let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        block.add(Q6K_SCALES_AT + sub * TILE_ROWS).cast(),
                    )));
                    _mm512_mul_ps(d, sc)
                }));
            }
        }
        let x_rows = x.rows();
        let mut t = 0;
        // SAFETY (each call): the caller's promise.
        while t + 4 <= x_rows {
            let rows = std::array::from_fn::<_, 4, _>(|k| x.row(t + k));
            let sums = unsafe { q6k_rows(runs, scales, rows) };
            for (k, sums) in sums.into_iter().enumerate() {
                put_row(out, x_rows, t + k, sums);
            }
            t += 4;
        }
        for t in t..x_rows {
            let [sums] = unsafe { q6k_rows(runs, scales, [x.row(t)]) };
            put_row(out, x_rows, t, sums);
        }
    });
}

/// The running sums of `T` rows of `x` over every block of the unpacked tile.
///
/// # Safety
/// The rows hold the tile's blocks: `runs` 64 and `scales` 16 per block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q6k_rows<const T: usize>(
    runs: &[__m512i],
    scales: &[__m512],
    x: [Q8KRow; T],
) -> [__m512; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, (runs, scales)) in runs
        .chunks_exact(64)
        .zip(scales.chunks_exact(16))
        .enumerate()
    {
        for (sub, scale) in scales.iter().enumerate() {
            let first = b * SUPER_BLOCK + 16 * sub;
            let mut sums: [__m512i; T] =
                std::array::from_fn(|t| _mm512_set1_epi32(-32 * x[t].bsums[first / 16]));
            for g in 0..4 {
                for (sum, x) in sums.iter_mut().zip(&x) {
                    // SAFETY: the caller's promise.
                    let values = unsafe { broadcast(x.qs, first + 4 * g) };
                    *sum = _mm512_dpbusd_epi32(*sum, runs[4 * sub + g], values);
                }
            }
            for ((acc, sum), x) in acc.iter_mut().zip(sums).zip(&x) {
                let step = _mm512_mul_ps(*scale, _mm512_set1_ps(x.d[b]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), step, *acc);
            }
        }
    }
    acc
}
