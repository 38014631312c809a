//! Activation rows quantized to 8 bits per block of 32, once per product (or once for the
//! products that read the same input: Q/K/V, gate/up). The values are those of GGUF's Q8_0 and
//! Q8_1 blocks as candle (and llama.cpp's reference) writes them, scales rounded to f16, so the
//! integer sums the kernels form are the ones candle's `QMatMul` forms. The k-quants' products
//! read the same rows per block of 256, as GGUF's Q8_K blocks (`Q8KRows`). A prefill's
//! rows are quantized on candle's barrier pool, the products' pool, as candle quantizes its own.

use std::sync::Mutex;

use candle_core::utils::barrier_pool;
use half::f16;

use crate::format::{SUBS, SUPER_BLOCK};

/// Values per block.
pub const BLOCK: usize = 32;

/// Runs of 4 values per block: the lanes of the AVX2 kernels' per-block sums.
pub const RUNS: usize = BLOCK / 4;

/// `rows` activation rows of `blocks` blocks each.
#[derive(Default)]
pub struct Q8Rows {
    rows: usize,
    blocks: usize,
    /// The scale of each block (an f16 value).
    d: Vec<f32>,
    /// `d * Σ qs` of each block, as Q8_1 stores it (an f16 value).
    s: Vec<f32>,
    qs: Vec<i8>,
    /// `-8 Σ qs` of each run of 4 values (8 per block): what the packed kernels' Q4_0 nibbles
    /// (stored `q + 8`) add to a run's sum, its starting value there.
    nibble_offsets: Vec<i32>,
    /// `-128 Σ qs`: the same for Q8_0's packed bytes (stored `q + 128`).
    byte_offsets: Vec<i32>,
}

/// One activation row.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub qs: &'a [i8],
    /// `-8 Σ qs` of each run of 4 values.
    pub nibble_offsets: &'a [i32],
    /// `-128 Σ qs` of each run of 4 values.
    pub byte_offsets: &'a [i32],
}

/// `v.round() as i8` (halves away from zero, saturating) in instructions the compiler
/// vectorizes: `f32::round` is a call to libm's `roundf` on x86-64, a share of every decode
/// step. Past the clamp `v - t` is exact, so the comparisons decide as `round` does; NaN gives
/// 0, as its cast does.
#[inline(always)]
fn round_to_i8(v: f32) -> i8 {
    let v = v.clamp(-128.0, 127.0);
    let t = v as i32;
    let fraction = v - t as f32;
    (t + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5)) as i8
}

impl Q8Rows {
    /// Quantizes `x`, rows of `cols` values (a multiple of 32), reusing this value's buffers.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        assert!(
            cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols.max(1)),
            "{} values in rows of {cols}: rows must be whole blocks of {BLOCK}",
            x.len()
        );
        self.rows = x.len().checked_div(cols).unwrap_or(0);
        self.blocks = cols / BLOCK;
        let (rows, blocks) = (self.rows, self.blocks);
        self.d.resize(rows * blocks, 0.0);
        self.s.resize(rows * blocks, 0.0);
        self.qs.resize(rows * cols, 0);
        self.nibble_offsets.resize(rows * blocks * RUNS, 0);
        self.byte_offsets.resize(rows * blocks * RUNS, 0);
        let row_parts = x
            .chunks_exact(cols.max(1))
            .zip(self.d.chunks_exact_mut(blocks.max(1)))
            .zip(self.s.chunks_exact_mut(blocks.max(1)))
            .zip(self.qs.chunks_exact_mut(cols.max(1)))
            .zip(self.nibble_offsets.chunks_exact_mut((blocks * RUNS).max(1)))
            .zip(self.byte_offsets.chunks_exact_mut((blocks * RUNS).max(1)))
            .collect();
        each_on_the_pool(
            row_parts,
            |(((((x, d), s), qs), nibble_offsets), byte_offsets)| {
                quantize_row(x, d, s, qs, nibble_offsets, byte_offsets)
            },
        );
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    pub fn row(&self, t: usize) -> Q8Row<'_> {
        let (b0, b1) = (t * self.blocks, (t + 1) * self.blocks);
        Q8Row {
            d: &self.d[b0..b1],
            s: &self.s[b0..b1],
            qs: &self.qs[b0 * BLOCK..b1 * BLOCK],
            nibble_offsets: &self.nibble_offsets[b0 * RUNS..b1 * RUNS],
            byte_offsets: &self.byte_offsets[b0 * RUNS..b1 * RUNS],
        }
    }
}

/// `rows` activation rows of `blocks` Q8_K blocks each: candle's `BlockQ8K` values.
#[derive(Default)]
pub struct Q8KRows {
    rows: usize,
    blocks: usize,
    /// The scale of each block (f32).
    d: Vec<f32>,
    qs: Vec<i8>,
    /// `qs + 128`, unsigned: the unsigned operand of `vpdpbusd` where the weights are signed
    /// (a prefill's Q3_K products).
    biased_qs: Vec<u8>,
    /// `Σ qs` of each sub-block of 32 (the sum of two of the block's `bsums`).
    sub_sums: Vec<i32>,
    /// `-32 Σ qs` of each run of 4 values (64 per block): what Q6_K's stored values (`q + 32`)
    /// add to a run's sum, and Q3_K's times 8 (`8q + 32`): its starting value there.
    run_offsets: Vec<i32>,
    /// `Σ qs` of each sub-block of 16 (candle's `bsums`): Q2_K's mins and, times `-32`, the
    /// starting value of a sub-block's sum in a prefill's Q6_K products.
    bsums: Vec<i32>,
}

/// One activation row.
#[derive(Clone, Copy)]
pub struct Q8KRow<'a> {
    pub d: &'a [f32],
    pub qs: &'a [i8],
    /// `qs + 128`, unsigned.
    pub biased_qs: &'a [u8],
    pub sub_sums: &'a [i32],
    /// `-32 Σ qs` of each run of 4 values.
    pub run_offsets: &'a [i32],
    /// `Σ qs` of each sub-block of 16.
    pub bsums: &'a [i32],
}

impl Q8KRows {
    /// Quantizes `x`, rows of `cols` values (a multiple of 256), reusing this value's buffers,
    /// as candle's `BlockQ8K::from_float` does: the scale from the value of largest magnitude,
    /// its sign kept (`-127 / max`).
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        assert!(
            cols.is_multiple_of(SUPER_BLOCK) && x.len().is_multiple_of(cols.max(1)),
            "{} values in rows of {cols}: rows must be whole blocks of {SUPER_BLOCK}",
            x.len()
        );
        self.rows = x.len().checked_div(cols).unwrap_or(0);
        self.blocks = cols / SUPER_BLOCK;
        let (rows, blocks) = (self.rows, self.blocks);
        let runs = SUPER_BLOCK / 4;
        self.d.resize(rows * blocks, 0.0);
        self.qs.resize(rows * cols, 0);
        self.biased_qs.resize(rows * cols, 0);
        self.sub_sums.resize(rows * blocks * SUBS, 0);
        self.run_offsets.resize(rows * blocks * runs, 0);
        self.bsums.resize(rows * blocks * 16, 0);
        let row_parts = x
            .chunks_exact(cols.max(1))
            .zip(self.d.chunks_exact_mut(blocks.max(1)))
            .zip(self.qs.chunks_exact_mut(cols.max(1)))
            .zip(self.biased_qs.chunks_exact_mut(cols.max(1)))
            .zip(self.sub_sums.chunks_exact_mut((blocks * SUBS).max(1)))
            .zip(self.run_offsets.chunks_exact_mut((blocks * runs).max(1)))
            .zip(self.bsums.chunks_exact_mut((blocks * 16).max(1)))
            .collect();
        each_on_the_pool(
            row_parts,
            |((((((x, d), qs), biased_qs), sub_sums), run_offsets), bsums)| {
                quantize_k_row(x, d, qs, sub_sums, run_offsets, bsums);
                for (biased, q) in biased_qs.iter_mut().zip(qs.iter()) {
                    *biased = (*q as u8) ^ 0x80;
                }
            },
        );
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    pub fn row(&self, t: usize) -> Q8KRow<'_> {
        let (b0, b1) = (t * self.blocks, (t + 1) * self.blocks);
        Q8KRow {
            d: &self.d[b0..b1],
            qs: &self.qs[b0 * SUPER_BLOCK..b1 * SUPER_BLOCK],
            biased_qs: &self.biased_qs[b0 * SUPER_BLOCK..b1 * SUPER_BLOCK],
            sub_sums: &self.sub_sums[b0 * SUBS..b1 * SUBS],
            run_offsets: &self.run_offsets[b0 * SUPER_BLOCK / 4..b1 * SUPER_BLOCK / 4],
            bsums: &self.bsums[b0 * 16..b1 * 16],
        }
    }
}

/// `work` on each item, the items split over candle's barrier pool where there are several.
fn each_on_the_pool<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) {
    if items.len() <= 1 {
        items.into_iter().for_each(work);
        return;
    }
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    barrier_pool().execute_chunked(items.len(), |range| {
        for i in range {
            // Each item is taken by one thread only, so the lock is never contended (and never
            // poisoned: nothing panics while it is held).
            let item = items[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(item) = item {
                work(item);
            }
        }
    });
}

/// One row of `Q8Rows`: per block of 32, `d = amax / 127` (then rounded to f16), the values,
/// their sum times `d` (Q8_1's `s`), and each run's offsets.
fn quantize_row(
    x: &[f32],
    d: &mut [f32],
    s: &mut [f32],
    qs: &mut [i8],
    nibble_offsets: &mut [i32],
    byte_offsets: &mut [i32],
) {
    for (b, block) in x.chunks_exact(BLOCK).enumerate() {
        let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
        let scale = amax / 127.0;
        let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        let qs = &mut qs[b * BLOCK..(b + 1) * BLOCK];
        for (q, x) in qs.iter_mut().zip(block) {
            *q = round_to_i8(x * inverse);
        }
        let mut sum = 0;
        for (g, run) in qs.chunks_exact(4).enumerate() {
            let run_sum: i32 = run.iter().map(|q| i32::from(*q)).sum();
            nibble_offsets[b * RUNS + g] = -8 * run_sum;
            byte_offsets[b * RUNS + g] = -128 * run_sum;
            sum += run_sum;
        }
        let scale = f16::from_f32(scale);
        d[b] = scale.to_f32();
        s[b] = (f16::from_f32(sum as f32) * scale).to_f32();
    }
}

/// One row of `Q8KRows`, as candle's `BlockQ8K::from_float`: per block of 256, the value of
/// largest magnitude (the first, its sign kept) gives `inverse = -127 / max`, the values
/// `round(inverse x)` and `d = 1 / inverse`; then the sums of the sub-blocks and runs.
fn quantize_k_row(
    x: &[f32],
    d: &mut [f32],
    qs: &mut [i8],
    sub_sums: &mut [i32],
    run_offsets: &mut [i32],
    bsums: &mut [i32],
) {
    let runs = SUPER_BLOCK / 4;
    for (b, block) in x.chunks_exact(SUPER_BLOCK).enumerate() {
        let qs = &mut qs[b * SUPER_BLOCK..(b + 1) * SUPER_BLOCK];
        // candle keeps the first value whose magnitude exceeds all before it: the first of the
        // largest magnitude. NaN is never greater, as in candle's comparison.
        let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
        if amax == 0.0 {
            d[b] = 0.0;
            qs.fill(0);
            sub_sums[b * SUBS..(b + 1) * SUBS].fill(0);
            run_offsets[b * runs..(b + 1) * runs].fill(0);
            bsums[b * 16..(b + 1) * 16].fill(0);
            continue;
        }
        // `amax` is a value's magnitude, so `find` finds one.
        let max = block
            .iter()
            .copied()
            .find(|x| x.abs() == amax)
            .unwrap_or(amax);
        let inverse = -127.0 / max;
        for (q, x) in qs.iter_mut().zip(block) {
            *q = round_to_i8(inverse * x);
        }
        for (sum, sub) in sub_sums[b * SUBS..].iter_mut().zip(qs.chunks_exact(32)) {
            *sum = sub.iter().map(|q| i32::from(*q)).sum();
        }
        for (offset, run) in run_offsets[b * runs..].iter_mut().zip(qs.chunks_exact(4)) {
            *offset = -32 * run.iter().map(|q| i32::from(*q)).sum::<i32>();
        }
        for (sum, sub) in bsums[b * 16..].iter_mut().zip(qs.chunks_exact(16)) {
            *sum = sub.iter().map(|q| i32::from(*q)).sum();
        }
        d[b] = 1.0 / inverse;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn rounding_to_i8_is_rounds_saturating_cast() {
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999997,
            -0.49999997,
            127.5,
            -127.5,
            126.50001,
            1e10,
            -1e10,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        // Every f32 from -130 to 130 a few ulps apart near each half, and a sweep between.
        for i in -260..=260 {
            let half = i as f32 * 0.5;
            let mut v = half;
            for _ in 0..3 {
                v = v.next_up();
                cases.push(v);
            }
            v = half;
            for _ in 0..3 {
                v = v.next_down();
                cases.push(v);
            }
            cases.push(half);
        }
        cases.extend((0..100_000).map(|i| -130.0 + i as f32 * 0.0026));
        for v in cases {
            assert_eq!(round_to_i8(v), v.round() as i8, "{v:e}");
        }
    }

    fn candle_blocks(x: &[f32], cols: usize, dtype: GgmlDType) -> Vec<u8> {
        let tensor = Tensor::from_slice(x, (x.len() / cols, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&tensor, dtype)
            .unwrap()
            .data()
            .unwrap()
            .into_owned()
    }

    fn half(bytes: &[u8]) -> f32 {
        f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
    }

    /// The same values as candle's Q8_0 blocks (d, qs) and Q8_1 blocks (d, s, qs), zero blocks
    /// included.
    #[test]
    fn rows_equal_candles_q8_0_and_q8_1_blocks() {
        let mut x: Vec<f32> = (0..3 * 96)
            .map(|i| ((i * 7919) % 211) as f32 / 37.0 - 2.9)
            .collect();
        x[32..64].fill(0.0);
        let mut rows = Q8Rows::default();
        rows.quantize(&x, 96);
        assert_eq!((rows.rows(), rows.blocks()), (3, 3));
        let q8_0 = candle_blocks(&x, 96, GgmlDType::Q8_0);
        let q8_1 = candle_blocks(&x, 96, GgmlDType::Q8_1);
        for t in 0..3 {
            let row = rows.row(t);
            for b in 0..3 {
                let (zero, one) = (&q8_0[(t * 3 + b) * 34..], &q8_1[(t * 3 + b) * 36..]);
                let qs: Vec<u8> = row.qs[b * BLOCK..(b + 1) * BLOCK]
                    .iter()
                    .map(|q| *q as u8)
                    .collect();
                assert_eq!(row.d[b], half(zero), "row {t} block {b}");
                assert_eq!(row.d[b], half(one), "row {t} block {b}");
                assert_eq!(row.s[b], half(&one[2..]), "row {t} block {b}");
                assert_eq!(qs, zero[2..34], "row {t} block {b}");
                assert_eq!(qs, one[4..36], "row {t} block {b}");
                for g in 0..RUNS {
                    let run = &qs[4 * g..4 * g + 4];
                    let sum: i32 = run.iter().map(|q| i32::from(*q as i8)).sum();
                    let at = b * RUNS + g;
                    assert_eq!(
                        row.nibble_offsets[at],
                        -8 * sum,
                        "row {t} block {b} run {g}"
                    );
                    assert_eq!(
                        row.byte_offsets[at],
                        -128 * sum,
                        "row {t} block {b} run {g}"
                    );
                }
            }
        }
    }

    /// The same values as candle's Q8_K blocks (`d`, `qs`, `bsums` and their sums in pairs, and
    /// the runs' offsets, which add up to `-32` times each `bsum`), a zero block, a block whose
    /// largest magnitude is positive and one where it comes with both signs included.
    #[test]
    fn rows_equal_candles_q8k_blocks() {
        let mut x: Vec<f32> = (0..2 * 768)
            .map(|i| ((i * 7919) % 211) as f32 / 37.0 - 2.9)
            .collect();
        x[256..512].fill(0.0);
        x[600] = 9.5;
        // Two values of the largest magnitude, of both signs: candle takes the first's sign.
        x[1100] = -9.5;
        x[1200] = 9.5;
        let mut rows = Q8KRows::default();
        rows.quantize(&x, 768);
        assert_eq!((rows.rows(), rows.blocks()), (2, 3));
        let tensor = Tensor::from_slice(&x, (2, 768), &Device::Cpu).unwrap();
        let candle = QTensor::quantize(&tensor, GgmlDType::Q8K)
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        assert_eq!(candle.len(), 6 * 292);
        for t in 0..2 {
            let row = rows.row(t);
            for b in 0..3 {
                let block = &candle[(t * 3 + b) * 292..(t * 3 + b + 1) * 292];
                let d = f32::from_le_bytes(block[..4].try_into().unwrap());
                assert_eq!(row.d[b].to_bits(), d.to_bits(), "row {t} block {b}");
                let qs: Vec<i8> = block[4..260].iter().map(|q| *q as i8).collect();
                assert_eq!(&row.qs[b * 256..(b + 1) * 256], qs, "row {t} block {b}");
                let biased: Vec<u8> = qs.iter().map(|q| (i16::from(*q) + 128) as u8).collect();
                assert_eq!(
                    &row.biased_qs[b * 256..(b + 1) * 256],
                    biased,
                    "row {t} block {b}"
                );
                for j in 0..SUBS {
                    let bsum = |i: usize| {
                        i32::from(i16::from_le_bytes([block[260 + 2 * i], block[261 + 2 * i]]))
                    };
                    let want = bsum(2 * j) + bsum(2 * j + 1);
                    assert_eq!(
                        row.sub_sums[b * SUBS + j],
                        want,
                        "row {t} block {b} sub {j}"
                    );
                }
                for i in 0..16 {
                    let runs = &row.run_offsets[b * 64 + 4 * i..b * 64 + 4 * (i + 1)];
                    let qs = &row.qs[b * 256 + 16 * i..b * 256 + 16 * (i + 1)];
                    assert_eq!(
                        runs,
                        qs.chunks(4)
                            .map(|run| -32 * run.iter().map(|q| i32::from(*q)).sum::<i32>())
                            .collect::<Vec<_>>(),
                        "row {t} block {b} runs of sub-block {i} of 16"
                    );
                    let bsum = i16::from_le_bytes([block[260 + 2 * i], block[261 + 2 * i]]);
                    assert_eq!(
                        (runs.iter().sum::<i32>(), row.bsums[b * 16 + i]),
                        (-32 * i32::from(bsum), i32::from(bsum)),
                        "row {t} block {b} bsum {i}"
                    );
                }
            }
        }
    }
}
