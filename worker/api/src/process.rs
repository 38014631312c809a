//! Memory figures of a running process from Linux's /proc: the worker's bench reads its own,
//! `cargo xtask bench http` the server's.

/// A memory figure of `/proc/<process>/status` (`VmRSS`, `VmHWM`; `process` a pid or `self`),
/// in bytes; `None` where there is no such file (not Linux) or line.
pub fn memory(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())?;
    Some(kib * 1024)
}
