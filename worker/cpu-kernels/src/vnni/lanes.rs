//! What every VNNI kernel shares: an activation run broadcast to the 16 rows' lanes, and a
//! vector of the 16 rows' sums put into a product's output.

use std::arch::x86_64::*;

use crate::format::TILE_ROWS;

/// The 16 rows' sums with row `t` of `x`, into `out[c * x_rows + t]`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn put_row(out: &mut [f32], x_rows: usize, t: usize, sums: __m512) {
    let mut values = [0.0f32; TILE_ROWS];
    // SAFETY: 16 f32.
    unsafe { _mm512_storeu_ps(values.as_mut_ptr(), sums) };
    for (c, v) in values.into_iter().enumerate() {
        out[c * x_rows + t] = v;
    }
}

/// The 4 values of `qs` at `at`, in every 32-bit lane.
///
/// # Safety
/// `qs` holds 4 values at `at`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn broadcast(qs: &[i8], at: usize) -> __m512i {
    // SAFETY: the caller's promise.
    unsafe { _mm512_set1_epi32(std::ptr::read_unaligned(qs.as_ptr().add(at) as *const i32)) }
}
