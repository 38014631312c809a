//! The CPU fast engine: a GGUF model's products run by the kernels of
//! `llm-worker-rbee-cpu-kernels` (worker/cpu-kernels), the tensor read in place as the file
//! holds it (a tied embedding table is not copied, f16 is not widened to an f32 copy), a
//! quantized product's input quantized once for every product that reads it.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Result, Tensor};

use llm_worker_rbee_cpu_kernels::{
    dense, matmul, BlockFormat, BlockMatrix, DenseFormat, DenseMatrix, Kernel, Q8Rows, BLOCK,
};

/// How the CPU kernels read a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// GGUF blocks of 32, with the input quantized to 8 bits per block.
    Blocks(BlockFormat),
    /// f32 or f16 values, with the f32 input as it is.
    Dense(DenseFormat),
}

/// `x · Wᵀ` for a `[rows, cols]` `W` in host memory that the CPU kernels read: block-quantized
/// (Q4_0, Q4_1, Q8_0), f32 or f16.
pub struct KernelLinear {
    weights: Arc<QTensor>,
    layout: Layout,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

impl KernelLinear {
    /// `None` where the kernels do not read the tensor: another format, not on the CPU, not a
    /// matrix of whole blocks.
    pub fn new(weights: Arc<QTensor>) -> Option<Self> {
        let dtype = weights.dtype();
        let layout = BlockFormat::of(dtype)
            .map(Layout::Blocks)
            .or(DenseFormat::of(dtype).map(Layout::Dense))?;
        let (rows, cols) = weights.shape().dims2().ok()?;
        let whole_blocks = matches!(layout, Layout::Dense(_)) || cols % BLOCK == 0;
        if !matches!(weights.device(), Device::Cpu) || !whole_blocks {
            return None;
        }
        Some(Self {
            weights,
            layout,
            rows,
            cols,
            kernel: Kernel::detect(),
        })
    }
}

impl KernelLinear {
    /// Whether one pass of `forward_shared` can run both (both block-quantized, or both dense).
    pub fn shares_a_pass_with(&self, other: &KernelLinear) -> bool {
        matches!(
            (self.layout, other.layout),
            (Layout::Blocks(_), Layout::Blocks(_)) | (Layout::Dense(_), Layout::Dense(_))
        )
    }
}

thread_local! {
    /// The quantized input, its buffers kept from one product to the next.
    static INPUT: RefCell<Q8Rows> = RefCell::new(Q8Rows::default());
}

/// `x · Wᵀ` for each of `linears` (which share their column count and are all block-quantized,
/// `x` then quantized once, or all dense), in one pass: the results have `x`'s shape with the
/// last dimension each product's row count.
pub fn forward_shared<const N: usize>(
    linears: [&KernelLinear; N],
    x: &Tensor,
) -> Result<[Tensor; N]> {
    let cols = linears[0].cols;
    let dims = x.dims();
    if dims.last() != Some(&cols) || linears.iter().any(|l| l.cols != cols) {
        candle_core::bail!(
            "an input of shape {:?} for products of {:?} columns",
            dims,
            linears.map(|l| l.cols)
        )
    }
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    let tokens = values.len() / cols;
    let bytes = linears
        .iter()
        .map(|l| l.weights.data())
        .collect::<Result<Vec<_>>>()?;
    let mut outs: Vec<Vec<f32>> = linears.iter().map(|l| vec![0.0; tokens * l.rows]).collect();
    let mut destinations: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    let kernel = linears[0].kernel;
    let layouts = linears.map(|l| l.layout);
    if let Some(formats) = layouts
        .iter()
        .map(|layout| match layout {
            Layout::Blocks(format) => Some(*format),
            Layout::Dense(_) => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        let matrices = linears
            .iter()
            .zip(&bytes)
            .zip(formats)
            .map(|((l, bytes), format)| BlockMatrix::new(format, l.rows, l.cols, bytes))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(candle_core::Error::msg)?;
        INPUT.with(|input| {
            let mut input = input.borrow_mut();
            input.quantize(&values, cols);
            matmul(kernel, &matrices, &input, &mut destinations);
        });
    } else if let Some(formats) = layouts
        .iter()
        .map(|layout| match layout {
            Layout::Dense(format) => Some(*format),
            Layout::Blocks(_) => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        let matrices = linears
            .iter()
            .zip(&bytes)
            .zip(formats)
            .map(|((l, bytes), format)| DenseMatrix::new(format, l.rows, l.cols, bytes))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(candle_core::Error::msg)?;
        dense::matmul(kernel, &matrices, &values, &mut destinations);
    } else {
        candle_core::bail!("products of one input read as {layouts:?}: one pass takes one kind")
    }
    let mut shape = dims.to_vec();
    let mut outs = outs.into_iter();
    let mut next = |rows: usize| {
        *shape.last_mut().expect("a dimension") = rows;
        Tensor::from_vec(
            outs.next().expect("one per product"),
            shape.as_slice(),
            x.device(),
        )
    };
    let results: Vec<Tensor> = linears
        .iter()
        .map(|l| next(l.rows))
        .collect::<Result<_>>()?;
    Ok(results
        .try_into()
        .unwrap_or_else(|_| unreachable!("one result per product")))
}
