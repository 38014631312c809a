//! The CPU fast engine: a GGUF model's products run by the kernels of
//! `llm-worker-rbee-cpu-kernels` (worker/cpu-kernels), the tensor read in place as the file
//! holds it (f16 is not widened to an f32 copy) or, where the CPU has AVX-512 VNNI, a quantized
//! one repacked at load into 16-row tiles that replace it (a tied embedding table's lookup then
//! reads the tiles), a quantized product's input quantized once for every product that reads it.
//! The k-quants (Q2_K to Q6_K) are read only as tiles (with AVX-512 VNNI); elsewhere candle's
//! `QMatMul` runs them.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, Device, Result, Storage, Tensor};

use llm_worker_rbee_cpu_kernels::k_quants::Q4K;
use llm_worker_rbee_cpu_kernels::k_tiles::{self, KQuant};
use llm_worker_rbee_cpu_kernels::q2_k::Q2K;
use llm_worker_rbee_cpu_kernels::q3_k::Q3K;
use llm_worker_rbee_cpu_kernels::q5_k::Q5K;
use llm_worker_rbee_cpu_kernels::q6_k::Q6K;
use llm_worker_rbee_cpu_kernels::{
    dense, elementwise, matmul, matmul_packed, BlockFormat, BlockMatrix, DenseFormat, DenseMatrix,
    KTiles, Kernel, PackedMatrix, Q8KRows, Q8Rows, BLOCK, TILE_ROWS,
};

/// How the CPU kernels read a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// GGUF blocks of 32 as the file holds them, with the input quantized to 8 bits per block.
    Blocks(BlockFormat),
    /// The same blocks repacked at load in tiles of 16 rows (`PackedMatrix`), same input.
    Tiles(BlockFormat),
    /// f32 or f16 values, with the f32 input as it is.
    Dense(DenseFormat),
    /// A k-quant's blocks of 256 (Q2_K to Q6_K) repacked at load in tiles of 16 rows
    /// (`KQuantTiles`), with the input quantized to 8 bits per block of 256.
    KTiles(GgmlDType),
}

/// Where the weights are: the loaded tensor, read in place, its values moved to a cache line's
/// boundary, or its tiles (each of which replaces it).
enum Weights {
    Tensor(Arc<QTensor>),
    Aligned(CacheLines),
    Tiles(Arc<PackedMatrix>),
    KTiles(KQuantTiles),
}

/// `KQuantTiles`, an enum of the k-quant formats named (the kernels' marker types), with the
/// packing and the product of each.
macro_rules! k_quant_tiles {
    ($($format:ident),+) => {
        /// A k-quant matrix's tiles, of one of the formats the kernels read.
        enum KQuantTiles {
            $($format(KTiles<$format>),)+
        }

        impl KQuantTiles {
            /// Whether `dtype` is one of these formats.
            fn reads(dtype: GgmlDType) -> bool {
                $(dtype == $format::DTYPE)||+
            }

            /// The tiles of a `rows` x `cols` matrix of the file's blocks of `dtype`, if the
            /// kernels read that format and the matrix is whole tiles.
            fn pack(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
                $(if dtype == $format::DTYPE {
                    return KTiles::pack(rows, cols, bytes).ok().map(Self::$format);
                })+
                None
            }

            /// Each of `matrices` (all of one format) times `x`, in one pass:
            /// `outs[i][t * rows_i + r]`.
            fn matmul(kernel: Kernel, matrices: &[&Self], x: &Q8KRows, outs: &mut [&mut [f32]]) {
                match matrices[0] {
                    $(Self::$format(_) => {
                        let tiles: Option<Vec<&KTiles<$format>>> = matrices
                            .iter()
                            .map(|m| match m {
                                Self::$format(tiles) => Some(tiles),
                                _ => None,
                            })
                            .collect();
                        let tiles = tiles.expect("one pass reads one format (`shares_a_pass_with`)");
                        k_tiles::matmul(kernel, &tiles, x, outs)
                    })+
                }
            }
        }
    };
}

k_quant_tiles!(Q2K, Q3K, Q4K, Q5K, Q6K);

/// `x · Wᵀ` for a `[rows, cols]` `W` in host memory that the CPU kernels read: block-quantized
/// (Q4_0, Q4_1, Q8_0; the k-quants Q2_K to Q6_K as tiles), f32 or f16.
pub struct KernelLinear {
    weights: Weights,
    layout: Layout,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

impl KernelLinear {
    /// The kernels' product of `weights`, or the tensor back where they do not read it (see
    /// `reading`). An f32 or f16 matrix nothing else holds is moved to a cache line's boundary
    /// (`CacheLines`) where it is not on one.
    pub fn new(weights: Arc<QTensor>) -> std::result::Result<Self, Arc<QTensor>> {
        let Some(mut linear) = Self::reading(&weights) else {
            return Err(weights);
        };
        if matches!(linear.layout, Layout::Dense(_)) {
            // The caller's handle gone, the product's own is the only one left unless another
            // product reads the tensor too (a tied embedding table), which is then not copied.
            drop(weights);
            if let Weights::Tensor(tensor) = linear.weights {
                linear.weights = match Arc::try_unwrap(tensor) {
                    Ok(tensor) => CacheLines::moved(tensor),
                    Err(shared) => Weights::Tensor(shared),
                };
            }
        }
        Ok(linear)
    }

    /// `None` where the kernels do not read the tensor: another format, not on the CPU, not a
    /// matrix of whole blocks. Block-quantized matrices of whole 16-row tiles are repacked
    /// where the CPU's kernel reads tiles faster (AVX-512 VNNI), holding the tiles in place of
    /// the tensor (the same bytes, rearranged). The k-quants are read only as tiles
    /// (`k_quant_tiles`).
    fn reading(weights: &Arc<QTensor>) -> Option<Self> {
        let kernel = Kernel::detect();
        let dtype = weights.dtype();
        if KQuantTiles::reads(dtype) {
            return Self::k_quant_tiles(weights, kernel);
        }
        let mut layout = BlockFormat::of(dtype)
            .map(Layout::Blocks)
            .or(DenseFormat::of(dtype).map(Layout::Dense))?;
        let (rows, cols) = weights.shape().dims2().ok()?;
        let whole_blocks = matches!(layout, Layout::Dense(_)) || cols % BLOCK == 0;
        if !matches!(weights.device(), Device::Cpu) || !whole_blocks {
            return None;
        }
        let mut weights = Weights::Tensor(weights.clone());
        if let (Layout::Blocks(format), Weights::Tensor(tensor)) = (layout, &weights) {
            // Where packing fails the file's blocks serve, as on CPUs without VNNI.
            let tiles = (kernel.packs() && rows % TILE_ROWS == 0)
                .then(|| tensor.data().ok())
                .flatten()
                .and_then(|bytes| PackedMatrix::pack(format, rows, cols, &bytes).ok());
            if let Some(tiles) = tiles {
                (weights, layout) = (Weights::Tiles(Arc::new(tiles)), Layout::Tiles(format));
            }
        }
        Some(Self {
            weights,
            layout,
            rows,
            cols,
            kernel,
        })
    }
}

impl KernelLinear {
    /// A k-quant matrix repacked into tiles, which replace the tensor, where the CPU's kernel reads
    /// tiles (AVX-512 VNNI): the other kernels read these tiles only as a reference, and
    /// candle's `QMatMul` keeps the formats on other CPUs.
    fn k_quant_tiles(weights: &QTensor, kernel: Kernel) -> Option<Self> {
        let (rows, cols) = weights.shape().dims2().ok()?;
        if !kernel.packs() || !matches!(weights.device(), Device::Cpu) {
            return None;
        }
        let dtype = weights.dtype();
        let tiles = KQuantTiles::pack(dtype, rows, cols, &weights.data().ok()?)?;
        Some(Self {
            weights: Weights::KTiles(tiles),
            layout: Layout::KTiles(dtype),
            rows,
            cols,
            kernel,
        })
    }

    /// The tiles that replaced the loaded tensor, if they did: a tied embedding table's rows.
    pub fn tiles(&self) -> Option<Arc<PackedMatrix>> {
        match &self.weights {
            Weights::Tiles(tiles) => Some(tiles.clone()),
            Weights::Tensor(_) | Weights::Aligned(_) | Weights::KTiles(_) => None,
        }
    }

    /// The loaded tensor's bytes (or their aligned copy), for the kernels that read it in place.
    fn tensor_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match &self.weights {
            Weights::Tensor(tensor) => tensor.data(),
            Weights::Aligned(lines) => Ok(std::borrow::Cow::Borrowed(lines.bytes())),
            Weights::Tiles(_) | Weights::KTiles(_) => {
                candle_core::bail!("a product read as tiles has no tensor")
            }
        }
    }

    /// Whether one pass of `forward_shared` can run both (both read the same way: the file's
    /// blocks, tiles, dense values, or tiles of one k-quant).
    pub fn shares_a_pass_with(&self, other: &KernelLinear) -> bool {
        match (self.layout, other.layout) {
            (Layout::KTiles(a), Layout::KTiles(b)) => a == b,
            (a, b) => matches!(
                (a, b),
                (Layout::Blocks(_), Layout::Blocks(_))
                    | (Layout::Tiles(_), Layout::Tiles(_))
                    | (Layout::Dense(_), Layout::Dense(_))
            ),
        }
    }
}

thread_local! {
    /// The quantized input, its buffers kept from one product to the next.
    static INPUT: RefCell<Q8Rows> = RefCell::new(Q8Rows::default());
    /// The same for the products of k-quant tiles, in blocks of 256.
    static INPUT_K: RefCell<Q8KRows> = RefCell::new(Q8KRows::default());
    /// The dense products' input, copied to a cache line's boundary.
    static ALIGNED_INPUT: RefCell<CacheLines> = RefCell::new(CacheLines::default());
}

/// Bytes starting on a 64-byte boundary (and so every row, where a row's length is a multiple
/// of 64 bytes). The dense kernels load 16 values at a time (64 bytes of f32); off a boundary
/// (where the allocator's 16-byte alignment leaves 3 in 4 allocations, candle's loads of
/// SmolLM2's GGUF matrices among them) each load spans two cache lines. With the input and the weights
/// misaligned a prefill ran at 110 GFLOP/s on two cores against 140-180 with either aligned
/// (1536 x 576 f32 by 128 rows, best of 20); with the input aligned, SmolLM2's f32 products at
/// 128 rows ran at 152 GFLOP/s with the weights 16 bytes off and 185 on the boundary.
#[derive(Default)]
struct CacheLines {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl CacheLines {
    /// A tensor's values moved here where they are not on a boundary (the tensor then freed),
    /// or the tensor as it is.
    fn moved(tensor: QTensor) -> Weights {
        let lines = tensor
            .data()
            .ok()
            .filter(|bytes| !(bytes.as_ptr() as usize).is_multiple_of(64))
            .map(|bytes| {
                let mut lines = CacheLines::default();
                lines.copy_of_bytes(&bytes);
                lines
            });
        match lines {
            Some(lines) => Weights::Aligned(lines),
            None => Weights::Tensor(Arc::new(tensor)),
        }
    }

    /// `bytes`, copied into this buffer (its memory kept from one call to the next).
    fn copy_of_bytes(&mut self, bytes: &[u8]) -> &[u8] {
        self.lines.clear();
        self.lines.extend(bytes.chunks(64).map(|chunk| {
            let mut line = [0; 64];
            line[..chunk.len()].copy_from_slice(chunk);
            Line(line)
        }));
        self.len = bytes.len();
        self.bytes()
    }

    /// `values`, copied into this buffer.
    fn copy_of(&mut self, values: &[f32]) -> &[f32] {
        let bytes = self.copy_of_bytes(bytemuck::cast_slice(values));
        // On a boundary, and whole f32: the cast cannot fail.
        bytemuck::cast_slice(bytes)
    }

    /// The bytes held.
    fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 bytes and nothing else (repr(C), size 64), so the lines are
        // `64 * lines.len()` contiguous initialized bytes, of which `len` are read.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }
}

/// `run` on `values` (rows of `cols`) quantized in this thread's buffers.
fn with_quantized(values: &[f32], cols: usize, run: impl FnOnce(&Q8Rows)) {
    INPUT.with(|input| {
        let mut input = input.borrow_mut();
        input.quantize(values, cols);
        run(&input);
    });
}

/// `run` on `values` (rows of `cols`) quantized in blocks of 256 in this thread's buffers.
fn with_quantized_k(values: &[f32], cols: usize, run: impl FnOnce(&Q8KRows)) {
    INPUT_K.with(|input| {
        let mut input = input.borrow_mut();
        input.quantize(values, cols);
        run(&input);
    });
}

/// The `count` values of a contiguous f32 tensor in host memory.
fn f32_values<'a>(
    storage: &'a Storage,
    layout: &candle_core::Layout,
    count: usize,
) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(values)) => {
            Ok(&values[layout.start_offset()..layout.start_offset() + count])
        }
        _ => candle_core::bail!("the CPU kernels take f32 tensors in host memory"),
    }
}

/// `silu(gate) · up` in one pass over the pool: candle's `silu` then `Mul`, bit for bit.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!("silu_mul of shapes {:?} and {:?}", gate.dims(), up.dims());
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (gate_storage, gate_layout) = gate.storage_and_layout();
    let (up_storage, up_layout) = up.storage_and_layout();
    let count = gate.elem_count();
    let product = elementwise::silu_mul(
        f32_values(&gate_storage, gate_layout, count)?,
        f32_values(&up_storage, up_layout, count)?,
    );
    Tensor::from_vec(product, gate.dims(), &Device::Cpu)
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
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let values = f32_values(&storage, layout, x.elem_count())?;
    let tokens = values.len() / cols;
    let mut outs: Vec<Vec<f32>> = linears.iter().map(|l| vec![0.0; tokens * l.rows]).collect();
    let mut destinations: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    let kernel = linears[0].kernel;
    let layouts = linears.map(|l| l.layout);
    if let Some(tiles) = linears
        .iter()
        .map(|l| match &l.weights {
            Weights::KTiles(tiles) => Some(tiles),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        if layouts.iter().any(|layout| *layout != layouts[0]) {
            candle_core::bail!("products of one input read as {layouts:?}: one pass takes one kind")
        }
        with_quantized_k(values, cols, |input| {
            KQuantTiles::matmul(kernel, &tiles, input, &mut destinations)
        });
    } else if let Some(tiles) = linears
        .iter()
        .map(|l| match &l.weights {
            Weights::Tiles(tiles) => Some(&**tiles),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        with_quantized(values, cols, |input| {
            matmul_packed(kernel, &tiles, input, &mut destinations)
        });
    } else if let Some(formats) = layouts
        .iter()
        .map(|layout| match layout {
            Layout::Blocks(format) => Some(*format),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        let bytes = linears
            .iter()
            .map(|l| l.tensor_bytes())
            .collect::<Result<Vec<_>>>()?;
        let matrices = linears
            .iter()
            .zip(&bytes)
            .zip(formats)
            .map(|((l, bytes), format)| BlockMatrix::new(format, l.rows, l.cols, bytes))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(candle_core::Error::msg)?;
        with_quantized(values, cols, |input| {
            matmul(kernel, &matrices, input, &mut destinations)
        });
    } else if let Some(formats) = layouts
        .iter()
        .map(|layout| match layout {
            Layout::Dense(format) => Some(*format),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        let bytes = linears
            .iter()
            .map(|l| l.tensor_bytes())
            .collect::<Result<Vec<_>>>()?;
        let matrices = linears
            .iter()
            .zip(&bytes)
            .zip(formats)
            .map(|((l, bytes), format)| DenseMatrix::new(format, l.rows, l.cols, bytes))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(candle_core::Error::msg)?;
        ALIGNED_INPUT.with(|input| {
            let mut input = input.borrow_mut();
            dense::matmul(kernel, &matrices, input.copy_of(values), &mut destinations)
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lines_start_on_a_boundary_and_hold_the_values() {
        let mut aligned = CacheLines::default();
        for len in [0, 1, 15, 16, 17, 1000] {
            let values: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let copy = aligned.copy_of(&values);
            assert_eq!(copy.as_ptr() as usize % 64, 0, "{len} values");
            assert_eq!(copy, values.as_slice());
        }
    }

    #[test]
    fn a_dense_matrix_off_a_boundary_is_moved_to_one_unless_shared() {
        let values: Vec<f32> = (0..48 * 64).map(|i| (i % 97) as f32 * 0.25 - 9.0).collect();
        let tensor = Tensor::from_vec(values.clone(), (48, 64), &Device::Cpu).unwrap();
        // Made until one lands off a boundary (the allocator's alignment is 16 bytes), those on
        // one kept so that each try takes a new address.
        let mut on_a_boundary = Vec::new();
        let (tensor, address) = loop {
            let q = QTensor::quantize(&tensor, GgmlDType::F32).unwrap();
            let address = q.data().unwrap().as_ptr() as usize;
            if !address.is_multiple_of(64) {
                break (q, address);
            }
            on_a_boundary.push(q);
            assert!(
                on_a_boundary.len() < 64,
                "no f32 tensor off a cache line's boundary"
            );
        };
        let tensor = Arc::new(tensor);
        let shared =
            KernelLinear::new(tensor.clone()).unwrap_or_else(|_| panic!("the kernels read f32"));
        let bytes = shared.tensor_bytes().unwrap();
        assert_eq!(
            bytes.as_ptr() as usize,
            address,
            "a shared tensor is read in place"
        );
        drop(bytes);
        drop(shared);
        let alone = KernelLinear::new(tensor).unwrap_or_else(|_| panic!("the kernels read f32"));
        let bytes = alone.tensor_bytes().unwrap();
        assert!(matches!(alone.weights, Weights::Aligned(_)));
        assert_eq!(bytes.as_ptr() as usize % 64, 0);
        assert_eq!(bytes, bytemuck::cast_slice::<f32, u8>(&values));
    }
}
