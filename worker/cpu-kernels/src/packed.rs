//! Block-quantized weights repacked at load in tiles of 16 rows, so that one AVX-512 VNNI
//! `vpdpbusd` forms a run of 4 products for 16 rows at once. The tiles take the bytes the file's
//! blocks took (the caller drops those), and the products equal `Kernel::dot`'s bit for bit:
//! the same integer sums per run of 4 values, the same float steps per row.
//!
//! A tile holds, per block of 32 columns, for its 16 rows:
//! - Q8_0: `d` (16 f16), then for each run `g` of 4 values (8 runs) the 16 rows' 4 values
//!   offset by +128 (unsigned for `vpdpbusd`; a run's sum starts at `-128 Σ x`, which takes the
//!   offset off);
//! - Q4_0: `d` (16 f16), then for each `g` of 0..4 the 16 rows' bytes `4g..4g + 4` of the
//!   block's nibbles: the low nibbles are run `g`, the high ones run `g + 4` (values 0..15, a
//!   run's sum starting at `-8 Σ x`);
//! - Q4_1: `d` (16 f16), `m` (16 f16), then the nibbles as Q4_0.

use crate::activation::{Q8Rows, BLOCK, RUNS};
use crate::format::{BlockFormat, TILE_ROWS};
use crate::kernel::Kernel;
use crate::pool::for_each_row;

/// A `rows` x `blocks * 32` block-quantized matrix in tiles of 16 rows, owned.
pub struct PackedMatrix {
    format: BlockFormat,
    rows: usize,
    blocks: usize,
    bytes: Vec<u8>,
}

impl PackedMatrix {
    /// The tiles of the file's row-major blocks; `rows` must be a multiple of 16.
    pub fn pack(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        blocks_bytes: &[u8],
    ) -> Result<Self, String> {
        if !rows.is_multiple_of(TILE_ROWS) || !cols.is_multiple_of(BLOCK) {
            return Err(format!(
                "a {rows} x {cols} matrix is not whole tiles of {TILE_ROWS} rows and {BLOCK} columns"
            ));
        }
        let (blocks, size) = (cols / BLOCK, format.block_bytes());
        if blocks_bytes.len() != rows * blocks * size {
            return Err(format!(
                "{} bytes for a {rows} x {cols} {format:?} matrix, which takes {}",
                blocks_bytes.len(),
                rows * blocks * size
            ));
        }
        let mut bytes = Vec::with_capacity(blocks_bytes.len());
        for tile in 0..rows / TILE_ROWS {
            for b in 0..blocks {
                let block = |r: usize| {
                    let at = ((tile * TILE_ROWS + r) * blocks + b) * size;
                    &blocks_bytes[at..at + size]
                };
                let scales = format.scales();
                for scale in 0..scales {
                    for r in 0..TILE_ROWS {
                        bytes.extend_from_slice(&block(r)[2 * scale..2 * scale + 2]);
                    }
                }
                let qs = 2 * scales;
                match format {
                    BlockFormat::Q8_0 => {
                        for g in 0..RUNS {
                            for r in 0..TILE_ROWS {
                                let run = &block(r)[qs + 4 * g..qs + 4 * g + 4];
                                bytes.extend(run.iter().map(|q| q.wrapping_add(128)));
                            }
                        }
                    }
                    BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                        for g in 0..RUNS / 2 {
                            for r in 0..TILE_ROWS {
                                bytes.extend_from_slice(&block(r)[qs + 4 * g..qs + 4 * g + 4]);
                            }
                        }
                    }
                }
            }
        }
        debug_assert_eq!(bytes.len(), blocks_bytes.len());
        Ok(Self {
            format,
            rows,
            blocks,
            bytes,
        })
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.blocks * BLOCK
    }

    /// Tile `t`'s bytes.
    fn tile(&self, t: usize) -> &[u8] {
        let tile_bytes = TILE_ROWS * self.blocks * self.format.block_bytes();
        &self.bytes[t * tile_bytes..(t + 1) * tile_bytes]
    }

    /// Row `r` as the file held it (its blocks' bytes): the reference kernels' input, and a
    /// tied embedding table's row.
    pub fn unpacked_row(&self, r: usize) -> Vec<u8> {
        let (format, size) = (self.format, self.format.block_bytes());
        let (tile, row) = (self.tile(r / TILE_ROWS), r % TILE_ROWS);
        let mut out = Vec::with_capacity(self.blocks * size);
        let scales = format.scales();
        for block in tile.chunks_exact(TILE_ROWS * size) {
            for scale in 0..scales {
                let at = 2 * (scale * TILE_ROWS + row);
                out.extend_from_slice(&block[at..at + 2]);
            }
            let runs = &block[2 * scales * TILE_ROWS..];
            for run in runs.chunks_exact(4 * TILE_ROWS) {
                let values = &run[4 * row..4 * row + 4];
                match format {
                    BlockFormat::Q8_0 => out.extend(values.iter().map(|v| v.wrapping_sub(128))),
                    _ => out.extend_from_slice(values),
                }
            }
        }
        out
    }
}

/// `outs[i][t * rows_i + r] = row r of matrices[i] · activation row t`, for every packed matrix
/// that reads `x`, in one pass over the pool, a tile at a time.
pub fn matmul_packed(
    kernel: Kernel,
    matrices: &[&PackedMatrix],
    x: &Q8Rows,
    outs: &mut [&mut [f32]],
) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    for matrix in matrices {
        assert_eq!(matrix.blocks, x.blocks(), "the activation's length");
    }
    let rows: Vec<usize> = matrices.iter().map(|m| m.rows).collect();
    for_each_row(&rows, TILE_ROWS, x.rows(), 1, outs, |i, r, values| {
        let matrix = matrices[i];
        kernel.tile_rows(matrix, r / TILE_ROWS, x, values);
    });
}

impl Kernel {
    /// The 16 rows of tile `tile` of `matrix` times every row of `x`: `out[c * x_rows + t]` for
    /// the tile's row `c` and row `t` of `x`, each equal to `dot` of the two bit for bit.
    pub(crate) fn tile_rows(self, matrix: &PackedMatrix, tile: usize, x: &Q8Rows, out: &mut [f32]) {
        assert_eq!(out.len(), TILE_ROWS * x.rows());
        debug_assert!(self.runs_here(), "{self:?} does not run on this CPU");
        match self {
            // SAFETY: `runs_here`, asserted by `matmul_packed`; `vnni::tile_rows` asserts the
            // tile's and the rows' lengths.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe {
                crate::vnni::tile_rows(matrix.format, matrix.tile(tile), x, out)
            },
            _ => {
                for c in 0..TILE_ROWS {
                    let weights = matrix.unpacked_row(tile * TILE_ROWS + c);
                    for t in 0..x.rows() {
                        out[c * x.rows() + t] = self.dot(matrix.format, &weights, x.row(t));
                    }
                }
            }
        }
    }
}
