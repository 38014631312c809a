//! What a model builds in memory at load from its settings alone, checked against the
//! machine's memory before anything is allocated: a context of 10^12 positions is refused with
//! the bytes its tables would need, instead of aborting the process when the allocation fails.

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
}
