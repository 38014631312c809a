//! The load-time check of a GPU's free memory: a model whose weights and rotary tables do not
//! fit in what is free on the device is refused before anything is built for it, with the bytes
//! it needs, where the load would otherwise fail part way with the driver's out-of-memory error.
//! Needs a CUDA device: `cargo test -p llm-worker-rbee --features cuda --test cuda_memory`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use llm_worker_rbee::{synth, Backend, Dtype, LoadOptions, Worker};

/// What the test leaves free on the device.
const LEFT_FREE: usize = 4 << 30;

fn free_bytes(device: &Device) -> usize {
    let Device::Cuda(cuda) = device else {
        unreachable!("a CUDA device")
    };
    cuda.cuda_stream().context().mem_get_info().unwrap().0
}

#[test]
fn a_context_whose_tables_outgrow_the_free_device_memory_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    synth::write_fixture(&synth::fixture("llama").unwrap(), dir.path()).unwrap();
    // 2^27 positions: 8 GiB of rotary tables per 16 dimensions of the head, less than the host
    // memory (checked first, before the device is opened) and more than what is left free here.
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = (1u64 << 27).into();
    std::fs::write(&path, config.to_string()).unwrap();

    let device = Device::new_cuda(0).unwrap();
    let ballast = Tensor::zeros(free_bytes(&device) - LEFT_FREE, DType::U8, &device).unwrap();
    device.synchronize().unwrap();
    let free = free_bytes(&device);
    println!("free on the device with the ballast: {free} bytes");
    assert!(free <= LEFT_FREE + (1 << 30), "{free}");

    let started = std::time::Instant::now();
    let error = Worker::load(
        dir.path(),
        LoadOptions {
            backend: Backend::Cuda,
            device: 0,
            dtype: Dtype::F32,
            engine: None,
            ..LoadOptions::default()
        },
    )
    .err()
    .expect("the load is refused");
    let message = error.to_string();
    println!("{message} ({:?})", started.elapsed());
    for part in [
        "field `max_position_embeddings`",
        "loading needs about",
        "on the cuda device",
        "of rotary tables",
        "free there",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    drop(ballast);
}
