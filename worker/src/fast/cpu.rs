//! The CPU fast engine: a GGUF model's quantized products run by the kernels of
//! `llm-worker-rbee-cpu-kernels` (worker/cpu-kernels), the quantized tensor read in place (a
//! tied embedding table is not copied), the input quantized once for every product that reads
//! it.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Result, Tensor};

use llm_worker_rbee_cpu_kernels::{matmul, BlockFormat, BlockMatrix, Kernel, Q8Rows, BLOCK};

/// `x · Wᵀ` for a `[rows, cols]` block-quantized `W` in host memory.
pub struct BlockLinear {
    weights: Arc<QTensor>,
    format: BlockFormat,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

impl BlockLinear {
    /// `None` where the kernels do not read the tensor: another format, not on the CPU, not a
    /// matrix of whole blocks.
    pub fn new(weights: Arc<QTensor>) -> Option<Self> {
        let format = BlockFormat::of(weights.dtype())?;
        let (rows, cols) = weights.shape().dims2().ok()?;
        if !matches!(weights.device(), Device::Cpu) || cols % BLOCK != 0 {
            return None;
        }
        Some(Self {
            weights,
            format,
            rows,
            cols,
            kernel: Kernel::detect(),
        })
    }
}

thread_local! {
    /// The quantized input, its buffers kept from one product to the next.
    static INPUT: RefCell<Q8Rows> = RefCell::new(Q8Rows::default());
}

/// `x · Wᵀ` for each of `linears` (which share their column count), `x` quantized once: the
/// results have `x`'s shape with the last dimension each product's row count.
pub fn forward_shared<const N: usize>(
    linears: [&BlockLinear; N],
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
    let matrices = linears
        .iter()
        .zip(&bytes)
        .map(|(l, bytes)| BlockMatrix::new(l.format, l.rows, l.cols, bytes))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(candle_core::Error::msg)?;
    let mut outs: Vec<Vec<f32>> = linears.iter().map(|l| vec![0.0; tokens * l.rows]).collect();
    INPUT.with(|input| {
        let mut input = input.borrow_mut();
        input.quantize(&values, cols);
        let mut destinations: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        matmul(linears[0].kernel, &matrices, &input, &mut destinations);
    });
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
