//! Products of GGUF block-quantized weights (Q4_0, Q4_1, Q8_0) with quantized activation rows,
//! read in the file's own layout (no second copy of the weights), split by weight rows over
//! candle's persistent barrier pool, the pool candle's own quantized products use.
//!
//! Per block of 32 (llama.cpp's `ggml_vec_dot_*`): Q4_0 `d_w d_x Σ (q_w - 8) q_x`; Q4_1
//! `d_w d_x Σ q_w q_x + m_w s_x`; Q8_0 `d_w d_x Σ q_w q_x`.

use crate::activation::{Q8Rows, BLOCK};
use crate::format::BlockFormat;
use crate::kernel::Kernel;
use crate::pool::for_each_row;

/// A row-major `rows` x `blocks * 32` matrix of blocks, borrowed.
#[derive(Clone, Copy)]
pub struct BlockMatrix<'a> {
    format: BlockFormat,
    rows: usize,
    blocks: usize,
    bytes: &'a [u8],
}

impl<'a> BlockMatrix<'a> {
    pub fn new(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns are not whole blocks of {BLOCK}"));
        }
        let blocks = cols / BLOCK;
        let want = rows * blocks * format.block_bytes();
        if bytes.len() != want {
            return Err(format!(
                "{} bytes for a {rows} x {cols} {format:?} matrix, which takes {want}",
                bytes.len()
            ));
        }
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

    fn row(&self, r: usize) -> &'a [u8] {
        let row_bytes = self.blocks * self.format.block_bytes();
        &self.bytes[r * row_bytes..(r + 1) * row_bytes]
    }
}

/// `outs[i][t * rows_i + r] = row r of matrices[i] · activation row t`, for every matrix that
/// reads the activation `x`, in one pass over the pool.
pub fn matmul(kernel: Kernel, matrices: &[BlockMatrix], x: &Q8Rows, outs: &mut [&mut [f32]]) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    for matrix in matrices {
        assert_eq!(matrix.blocks, x.blocks(), "the activation's length");
    }
    let rows: Vec<usize> = matrices.iter().map(|m| m.rows).collect();
    // One input row (a decode step): weight rows in pairs, which some kernels read together.
    let at_once = if x.rows() == 1 { 2 } else { 1 };
    for_each_row(&rows, 1, x.rows(), at_once, outs, |i, r, values| {
        let matrix = &matrices[i];
        let weights = [matrix.row(r), matrix.row((r + 1).min(matrix.rows - 1))];
        let count = values.len() / x.rows().max(1);
        kernel.dot_rows(matrix.format, &weights[..count], x, values);
    });
}
