//! Rotary position tables for the modules derived in this crate.

use candle_core::{DType, Device, Result, Tensor};

/// cos and sin of `position / theta^(2i / dim)` for every position below `max_positions` and
/// every `i < dim / 2`, shaped `(max_positions, dim / 2)`. Computed in f32 and then cast to
/// `dtype`, as transformers does: positions and angles in bf16 would be rounded.
pub fn tables(
    dim: usize,
    theta: f64,
    max_positions: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f64 / dim as f64) as f32)
        .collect();
    let inv_freq_len = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, inv_freq_len), device)?;
    let positions = Tensor::arange(0u32, max_positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_positions, 1))?;
    let angles = positions.matmul(&inv_freq)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}
