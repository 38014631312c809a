//! The worker's own modules: networks derived from candle-transformers where candle's would
//! compute something other than transformers (or issue more kernels), and the masks and rotary
//! tables they share. Architectures whose candle module is right use it directly.

pub mod gemma;
mod kv_buffer;
pub mod llama;
pub mod mask;
pub mod phi;
pub mod quantized_llama;
pub mod rotary;
pub mod starcoder2;
