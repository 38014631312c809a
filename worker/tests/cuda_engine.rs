//! The fast engine against the candle engine on the llama-family fixtures, at every step of a
//! 1,100-token prompt with 256 greedy tokens and of a short prompt, the tokens those of the f32
//! candle engine: in f32 the logits within an NMSE bound of the candle engine's and the same
//! greedy tokens; in bf16 and f16 the fast engine no further from the f32 logits than the candle
//! engine in the same dtype (up to `SLACK`); in every dtype its greedy tokens, picked on the
//! device, those the host picks from its logits. Needs a CUDA device:
//! `cargo test -p llm-worker-rbee --features cuda --test cuda_engine -- --nocapture` prints the
//! distances.
#![cfg(feature = "cuda")]

use std::ops::ControlFlow;
use std::path::Path;

use llm_worker_rbee::fast::Engine;
use llm_worker_rbee::{synth, Backend, Dtype, LoadOptions, Prompt, Request, Worker};

/// The fixtures of the architectures the fast engine covers (mistral-sw8: its sliding window).
const FIXTURES: &[&str] = &["llama", "mistral", "mistral-sw8", "qwen2", "qwen3"];

/// f32: the largest NMSE of a step's logits from the candle engine's (the same math in another
/// order). bf16 and f16: the floor under which the fast engine's distance from the f32 logits is
/// not compared with the candle engine's.
fn bound(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 1e-8,
        Dtype::F16 => 1e-4,
        Dtype::Bf16 => 5e-3,
    }
}

/// In bf16 and f16 the fast engine may be at most this much further from the f32 logits than
/// the candle engine is (it rounds less: attention in f32 for every architecture, one rounding
/// per fused kernel), at the step where each is furthest.
const SLACK: f64 = 1.5;

fn write_fixture(id: &str, dir: &Path) {
    let spec = synth::fixture(id).expect("a fixture");
    synth::write_fixture(&spec, dir).unwrap();
    // Room for the long prompt: the rotary tables cover max_position_embeddings.
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = 2048.into();
    std::fs::write(&path, config.to_string()).unwrap();
}

fn load(dir: &Path, dtype: Dtype, engine: Engine) -> Worker {
    let worker = Worker::load(
        dir,
        LoadOptions {
            backend: Backend::Cuda,
            device: 0,
            dtype,
            engine: Some(engine),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(worker.engine(), engine);
    worker
}

fn greedy(worker: &mut Worker, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut request = Request::greedy(Prompt::Ids(prompt.to_vec()), n);
    request.ignore_eos = true;
    let prepared = worker.prepare(&request).unwrap();
    let generation = worker
        .generate(&prepared, |_| ControlFlow::Continue(()))
        .unwrap();
    generation.token_ids
}

fn nmse(ours: &[f32], reference: &[f32]) -> f64 {
    let (mut error, mut norm) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(reference) {
        error += (f64::from(*a) - f64::from(*b)).powi(2);
        norm += f64::from(*b).powi(2);
    }
    error / norm.max(f64::MIN_POSITIVE)
}

/// The index of the largest value, the lowest among equal ones.
fn argmax(values: &[f32]) -> u32 {
    let best = values
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > values[best] { i } else { best });
    best as u32
}

/// The largest per-step NMSE of `ours` from `reference`, and its step.
fn largest(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> (usize, f64) {
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(a, b)| nmse(a, b))
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

#[test]
fn fast_engine_logits_follow_the_candle_engine_at_every_step() {
    for id in FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        write_fixture(id, dir.path());
        let mut exact = load(dir.path(), Dtype::F32, Engine::Candle);
        let vocab = exact.info().dims.vocab_size as u32;
        let long: Vec<u32> = (0..1100u32).map(|i| (i * 7919 + 11) % vocab).collect();
        let cases = [("long", long, 256), ("short", vec![1, 40, 41, 300, 7], 40)];
        // The f32 candle engine's greedy tokens and logits: the inputs and the reference.
        let references: Vec<_> = cases
            .iter()
            .map(|(_, prompt, steps)| {
                let tokens = greedy(&mut exact, prompt, *steps);
                let logits = exact.step_logits(prompt, &tokens).unwrap();
                (tokens, logits)
            })
            .collect();
        drop(exact);
        for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
            let mut candle = load(dir.path(), dtype, Engine::Candle);
            let mut fast = load(dir.path(), dtype, Engine::Fast);
            for ((name, prompt, steps), (tokens, reference)) in cases.iter().zip(&references) {
                let ours = fast.step_logits(prompt, tokens).unwrap();
                let theirs = candle.step_logits(prompt, tokens).unwrap();
                let (ours_step, ours_error) = largest(&ours, reference);
                let (theirs_step, theirs_error) = largest(&theirs, reference);
                let (_, apart) = largest(&ours, &theirs);
                println!(
                    "{id:<12} {:<5} {name:<5} prompt {:>4} steps {steps:>3}: largest nmse from \
                     f32 logits: fast {ours_error:.3e} (step {ours_step}), candle \
                     {theirs_error:.3e} (step {theirs_step}); fast from candle {apart:.3e}",
                    format!("{dtype:?}"),
                    prompt.len(),
                );
                // Greedy tokens picked on the device, the decode step replayed on the inputs its
                // own argmax left: those the host picks from the same engine's logits.
                let picked = greedy(&mut fast, prompt, *steps);
                let logits = fast.step_logits(prompt, &picked).unwrap();
                let host: Vec<u32> = logits[..picked.len()].iter().map(|l| argmax(l)).collect();
                assert_eq!(picked, host, "{id} {dtype:?} {name}: device greedy tokens");
                if dtype == Dtype::F32 {
                    assert!(
                        apart <= bound(dtype),
                        "{id} {name}: nmse {apart:.3e} from the candle engine, over {:.0e}",
                        bound(dtype)
                    );
                    assert_eq!(&greedy(&mut fast, prompt, *steps), tokens, "{id} {name}");
                } else {
                    assert!(
                        ours_error <= bound(dtype).max(SLACK * theirs_error),
                        "{id} {dtype:?} {name}: the fast engine is {ours_error:.3e} from the f32 \
                         logits (step {ours_step}), the candle engine {theirs_error:.3e}"
                    );
                }
            }
        }
    }
}

/// The decode graph's census: the fast engine reports kernels and a replay time, candle's
/// modules none; timing the replays leaves the next request's tokens as they were, and the fast
/// engine is the default on CUDA.
#[test]
fn the_decode_graph_is_counted_and_timed_without_changing_generation() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture("llama", dir.path());
    let default = Worker::load(
        dir.path(),
        LoadOptions {
            backend: Backend::Cuda,
            device: 0,
            dtype: Dtype::F32,
            engine: None,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(default.engine(), Engine::Fast);
    drop(default);
    let prompt = [1, 40, 41, 300, 7];
    let mut fast = load(dir.path(), Dtype::F32, Engine::Fast);
    let before = greedy(&mut fast, &prompt, 24);
    let graph = fast
        .decode_graph(100)
        .unwrap()
        .expect("the fast engine's graph");
    println!("llama fixture f32: {graph:?}");
    assert!(
        graph.kernels > 0 && graph.kernels <= graph.nodes,
        "{graph:?}"
    );
    assert!(graph.replay_us > 0.0 && graph.position == 100, "{graph:?}");
    assert_eq!(greedy(&mut fast, &prompt, 24), before);
    drop(fast);
    let mut candle = load(dir.path(), Dtype::F32, Engine::Candle);
    assert_eq!(candle.decode_graph(100).unwrap(), None);
}
