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
    for matrix in matrices {
        assert_eq!(matrix.blocks, x.blocks(), "the activation's length");
    }
    let rows: Vec<usize> = matrices.iter().map(|m| m.rows).collect();
    for_each_row(&rows, x.rows(), 1, outs, |i, r, column| {
        let matrix = &matrices[i];
        for (t, value) in column.iter_mut().enumerate() {
            *value = kernel.dot(matrix.format, matrix.row(r), x.row(t));
        }
    });
}

/// `outs[i][t * rows[i] + r + c] = values[c * x_rows + t]` where `rows_of(i, r, values)` fills
/// `values` for `values.len() / x_rows` (at most `at_once`) rows of matrix `i` from row `r`,
/// each times every input row: split by weight rows (every matrix's in turn) over the pool,
/// each weight row met once.
pub(crate) fn for_each_row(
    rows: &[usize],
    x_rows: usize,
    at_once: usize,
    outs: &mut [&mut [f32]],
    rows_of: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    assert_eq!(rows.len(), outs.len(), "a destination per matrix");
    let mut starts = Vec::with_capacity(rows.len());
    let mut total = 0;
    for (&n, out) in rows.iter().zip(outs.iter()) {
        assert_eq!(out.len(), x_rows * n, "the destination's length");
        starts.push(total);
        total += n;
    }
    let destinations: Vec<Destination> = outs
        .iter_mut()
        .map(|out| Destination(out.as_mut_ptr()))
        .collect();
    let (destinations, starts) = (&destinations, &starts);
    barrier_pool().execute_chunked(total, |chunk| {
        let mut values = vec![0.0; at_once * x_rows];
        let mut i = starts.partition_point(|start| *start <= chunk.start) - 1;
        let mut global = chunk.start;
        while global < chunk.end {
            if global == starts[i] + rows[i] {
                i += 1;
                continue;
            }
            let r = global - starts[i];
            let count = at_once.min(chunk.end - global).min(rows[i] - r);
            let values = &mut values[..count * x_rows];
            rows_of(i, r, values);
            let destination = destinations[i].0;
            for (c, column) in values.chunks_exact(x_rows).enumerate() {
                for (t, v) in column.iter().enumerate() {
                    // SAFETY: in bounds (asserted above), and rows r..r + count are this
                    // thread's alone.
                    unsafe { *destination.add(t * rows[i] + r + c) = *v };
                }
            }
            global += count;
        }
    });
}
