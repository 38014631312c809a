//! The kernels of llm-worker-rbee's CPU fast engine: products of GGUF block-quantized weights
//! (Q4_0, Q4_1, Q8_0 in blocks of 32; the k-quants Q2_K to Q6_K in blocks of 256, `q2_k`,
//! `q3_k`, `k_quants`, `q5_k` and `q6_k`) with the input quantized once for every product that reads it, and of f32 and
//! f16 weights with the f32 input, by kernels chosen at run time from the CPU's features (the
//! portable kernel is the reference; with AVX-512 VNNI, quantized weights repacked at load in
//! 16-row tiles), split over candle's persistent barrier pool. A crate of its own so that test
//! builds optimize it as they do candle. candle's `QMatMul` stays the reference engine; the
//! tests below check every kernel against it and against the f64 product of the stored values.

pub mod activation;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod blocks;
pub mod dense;
pub mod elementwise;
pub mod format;
pub mod k_quants;
pub mod k_tiles;
pub mod kernel;
pub mod packed;
mod pool;
mod portable;
pub mod q2_k;
pub mod q3_k;
pub mod q5_k;
pub mod q6_k;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use activation::{Q8KRows, Q8Rows, BLOCK};
pub use blocks::{matmul, BlockMatrix};
pub use dense::DenseMatrix;
pub use format::{BlockFormat, DenseFormat, SUPER_BLOCK, TILE_ROWS};
pub use k_quants::Q4KTiles;
pub use k_tiles::KTiles;
pub use kernel::Kernel;
pub use packed::{matmul_packed, PackedMatrix};
pub use q2_k::Q2KTiles;
pub use q3_k::Q3KTiles;
pub use q5_k::Q5KTiles;
pub use q6_k::Q6KTiles;

/// `Σ (a - b)² / Σ b²`, the measure of llama.cpp's test-backend-ops that the kernels' checks
/// bound.
pub fn nmse(ours: &[f32], reference: &[f32]) -> f64 {
    let error: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
    error / norm
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::*;
    use crate::k_quants::Q4K;
    use crate::k_tiles::KQuant;
    use crate::q2_k::Q2K;
    use crate::q3_k::Q3K;
    use crate::q5_k::Q5K;
    use crate::q6_k::Q6K;

    const FORMATS: [(GgmlDType, BlockFormat); 3] = [
        (GgmlDType::Q4_0, BlockFormat::Q4_0),
        (GgmlDType::Q4_1, BlockFormat::Q4_1),
        (GgmlDType::Q8_0, BlockFormat::Q8_0),
    ];

    /// Values from a fixed sequence in [-0.5, 0.5), with a block of zeros and a block of
    /// negative values to reach the edge cases of the scales.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        let mut values: Vec<f32> = (0..count)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                (h >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        if count >= 64 {
            values[..32].fill(0.0);
            values[32..64].iter_mut().for_each(|v| *v = -v.abs());
        }
        values
    }

    /// An `n` x `k` matrix of `values`, quantized by candle.
    fn quantized(dtype: GgmlDType, n: usize, k: usize, seed: u32) -> QTensor {
        let tensor = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&tensor, dtype).unwrap()
    }

    /// The values a quantized matrix stores, as candle dequantizes them.
    fn stored(weights: &QTensor) -> Vec<f32> {
        weights
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `x` (`m` rows of `k`) times the `n` x `k` matrix `weights`, each sum in f64.
    fn f64_product(weights: &[f32], x: &[f32], n: usize, k: usize) -> Vec<f32> {
        let m = x.len() / k;
        (0..m * n)
            .map(|i| {
                let (t, r) = (i / n, i % n);
                let sum: f64 = weights[r * k..(r + 1) * k]
                    .iter()
                    .zip(&x[t * k..(t + 1) * k])
                    .map(|(w, x)| f64::from(*w) * f64::from(*x))
                    .sum();
                sum as f32
            })
            .collect()
    }

    /// candle's `QMatMul` product of `x` (rows of `k`).
    fn candles_product(matmul: &QMatMul, x: &[f32], k: usize) -> Vec<f32> {
        let input = Tensor::from_slice(x, (x.len() / k, k), &Device::Cpu).unwrap();
        matmul
            .forward(&input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Every kernel, at activation row counts 1, 4, 8, 23 and 512 and odd block counts, against
    /// candle's dequantized weights times the f32 activation (f64 sums): only the activation's 8-bit
    /// rounding separates them, within llama.cpp's bound for these formats (5e-4).
    #[test]
    fn every_kernel_matches_the_dequantized_product() {
        for (dtype, format) in FORMATS {
            for (n, k) in [(13, 288), (40, 96), (67, 800), (192, 576)] {
                let weights = quantized(dtype, n, k, n as u32);
                let bytes = weights.data().unwrap().into_owned();
                let matrix = BlockMatrix::new(format, n, k, &bytes).unwrap();
                let dense = stored(&weights);
                for m in [1, 4, 8, 23, 512] {
                    let x = values(m * k, 7 + m as u32);
                    let reference = f64_product(&dense, &x, n, k);
                    let mut rows = Q8Rows::default();
                    rows.quantize(&x, k);
                    for kernel in Kernel::available() {
                        let mut out = vec![f32::NAN; m * n];
                        matmul(kernel, &[matrix], &rows, &mut [&mut out]);
                        let error = nmse(&out, &reference);
                        assert!(
                            error < 5e-4,
                            "{format:?} {kernel:?} m={m} n={n} k={k}: NMSE {error}"
                        );
                    }
                }
            }
        }
    }

    /// The same integer sums as candle's `QMatMul`, scaled as candle's x86 kernels scale them: the
    /// AVX2 kernel's results equal candle's bit for bit (so the fast engine picks candle's
    /// tokens); the portable kernel's, up to the order of the f32 additions. (candle's Q4_1
    /// product takes an even number of blocks only. No row count here is a multiple of 16: on a
    /// VNNI CPU candle's Q8_0 product of 16-row multiples and rows of 256-value multiples takes
    /// its own repacked path, summed in another order.)
    #[test]
    fn every_kernel_matches_candles_qmatmul() {
        for (dtype, format) in FORMATS {
            for (n, k, m) in [
                (23, 576, 1),
                (40, 64, 5),
                (9, 1536, 3),
                (7, 96, 2),
                (13, 288, 8),
                (6, 256, 9),
                (5, 320, 4),
            ] {
                if format == BlockFormat::Q4_1 && (k / 32) % 2 == 1 {
                    continue;
                }
                let weights = quantized(dtype, n, k, 3);
                let bytes = weights.data().unwrap().into_owned();
                let matrix = BlockMatrix::new(format, n, k, &bytes).unwrap();
                let x = values(m * k, 11);
                let candle = candles_product(&QMatMul::from_qtensor(weights).unwrap(), &x, k);
                let mut rows = Q8Rows::default();
                rows.quantize(&x, k);
                for kernel in Kernel::available() {
                    let mut out = vec![f32::NAN; m * n];
                    matmul(kernel, &[matrix], &rows, &mut [&mut out]);
                    let error = nmse(&out, &candle);
                    assert!(
                        error < 1e-10,
                        "{format:?} {kernel:?} m={m} n={n} k={k}: NMSE {error}"
                    );
                    #[cfg(target_arch = "x86_64")]
                    if kernel != Kernel::Portable {
                        assert_eq!(out, candle, "{format:?} m={m} n={n} k={k}");
                    }
                }
            }
        }
    }

    /// Every kernel's product of the 16-row tiles equals its product of the file's blocks bit
    /// for bit (VNNI against AVX2's `dot`), at activation row counts 1, 4, 8, 23 and 512, odd
    /// block counts, and several matrices in one pass; a tile unpacks to the file's rows.
    #[test]
    fn every_packed_product_equals_the_blocks_product_bit_for_bit() {
        for (dtype, format) in FORMATS {
            for (n, k) in [(16, 32), (48, 1184), (160, 576), (32, 2048)] {
                let stores: Vec<Vec<u8>> = [n, 2 * n]
                    .iter()
                    .map(|rows| {
                        let weights = quantized(dtype, *rows, k, (rows + k) as u32);
                        weights.data().unwrap().into_owned()
                    })
                    .collect();
                let matrices: Vec<BlockMatrix> = stores
                    .iter()
                    .zip([n, 2 * n])
                    .map(|(bytes, rows)| BlockMatrix::new(format, rows, k, bytes).unwrap())
                    .collect();
                let packed: Vec<PackedMatrix> = stores
                    .iter()
                    .zip([n, 2 * n])
                    .map(|(bytes, rows)| PackedMatrix::pack(format, rows, k, bytes).unwrap())
                    .collect();
                let row_bytes = k / BLOCK * format.block_bytes();
                for r in [0, 5, n - 1] {
                    let want = &stores[0][r * row_bytes..(r + 1) * row_bytes];
                    assert_eq!(packed[0].unpacked_row(r), want, "{format:?} row {r}");
                }
                let packed: Vec<&PackedMatrix> = packed.iter().collect();
                for m in [1, 4, 8, 23, 512] {
                    if m == 512 && k > 576 {
                        continue;
                    }
                    let mut rows = Q8Rows::default();
                    rows.quantize(&values(m * k, 9 + m as u32), k);
                    for kernel in Kernel::available() {
                        let product = |run: &dyn Fn(&mut [&mut [f32]])| {
                            let mut outs = [vec![f32::NAN; m * n], vec![f32::NAN; 2 * m * n]];
                            let mut slices: Vec<&mut [f32]> =
                                outs.iter_mut().map(Vec::as_mut_slice).collect();
                            run(&mut slices);
                            outs.concat()
                                .iter()
                                .map(|v| v.to_bits())
                                .collect::<Vec<_>>()
                        };
                        let blocks = product(&|outs| matmul(kernel, &matrices, &rows, outs));
                        let tiles = product(&|outs| matmul_packed(kernel, &packed, &rows, outs));
                        assert!(
                            blocks == tiles,
                            "{format:?} {kernel:?} m={m} n={n} k={k}: the tiles' product differs"
                        );
                    }
                }
            }
        }
    }

    /// The tiles' product, every kernel, at activation row counts 1, 4, 8, 23 and 512 and odd
    /// block counts: against the dequantized weights times the f32 activation (f64 sums), within
    /// llama.cpp's bound for the k-quants (5e-4); and against candle's `QMatMul` bit for bit on
    /// a CPU where candle takes its AVX-512 VNNI tiles (Q4_K: and AMX from 32 rows; Q6_K: its
    /// AVX2 `vec_dot` for one row), whose float steps the kernels follow. Elsewhere candle's
    /// 256-bit kernels sum in another order.
    fn tiles_match_the_dequantized_product_and_candle<F: KQuant>() {
        #[cfg(target_arch = "x86_64")]
        let candles_order = Kernel::detect() == Kernel::Avx512Vnni;
        #[cfg(not(target_arch = "x86_64"))]
        let candles_order = false;
        let dtype = F::DTYPE;
        for (n, k) in [(16, 256), (48, 768), (32, 1280), (64, 2048)] {
            let weights = quantized(dtype, n, k, n as u32);
            let bytes = weights.data().unwrap().into_owned();
            let tiles = KTiles::<F>::pack(n, k, &bytes).unwrap();
            let dense = stored(&weights);
            let matmul = QMatMul::from_qtensor(weights).unwrap();
            for m in [1, 4, 8, 23, 512] {
                if m == 512 && k > 768 {
                    continue;
                }
                let x = values(m * k, 7 + m as u32);
                let reference = f64_product(&dense, &x, n, k);
                let candle = candles_product(&matmul, &x, k);
                let mut rows = Q8KRows::default();
                rows.quantize(&x, k);
                for kernel in Kernel::available() {
                    let mut out = vec![f32::NAN; m * n];
                    k_tiles::matmul(kernel, &[&tiles], &rows, &mut [&mut out]);
                    let error = nmse(&out, &reference);
                    assert!(
                        error < 5e-4,
                        "{dtype:?} {kernel:?} m={m} n={n} k={k}: NMSE {error}"
                    );
                    let error = nmse(&out, &candle);
                    assert!(
                        error < 1e-10,
                        "{dtype:?} {kernel:?} m={m} n={n} k={k}: NMSE {error} to candle"
                    );
                    if candles_order {
                        assert!(
                            out == candle,
                            "{dtype:?} {kernel:?} m={m} n={n} k={k}: not candle's bits"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_q4k_kernel_matches_the_dequantized_product_and_candle() {
        tiles_match_the_dequantized_product_and_candle::<Q4K>();
    }

    #[test]
    fn every_q2k_kernel_matches_the_dequantized_product_and_candle() {
        tiles_match_the_dequantized_product_and_candle::<Q2K>();
    }

    #[test]
    fn every_q3k_kernel_matches_the_dequantized_product_and_candle() {
        tiles_match_the_dequantized_product_and_candle::<Q3K>();
    }

    #[test]
    fn every_q5k_kernel_matches_the_dequantized_product_and_candle() {
        tiles_match_the_dequantized_product_and_candle::<Q5K>();
    }

    #[test]
    fn every_q6k_kernel_matches_the_dequantized_product_and_candle() {
        tiles_match_the_dequantized_product_and_candle::<Q6K>();
    }

    /// The tiles unpack to the file's rows; products that share an activation, in one pass,
    /// equal each alone (one activation row and three); matrices not of whole tiles are
    /// refused.
    fn tiles_hold_the_files_rows<F: KQuant>() {
        let (dtype, k) = (F::DTYPE, 512);
        let stores: Vec<(usize, Vec<u8>)> = [16, 48]
            .into_iter()
            .map(|n| {
                let weights = quantized(dtype, n, k, n as u32);
                (n, weights.data().unwrap().into_owned())
            })
            .collect();
        let tiles: Vec<KTiles<F>> = stores
            .iter()
            .map(|(n, bytes)| KTiles::pack(*n, k, bytes).unwrap())
            .collect();
        let row_bytes = k / 256 * F::FILE_BLOCK_BYTES;
        for ((n, bytes), tiles) in stores.iter().zip(&tiles) {
            for r in 0..*n {
                let want = &bytes[r * row_bytes..(r + 1) * row_bytes];
                assert_eq!(tiles.unpacked_row(r), want, "{dtype:?} row {r} of {n}");
            }
        }
        let kernel = Kernel::detect();
        let matrices: Vec<&KTiles<F>> = tiles.iter().collect();
        for m in [1, 3] {
            let mut rows = Q8KRows::default();
            rows.quantize(&values(m * k, 5), k);
            let mut shared: Vec<Vec<f32>> = tiles.iter().map(|t| vec![0.0; m * t.rows()]).collect();
            let mut outs: Vec<&mut [f32]> = shared.iter_mut().map(Vec::as_mut_slice).collect();
            k_tiles::matmul(kernel, &matrices, &rows, &mut outs);
            for (matrix, shared) in matrices.iter().zip(&shared) {
                let mut alone = vec![0.0; m * matrix.rows()];
                k_tiles::matmul(kernel, &[matrix], &rows, &mut [&mut alone]);
                assert_eq!(&alone, shared, "{dtype:?} {} rows by {m}", matrix.rows());
            }
        }
        let refused = KTiles::<F>::pack(8, 256, &vec![0; 8 * F::FILE_BLOCK_BYTES])
            .err()
            .unwrap();
        assert!(refused.contains("whole tiles of 16 rows"), "{refused}");
        let refused = KTiles::<F>::pack(16, 256, &[0; 100]).err().unwrap();
        let takes = format!("takes {}", 16 * F::FILE_BLOCK_BYTES);
        assert!(
            refused.contains("100 bytes") && refused.contains(&takes),
            "{refused}"
        );
    }

    #[test]
    fn q4k_tiles_hold_the_files_rows() {
        tiles_hold_the_files_rows::<Q4K>();
    }

    #[test]
    fn q2k_tiles_hold_the_files_rows() {
        tiles_hold_the_files_rows::<Q2K>();
    }

    #[test]
    fn q3k_tiles_hold_the_files_rows() {
        tiles_hold_the_files_rows::<Q3K>();
    }

    #[test]
    fn q5k_tiles_hold_the_files_rows() {
        tiles_hold_the_files_rows::<Q5K>();
    }

    #[test]
    fn q6k_tiles_hold_the_files_rows() {
        tiles_hold_the_files_rows::<Q6K>();
    }

    #[test]
    fn a_matrix_not_of_whole_tiles_is_not_packed() {
        let bytes = vec![0u8; 17 * 34];
        let error = PackedMatrix::pack(BlockFormat::Q8_0, 17, 32, &bytes)
            .err()
            .unwrap();
        assert!(error.contains("whole tiles of 16 rows"), "{error}");
    }

    /// Products that share an activation, run in one pass, equal each run alone.
    #[test]
    fn a_shared_pass_equals_separate_products() {
        let (k, m) = (96, 3);
        let stores: Vec<(BlockFormat, usize, Vec<u8>)> = FORMATS
            .iter()
            .zip([5, 17, 8])
            .map(|((dtype, format), n)| {
                let weights = quantized(*dtype, n, k, n as u32);
                (*format, n, weights.data().unwrap().into_owned())
            })
            .collect();
        let matrices: Vec<BlockMatrix> = stores
            .iter()
            .map(|(format, n, bytes)| BlockMatrix::new(*format, *n, k, bytes).unwrap())
            .collect();
        let mut rows = Q8Rows::default();
        rows.quantize(&values(m * k, 5), k);
        let kernel = Kernel::detect();
        let mut shared: Vec<Vec<f32>> = matrices.iter().map(|w| vec![0.0; m * w.rows()]).collect();
        let mut outs: Vec<&mut [f32]> = shared.iter_mut().map(Vec::as_mut_slice).collect();
        matmul(kernel, &matrices, &rows, &mut outs);
        for (matrix, shared) in matrices.iter().zip(&shared) {
            let mut alone = vec![0.0; m * matrix.rows()];
            matmul(kernel, &[*matrix], &rows, &mut [&mut alone]);
            assert_eq!(&alone, shared, "{:?}", matrix.format());
        }
    }

    /// The f32 and f16 kernels, at activation row counts 1, 4, 8, 23 and 512 and odd column
    /// counts (the AVX2 kernel's scalar tail), against the same values' product summed in f64,
    /// and against candle's `QMatMul` of the same tensor: only the order of f32 sums differs.
    #[test]
    fn every_dense_kernel_matches_the_f64_product_and_candle() {
        for (dtype, format) in [
            (GgmlDType::F32, DenseFormat::F32),
            (GgmlDType::F16, DenseFormat::F16),
        ] {
            for (n, k) in [(13, 37), (40, 96), (67, 803), (192, 576)] {
                let weights = quantized(dtype, n, k, n as u32);
                let bytes = weights.data().unwrap().into_owned();
                let matrix = DenseMatrix::new(format, n, k, &bytes).unwrap();
                let dense = stored(&weights);
                let candles = QMatMul::from_qtensor(weights).unwrap();
                for m in [1, 4, 8, 23, 512] {
                    let x = values(m * k, 7 + m as u32);
                    let reference = f64_product(&dense, &x, n, k);
                    let candle = candles_product(&candles, &x, k);
                    for kernel in Kernel::available() {
                        let mut out = vec![f32::NAN; m * n];
                        dense::matmul(kernel, &[matrix], &x, &mut [&mut out]);
                        for (against, expected) in [("f64", &reference), ("candle", &candle)] {
                            let error = nmse(&out, expected);
                            assert!(
                                error < 1e-10,
                                "{format:?} {kernel:?} m={m} n={n} k={k} against {against}: NMSE {error}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_matrix_of_the_wrong_size_is_refused() {
        let refused = DenseMatrix::new(DenseFormat::F16, 3, 5, &[0; 29])
            .err()
            .unwrap();
        assert!(
            refused.contains("29 bytes") && refused.contains("takes 30"),
            "{refused}"
        );
        let refused = BlockMatrix::new(BlockFormat::Q4_1, 2, 64, &[0; 79])
            .err()
            .unwrap();
        assert!(
            refused.contains("79 bytes") && refused.contains("takes 80"),
            "{refused}"
        );
        let refused = BlockMatrix::new(BlockFormat::Q8_0, 2, 48, &[])
            .err()
            .unwrap();
        assert!(refused.contains("not whole blocks"), "{refused}");
    }
}
