//! Products of f32 and f16 weights with f32 activation rows, the weights read where the file
//! put them (f16 widened in registers, never as a whole matrix), split by weight rows over
//! candle's barrier pool as the block products are.

use crate::format::DenseFormat;
use crate::kernel::Kernel;
use crate::pool::for_each_row;

/// A row-major `rows` x `cols` matrix of f32 or f16 values (little-endian), borrowed.
#[derive(Clone, Copy)]
pub struct DenseMatrix<'a> {
    format: DenseFormat,
    rows: usize,
    cols: usize,
    bytes: &'a [u8],
}

impl<'a> DenseMatrix<'a> {
    pub fn new(
        format: DenseFormat,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Result<Self, String> {
        let want = rows * cols * format.value_bytes();
        if bytes.len() != want {
            return Err(format!(
                "{} bytes for a {rows} x {cols} {format:?} matrix, which takes {want}",
                bytes.len()
            ));
        }
        Ok(Self {
            format,
            rows,
            cols,
            bytes,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let row_bytes = self.cols * self.format.value_bytes();
        &self.bytes[r * row_bytes..(r + 1) * row_bytes]
    }
}

/// `outs[i][t * rows_i + r] = row r of matrices[i] · row t of x` (rows of `cols` values), for
/// every matrix that reads `x`, in one pass over the pool.
pub fn matmul(kernel: Kernel, matrices: &[DenseMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    let cols = matrices.first().map_or(0, |m| m.cols);
    assert!(
        matrices.iter().all(|m| m.cols == cols),
        "the matrices' column counts differ"
    );
    let x_rows = x.len().checked_div(cols).unwrap_or(0);
    assert_eq!(x.len(), x_rows * cols, "x is not rows of {cols} values");
    let rows: Vec<usize> = matrices.iter().map(|m| m.rows).collect();
    // Six weight rows at a time: the AVX-512 tier's prefill tile (AVX2 takes them in pairs).
    const AT_ONCE: usize = 6;
    for_each_row(&rows, 1, x_rows, AT_ONCE, outs, |i, r, values| {
        let matrix = &matrices[i];
        let weights: [&[u8]; AT_ONCE] =
            std::array::from_fn(|c| matrix.row((r + c).min(matrix.rows - 1)));
        let count = values.len() / x_rows.max(1);
        kernel.dense_rows(matrix.format, &weights[..count], x, values)
    });
}
