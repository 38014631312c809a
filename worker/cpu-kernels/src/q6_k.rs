//! Products of GGUF Q6_K weights, repacked at load in tiles of 16 rows (the same bytes,
//! rearranged), with activation rows quantized as GGUF's Q8_K blocks of 256 values. candle's
//! x86 `QMatMul` takes two float orders for Q6_K, and the kernels take each where candle does,
//! so that the results equal candle's bit for bit on a CPU with AVX-512 VNNI:
//! - one activation row (`dot_one`, candle's AVX2 `vec_dot`): per block, eight integer sums
//!   (lane `l` takes runs `l` of the block's eight chunks of 32, each times its sub-block's
//!   scale), each added to its own f32 lane by one FMA with `d_w d_x`; the 8 lanes summed at
//!   the end;
//! - several rows (`dot_many`, candle's AVX-512 VNNI tiles): per sub-block of 16, the integer
//!   sum, then one FMA with `(d_w sc) d_x` into the row's running sum.
//!
//! A Q6_K block of 256 values (210 bytes): 128 bytes `ql` of low nibbles, 64 bytes `qh` of high
//! bit pairs, 16 signed 8-bit scales (one per sub-block of 16), `d` (f16). In half `h` of 128
//! values, value `128h + 32c + j` (chunk `c` < 4, `j` < 32) has the low nibble of byte
//! `64h + 32(c % 2) + j` of `ql` (its high nibble for `c >= 2`) and bits `2c..2c + 2` of byte
//! `32h + j` of `qh`. Value `d sc (q - 32)`.

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q6k_tile::{BLOCK_BYTES as TILE_BLOCK_BYTES, LOW_AT, SCALES_AT};
use crate::format::{SUPER_BLOCK, TILE_ROWS};
use crate::k_tiles::{KQuant, KTiles};
use crate::kernel::Kernel;

/// Bytes of a Q6_K block in the file.
const FILE_BLOCK_BYTES: usize = 210;
/// Where a file block's parts start.
const QH_AT: usize = 128;
const FILE_SCALES_AT: usize = 192;
const D_AT: usize = 208;

/// Value `v`'s 6-bit `q` (stored `q + 32`, 0..64) in a file block.
fn stored(block: &[u8], v: usize) -> u8 {
    let (h, c, j) = (v / 128, v % 128 / 32, v % 32);
    let low = block[64 * h + 32 * (c % 2) + j] >> (4 * (c / 2)) & 0xF;
    let high = block[QH_AT + 32 * h + j] >> (2 * c) & 3;
    low | high << 4
}

/// The Q6_K format, whose tiles are `Q6KTiles`.
pub struct Q6K;

/// A `rows` x `blocks * 256` Q6_K matrix in tiles of 16 rows, owned.
pub type Q6KTiles = KTiles<Q6K>;

impl KQuant for Q6K {
    const DTYPE: GgmlDType = GgmlDType::Q6K;
    const NAME: &'static str = "Q6_K";
    const FILE_BLOCK_BYTES: usize = FILE_BLOCK_BYTES;
    const TILE_BLOCK_BYTES: usize = TILE_BLOCK_BYTES;

    fn put_block<'a>(bytes: &mut Vec<u8>, block: impl Fn(usize) -> &'a [u8]) {
        for r in 0..TILE_ROWS {
            bytes.extend_from_slice(&block(r)[D_AT..D_AT + 2]);
        }
        for sub in 0..16 {
            bytes.extend((0..TILE_ROWS).map(|r| block(r)[FILE_SCALES_AT + sub]));
        }
        let runs = (0..4).flat_map(|hp| (0..8).map(move |g| 32 * hp + 4 * g));
        let high_runs = (0..2).flat_map(|h| (0..8).map(move |g| QH_AT + 32 * h + 4 * g));
        for at in runs.chain(high_runs) {
            for r in 0..TILE_ROWS {
                bytes.extend_from_slice(&block(r)[at..at + 4]);
            }
        }
    }

    fn unpacked_row(tiles: &KTiles<Self>, r: usize) -> Vec<u8> {
        let (tile, row) = (tiles.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(tiles.blocks() * FILE_BLOCK_BYTES);
        for block in tile.chunks_exact(TILE_BLOCK_BYTES) {
            for run in block[LOW_AT..].chunks_exact(4 * TILE_ROWS) {
                out.extend_from_slice(&run[4 * row..4 * row + 4]);
            }
            out.extend((0..16).map(|sub| block[SCALES_AT + sub * TILE_ROWS + row]));
            out.extend_from_slice(&block[2 * row..2 * row + 2]);
        }
        out
    }

    fn tile_rows(kernel: Kernel, tiles: &KTiles<Self>, tile: usize, x: &Q8KRows, out: &mut [f32]) {
        tile_rows(kernel, tiles, tile, x, out)
    }
}

/// The file block's `d` and its 16 scales.
fn scales(block: &[u8]) -> (f32, [i8; 16]) {
    let d = f16::from_le_bytes([block[D_AT], block[D_AT + 1]]).to_f32();
    (
        d,
        std::array::from_fn(|sub| block[FILE_SCALES_AT + sub] as i8),
    )
}

/// The reference product of one row of the file's Q6_K blocks and one Q8_K row, in candle's
/// float steps for a single activation row (its AVX2 `vec_dot`).
pub fn dot_one(weights: &[u8], x: Q8KRow) -> f32 {
    let mut lanes = [0f32; 8];
    for (b, block) in weights.chunks_exact(FILE_BLOCK_BYTES).enumerate() {
        let (d, scales) = scales(block);
        let mut sums = [0i32; 8];
        for v in 0..SUPER_BLOCK {
            let q = i32::from(stored(block, v)) - 32;
            let product = q * i32::from(x.qs[b * SUPER_BLOCK + v]);
            sums[v % 32 / 4] += i32::from(scales[v / 16]) * product;
        }
        let scale = x.d[b] * d;
        for (lane, sum) in lanes.iter_mut().zip(sums) {
            *lane = scale.mul_add(sum as f32, *lane);
        }
    }
    let l = lanes;
    ((l[4] + l[0]) + (l[6] + l[2])) + ((l[5] + l[1]) + (l[7] + l[3]))
}

/// The same in candle's float steps for several activation rows (its AVX-512 VNNI tiles).
pub fn dot_many(weights: &[u8], x: Q8KRow) -> f32 {
    let mut acc = 0f32;
    for (b, block) in weights.chunks_exact(FILE_BLOCK_BYTES).enumerate() {
        let (d, scales) = scales(block);
        for (sub, scale) in scales.into_iter().enumerate() {
            let values = b * SUPER_BLOCK + 16 * sub;
            let sum: i32 = (16 * sub..16 * (sub + 1))
                .zip(&x.qs[values..values + 16])
                .map(|(v, x)| i32::from(stored(block, v)) * i32::from(*x))
                .sum();
            let offset = -32 * x.bsums[values / 16];
            let scale = d * f32::from(scale);
            acc = ((sum + offset) as f32).mul_add(scale * x.d[b], acc);
        }
    }
    acc
}

/// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`, each equal to
/// `dot_one` of the two for one row of `x`, else `dot_many`, bit for bit.
fn tile_rows(kernel: Kernel, matrix: &Q6KTiles, tile: usize, x: &Q8KRows, out: &mut [f32]) {
    match kernel {
        // SAFETY: `runs_here`, asserted by `matmul`; `vnni::q6k_tile_rows` asserts the tile's
        // and the rows' lengths.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { crate::vnni::q6k_tile_rows(matrix.tile(tile), x, out) },
        _ => {
            let dot = if x.rows() == 1 { dot_one } else { dot_many };
            for c in 0..TILE_ROWS {
                let weights = matrix.unpacked_row(tile * TILE_ROWS + c);
                for t in 0..x.rows() {
                    out[c * x.rows() + t] = dot(&weights, x.row(t));
                }
            }
        }
    }
}
