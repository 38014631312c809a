//! The figures of a bench run, as its JSON holds them.

use crate::fast::Engine;
use serde::{Deserialize, Serialize};

use super::device::{Bandwidth, DeviceMemory};
use crate::backend::{Backend, Dtype, KvCache};
use crate::model::{Architecture, DecodeGraph};
use crate::synth::shape::Shape;

/// The median and the range of a figure over the repetitions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// The model as given (folder or id).
    pub model: String,
    /// The real model whose shape a synthesized folder has.
    pub shape: Option<Shape>,
    #[serde(deserialize_with = "crate::arch::deserialize")]
    pub architecture: &'static dyn Architecture,
    pub backend: Backend,
    pub dtype: Dtype,
    /// The implementation measured (absent from reports made before the fast engine: candle).
    #[serde(default)]
    pub engine: Engine,
    pub device: String,
    /// Seconds since the Unix epoch when the bench started.
    pub started_unix_s: u64,
    pub load_ms: f64,
    /// The worker's warm-up at load (a 2-token prefill and one decode step).
    pub warmup_ms: f64,
    pub parameters: u64,
    /// The weights as loaded, in `dtype` (GGUF: the file's bytes).
    pub weight_bytes: u64,
    /// The type the KV cache held (absent from reports made before it could be chosen: the
    /// activations').
    #[serde(default)]
    pub kv_cache: KvCache,
    /// The KV cache at the longest run's full length, in its type.
    pub kv_cache_bytes: u64,
    pub host_rss: Option<HostRss>,
    pub device_memory: Option<DeviceMemory>,
    pub peak_bandwidth: Option<Bandwidth>,
    pub runs: Vec<RunFigures>,
    /// The fast engine's decode step as a CUDA graph, replayed from the first run's prompt
    /// length (absent for candle's modules and from reports made before it was measured).
    #[serde(default)]
    pub decode_graph: Option<DecodeGraph>,
    pub baseline: Option<BaselineFigures>,
}

/// Host resident memory, bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct HostRss {
    pub after_load: u64,
    /// After every measured run, before the baseline loads its own copy.
    pub steady: u64,
    /// The process's high-water mark by then, loading included.
    pub peak: u64,
}

/// The figures of one prompt length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunFigures {
    pub prompt_len: usize,
    pub gen: usize,
    pub reps: usize,
    /// The prompt's forward pass and the choice of the first token.
    pub ttft_ms: Spread,
    pub prefill_tokens_per_s: Spread,
    /// Tokens after the first, per second.
    pub decode_tokens_per_s: Spread,
    /// Weights (less an untied embedding table, of which a token reads one row) and the KV
    /// cache at the run's mean length: what one decode step must read at least.
    pub bytes_per_token: u64,
    /// `bytes_per_token` times the median decode speed.
    pub achieved_bytes_per_s: f64,
    /// Of the device's peak memory bandwidth, where known.
    pub roofline_fraction: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineFigures {
    /// The candle-transformers module run.
    pub module: String,
    pub prompt_len: usize,
    pub decode_tokens_per_s: Spread,
    /// Per decode step, the median time inside `forward` (issuing work) ...
    pub issue_ms_per_token: f64,
    /// ... and from then until the next token is on the host.
    pub wait_ms_per_token: f64,
    /// The worker's decode speed in runs taking turns with this one's, so that both see the
    /// same state of the machine.
    pub worker_decode_tokens_per_s: Spread,
    /// `worker_decode_tokens_per_s` over `decode_tokens_per_s`, medians.
    pub worker_relative: f64,
}
