//! What the bench asks the device: its name, memory in use, and peak memory bandwidth. Only
//! CUDA answers the last two; on other backends they are unknown (`None`), never guessed.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::Result;

/// Device memory in use (all processes and contexts: the driver's free/total), bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DeviceMemory {
    pub before_load: u64,
    pub after_load: u64,
    /// The most seen at the first and last token of each measured run.
    pub peak_in_use: u64,
}

/// A device's peak memory bandwidth and where the figure comes from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bandwidth {
    pub bytes_per_s: f64,
    pub source: String,
}

/// The device the bench runs on, asked directly (not through the worker).
pub struct Probe {
    backend: Backend,
    #[cfg(feature = "cuda")]
    context: Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>>,
}

impl Probe {
    pub fn new(backend: Backend, ordinal: usize) -> Result<Probe> {
        #[cfg(feature = "cuda")]
        {
            let context = match crate::backend::open_device(backend, ordinal)? {
                candle_core::Device::Cuda(device) => Some(device.cuda_stream().context().clone()),
                _ => None,
            };
            Ok(Probe { backend, context })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Ok(Probe { backend })
        }
    }

    pub fn name(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Some(name) = self.context.as_ref().and_then(|c| c.name().ok()) {
            return name;
        }
        match self.backend {
            Backend::Cpu => format!(
                "{} cpu, {} threads",
                std::env::consts::ARCH,
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            other => other.name().to_string(),
        }
    }

    pub fn memory_in_use(&self) -> Option<u64> {
        #[cfg(feature = "cuda")]
        if let Some(context) = &self.context {
            let (free, total) = context.mem_get_info().ok()?;
            return Some((total - free) as u64);
        }
        None
    }

    /// From the device's memory clock and bus width (double data rate); else from the known
    /// figure of its model.
    pub fn peak_bandwidth(&self) -> Option<Bandwidth> {
        #[cfg(feature = "cuda")]
        if let Some(context) = &self.context {
            use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
            let clock_khz = context.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
            let bus_bits = context.attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
            if let (Ok(clock_khz), Ok(bus_bits)) = (clock_khz, bus_bits) {
                if clock_khz > 0 && bus_bits > 0 {
                    return Some(Bandwidth {
                        bytes_per_s: 2.0 * clock_khz as f64 * 1e3 * bus_bits as f64 / 8.0,
                        source: format!(
                            "memory clock {} MHz x {bus_bits}-bit bus x 2",
                            clock_khz / 1000
                        ),
                    });
                }
            }
            return known_bandwidth(&context.name().ok()?);
        }
        None
    }
}

#[cfg(feature = "cuda")]
/// Data-sheet peak bandwidths of the GPUs this project has run on, for drivers that do not
/// report the memory clock.
fn known_bandwidth(name: &str) -> Option<Bandwidth> {
    let table: &[(&str, f64)] = &[
        ("H200", 4.8e12),
        ("H100 80GB HBM3", 3.35e12),
        ("H100 PCIe", 2.0e12),
        ("A100-SXM4-80GB", 2.039e12),
    ];
    table
        .iter()
        .find(|(model, _)| name.contains(model))
        .map(|(model, bytes_per_s)| Bandwidth {
            bytes_per_s: *bytes_per_s,
            source: format!("the data sheet of the {model}"),
        })
}
