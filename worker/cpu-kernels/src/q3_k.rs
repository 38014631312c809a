//! Products of GGUF Q3_K weights, repacked at load in tiles of 16 rows, with activation rows
//! quantized as GGUF's Q8_K blocks of 256 values. candle's x86 `QMatMul` repacks no Q3_K: it
//! takes its AVX2 `vec_dot` at every row count, and the kernels take that function's float
//! steps (`dot`), so that the results equal candle's bit for bit on x86: per block, eight
//! integer sums (lane `l` takes runs `l`, values `4l..4l + 4`, of the block's eight chunks of
//! 32, each run's sum times its sub-block's scale), each added to its own f32 lane by one FMA
//! with `d_x d_w`; at the end the 8 lanes summed pairwise.
//!
//! A Q3_K block of 256 values (110 bytes): 32 bytes `hmask`, 64 bytes `qs`, 12 bytes of 6-bit
//! scales (one per sub-block of 16, stored `sc + 32`), `d` (f16). In chunk `c` of 128 values,
//! value `128c + 32k + j` (k < 4, j < 32) has bits `2k..2k + 2` of byte `32c + j` of `qs` and,
//! as its third bit, bit `4c + k` of byte `j` of `hmask`; that 3-bit `u` is `q + 4`. Value
//! `d sc q`.

use candle_core::quantized::GgmlDType;

use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q3k_tile::{BLOCK_BYTES as TILE_BLOCK_BYTES, HIGH_AT, QS_AT, SCALES_AT};
use crate::format::{half, SUPER_BLOCK, TILE_ROWS};
use crate::k_tiles::{KQuant, KTiles};
use crate::kernel::Kernel;

/// Bytes of a Q3_K block in the file.
const FILE_BLOCK_BYTES: usize = 110;
/// Where a file block's parts start.
const FILE_QS_AT: usize = 32;
const FILE_SCALES_AT: usize = 96;
const D_AT: usize = 108;

/// Value `v`'s `u = q + 4` (0..8) in a file block.
fn stored(block: &[u8], v: usize) -> u8 {
    let (c, k, j) = (v / 128, v % 128 / 32, v % 32);
    let low = block[FILE_QS_AT + 32 * c + j] >> (2 * k) & 3;
    let high = block[j] >> (4 * c + k) & 1;
    low | high << 2
}

/// Sub-block `j`'s stored scale (`sc + 32`, 0..64) from a block's 12 bytes (ggml's unpacking of
/// Q3_K's scales).
fn scale(j: usize, bytes: &[u8]) -> u8 {
    let (i, quarter) = (j % 4, j / 4);
    let low = bytes[j % 8] >> (4 * (quarter / 2)) & 0xF;
    let high = bytes[8 + i] >> (2 * quarter) & 3;
    low | high << 4
}

/// The 12 bytes that `scale` reads the 16 stored scales from.
fn scale_bytes(scales: [u8; 16]) -> [u8; 12] {
    let mut bytes = [0; 12];
    for j in 0..16 {
        let (i, quarter) = (j % 4, j / 4);
        bytes[j % 8] |= (scales[j] & 0xF) << (4 * (quarter / 2));
        bytes[8 + i] |= (scales[j] >> 4) << (2 * quarter);
    }
    bytes
}

/// The Q3_K format, whose tiles are `Q3KTiles`.
pub struct Q3K;

/// A `rows` x `blocks * 256` Q3_K matrix in tiles of 16 rows, owned.
pub type Q3KTiles = KTiles<Q3K>;

impl KQuant for Q3K {
    const DTYPE: GgmlDType = GgmlDType::Q3K;
    const NAME: &'static str = "Q3_K";
    const FILE_BLOCK_BYTES: usize = FILE_BLOCK_BYTES;
    const TILE_BLOCK_BYTES: usize = TILE_BLOCK_BYTES;

    fn put_block<'a>(bytes: &mut Vec<u8>, block: impl Fn(usize) -> &'a [u8]) {
        for r in 0..TILE_ROWS {
            bytes.extend_from_slice(&block(r)[D_AT..D_AT + 2]);
        }
        for sub in 0..16 {
            let scales = (0..TILE_ROWS).map(|r| scale(sub, &block(r)[FILE_SCALES_AT..]));
            bytes.extend(scales.map(|stored| stored.wrapping_sub(32)));
        }
        let runs = (0..16).map(|run| FILE_QS_AT + 4 * run);
        for at in runs.chain((0..8).map(|g| 4 * g)) {
            for r in 0..TILE_ROWS {
                bytes.extend_from_slice(&block(r)[at..at + 4]);
            }
        }
    }

    fn unpacked_row(tiles: &KTiles<Self>, r: usize) -> Vec<u8> {
        let (tile, row) = (tiles.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(tiles.blocks() * FILE_BLOCK_BYTES);
        let run_bytes = |block: &[u8], at: usize, runs: usize, out: &mut Vec<u8>| {
            for run in block[at..at + runs * 4 * TILE_ROWS].chunks_exact(4 * TILE_ROWS) {
                out.extend_from_slice(&run[4 * row..4 * row + 4]);
            }
        };
        for block in tile.chunks_exact(TILE_BLOCK_BYTES) {
            run_bytes(block, HIGH_AT, 8, &mut out);
            run_bytes(block, QS_AT, 16, &mut out);
            let stored = |sub: usize| block[SCALES_AT + sub * TILE_ROWS + row].wrapping_add(32);
            out.extend(scale_bytes(std::array::from_fn(stored)));
            out.extend_from_slice(&block[2 * row..2 * row + 2]);
        }
        out
    }

    fn tile_rows(kernel: Kernel, tiles: &KTiles<Self>, tile: usize, x: &Q8KRows, out: &mut [f32]) {
        tile_rows(kernel, tiles, tile, x, out)
    }
}

/// The reference product of one row of the file's Q3_K blocks and one Q8_K row, in candle's
/// float steps (its AVX2 `vec_dot`).
pub fn dot(weights: &[u8], x: Q8KRow) -> f32 {
    let mut lanes = [0f32; 8];
    for (b, block) in weights.chunks_exact(FILE_BLOCK_BYTES).enumerate() {
        let mut sums = [0i32; 8];
        for v in 0..SUPER_BLOCK {
            let q = i32::from(stored(block, v)) - 4;
            let sc = i32::from(scale(v / 16, &block[FILE_SCALES_AT..])) - 32;
            sums[v % 32 / 4] += sc * q * i32::from(x.qs[b * SUPER_BLOCK + v]);
        }
        let d = x.d[b] * half(block, D_AT);
        for (lane, sum) in lanes.iter_mut().zip(sums) {
            *lane = d.mul_add(sum as f32, *lane);
        }
    }
    let l = lanes;
    ((l[4] + l[0]) + (l[6] + l[2])) + ((l[5] + l[1]) + (l[7] + l[3]))
}

/// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`, each equal to
/// `dot` of the two bit for bit.
fn tile_rows(kernel: Kernel, matrix: &Q3KTiles, tile: usize, x: &Q8KRows, out: &mut [f32]) {
    match kernel {
        // SAFETY: `runs_here`, asserted by `matmul`; `vnni::q3k_tile_rows` asserts the tile's
        // and the rows' lengths.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { crate::vnni::q3k_tile_rows(matrix.tile(tile), x, out) },
        _ => {
            for c in 0..TILE_ROWS {
                let weights = matrix.unpacked_row(tile * TILE_ROWS + c);
                for t in 0..x.rows() {
                    out[c * x.rows() + t] = dot(&weights, x.row(t));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_bytes_are_what_scale_reads() {
        for seed in 0..64usize {
            let scales: [u8; 16] = std::array::from_fn(|j| ((seed + 13 * j) % 64) as u8);
            let bytes = scale_bytes(scales);
            for (j, want) in scales.into_iter().enumerate() {
                assert_eq!(scale(j, &bytes), want, "seed {seed} sub {j}");
            }
        }
    }
}
