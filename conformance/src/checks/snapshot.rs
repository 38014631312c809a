//! The trial's output equals its reviewed golden snapshot (insta).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use llm_worker_rbee_api::{Backend, Dtype, Generation, Request, StopReason};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cases::Seed;
use crate::hash::hex;
use crate::trial::TrialSpec;

/// What a trial's golden snapshot holds. Never timings.
#[derive(Serialize)]
struct TrialSnapshot<'a> {
    model: &'a str,
    weights_sha256: &'a str,
    backend: Backend,
    dtype: Dtype,
    seed: String,
    sampling: SnapshotSampling,
    prompt: SnapshotPrompt<'a>,
    token_ids: &'a [u32],
    text: &'a str,
    stop_reason: StopReason,
}

#[derive(Serialize)]
struct SnapshotSampling {
    temperature: f64,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
}

#[derive(Serialize)]
struct SnapshotPrompt<'a> {
    id: &'a str,
    text: Option<&'a str>,
    ids: &'a [u32],
}

/// The snapshot of a trial's generation, as its golden file holds it.
pub fn contents(
    spec: &TrialSpec,
    weights_sha256: &str,
    request: &Request,
    generation: &Generation,
) -> String {
    let snapshot = TrialSnapshot {
        model: &spec.model,
        weights_sha256,
        backend: spec.backend,
        dtype: spec.dtype,
        seed: spec.seed.to_string(),
        sampling: SnapshotSampling {
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            seed: match spec.seed {
                Seed::Sampled(seed) => Some(seed),
                Seed::Label(_) => None,
            },
        },
        prompt: SnapshotPrompt {
            id: &spec.prompt.id,
            text: spec.prompt.text.as_deref(),
            ids: &generation.prompt_ids,
        },
        token_ids: &generation.token_ids,
        text: &generation.text,
        stop_reason: generation.stop_reason,
    };
    serde_json::to_string_pretty(&snapshot).expect("snapshots serialize")
}

/// The golden snapshot of `name` must equal `contents`. Returns the sha256 of the golden file.
/// insta decides (and writes `.snap.new` files for review, except in CI); the message carries
/// the diff so that reports show it too.
pub fn check(dir: &Path, name: &str, contents: &str) -> Result<String, String> {
    let path = dir.join(format!("{}.snap", name.replace('/', "__")));
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let asserted = catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name, contents))
    }));
    if asserted.is_ok() {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(hex(&Sha256::digest(&bytes)));
    }
    let golden = insta::Snapshot::from_file(&path)
        .ok()
        .and_then(|s| s.as_text().map(|t| t.to_string()));
    Err(match golden {
        None => format!(
            "no golden snapshot {} yet; review the new one with `cargo xtask snapshots`",
            path.display()
        ),
        Some(golden) => {
            let (golden, contents) = (
                format!("{}\n", golden.trim_end()),
                format!("{}\n", contents.trim_end()),
            );
            let diff = similar::TextDiff::from_lines(&golden, &contents)
                .unified_diff()
                .context_radius(3)
                .header("golden", "this run")
                .to_string();
            format!(
                "the result differs from golden snapshot {}:\n{diff}",
                path.display()
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_golden_passes_with_its_hash_and_another_fails_with_the_diff() {
        let dir = tempfile::tempdir().unwrap();
        let name = "m/cpu-f32/greedy/p";
        let golden = dir.path().join("m__cpu-f32__greedy__p.snap");
        std::fs::write(
            &golden,
            "---\nsource: conformance\n---\nline one\nline two\n",
        )
        .unwrap();
        let sha = check(dir.path(), name, "line one\nline two").unwrap();
        assert_eq!(sha, hex(&Sha256::digest(std::fs::read(&golden).unwrap())));
        let differs = check(dir.path(), name, "line one\nline 2").unwrap_err();
        assert!(
            differs.contains("-line two") && differs.contains("+line 2"),
            "{differs}"
        );
        let missing = check(dir.path(), "n/cpu-f32/greedy/p", "x").unwrap_err();
        assert!(missing.contains("no golden snapshot"), "{missing}");
    }
}
