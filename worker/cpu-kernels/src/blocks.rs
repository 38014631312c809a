//! Products of GGUF block-quantized weights (Q4_0, Q4_1, Q8_0) with quantized activation rows,
//! read in the file's own layout (no second copy of the weights), split by weight rows over
//! candle's persistent barrier pool, the pool candle's own quantized products use.
//!
//! Per block of 32 (llama.cpp's `ggml_vec_dot_*`): Q4_0 `d_w d_x Σ (q_w - 8) q_x`; Q4_1
//! `d_w d_x Σ q_w q_x + m_w s_x`; Q8_0 `d_w d_x Σ q_w q_x`.

use candle_core::utils::barrier_pool;

use crate::activation::{Q8Rows, BLOCK};
use crate::format::BlockFormat;
use crate::kernel::Kernel;

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

    pub fn cols(&self) -> usize {
        self.blocks * BLOCK
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let row_bytes = self.blocks * self.format.block_bytes();
        &self.bytes[r * row_bytes..(r + 1) * row_bytes]
    }
}

/// A product's destination: `[activation rows, weight rows]`, row-major.
struct Destination(*mut f32);
// SAFETY: each (activation row, weight row) element is written by exactly one thread: the pool
// hands every weight row to one thread.
unsafe impl Sync for Destination {}

/// `outs[i][t * rows_i + r] = row r of matrices[i] · activation row t`, for every matrix that
/// reads the activation `x`, in one pass over the pool.
pub fn matmul(kernel: Kernel, matrices: &[BlockMatrix], x: &Q8Rows, outs: &mut [&mut [f32]]) {
    assert_eq!(matrices.len(), outs.len(), "a destination per matrix");
    let mut starts = Vec::with_capacity(matrices.len());
    let mut total = 0;
    for (matrix, out) in matrices.iter().zip(outs.iter()) {
        assert_eq!(matrix.blocks, x.blocks(), "the activation's length");
        assert_eq!(
            out.len(),
            x.rows() * matrix.rows,
            "the destination's length"
        );
        starts.push(total);
        total += matrix.rows;
    }
    let destinations: Vec<Destination> = outs
        .iter_mut()
        .map(|out| Destination(out.as_mut_ptr()))
        .collect();
    let (destinations, starts) = (&destinations, &starts);
    barrier_pool().execute_chunked(total, |rows| {
        for global in rows {
            let i = starts.partition_point(|start| *start <= global) - 1;
            let (matrix, r) = (&matrices[i], global - starts[i]);
            let weights = matrix.row(r);
            let destination = &destinations[i];
            for t in 0..x.rows() {
                let value = kernel.dot(matrix.format, weights, x.row(t));
                // SAFETY: in bounds (asserted above), and row r is this thread's alone.
                unsafe { *destination.0.add(t * matrix.rows + r) = value };
            }
        }
    });
}
