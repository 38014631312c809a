//! The trial's output equals its reviewed golden snapshot (insta).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use llm_worker_rbee_api::{Backend, Dtype, Engine, Generation, Request, StopReason};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cases::Seed;
use crate::hash::hex;
use crate::trial::{engine_golden_name, snapshot_file, TrialSpec};

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
    /// Kept out of the snapshots of the trials without them.
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_penalty: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
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
            repeat_penalty: request.repeat_penalty,
            ignore_eos: request.ignore_eos,
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

/// The golden of trial `name` run on `engine` must equal `contents`: the engine's own golden
/// where it has one (`trial::engine_golden_name`), else the shared one. Where the shared one
/// differs and the engine may keep its own, the pending snapshot is the engine's own, for review.
/// Returns the sha256 of the golden file.
pub fn check(dir: &Path, name: &str, engine: Engine, contents: &str) -> Result<String, String> {
    let Some(own) = engine_golden_name(name, engine) else {
        return check_named(dir, name, contents);
    };
    let shared = golden_text(&snapshot_file(dir, name));
    let shared_differs = shared.is_some_and(|g| g.trim_end() != contents.trim_end());
    if snapshot_file(dir, &own).exists() || shared_differs {
        check_named(dir, &own, contents)
            .map_err(|message| format!("{message}\n(the shared golden {name} differs too)"))
    } else {
        check_named(dir, name, contents)
    }
}

fn golden_text(path: &Path) -> Option<String> {
    insta::Snapshot::from_file(path)
        .ok()
        .and_then(|s| s.as_text().map(|t| t.to_string()))
}

/// The golden snapshot of `name` must equal `contents`. insta decides (and writes `.snap.new`
/// files for review, except in CI); the message carries the diff so that reports show it too.
fn check_named(dir: &Path, name: &str, contents: &str) -> Result<String, String> {
    let path = snapshot_file(dir, name);
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
    Err(match golden_text(&path) {
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

    /// Writes a golden snapshot file holding `text` into `dir`.
    fn write_golden(dir: &Path, file: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, format!("---\nsource: conformance\n---\n{text}\n")).unwrap();
        path
    }

    #[test]
    fn a_matching_golden_passes_with_its_hash_and_another_fails_with_the_diff() {
        let dir = tempfile::tempdir().unwrap();
        let name = "m/cpu-f32/greedy/p";
        let golden = write_golden(
            dir.path(),
            "m__cpu-f32__greedy__p.snap",
            "line one\nline two",
        );
        let sha = check(dir.path(), name, Engine::Candle, "line one\nline two").unwrap();
        assert_eq!(sha, hex(&Sha256::digest(std::fs::read(&golden).unwrap())));
        let differs = check(dir.path(), name, Engine::Candle, "line one\nline 2").unwrap_err();
        assert!(
            differs.contains("-line two") && differs.contains("+line 2"),
            "{differs}"
        );
        let missing = check(dir.path(), "n/cpu-f32/greedy/p", Engine::Candle, "x").unwrap_err();
        assert!(missing.contains("no golden snapshot"), "{missing}");
    }

    #[test]
    fn an_engine_checks_against_its_own_golden_where_it_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let name = "m/cuda-bf16/1/p";
        let write = |file: &str, text: &str| write_golden(dir.path(), file, text);
        write("m__cuda-bf16__1__p.snap", "shared");
        // Without a golden of its own, the fast engine is held to the shared one.
        check(dir.path(), name, Engine::Fast, "shared").unwrap();
        let own = write("m__cuda-bf16-fast__1__p.snap", "own");
        let sha = check(dir.path(), name, Engine::Fast, "own").unwrap();
        assert_eq!(sha, hex(&Sha256::digest(std::fs::read(&own).unwrap())));
        // Its own golden wins over the shared one; candle's modules keep the shared one.
        let differs = check(dir.path(), name, Engine::Fast, "shared").unwrap_err();
        assert!(
            differs.contains("-own") && differs.contains("+shared"),
            "{differs}"
        );
        check(dir.path(), name, Engine::Candle, "shared").unwrap();
        assert!(check(dir.path(), name, Engine::Candle, "own").is_err());
    }
}
