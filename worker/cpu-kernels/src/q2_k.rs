//! Products of GGUF Q2_K weights, repacked at load in tiles of 16 rows (the same bytes,
//! rearranged), with activation rows quantized as GGUF's Q8_K blocks of 256 values. candle's
//! x86 `QMatMul` repacks no Q2_K: it takes its AVX2 `vec_dot` at every row count, and the
//! kernels take that function's float steps (`dot`), so that the results equal candle's bit
//! for bit on x86. Per block, in eight f32 lanes:
//! - lane `l` first takes the mins' integer sum `mn_2l Σx_2l + mn_2l+1 Σx_2l+1` (sub-blocks of
//!   16) by one FMA with `-d_x dmin_w`;
//! - then the integer sum of runs `l` (values `4l..4l + 4`) of the block's eight chunks of 32,
//!   each run's sum times its sub-block's scale, by one FMA with `d_x d_w`;
//! - at the end the 8 lanes are summed pairwise.
//!
//! A Q2_K block of 256 values (84 bytes): 16 bytes of scales (per sub-block of 16, the scale
//! in the low nibble and the min in the high one), 64 bytes `qs`, `d` and `dmin` (f16). In
//! chunk `c` of 128 values, value `128c + 32k + j` (k < 4, j < 32) is bits `2k..2k + 2` of byte
//! `32c + j` of `qs`. Value `d sc q - dmin mn`, q in 0..4.

use candle_core::quantized::GgmlDType;

use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q2k_tile::{BLOCK_BYTES as TILE_BLOCK_BYTES, DMIN_AT, QS_AT, SCALES_AT};
use crate::format::{half, SUPER_BLOCK, TILE_ROWS};
use crate::k_tiles::{KQuant, KTiles};
use crate::kernel::Kernel;

/// Bytes of a Q2_K block in the file.
const FILE_BLOCK_BYTES: usize = 84;
/// Where a file block's parts start.
const FILE_QS_AT: usize = 16;
const D_AT: usize = 80;

/// Value `v`'s `q` (0..4) in a file block.
fn stored(block: &[u8], v: usize) -> u8 {
    let (c, k, j) = (v / 128, v % 128 / 32, v % 32);
    block[FILE_QS_AT + 32 * c + j] >> (2 * k) & 3
}

/// The Q2_K format, whose tiles are `Q2KTiles`.
pub struct Q2K;

/// A `rows` x `blocks * 256` Q2_K matrix in tiles of 16 rows, owned.
pub type Q2KTiles = KTiles<Q2K>;

impl KQuant for Q2K {
    const DTYPE: GgmlDType = GgmlDType::Q2K;
    const NAME: &'static str = "Q2_K";
    const FILE_BLOCK_BYTES: usize = FILE_BLOCK_BYTES;
    const TILE_BLOCK_BYTES: usize = TILE_BLOCK_BYTES;

    fn put_block<'a>(bytes: &mut Vec<u8>, block: impl Fn(usize) -> &'a [u8]) {
        for at in [D_AT, D_AT + 2] {
            for r in 0..TILE_ROWS {
                bytes.extend_from_slice(&block(r)[at..at + 2]);
            }
        }
        for sub in 0..16 {
            bytes.extend((0..TILE_ROWS).map(|r| block(r)[sub]));
        }
        for run in 0..16 {
            for r in 0..TILE_ROWS {
                let at = FILE_QS_AT + 4 * run;
                bytes.extend_from_slice(&block(r)[at..at + 4]);
            }
        }
    }

    fn unpacked_row(tiles: &KTiles<Self>, r: usize) -> Vec<u8> {
        let (tile, row) = (tiles.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(tiles.blocks() * FILE_BLOCK_BYTES);
        for block in tile.chunks_exact(TILE_BLOCK_BYTES) {
            out.extend((0..16).map(|sub| block[SCALES_AT + sub * TILE_ROWS + row]));
            for run in block[QS_AT..].chunks_exact(4 * TILE_ROWS) {
                out.extend_from_slice(&run[4 * row..4 * row + 4]);
            }
            out.extend_from_slice(&block[2 * row..2 * row + 2]);
            out.extend_from_slice(&block[DMIN_AT + 2 * row..DMIN_AT + 2 * row + 2]);
        }
        out
    }

    fn tile_rows(kernel: Kernel, tiles: &KTiles<Self>, tile: usize, x: &Q8KRows, out: &mut [f32]) {
        tile_rows(kernel, tiles, tile, x, out)
    }
}

/// The reference product of one row of the file's Q2_K blocks and one Q8_K row, in candle's
/// float steps (its AVX2 `vec_dot`).
pub fn dot(weights: &[u8], x: Q8KRow) -> f32 {
    let mut lanes = [0f32; 8];
    for (b, block) in weights.chunks_exact(FILE_BLOCK_BYTES).enumerate() {
        let (d, dmin) = (x.d[b] * half(block, D_AT), -x.d[b] * half(block, D_AT + 2));
        let min = |sub: usize| i32::from(block[sub] >> 4) * x.bsums[b * 16 + sub];
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = dmin.mul_add((min(2 * l) + min(2 * l + 1)) as f32, *lane);
        }
        let mut sums = [0i32; 8];
        for v in 0..SUPER_BLOCK {
            let product = i32::from(stored(block, v)) * i32::from(x.qs[b * SUPER_BLOCK + v]);
            sums[v % 32 / 4] += i32::from(block[v / 16] & 0xF) * product;
        }
        for (lane, sum) in lanes.iter_mut().zip(sums) {
            *lane = d.mul_add(sum as f32, *lane);
        }
    }
    let l = lanes;
    ((l[4] + l[0]) + (l[6] + l[2])) + ((l[5] + l[1]) + (l[7] + l[3]))
}

/// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`, each equal to
/// `dot` of the two bit for bit.
fn tile_rows(kernel: Kernel, matrix: &Q2KTiles, tile: usize, x: &Q8KRows, out: &mut [f32]) {
    match kernel {
        // SAFETY: `runs_here`, asserted by `matmul`; `vnni::q2k_tile_rows` asserts the tile's
        // and the rows' lengths.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { crate::vnni::q2k_tile_rows(matrix.tile(tile), x, out) },
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
