//! Every path the READMEs name exists: each span in backticks that is a path (it has a `/`, and
//! is no command, placeholder or build output) and each relative link, from the project root.

use std::path::{Path, PathBuf};

const DOCS: &[&str] = &[
    "README.md",
    "worker/README.md",
    "conformance/README.md",
    "xtask/README.md",
    "ci/bench/results/README.md",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The spans between backticks, and the targets of `](...)` links, outside fenced code.
fn named(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        names.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        for link in line.split("](").skip(1) {
            if let Some(end) = link.find(')') {
                names.push(link[..end].to_string());
            }
        }
    }
    names
}

/// A name that is a path in the project: no spaces or shell, no placeholder, no URL or route
/// (`/health`), no Rust path, not under target/ (build output) or `$HF_HOME`.
fn as_path(name: &str) -> Option<&str> {
    let skip = name.contains([' ', '<', '>', '*', '$', '{', '|', '='])
        || name.contains("::")
        || name.contains("://")
        || name.starts_with(['-', '/'])
        || name.starts_with("target/")
        || name.starts_with('#')
        || !name.contains('/');
    (!skip).then(|| name.trim_end_matches('/'))
}

#[test]
fn every_path_the_readmes_name_exists() {
    let root = root();
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for name in named(&text) {
            let Some(path) = as_path(&name) else {
                continue;
            };
            checked += 1;
            if !root.join(path).exists() {
                missing.push(format!("{doc}: `{name}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
    assert!(checked > 50, "only {checked} paths found in the READMEs");
}

#[test]
fn the_readme_is_short() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; the details go in the crate READMEs"
    );
}

#[test]
fn paths_are_told_from_commands_and_placeholders() {
    let text = "See `worker/src/arch/mod.rs` and [x](conformance/README.md), not `cargo xtask \
                test`, `golden/snapshots/<model>.snap`, `target/fixtures/`, `models::llama` \
                or `https://x/y`.\n```sh\nls `not/this`\n```";
    let paths: Vec<String> = named(text)
        .iter()
        .filter_map(|n| as_path(n).map(str::to_string))
        .collect();
    assert_eq!(paths, ["worker/src/arch/mod.rs", "conformance/README.md"]);
}
