//! The storage of a k-quant matrix (GGUF blocks of 256 values) repacked at load in tiles of 16
//! rows, shared by the tiles of every k-quant (Q2_K to Q6_K): each format says how large its
//! blocks are and how a tile lays out its 16 rows' block.

use std::marker::PhantomData;

use candle_core::quantized::GgmlDType;

use crate::activation::Q8KRows;
use crate::format::{SUPER_BLOCK, TILE_ROWS};
use crate::kernel::Kernel;
use crate::pool::for_each_row;

/// A k-quant format's blocks, in the file and in a tile, and its tiles' products.
pub trait KQuant: Sized {
    /// The format's name, for errors.
    const NAME: &'static str;
    /// The format in candle.
    const DTYPE: GgmlDType;
    /// Bytes of one of the file's blocks.
    const FILE_BLOCK_BYTES: usize;
    /// Bytes of a tile's block: the 16 rows' blocks, rearranged.
    const TILE_BLOCK_BYTES: usize;
    /// Appends the tile's block made of the 16 rows' blocks of the file, `block(r)` for r < 16.
    fn put_block<'a>(tile: &mut Vec<u8>, block: impl Fn(usize) -> &'a [u8]);
    /// Row `r` of `tiles` as the file held it (its blocks' bytes).
    fn unpacked_row(tiles: &KTiles<Self>, r: usize) -> Vec<u8>;
    /// The 16 rows of tile `tile` times every row of `x`: `out[c * x_rows + t]`.
    fn tile_rows(kernel: Kernel, tiles: &KTiles<Self>, tile: usize, x: &Q8KRows, out: &mut [f32]);
}

/// `outs[i][t * rows_i + r] = row r of matrices[i] · activation row t`, for every matrix that
/// reads `x`, in one pass over the pool, a tile at a time.
pub fn matmul<F: KQuant>(
    kernel: Kernel,
    matrices: &[&KTiles<F>],
    x: &Q8KRows,
    outs: &mut [&mut [f32]],
) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    for matrix in matrices {
        assert_eq!(matrix.blocks, x.blocks(), "the activation's length");
    }
    let rows: Vec<usize> = matrices.iter().map(|m| m.rows).collect();
    for_each_row(&rows, TILE_ROWS, x.rows(), 1, outs, |i, r, values| {
        assert_eq!(values.len(), TILE_ROWS * x.rows());
        F::tile_rows(kernel, matrices[i], r / TILE_ROWS, x, values);
    });
}

/// A `rows` x `blocks * 256` matrix of format `F` in tiles of 16 rows, owned.
pub struct KTiles<F> {
    rows: usize,
    blocks: usize,
    bytes: Vec<u8>,
    // The format is a marker: the tiles hold no `F` (and so are `Send` and `Sync` whatever it is).
    format: PhantomData<fn() -> F>,
}

impl<F: KQuant> KTiles<F> {
    /// The tiles of the file's row-major blocks; `rows` must be a multiple of 16.
    pub fn pack(rows: usize, cols: usize, file_bytes: &[u8]) -> Result<Self, String> {
        let name = F::NAME;
        if !rows.is_multiple_of(TILE_ROWS) || !cols.is_multiple_of(SUPER_BLOCK) {
            return Err(format!(
                "a {rows} x {cols} {name} matrix is not whole tiles of {TILE_ROWS} rows and \
                 {SUPER_BLOCK} columns"
            ));
        }
        let blocks = cols / SUPER_BLOCK;
        let want = rows * blocks * F::FILE_BLOCK_BYTES;
        if file_bytes.len() != want {
            return Err(format!(
                "{} bytes for a {rows} x {cols} {name} matrix, which takes {want}",
                file_bytes.len(),
            ));
        }
        let mut bytes = Vec::with_capacity(rows / TILE_ROWS * blocks * F::TILE_BLOCK_BYTES);
        for tile in 0..rows / TILE_ROWS {
            for b in 0..blocks {
                F::put_block(&mut bytes, |r| {
                    let at = ((tile * TILE_ROWS + r) * blocks + b) * F::FILE_BLOCK_BYTES;
                    &file_bytes[at..at + F::FILE_BLOCK_BYTES]
                });
            }
        }
        assert_eq!(bytes.len(), bytes.capacity(), "{name}'s tile blocks' size");
        Ok(Self {
            rows,
            blocks,
            bytes,
            format: PhantomData,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r` as the file held it (its blocks' bytes): the reference kernels' input, and a
    /// tied embedding table's row.
    pub fn unpacked_row(&self, r: usize) -> Vec<u8> {
        F::unpacked_row(self, r)
    }

    /// Blocks of 256 values per row.
    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Tile `t`'s bytes.
    pub(crate) fn tile(&self, t: usize) -> &[u8] {
        let tile_bytes = self.blocks * F::TILE_BLOCK_BYTES;
        &self.bytes[t * tile_bytes..(t + 1) * tile_bytes]
    }
}
