//! Opening a backend's device and the candle type of a dtype; the [`Backend`], [`Dtype`] and
//! [`KvCache`] names themselves are [`llm_worker_rbee_api`]'s.

use candle_core::{DType, Device};

pub use llm_worker_rbee_api::backend::{Backend, Dtype, KvCache};

use crate::error::{Error, Result};

/// Whether this binary was built with the cargo feature `backend` needs.
pub fn is_compiled_in(backend: Backend) -> bool {
    match backend {
        Backend::Cpu => true,
        Backend::Cuda => cfg!(feature = "cuda"),
        Backend::Metal => cfg!(feature = "metal"),
    }
}

/// Opens device `ordinal` of `backend` (ignored for `cpu`).
pub fn open_device(backend: Backend, ordinal: usize) -> Result<Device> {
    if !is_compiled_in(backend) {
        return Err(Error::Backend {
            backend: backend.name().into(),
            message: format!(
                "not compiled into this binary; rebuild with `--features {0}` \
                 (`cargo xtask build --backend {0}`)",
                backend.name()
            ),
        });
    }
    let device = match backend {
        Backend::Cpu => Ok(Device::Cpu),
        Backend::Cuda => Device::new_cuda(ordinal),
        Backend::Metal => Device::new_metal(ordinal),
    };
    device.map_err(|e| Error::Backend {
        backend: backend.name().into(),
        message: format!("cannot open device {ordinal}: {e}"),
    })
}

/// The candle type weights and activations are held in.
pub fn candle_dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F32 => DType::F32,
        Dtype::Bf16 => DType::BF16,
        Dtype::F16 => DType::F16,
    }
}
