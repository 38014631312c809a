//! Products of GGUF Q5_K weights, repacked at load in tiles of 16 rows (the same bytes,
//! rearranged, plus 4 per row and block), with activation rows quantized as GGUF's Q8_K blocks
//! of 256 values. candle's x86 `QMatMul` repacks no Q5_K: it takes its AVX2 `vec_dot` at every
//! row count, and the kernels take that function's float steps (`dot`), so that the results
//! equal candle's bit for bit on x86:
//! - per block, eight integer sums: lane `l` takes runs `l` (values `4l..4l + 4`) of the
//!   block's eight sub-blocks of 32, each run's sum times its sub-block's scale; each lane added
//!   to its own f32 lane by one FMA with `d_x d_w`;
//! - per block besides, the mins' integer sum `Σ mn Σx` times `-d_x dmin_w`, added (unfused)
//!   to one running sum;
//! - at the end, the 8 lanes summed pairwise, then the running sum added.
//!
//! A Q5_K block of 256 values (176 bytes): `d`, `dmin` (f16), the 12 bytes of 6-bit scales and
//! mins of Q4_K, 32 bytes `qh`, then 128 bytes of nibbles laid out as Q4_K's. Bit `s` of byte
//! `j` of `qh` is the fifth bit of value `32s + j`. Value `d sc q - dmin mn`, q in 0..32.

use candle_core::quantized::GgmlDType;

use crate::activation::{Q8KRow, Q8KRows};
use crate::format::q5k_tile::{BLOCK_BYTES as TILE_BLOCK_BYTES, HIGH_AT};
use crate::format::{half, SUBS, SUPER_BLOCK, TILE_ROWS};
use crate::k_quants::{put_tile_block, scale_min, unpack_head, unpack_nibbles};
use crate::k_tiles::{KQuant, KTiles};
use crate::kernel::Kernel;

/// Bytes of a Q5_K block in the file.
const FILE_BLOCK_BYTES: usize = 176;
/// Where a file block's parts start.
const QH_AT: usize = 16;
const NIBBLES_AT: usize = 48;

/// Value `v`'s `q` (0..32) in a file block.
fn stored(block: &[u8], v: usize) -> u8 {
    let (s, j) = (v / 32, v % 32);
    let low = block[NIBBLES_AT + 32 * (s / 2) + j] >> (4 * (s % 2)) & 0xF;
    let high = block[QH_AT + j] >> s & 1;
    low | high << 4
}

/// The Q5_K format, whose tiles are `Q5KTiles`.
pub struct Q5K;

/// A `rows` x `blocks * 256` Q5_K matrix in tiles of 16 rows, owned.
pub type Q5KTiles = KTiles<Q5K>;

impl KQuant for Q5K {
    const DTYPE: GgmlDType = GgmlDType::Q5K;
    const NAME: &'static str = "Q5_K";
    const FILE_BLOCK_BYTES: usize = FILE_BLOCK_BYTES;
    const TILE_BLOCK_BYTES: usize = TILE_BLOCK_BYTES;

    fn put_block<'a>(bytes: &mut Vec<u8>, block: impl Fn(usize) -> &'a [u8]) {
        put_tile_block(bytes, &block, NIBBLES_AT);
        for g in 0..8 {
            for r in 0..TILE_ROWS {
                let at = QH_AT + 4 * g;
                bytes.extend_from_slice(&block(r)[at..at + 4]);
            }
        }
    }

    fn unpacked_row(tiles: &KTiles<Self>, r: usize) -> Vec<u8> {
        let (tile, row) = (tiles.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(tiles.blocks() * FILE_BLOCK_BYTES);
        for block in tile.chunks_exact(TILE_BLOCK_BYTES) {
            unpack_head(block, row, &mut out);
            for run in block[HIGH_AT..].chunks_exact(4 * TILE_ROWS) {
                out.extend_from_slice(&run[4 * row..4 * row + 4]);
            }
            unpack_nibbles(block, row, &mut out);
        }
        out
    }

    fn tile_rows(kernel: Kernel, tiles: &KTiles<Self>, tile: usize, x: &Q8KRows, out: &mut [f32]) {
        tile_rows(kernel, tiles, tile, x, out)
    }
}

/// The reference product of one row of the file's Q5_K blocks and one Q8_K row, in candle's
/// float steps (its AVX2 `vec_dot`).
pub fn dot(weights: &[u8], x: Q8KRow) -> f32 {
    let mut lanes = [0f32; 8];
    let mut mins_total = 0f32;
    for (b, block) in weights.chunks_exact(FILE_BLOCK_BYTES).enumerate() {
        let mut sums = [0i32; 8];
        let mut mins = 0i32;
        for s in 0..SUBS {
            let (scale, min) = scale_min(s, &block[4..16]);
            mins += i32::from(min) * x.sub_sums[b * SUBS + s];
            for v in 32 * s..32 * (s + 1) {
                let product = i32::from(stored(block, v)) * i32::from(x.qs[b * SUPER_BLOCK + v]);
                sums[v % 32 / 4] += i32::from(scale) * product;
            }
        }
        let (d, dmin) = (x.d[b] * half(block, 0), -x.d[b] * half(block, 2));
        mins_total += dmin * mins as f32;
        for (lane, sum) in lanes.iter_mut().zip(sums) {
            *lane = d.mul_add(sum as f32, *lane);
        }
    }
    let l = lanes;
    (((l[4] + l[0]) + (l[6] + l[2])) + ((l[5] + l[1]) + (l[7] + l[3]))) + mins_total
}

/// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`, each equal to
/// `dot` of the two bit for bit.
fn tile_rows(kernel: Kernel, matrix: &Q5KTiles, tile: usize, x: &Q8KRows, out: &mut [f32]) {
    match kernel {
        // SAFETY: `runs_here`, asserted by `matmul`; `vnni::q5k_tile_rows` asserts the tile's
        // and the rows' lengths.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { crate::vnni::q5k_tile_rows(matrix.tile(tile), x, out) },
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
