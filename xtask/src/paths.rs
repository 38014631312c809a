//! Where the project's files are.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    }
}

/// The suite's records and reports: target/conformance/.
pub fn conformance_dir() -> PathBuf {
    target_dir().join("conformance")
}

/// The fixture models: target/fixtures/.
pub fn fixtures_dir() -> PathBuf {
    target_dir().join("fixtures")
}

/// The folder of a shape model (`llm-worker-rbee synth --shape`) in `dtype` under
/// target/shapes/.
pub fn shape_dir(shape: &str, dtype: &str) -> PathBuf {
    target_dir().join("shapes").join(format!("{shape}-{dtype}"))
}

/// In a source tree synced to a host, the file naming the commit it was made from (it has no
/// `.git`).
pub const SOURCE_COMMIT_FILE: &str = ".source-commit";
