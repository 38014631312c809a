//! Elementwise steps of the fast engine that candle runs as separate ops, fused into one pass
//! over candle's barrier pool with candle's arithmetic per value, so that the results are
//! candle's bit for bit.

use std::sync::Mutex;

use candle_core::utils::barrier_pool;

/// Values per unit of work: a few pages, so that two threads split a prefill's activations
/// evenly and a decode step's stay on one thread.
const CHUNK: usize = 4096;

/// `silu(gate) · up`, each value as candle's `silu` then `Mul` compute it:
/// `g / (1 + exp(-g))`, times `u`.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    let mut out = vec![0.0; gate.len()];
    let chunks: Vec<Mutex<&mut [f32]>> = out.chunks_mut(CHUNK).map(Mutex::new).collect();
    barrier_pool().execute_chunked(chunks.len(), |range| {
        for c in range {
            // Each chunk is taken by one thread only, so the lock is never contended (and
            // never poisoned: nothing below panics while it is held).
            let mut out = chunks[c].lock().unwrap_or_else(|e| e.into_inner());
            let at = c * CHUNK;
            for ((out, g), u) in out.iter_mut().zip(&gate[at..]).zip(&up[at..]) {
                *out = g / (1.0 + (-g).exp()) * u;
            }
        }
    });
    drop(chunks);
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn silu_mul_is_candles_silu_then_mul_bit_for_bit() {
        // Large and small magnitudes of both signs, and lengths on both sides of a chunk.
        for len in [1, 7, CHUNK, CHUNK + 3, 5 * CHUNK + 11] {
            let gate: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 37.0)
                .collect();
            let up: Vec<f32> = (0..len)
                .map(|i| ((i * 104_729 % 1999) as f32 - 999.0) / 113.0)
                .collect();
            let ours = silu_mul(&gate, &up);
            let tensor = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
            let theirs = (tensor(&gate).silu().unwrap() * tensor(&up))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let differ = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(differ, None, "length {len}");
        }
    }
}
