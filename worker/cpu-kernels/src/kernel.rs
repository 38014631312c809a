//! The dot product kernels, chosen at run time from the CPU's features.

use crate::activation::{Q8Row, Q8Rows};
use crate::format::{BlockFormat, DenseFormat};

/// The dot product kernels a CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, on every CPU: the reference.
    Portable,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen 1 and later).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 with AVX-512F besides: the f32 and f16 products in 16 lanes, the quantized ones
    /// as `Avx2` (whose sums follow candle's order).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// x86-64 with AVX-512BW and AVX-512 VNNI besides: as `Avx512`, and the products of
    /// `PackedMatrix` tiles by `vpdpbusd`.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        Self::available()
            .pop()
            .expect("the portable kernel runs everywhere")
    }

    /// Every kernel this CPU runs, from the reference to the fastest.
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        kernels.extend(
            [Kernel::Avx2, Kernel::Avx512, Kernel::Avx512Vnni]
                .into_iter()
                .filter(|kernel| kernel.runs_here()),
        );
        kernels
    }

    /// Whether this CPU has the kernel's features (std caches the answers), which each product
    /// (`matmul`, `dense::matmul`, `matmul_packed`) asserts once before it runs the kernel's
    /// instructions: a `Kernel` is a plain value, so safe code could name one the CPU lacks.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => Kernel::Avx2.runs_here() && is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                Kernel::Avx512.runs_here()
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
        }
    }

    /// Whether this kernel multiplies `PackedMatrix` tiles faster than the file's blocks (the
    /// others run them through `dot`, as a reference).
    pub fn packs(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512Vnni {
            return true;
        }
        false
    }

    /// One weight row (its blocks' bytes) times one activation row.
    pub(crate) fn dot(self, format: BlockFormat, weights: &[u8], x: Q8Row) -> f32 {
        debug_assert_eq!(weights.len(), x.d.len() * format.block_bytes());
        debug_assert!(self.runs_here(), "{self:?} does not run on this CPU");
        match self {
            Kernel::Portable => crate::portable::dot(format, weights, x),
            // SAFETY: `runs_here`, asserted by the product that calls this one.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 | Kernel::Avx512Vnni => unsafe {
                crate::avx2::dot(format, weights, x)
            },
        }
    }

    /// Weight rows (their blocks' bytes; one or two) times every row of `x`:
    /// `out[c * x_rows + t]` for weight row `c` and row `t` of `x`, each equal to `dot` of the
    /// two.
    pub(crate) fn dot_rows(
        self,
        format: BlockFormat,
        weights: &[&[u8]],
        x: &Q8Rows,
        out: &mut [f32],
    ) {
        debug_assert_eq!(out.len(), weights.len() * x.rows());
        debug_assert!(self.runs_here(), "{self:?} does not run on this CPU");
        match self {
            Kernel::Portable => {
                for (weights, out) in weights.iter().zip(out.chunks_exact_mut(x.rows().max(1))) {
                    for (t, out) in out.iter_mut().enumerate() {
                        *out = crate::portable::dot(format, weights, x.row(t));
                    }
                }
            }
            // SAFETY: as for `dot`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 | Kernel::Avx512Vnni => unsafe {
                crate::avx2::dot_rows(format, weights, x, out)
            },
        }
    }

    /// Rows of f32 or f16 weights (their bytes; up to four) times each row of `x` (rows of the
    /// weight rows' length): `out[c * x_rows + t]` for weight row `c` and row `t` of `x`. A lone
    /// row of `x` takes the one-row kernel (four 8-lane sums); more go through in tiles that
    /// read each weight value once for up to 4 rows of `x` (one 8-lane sum each), so that a
    /// row's sum does not depend on the rows beside it in a tile.
    pub(crate) fn dense_rows(
        self,
        format: DenseFormat,
        weights: &[&[u8]],
        x: &[f32],
        out: &mut [f32],
    ) {
        let cols = weights[0].len() / format.value_bytes();
        debug_assert_eq!(x.len() * weights.len(), out.len() * cols);
        debug_assert!(self.runs_here(), "{self:?} does not run on this CPU");
        match self {
            Kernel::Portable => {
                let rows = x.chunks_exact(cols);
                for (weights, out) in weights.iter().zip(out.chunks_exact_mut(rows.len())) {
                    for (x, out) in x.chunks_exact(cols).zip(out) {
                        *out = crate::portable::dense_dot(format, weights, x);
                    }
                }
            }
            // SAFETY: `runs_here`, asserted by the product that calls this one.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { crate::avx2::dense_rows(format, weights, x, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Vnni => unsafe {
                crate::avx512::dense_rows(format, weights, x, out)
            },
        }
    }
}
