//! What a model builds in memory at load from its settings alone, checked against the
//! machine's memory before anything is allocated: a context of 10^12 positions is refused with
//! the bytes its tables would need, instead of aborting the process when the allocation fails.
//! On a GPU the weights and tables go to the device's memory, checked against what is free there.

use candle_core::Device;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

use crate::model::ArchConfig;

/// The bytes of the rotary tables a module builds at load: cos and sin for every position of
/// the context and every rotated pair of dimensions, in f32.
pub fn rotary_table_bytes(arch: &ArchConfig) -> u128 {
    let rotated = (arch.dims.head_dim as f64 * arch.rope.partial_rotary_factor).round() as u128;
    arch.dims.max_position_embeddings as u128 * rotated * 4
}

/// This machine's memory in bytes, or `None` where it cannot be read.
pub fn machine_memory() -> Option<u64> {
    let refresh = RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram());
    Some(System::new_with_specifics(refresh).total_memory()).filter(|bytes| *bytes > 0)
}

/// Why `arch`'s context cannot be built in `memory` bytes, if it cannot.
pub fn context_problem(arch: &ArchConfig, memory: u64) -> Option<String> {
    let needed = rotary_table_bytes(arch);
    (needed > memory as u128).then(|| {
        format!(
            "is {} positions (of a {}-dimension head): the rotary tables alone would need {}, \
             more than this machine's {} of memory",
            arch.dims.max_position_embeddings,
            arch.dims.head_dim,
            human_bytes(needed),
            human_bytes(memory as u128)
        )
    })
}

/// The bytes free on `device` where the model goes to memory of its own (CUDA); `None` on the
/// CPU, whose memory [`context_problem`] checks, and on Metal, which shares the host's.
pub fn device_free_memory(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, _total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some(free as u64)
        }
        _ => None,
    }
}

/// What a load puts on a device before any request, estimated from the settings and the
/// checkpoint's header: the weights and the rotary tables.
#[derive(Clone, Copy, Debug)]
pub struct LoadBytes {
    pub weights: u128,
    pub rotary_tables: u128,
}

/// Why a load of `needed` cannot fit the `free` bytes of device `name`, if it cannot: a load
/// that fails there part way would report only the driver's out-of-memory error.
pub fn device_problem(needed: LoadBytes, free: u64, name: &str) -> Option<String> {
    let total = needed.weights + needed.rotary_tables;
    (total > free as u128).then(|| {
        format!(
            "loading needs about {} on the {name} device ({} of weights, {} of rotary tables), \
             more than the {} free there",
            human_bytes(total),
            human_bytes(needed.weights),
            human_bytes(needed.rotary_tables),
            human_bytes(free as u128)
        )
    })
}

fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512.0 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(1 << 62), "4096.0 PiB");
    }

    #[test]
    fn a_load_fits_a_device_only_with_its_weights_and_tables_together() {
        let needed = LoadBytes {
            weights: 3 << 30,
            rotary_tables: 1 << 30,
        };
        assert_eq!(device_problem(needed, 4 << 30, "cuda"), None);
        assert_eq!(
            device_problem(needed, 7 << 29, "cuda").as_deref(),
            Some(
                "loading needs about 4.0 GiB on the cuda device (3.0 GiB of weights, 1.0 GiB of \
                 rotary tables), more than the 3.5 GiB free there"
            )
        );
    }
}
