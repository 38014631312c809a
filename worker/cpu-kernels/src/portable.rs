//! The reference kernel: plain Rust on every CPU.

use crate::activation::{Q8Row, BLOCK};
use crate::format::{half, BlockFormat, DenseFormat};

/// The reference kernel: integer sums per block, scaled in f32.
pub fn dot(format: BlockFormat, weights: &[u8], x: Q8Row) -> f32 {
    let size = format.block_bytes();
    let mut sum = 0.0;
    for (b, block) in weights.chunks_exact(size).enumerate() {
        let q8 = &x.qs[b * BLOCK..(b + 1) * BLOCK];
        let d = half(block, 0) * x.d[b];
        sum += match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let (offset, qs) = match format {
                    BlockFormat::Q4_0 => (8, &block[2..]),
                    _ => (0, &block[4..]),
                };
                let mut dot = 0i32;
                for j in 0..16 {
                    dot += (i32::from(qs[j] & 0xF) - offset) * i32::from(q8[j]);
                    dot += (i32::from(qs[j] >> 4) - offset) * i32::from(q8[j + 16]);
                }
                match format {
                    // candle's order (`k_quants::BlockQ4_1::vec_dot`).
                    BlockFormat::Q4_1 => {
                        dot as f32 * half(block, 0) * x.d[b] + half(block, 2) * x.s[b]
                    }
                    _ => d * dot as f32,
                }
            }
            BlockFormat::Q8_0 => {
                let dot: i32 = block[2..]
                    .iter()
                    .zip(q8)
                    .map(|(w, x)| i32::from(*w as i8) * i32::from(*x))
                    .sum();
                d * dot as f32
            }
        };
    }
    sum
}

/// The reference dense kernel: one f32 sum, in order.
pub fn dense_dot(format: DenseFormat, weights: &[u8], x: &[f32]) -> f32 {
    x.iter()
        .enumerate()
        .map(|(j, x)| format.value(weights, j) * x)
        .sum()
}
