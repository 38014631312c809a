//! The dot product kernels, chosen at run time from the CPU's features.

use crate::activation::Q8Row;
use crate::format::BlockFormat;

/// The dot product kernels a CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, on every CPU: the reference.
    Portable,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen 1 and later).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU runs, the reference first.
    pub fn available() -> Vec<Self> {
        let mut kernels = vec![Kernel::Portable];
        if Self::detect() != Kernel::Portable {
            kernels.push(Self::detect());
        }
        kernels
    }

    /// One weight row (its blocks' bytes) times one activation row.
    pub fn dot(self, format: BlockFormat, weights: &[u8], x: Q8Row) -> f32 {
        debug_assert_eq!(weights.len(), x.d.len() * format.block_bytes());
        match self {
            Kernel::Portable => crate::portable::dot(format, weights, x),
            // SAFETY: `Kernel::detect` chose this kernel only where the CPU has its features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { crate::avx2::dot(format, weights, x) },
        }
    }
}
