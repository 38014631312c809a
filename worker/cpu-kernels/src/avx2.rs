//! AVX2 + FMA + F16C dot products, ported from llama.cpp's `ggml/src/ggml-cpu/arch/x86/quants.c`
//! (MIT): 32 products per block summed in one register. Q4_0 and Q8_0 add one FMA per block into
//! 8 lanes and sum them per row, as candle's AVX2 kernels do; Q4_1 scales each block's integer
//! sum in candle's scalar order. Either way the results equal candle's `QMatMul` bit for bit.

use std::arch::x86_64::*;

use crate::activation::{Q8Row, BLOCK};
use crate::format::BlockFormat;

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `weights` holds `x.d.len()` blocks of `format`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(format: BlockFormat, weights: &[u8], x: Q8Row) -> f32 {
    let size = format.block_bytes();
    let blocks = x.d.len();
    assert!(weights.len() >= blocks * size && x.qs.len() >= blocks * BLOCK);
    let (w, q8) = (weights.as_ptr(), x.qs.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut scalar = 0.0f32;
    // SAFETY (the loads): block b's bytes lie at `w + b * size`, its activation at
    // `q8 + b * 32`, both within the slices (asserted above).
    unsafe {
        match format {
            BlockFormat::Q4_0 => {
                let eight = _mm256_set1_epi8(8);
                for b in 0..blocks {
                    let block = w.add(b * size);
                    let scale = _mm256_set1_ps(half(block) * x.d[b]);
                    let qw = _mm256_sub_epi8(nibbles(block.add(2)), eight);
                    let qx = _mm256_loadu_si256(q8.add(b * BLOCK) as *const __m256i);
                    acc = _mm256_fmadd_ps(scale, signed_products(qw, qx), acc);
                }
            }
            BlockFormat::Q4_1 => {
                // The block's integer sum, then candle's scalar float steps in candle's order
                // (`k_quants::BlockQ4_1::vec_dot`), so that the products equal its bit for bit.
                let ones = _mm256_set1_epi16(1);
                for b in 0..blocks {
                    let block = w.add(b * size);
                    let qx = _mm256_loadu_si256(q8.add(b * BLOCK) as *const __m256i);
                    // Unsigned 4-bit times signed 8-bit: at most 2 * 15 * 128 per pair, no
                    // saturation.
                    let pairs = _mm256_maddubs_epi16(nibbles(block.add(4)), qx);
                    let sum = integer_sum(_mm256_madd_epi16(pairs, ones));
                    scalar += sum as f32 * half(block) * x.d[b] + half(block.add(2)) * x.s[b];
                }
            }
            BlockFormat::Q8_0 => {
                for b in 0..blocks {
                    let block = w.add(b * size);
                    let scale = _mm256_set1_ps(half(block) * x.d[b]);
                    let qw = _mm256_loadu_si256(block.add(2) as *const __m256i);
                    let qx = _mm256_loadu_si256(q8.add(b * BLOCK) as *const __m256i);
                    acc = _mm256_fmadd_ps(scale, signed_products(qw, qx), acc);
                }
            }
        }
    }
    horizontal_sum(acc) + scalar
}

/// The f16 at `p` (little-endian) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half(p: *const u8) -> f32 {
    // SAFETY: the caller's block holds two bytes at `p`.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// 16 bytes of nibbles at `p` as 32 bytes: the low nibbles, then the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller's block holds 16 bytes at `p`.
    let packed = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
        _mm256_set1_epi8(0xF),
    )
}

/// Σ of adjacent i16 pairs, as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_sums(x: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(x, _mm256_set1_epi16(1)))
}

/// Products of signed bytes, summed by fours, as 8 f32: `maddubs` takes an unsigned operand,
/// so `|w|` meets `x` with `w`'s sign.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_products(w: __m256i, x: __m256i) -> __m256 {
    pair_sums(_mm256_maddubs_epi16(
        _mm256_sign_epi8(w, w),
        _mm256_sign_epi8(x, w),
    ))
}

/// The sum of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn integer_sum(x: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_extracti128_si256(x, 1), _mm256_castsi256_si128(x));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32(pair, 1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(x: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
