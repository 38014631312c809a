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

use half::f16;

use crate::activation::round_to_i8;
use crate::format::TILE_ROWS;
use crate::kernel::Kernel;
use crate::pool::for_each_row;

/// Values per Q4_K and Q8_K block.
pub const SUPER_BLOCK: usize = 256;

/// Sub-blocks of 32 values per block, each with its own scale and min.
pub(crate) const SUBS: usize = 8;

/// Bytes of a Q4_K block in the file.
const FILE_BLOCK_BYTES: usize = 144;

/// Bytes of one block of a tile's 16 rows.
pub(crate) const TILE_BLOCK_BYTES: usize = TILE_ROWS * (2 + 2 + 2 * SUBS) + TILE_ROWS * 128;

/// Where a tile block's parts start.
pub(crate) const DMIN_AT: usize = 2 * TILE_ROWS;
pub(crate) const SCALES_AT: usize = 4 * TILE_ROWS;
pub(crate) const MINS_AT: usize = SCALES_AT + SUBS * TILE_ROWS;
pub(crate) const NIBBLES_AT: usize = MINS_AT + SUBS * TILE_ROWS;

/// `rows` activation rows of `blocks` Q8_K blocks each: candle's `BlockQ8K` values.
#[derive(Default)]
pub struct Q8KRows {
    rows: usize,
    blocks: usize,
    /// The scale of each block (f32).
    d: Vec<f32>,
    qs: Vec<i8>,
    /// `Σ qs` of each sub-block of 32 (the sum of two of the block's `bsums`).
    sub_sums: Vec<i32>,
}

/// One activation row.
#[derive(Clone, Copy)]
pub struct Q8KRow<'a> {
    pub d: &'a [f32],
    pub qs: &'a [i8],
    pub sub_sums: &'a [i32],
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
        self.d.clear();
        self.qs.clear();
        self.sub_sums.clear();
        for block in x.chunks_exact(SUPER_BLOCK) {
            let (mut max, mut amax) = (0f32, 0f32);
            for x in block {
                if amax < x.abs() {
                    amax = x.abs();
                    max = *x;
                }
            }
            if amax == 0.0 {
                self.d.push(0.0);
                self.qs.extend([0; SUPER_BLOCK]);
                self.sub_sums.extend([0; SUBS]);
                continue;
            }
            let inverse = -127.0 / max;
            self.qs
                .extend(block.iter().map(|x| round_to_i8(inverse * x)));
            let qs = &self.qs[self.qs.len() - SUPER_BLOCK..];
            self.sub_sums.extend(
                qs.chunks_exact(32)
                    .map(|sub| sub.iter().map(|q| i32::from(*q)).sum::<i32>()),
            );
            self.d.push(1.0 / inverse);
        }
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
            sub_sums: &self.sub_sums[b0 * SUBS..b1 * SUBS],
        }
    }
}

/// Sub-block `j`'s 6-bit scale and min from a block's 12 bytes (ggml's `get_scale_min_k4`).
fn scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
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

/// A `rows` x `blocks * 256` Q4_K matrix in tiles of 16 rows, owned.
pub struct Q4KTiles {
    rows: usize,
    blocks: usize,
    bytes: Vec<u8>,
}

impl Q4KTiles {
    /// The tiles of the file's row-major blocks; `rows` must be a multiple of 16.
    pub fn pack(rows: usize, cols: usize, file_bytes: &[u8]) -> Result<Self, String> {
        if !rows.is_multiple_of(TILE_ROWS) || !cols.is_multiple_of(SUPER_BLOCK) {
            return Err(format!(
                "a {rows} x {cols} Q4_K matrix is not whole tiles of {TILE_ROWS} rows and \
                 {SUPER_BLOCK} columns"
            ));
        }
        let blocks = cols / SUPER_BLOCK;
        if file_bytes.len() != rows * blocks * FILE_BLOCK_BYTES {
            return Err(format!(
                "{} bytes for a {rows} x {cols} Q4_K matrix, which takes {}",
                file_bytes.len(),
                rows * blocks * FILE_BLOCK_BYTES
            ));
        }
        let mut bytes = Vec::with_capacity(rows / TILE_ROWS * blocks * TILE_BLOCK_BYTES);
        for tile in 0..rows / TILE_ROWS {
            for b in 0..blocks {
                let block = |r: usize| {
                    let at = ((tile * TILE_ROWS + r) * blocks + b) * FILE_BLOCK_BYTES;
                    &file_bytes[at..at + FILE_BLOCK_BYTES]
                };
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
                            let at = 16 + 32 * c + 4 * g;
                            bytes.extend_from_slice(&block(r)[at..at + 4]);
                        }
                    }
                }
            }
        }
        debug_assert_eq!(bytes.len(), bytes.capacity());
        Ok(Self {
            rows,
            blocks,
            bytes,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.blocks * SUPER_BLOCK
    }

    /// Tile `t`'s bytes.
    pub(crate) fn tile(&self, t: usize) -> &[u8] {
        let tile_bytes = self.blocks * TILE_BLOCK_BYTES;
        &self.bytes[t * tile_bytes..(t + 1) * tile_bytes]
    }

    /// Row `r` as the file held it (its blocks' bytes): the reference kernel's input, and a
    /// tied embedding table's row.
    pub fn unpacked_row(&self, r: usize) -> Vec<u8> {
        let (tile, row) = (self.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(self.blocks * FILE_BLOCK_BYTES);
        for block in tile.chunks_exact(TILE_BLOCK_BYTES) {
            out.extend_from_slice(&block[2 * row..2 * row + 2]);
            out.extend_from_slice(&block[DMIN_AT + 2 * row..DMIN_AT + 2 * row + 2]);
            let part = |at: usize| std::array::from_fn(|j| block[at + j * TILE_ROWS + row]);
            out.extend(scale_bytes(part(SCALES_AT), part(MINS_AT)));
            for run in block[NIBBLES_AT..].chunks_exact(4 * TILE_ROWS) {
                out.extend_from_slice(&run[4 * row..4 * row + 4]);
            }
        }
        out
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

/// `outs[i][t * rows_i + r] = row r of matrices[i] · activation row t`, for every matrix that
/// reads `x`, in one pass over the pool, a tile at a time.
pub fn matmul(kernel: Kernel, matrices: &[&Q4KTiles], x: &Q8KRows, outs: &mut [&mut [f32]]) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    for matrix in matrices {
        assert_eq!(matrix.blocks, x.blocks(), "the activation's length");
    }
    let rows: Vec<usize> = matrices.iter().map(|m| m.rows).collect();
    for_each_row(&rows, TILE_ROWS, x.rows(), 1, outs, |i, r, values| {
        tile_rows(kernel, matrices[i], r / TILE_ROWS, x, values);
    });
}

/// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`, each equal to
/// `dot` of the two bit for bit.
fn tile_rows(kernel: Kernel, matrix: &Q4KTiles, tile: usize, x: &Q8KRows, out: &mut [f32]) {
    assert_eq!(out.len(), TILE_ROWS * x.rows());
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
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// The same values as candle's Q8_K blocks (`d`, `qs`, and the sums of `bsums` in pairs),
    /// a zero block and a block whose largest magnitude is positive included.
    #[test]
    fn rows_equal_candles_q8k_blocks() {
        let mut x: Vec<f32> = (0..2 * 768)
            .map(|i| ((i * 7919) % 211) as f32 / 37.0 - 2.9)
            .collect();
        x[256..512].fill(0.0);
        x[600] = 9.5;
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
            }
        }
    }

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
