//! A layer's keys or values as a buffer with room to grow, written in place, and the grouped
//! heads repeated in one copy. candle's modules `Tensor::cat` the whole cache with each new
//! position (a copy of all of it per token and layer) and repeat grouped heads by a `cat` of
//! n_rep copies. The values, their layout and so the attention products are the same.

use candle_core::{Result, Tensor};

/// Positions the cache grows by at least, so that decoding reallocates it rarely.
const CACHE_GROWTH: usize = 256;

/// One layer's keys or values, `(batch, kv_heads, capacity, head_dim)`, of which the first
/// `len` positions are written.
#[derive(Clone, Debug)]
pub struct Buffer {
    data: Tensor,
    len: usize,
}

impl Buffer {
    /// Appends `x` `(batch, kv_heads, seq, head_dim)` and returns the positions written so far.
    pub fn append(buffer: &mut Option<Buffer>, x: &Tensor, max_len: usize) -> Result<Tensor> {
        let (b, heads, seq, dim) = x.dims4()?;
        let x = x.contiguous()?;
        let len = buffer.as_ref().map_or(0, |b| b.len);
        let capacity = buffer.as_ref().map_or(0, |b| b.data.dim(2).unwrap_or(0));
        if len + seq > capacity {
            let wanted = (len + seq).max(2 * capacity).max(CACHE_GROWTH);
            let capacity = wanted.min(max_len.max(len + seq));
            let data = Tensor::zeros((b, heads, capacity, dim), x.dtype(), x.device())?;
            if let Some(old) = buffer.as_ref() {
                data.slice_set(&old.data.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *buffer = Some(Buffer { data, len });
        }
        let buffer = buffer.as_mut().expect("allocated above");
        buffer.data.slice_set(&x, 2, len)?;
        buffer.len = len + seq;
        buffer.data.narrow(2, 0, buffer.len)
    }

    /// Forgets the positions written; the memory is kept for the next sequence.
    pub fn clear(buffer: &mut Option<Buffer>) {
        if let Some(buffer) = buffer {
            buffer.len = 0;
        }
    }
}

/// `(b, kv_heads, len, d)` as `(b, kv_heads * n_rep, len, d)`, each kv head repeated n_rep
/// times in place (candle's `repeat_kv`), in one copy; contiguous, as candle's is.
pub fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return x.contiguous();
    }
    let (b, kv_heads, len, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv_heads, n_rep, len, d))?
        .contiguous()?
        .reshape((b, kv_heads * n_rep, len, d))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn the_cache_buffer_grows_and_keeps_what_was_written() {
        let device = Device::Cpu;
        let mut buffer = None;
        let mut written = Vec::new();
        for i in 0..(CACHE_GROWTH + 40) {
            let x = Tensor::full(i as f32, (1, 2, 1, 3), &device).unwrap();
            let all = Buffer::append(&mut buffer, &x, 10_000).unwrap();
            written.push(x);
            assert_eq!(all.dims4().unwrap(), (1, 2, i + 1, 3));
        }
        let expected = Tensor::cat(&written, 2).unwrap();
        let all = buffer
            .as_ref()
            .unwrap()
            .data
            .narrow(2, 0, CACHE_GROWTH + 40)
            .unwrap();
        assert_eq!(
            all.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(buffer.unwrap().data.dim(2).unwrap(), 2 * CACHE_GROWTH);
        // A prefill longer than the growth step fits at once; the context caps the growth.
        let mut buffer = None;
        let x = Tensor::zeros((1, 2, 300, 3), DType::F32, &device).unwrap();
        Buffer::append(&mut buffer, &x, 310).unwrap();
        assert_eq!(buffer.as_ref().unwrap().data.dim(2).unwrap(), 300);
        let x = Tensor::zeros((1, 2, 1, 3), DType::F32, &device).unwrap();
        Buffer::append(&mut buffer, &x, 310).unwrap();
        assert_eq!(buffer.unwrap().data.dim(2).unwrap(), 310);
    }

    #[test]
    fn a_cleared_buffer_starts_over_in_the_same_memory() {
        let device = Device::Cpu;
        let mut buffer = None;
        let x = Tensor::full(1f32, (1, 2, 5, 3), &device).unwrap();
        Buffer::append(&mut buffer, &x, 10_000).unwrap();
        Buffer::clear(&mut buffer);
        let y = Tensor::full(2f32, (1, 2, 2, 3), &device).unwrap();
        let all = Buffer::append(&mut buffer, &y, 10_000).unwrap();
        assert_eq!(all.dims4().unwrap(), (1, 2, 2, 3));
        assert_eq!(
            all.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2f32; 12]
        );
        assert_eq!(buffer.unwrap().data.dim(2).unwrap(), CACHE_GROWTH);
    }

    #[test]
    fn repeated_heads_equal_candles_repeat_kv() {
        let device = Device::Cpu;
        let x = Tensor::arange(0f32, 2. * 3. * 4. * 5., &device)
            .unwrap()
            .reshape((2, 3, 4, 5))
            .unwrap();
        for n_rep in [1, 3] {
            let ours = repeat_kv(x.clone(), n_rep).unwrap();
            let theirs = candle_transformers::utils::repeat_kv(x.clone(), n_rep).unwrap();
            assert!(ours.is_contiguous());
            assert_eq!(ours.dims(), theirs.dims());
            assert_eq!(
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}
