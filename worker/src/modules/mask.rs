//! Additive attention masks with transformers' sliding-window semantics.
//!
//! The query at absolute position `i` sees key `j` when `j <= i` and, with a window `w`,
//! `j > i - w`: itself and the `w - 1` tokens before it (transformers' `sliding_window_overlay`).
//! candle-transformers 0.11 lets a query see `w + 1` tokens and applies no window at all while
//! decoding one token at a time; the modules that use this helper get it right in both cases.

use candle_core::{DType, Device, Result, Tensor};

/// The mask for `q_len` new queries after `offset` cached tokens, shaped `(1, 1, q_len,
/// offset + q_len)`, with `0` where attention is allowed and `-inf` elsewhere. `None` when nothing
/// is masked (a single query with every cached key in its window).
pub fn causal(
    q_len: usize,
    offset: usize,
    window: Option<usize>,
    device: &Device,
    dtype: DType,
) -> Result<Option<Tensor>> {
    let kv_len = offset + q_len;
    let visible = |i: usize, j: usize| j <= i && window.is_none_or(|w| j + w > i);
    let all_visible = (offset..kv_len).all(|i| (0..kv_len).all(|j| j > i || visible(i, j)));
    if q_len == 1 && all_visible {
        return Ok(None);
    }
    let values: Vec<f32> = (offset..kv_len)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if visible(i, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (1, 1, q_len, kv_len), device)?
        .to_dtype(dtype)
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(q_len: usize, offset: usize, window: Option<usize>) -> Vec<Vec<bool>> {
        match causal(q_len, offset, window, &Device::Cpu, DType::F32).unwrap() {
            None => vec![vec![true; offset + q_len]; q_len],
            Some(mask) => mask
                .squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|row| row.into_iter().map(|v| v == 0.0).collect())
                .collect(),
        }
    }

    #[test]
    fn prefill_without_window_is_lower_triangular() {
        let rows = visible(3, 0, None);
        assert_eq!(
            rows,
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![true, true, true]
            ]
        );
    }

    #[test]
    fn window_keeps_the_query_and_the_window_minus_one_before_it() {
        let rows = visible(4, 0, Some(2));
        assert_eq!(rows[3], vec![false, false, true, true]);
        assert_eq!(rows[1], vec![true, true, false, false]);
    }

    #[test]
    fn decode_step_applies_the_window_to_cached_keys() {
        assert_eq!(
            visible(1, 5, Some(3)),
            vec![vec![false, false, false, true, true, true]]
        );
        assert!(causal(1, 2, Some(3), &Device::Cpu, DType::F32)
            .unwrap()
            .is_none());
        assert!(causal(1, 9, None, &Device::Cpu, DType::F32)
            .unwrap()
            .is_none());
    }

    #[test]
    fn chunk_after_cached_tokens_sees_the_cache_causally() {
        let rows = visible(2, 2, None);
        assert_eq!(rows, vec![vec![true, true, true, false], vec![true; 4]]);
    }
}
