//! Products of GGUF Q4_K weights, repacked at load in tiles of 16 rows, with activation rows
//! quantized as GGUF's Q8_K blocks of 256 values. The per-row float steps are those of candle's
//! x86 Q4_K kernels (its AVX-512 VNNI tiles and its AMX prefill take the same ones), so the
//! results equal candle's `QMatMul` bit for bit on those CPUs; the tiles take 2,368 bytes where
//! the file's 16 rows take 2,304, and replace them.
//!
//! A Q4_K block of 256 values (144 bytes): `d`, `dmin` (f16), 12 bytes of 6-bit scales and mins
//! for its 8 sub-blocks of 32, then 128 bytes of nibbles: byte `j` of chunk `c` (32 bytes) holds
//! value `64c + j` in its low nibble and `64c + 32 + j` in its high one. Value `d sc q - dmin mn`.
//!
//! A tile holds, per block, for its 16 rows: `d` (16 f16), `dmin` (16 f16), the 8 sub-blocks'
//! scales (16 bytes each), their mins (the same), then for each chunk `c` and run `g` of 4 (8
//! runs) the 16 rows' bytes `4g..4g + 4` of chunk `c`: the low nibbles are run `g` of sub-block
//! `2c`, the high ones run `g` of sub-block `2c + 1`.

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q4k_tile::{
    BLOCK_BYTES as TILE_BLOCK_BYTES, DMIN_AT, MINS_AT, NIBBLES_AT, SCALES_AT,
};
use crate::format::{SUBS, SUPER_BLOCK, TILE_ROWS};
use crate::k_tiles::{KQuant, KTiles};
use crate::kernel::Kernel;

/// Bytes of a Q4_K block in the file.
const FILE_BLOCK_BYTES: usize = 144;

/// Sub-block `j`'s 6-bit scale and min from a block's 12 bytes (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// The 12 bytes that `scale_min` reads the 8 scales and mins from.
fn scale_bytes(scales: [u8; SUBS], mins: [u8; SUBS]) -> [u8; 12] {
    let mut bytes = [0; 12];
    for i in 0..4 {
        bytes[i] = scales[i] | ((scales[i + 4] >> 4) << 6);
        bytes[i + 4] = mins[i] | ((mins[i + 4] >> 4) << 6);
        bytes[i + 8] = (scales[i + 4] & 0xF) | ((mins[i + 4] & 0xF) << 4);
    }
    bytes
}

/// The Q4_K format, whose tiles are `Q4KTiles`.
pub struct Q4K;

/// A `rows` x `blocks * 256` Q4_K matrix in tiles of 16 rows, owned.
pub type Q4KTiles = KTiles<Q4K>;

impl KQuant for Q4K {
    const DTYPE: GgmlDType = GgmlDType::Q4K;
    const NAME: &'static str = "Q4_K";
    const FILE_BLOCK_BYTES: usize = FILE_BLOCK_BYTES;
    const TILE_BLOCK_BYTES: usize = TILE_BLOCK_BYTES;

    fn put_block<'a>(bytes: &mut Vec<u8>, block: impl Fn(usize) -> &'a [u8]) {
        put_tile_block(bytes, block, 16);
    }

    fn unpacked_row(tiles: &KTiles<Self>, r: usize) -> Vec<u8> {
        let (tile, row) = (tiles.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(tiles.blocks() * FILE_BLOCK_BYTES);
        for block in tile.chunks_exact(TILE_BLOCK_BYTES) {
            unpack_head(block, row, &mut out);
            unpack_nibbles(block, row, &mut out);
        }
        out
    }

    fn tile_rows(kernel: Kernel, tiles: &KTiles<Self>, tile: usize, x: &Q8KRows, out: &mut [f32]) {
        tile_rows(kernel, tiles, tile, x, out)
    }
}

/// Appends a Q4_K tile's block (and the start of a Q5_K one) made of the 16 rows' file blocks
/// `block(r)`, each of which starts with `d`, `dmin` and the 12 bytes of scales and mins and
/// holds its nibbles at `nibbles_at`.
pub(crate) fn put_tile_block<'a>(
    bytes: &mut Vec<u8>,
    block: impl Fn(usize) -> &'a [u8],
    nibbles_at: usize,
) {
    for scale in 0..2 {
        for r in 0..TILE_ROWS {
            bytes.extend_from_slice(&block(r)[2 * scale..2 * scale + 2]);
        }
    }
    for part in [0, 1] {
        for j in 0..SUBS {
            for r in 0..TILE_ROWS {
                let (scale, min) = scale_min(j, &block(r)[4..16]);
                bytes.push([scale, min][part]);
            }
        }
    }
    for c in 0..4 {
        for g in 0..8 {
            for r in 0..TILE_ROWS {
                let at = nibbles_at + 32 * c + 4 * g;
                bytes.extend_from_slice(&block(r)[at..at + 4]);
            }
        }
    }
}

/// Appends row `row`'s `d`, `dmin` and 12 bytes of scales and mins as the file holds them,
/// from a tile's block laid out as Q4_K's.
pub(crate) fn unpack_head(block: &[u8], row: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&block[2 * row..2 * row + 2]);
    out.extend_from_slice(&block[DMIN_AT + 2 * row..DMIN_AT + 2 * row + 2]);
    let part = |at: usize| std::array::from_fn(|j| block[at + j * TILE_ROWS + row]);
    out.extend(scale_bytes(part(SCALES_AT), part(MINS_AT)));
}

/// Appends row `row`'s 128 bytes of nibbles, from the same.
pub(crate) fn unpack_nibbles(block: &[u8], row: usize, out: &mut Vec<u8>) {
    for run in block[NIBBLES_AT..NIBBLES_AT + 128 * TILE_ROWS].chunks_exact(4 * TILE_ROWS) {
        out.extend_from_slice(&run[4 * row..4 * row + 4]);
    }
}

/// The reference product of one row of the file's Q4_K blocks and one Q8_K row, in candle's
/// x86 float steps: per sub-block, `acc += isum (d sc · d_x)`, then `acc -= (dmin mn)(d_x Σ x)`,
/// each fused.
pub fn dot(weights: &[u8], x: Q8KRow) -> f32 {
    let mut acc = 0f32;
    for (b, block) in weights.chunks_exact(FILE_BLOCK_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let nibbles = &block[16..];
        let dx = x.d[b];
        for j in 0..SUBS {
            let (scale, min) = scale_min(j, &block[4..16]);
            let chunk = &nibbles[32 * (j / 2)..32 * (j / 2 + 1)];
            let values = &x.qs[b * SUPER_BLOCK + 32 * j..b * SUPER_BLOCK + 32 * (j + 1)];
            let isum: i32 = chunk
                .iter()
                .zip(values)
                .map(|(byte, x)| i32::from((byte >> (4 * (j % 2))) & 0xF) * i32::from(*x))
                .sum();
            let (scale, min) = (d * f32::from(scale), dmin * f32::from(min));
            acc = (isum as f32).mul_add(scale * dx, acc);
            acc = (-min).mul_add(dx * x.sub_sums[b * SUBS + j] as f32, acc);
        }
    }
    acc
}

/// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`, each equal to
/// `dot` of the two bit for bit.
fn tile_rows(kernel: Kernel, matrix: &Q4KTiles, tile: usize, x: &Q8KRows, out: &mut [f32]) {
    match kernel {
        // SAFETY: `runs_here`, asserted by `matmul`; `vnni::q4k_tile_rows` asserts the tile's
        // and the rows' lengths.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { crate::vnni::q4k_tile_rows(matrix.tile(tile), x, out) },
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
    fn scale_bytes_are_what_scale_min_reads() {
        for seed in 0..64usize {
            let scales: [u8; SUBS] = std::array::from_fn(|j| ((seed + 13 * j) % 64) as u8);
            let mins: [u8; SUBS] = std::array::from_fn(|j| ((seed * 7 + 29 * j) % 64) as u8);
            let bytes = scale_bytes(scales, mins);
            for j in 0..SUBS {
                assert_eq!(
                    scale_min(j, &bytes),
                    (scales[j], mins[j]),
                    "seed {seed} sub {j}"
                );
            }
        }
    }
}
