//! A layer's keys or values in a buffer with room to grow, written in place: a decoded token
//! copies its own position only, where `Tensor::cat` copies the whole cache.

use candle_core::{Result, Tensor};

/// Positions the cache grows by at least, so that decoding reallocates it rarely.
const CACHE_GROWTH: usize = 256;

/// One layer's keys or values, `(batch, kv_heads, capacity, head_dim)`, of which the first
/// `len` positions are written.
#[derive(Clone, Debug)]
pub struct KvBuffer {
    data: Tensor,
    len: usize,
}

impl KvBuffer {
    /// Appends `x` `(batch, kv_heads, seq, head_dim)` and returns the positions written so far.
    pub fn append(buffer: &mut Option<KvBuffer>, x: &Tensor, max_len: usize) -> Result<Tensor> {
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
            *buffer = Some(KvBuffer { data, len });
        }
        let buffer = buffer.as_mut().expect("allocated above");
        buffer.data.slice_set(&x, 2, len)?;
        buffer.len = len + seq;
        buffer.data.narrow(2, 0, buffer.len)
    }

    /// Forgets what was written (the buffer is kept), for a sequence that starts again.
    pub fn restart(buffer: &mut Option<KvBuffer>) {
        if let Some(buffer) = buffer {
            buffer.len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn the_cache_buffer_grows_and_keeps_what_was_written() {
        let device = Device::Cpu;
        let mut buffer = None;
        let mut written = Vec::new();
        for i in 0..(CACHE_GROWTH + 40) {
            let x = Tensor::full(i as f32, (1, 2, 1, 3), &device).unwrap();
            let all = KvBuffer::append(&mut buffer, &x, 10_000).unwrap();
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
        KvBuffer::append(&mut buffer, &x, 310).unwrap();
        assert_eq!(buffer.as_ref().unwrap().data.dim(2).unwrap(), 300);
        let x = Tensor::zeros((1, 2, 1, 3), DType::F32, &device).unwrap();
        KvBuffer::append(&mut buffer, &x, 310).unwrap();
        assert_eq!(buffer.unwrap().data.dim(2).unwrap(), 310);
    }
}
