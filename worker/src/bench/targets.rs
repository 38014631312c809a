//! Targets for bench figures (ci/bench/targets.toml): each names the runs it applies to
//! (backend, dtype, optionally a shape, an engine and a prompt length), a figure and a bound;
//! `check` says which are met.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::figures::BenchReport;
use crate::backend::{Backend, Dtype};
use crate::error::{Error, Result};
use crate::fast::Engine;
use crate::synth::shape::Shape;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    targets: Vec<Target>,
    /// Ratios to a peer measured in the same run, which `cargo xtask bench --peer` checks.
    #[serde(default, rename = "peer_targets")]
    _peer_targets: Vec<toml::Table>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// What the target is, in words.
    pub what: String,
    pub backend: Backend,
    pub dtype: Dtype,
    /// Only for a model of this shape; any model when absent.
    pub shape: Option<Shape>,
    /// Only for runs of this engine; any engine when absent.
    pub engine: Option<Engine>,
    /// The figure of the run with this prompt length; the worst run's when absent. A report
    /// without that run misses the target.
    pub prompt_len: Option<usize>,
    pub figure: Figure,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    /// The smallest roofline fraction over the runs (prompt lengths).
    RooflineFraction,
    /// The smallest median decode tokens/s over the runs.
    DecodeTokensPerS,
    /// Steady host RSS over the weights in f32 plus the KV cache.
    RssOverWeightsAndKv,
    /// The worker's decode speed over the plain candle loop's.
    SpeedVsBaseline,
}

/// One target's outcome for one report.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub what: String,
    /// The figure, when the report has it.
    pub value: Option<f64>,
    pub bound: String,
    pub met: bool,
}

pub fn load(path: &Path) -> Result<Vec<Target>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file: TargetsFile =
        toml::from_str(&text).map_err(|e| Error::file(path, format!("not valid: {e}")))?;
    for target in &file.targets {
        if target.min.is_none() == target.max.is_none() {
            return Err(Error::file(
                path,
                format!(
                    "target `{}`: give exactly one of `min` and `max`",
                    target.what
                ),
            ));
        }
    }
    Ok(file.targets)
}

/// The verdicts of the targets that apply to `report`.
pub fn check(report: &BenchReport, targets: &[Target]) -> Vec<Verdict> {
    targets
        .iter()
        .filter(|t| {
            t.backend == report.backend
                && t.dtype == report.dtype
                && t.shape.is_none_or(|s| report.shape == Some(s))
                && t.engine.is_none_or(|e| report.engine == e)
        })
        .map(|t| {
            let value = figure(report, t.figure, t.prompt_len);
            let (met, bound) = match (t.min, t.max) {
                (Some(min), _) => (value.is_some_and(|v| v >= min), format!(">= {min}")),
                (_, Some(max)) => (value.is_some_and(|v| v <= max), format!("<= {max}")),
                (None, None) => unreachable!("load checks one bound is given"),
            };
            Verdict {
                what: t.what.clone(),
                value,
                bound,
                met,
            }
        })
        .collect()
}

fn figure(report: &BenchReport, figure: Figure, prompt_len: Option<usize>) -> Option<f64> {
    let runs = report
        .runs
        .iter()
        .filter(|r| prompt_len.is_none_or(|p| r.prompt_len == p));
    let worst = |values: Option<Vec<f64>>| values.and_then(|v| v.into_iter().reduce(f64::min));
    match figure {
        Figure::RooflineFraction => worst(runs.map(|r| r.roofline_fraction).collect()),
        Figure::DecodeTokensPerS => {
            worst(Some(runs.map(|r| r.decode_tokens_per_s.median).collect()))
        }
        Figure::RssOverWeightsAndKv => {
            let rss = report.host_rss?;
            Some(rss.steady as f64 / (report.parameters * 4 + report.kv_cache_bytes) as f64)
        }
        Figure::SpeedVsBaseline => report.baseline.as_ref().map(|b| b.worker_relative),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KvCache;
    use crate::bench::figures::{BaselineFigures, HostRss, RunFigures, Spread};

    /// A fast-engine report with runs at prompts 128 and 2048 of these roofline fractions,
    /// decoding 400 and 300 tokens/s.
    fn report(roofline: [f64; 2]) -> BenchReport {
        let spread = Spread::of(&[1.0]);
        let run = |prompt_len, fraction, decode| RunFigures {
            prompt_len,
            gen: 128,
            reps: 3,
            ttft_ms: spread,
            prefill_tokens_per_s: spread,
            decode_tokens_per_s: Spread::of(&[decode]),
            bytes_per_token: 1,
            achieved_bytes_per_s: 1.0,
            roofline_fraction: Some(fraction),
        };
        BenchReport {
            model: "m".into(),
            shape: Some(Shape::TinyLlama),
            architecture: crate::arch::by_name("llama").unwrap(),
            backend: Backend::Cuda,
            dtype: Dtype::Bf16,
            engine: crate::fast::Engine::Fast,
            device: "d".into(),
            started_unix_s: 0,
            load_ms: 0.0,
            warmup_ms: 0.0,
            parameters: 100,
            weight_bytes: 200,
            kv_cache: KvCache::Activations,
            kv_cache_bytes: 40,
            host_rss: Some(HostRss {
                after_load: 0,
                steady: 500,
                peak: 900,
            }),
            device_memory: None,
            peak_bandwidth: None,
            runs: vec![run(128, roofline[0], 400.0), run(2048, roofline[1], 300.0)],
            decode_graph: None,
            baseline: Some(BaselineFigures {
                module: "x".into(),
                prompt_len: 128,
                decode_tokens_per_s: spread,
                issue_ms_per_token: 0.0,
                wait_ms_per_token: 0.0,
                worker_decode_tokens_per_s: spread,
                worker_relative: 0.97,
            }),
        }
    }

    fn targets(text: &str) -> Result<Vec<Target>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    /// The project's own file loads here, its `[[peer_targets]]` (xtask's) passed over.
    #[test]
    fn the_committed_targets_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/bench/targets.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[[peer_targets]]"));
        let targets = load(&path).unwrap();
        assert!(targets.iter().any(|t| t.backend == Backend::Cpu));
    }

    const TARGETS: &str = r#"
        [[targets]]
        what = "roofline"
        backend = "cuda"
        dtype = "bf16"
        shape = "tinyllama-1.1b"
        figure = "roofline_fraction"
        min = 0.25

        [[targets]]
        what = "baseline"
        backend = "cuda"
        dtype = "bf16"
        figure = "speed_vs_baseline"
        min = 1.0

        [[targets]]
        what = "rss"
        backend = "cuda"
        dtype = "bf16"
        figure = "rss_over_weights_and_kv"
        max = 1.1

        [[targets]]
        what = "another shape"
        backend = "cuda"
        dtype = "bf16"
        shape = "phi-2"
        figure = "roofline_fraction"
        min = 0.9

        [[targets]]
        what = "another backend"
        backend = "cpu"
        dtype = "bf16"
        figure = "roofline_fraction"
        min = 0.9
    "#;

    #[test]
    fn targets_apply_by_backend_dtype_and_shape_and_use_the_worst_run() {
        let targets = targets(TARGETS).unwrap();
        let verdicts = check(&report([0.30, 0.20]), &targets);
        let by_name: Vec<(&str, bool)> =
            verdicts.iter().map(|v| (v.what.as_str(), v.met)).collect();
        // The worst run (0.20) misses 0.25; 0.97x misses 1.0; 500 / (400 + 40) = 1.136 > 1.1.
        assert_eq!(
            by_name,
            [("roofline", false), ("baseline", false), ("rss", false)]
        );
        assert_eq!(verdicts[0].value, Some(0.20));
        let verdicts = check(&report([0.30, 0.26]), &targets);
        assert!(verdicts[0].met, "{verdicts:?}");
    }

    #[test]
    fn a_target_may_name_the_engine_and_the_prompt_length() {
        let targets = targets(
            r#"
            [[targets]]
            what = "fast at 128"
            backend = "cuda"
            dtype = "bf16"
            engine = "fast"
            prompt_len = 128
            figure = "roofline_fraction"
            min = 0.25

            [[targets]]
            what = "fast at 2048"
            backend = "cuda"
            dtype = "bf16"
            engine = "fast"
            prompt_len = 2048
            figure = "roofline_fraction"
            min = 0.25

            [[targets]]
            what = "candle"
            backend = "cuda"
            dtype = "bf16"
            engine = "candle"
            figure = "roofline_fraction"
            min = 0.0

            [[targets]]
            what = "decode"
            backend = "cuda"
            dtype = "bf16"
            figure = "decode_tokens_per_s"
            min = 350.0

            [[targets]]
            what = "decode at 128"
            backend = "cuda"
            dtype = "bf16"
            prompt_len = 128
            figure = "decode_tokens_per_s"
            min = 350.0

            [[targets]]
            what = "a prompt not run"
            backend = "cuda"
            dtype = "bf16"
            prompt_len = 512
            figure = "roofline_fraction"
            min = 0.0
            "#,
        )
        .unwrap();
        let verdicts = check(&report([0.30, 0.20]), &targets);
        let outcome: Vec<(&str, Option<f64>, bool)> = verdicts
            .iter()
            .map(|v| (v.what.as_str(), v.value, v.met))
            .collect();
        // The candle-engine target does not apply to a fast-engine report.
        assert_eq!(
            outcome,
            [
                ("fast at 128", Some(0.30), true),
                ("fast at 2048", Some(0.20), false),
                ("decode", Some(300.0), false),
                ("decode at 128", Some(400.0), true),
                ("a prompt not run", None, false),
            ]
        );
    }

    #[test]
    fn a_target_needs_exactly_one_bound() {
        let both = TARGETS.replace("min = 0.25", "min = 0.25\nmax = 0.5");
        let error = targets(&both).unwrap_err().to_string();
        assert!(
            error.contains("target `roofline`: give exactly one"),
            "{error}"
        );
        let unknown = TARGETS.replace("min = 0.25", "minimum = 0.25");
        assert!(targets(&unknown).is_err());
    }
}
