//! Loading checkpoints: shards, tied output layers, dtypes, and every way a checkpoint can fail
//! to match its config.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{all_fixture_ids, greedy, run, Fixture};
use llm_worker_rbee::{Dtype, LoadOptions, Prompt, Worker};
use serde_json::json;

fn tensors(fixture: &Fixture) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture.file("model.safetensors"), &Device::Cpu).unwrap()
}

fn save(fixture: &Fixture, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, fixture.file("model.safetensors")).unwrap();
}

fn load_error(path: &Path) -> String {
    match Worker::load(path, LoadOptions::default()) {
        Ok(_) => panic!("{} loaded, but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

fn tokens(worker: &mut Worker) -> Vec<u32> {
    run(worker, &greedy(Prompt::Text("hello".into()), 8)).token_ids
}

#[test]
fn sharded_checkpoints_load_like_a_single_file() {
    let fixture = Fixture::new("llama");
    let expected = tokens(&mut fixture.load());
    let all = tensors(&fixture);
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let shard: HashMap<&String, Tensor> = chunk.iter().map(|n| (*n, all[*n].clone())).collect();
        candle_core::safetensors::save(&shard, fixture.file(&file)).unwrap();
        for name in chunk {
            weight_map.insert((*name).clone(), json!(file));
        }
    }
    std::fs::remove_file(fixture.file("model.safetensors")).unwrap();
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        fixture.file("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert_eq!(tokens(&mut fixture.load()), expected);

    // The index must tell the truth about where each tensor is.
    let first = names[0].clone();
    let mut wrong = weight_map.clone();
    wrong.insert(first.clone(), json!("model-00002-of-00002.safetensors"));
    std::fs::write(
        fixture.file("model.safetensors.index.json"),
        json!({"weight_map": wrong}).to_string(),
    )
    .unwrap();
    let message = load_error(fixture.path());
    assert!(
        message.contains(&first) && message.contains("does not hold it"),
        "{message}"
    );

    std::fs::remove_file(fixture.file("model-00002-of-00002.safetensors")).unwrap();
    let message = load_error(fixture.path());
    assert!(
        message.contains("missing shard") && message.contains("00002"),
        "{message}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let fixture = Fixture::new("llama");
    let mut all = tensors(&fixture);
    all.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    save(&fixture, &all);
    let message = load_error(fixture.path());
    assert!(
        message.contains("`model.layers.1.mlp.up_proj.weight` (shape [128, 64]) is missing"),
        "{message}"
    );
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let fixture = Fixture::new("qwen3");
    let mut all = tensors(&fixture);
    all.insert(
        "model.layers.0.self_attn.q_norm.weight".into(),
        Tensor::ones(16, DType::F32, &Device::Cpu).unwrap(),
    );
    save(&fixture, &all);
    let message = load_error(fixture.path());
    assert!(
        message.contains("`model.layers.0.self_attn.q_norm.weight` has shape [16], expected [32]"),
        "{message}"
    );
}

#[test]
fn a_tensor_the_model_does_not_use_is_refused_unless_known_to_be_harmless() {
    let fixture = Fixture::new("mistral");
    let mut all = tensors(&fixture);
    let expected = tokens(&mut fixture.load());
    let zeros = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    all.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        zeros.clone(),
    );
    save(&fixture, &all);
    assert_eq!(
        tokens(&mut fixture.load()),
        expected,
        "inv_freq is recomputed"
    );

    all.insert("model.layers.0.self_attn.q_proj.bias".into(), zeros);
    save(&fixture, &all);
    let message = load_error(fixture.path());
    assert!(
        message.contains("does not use") && message.contains("q_proj.bias"),
        "{message}"
    );
}

#[test]
fn tied_output_layers_load_only_as_the_config_says() {
    let fixture = Fixture::new("qwen2");
    let expected = tokens(&mut fixture.load());
    let mut all = tensors(&fixture);
    let embeddings = all["model.embed_tokens.weight"].clone();

    // A copy of the embeddings saved as lm_head changes nothing.
    all.insert("lm_head.weight".into(), embeddings.copy().unwrap());
    save(&fixture, &all);
    assert_eq!(tokens(&mut fixture.load()), expected);

    // A different lm_head contradicts tie_word_embeddings.
    all.insert("lm_head.weight".into(), (embeddings * 2.0).unwrap());
    save(&fixture, &all);
    let message = load_error(fixture.path());
    assert!(
        message.contains("tie_word_embeddings") && message.contains("differs"),
        "{message}"
    );

    // Untied without an lm_head: refused rather than tied silently.
    all.remove("lm_head.weight");
    save(&fixture, &all);
    fixture.edit_json("config.json", |c| {
        c.insert("tie_word_embeddings".into(), json!(false));
    });
    let message = load_error(fixture.path());
    assert!(message.contains("`lm_head.weight` is missing"), "{message}");
}

#[test]
fn weights_holding_nan_infinity_or_integers_are_refused_by_name() {
    let bad = |name: &str, value: Tensor| {
        let fixture = Fixture::new("llama");
        let mut all = tensors(&fixture);
        all.insert(name.to_string(), value);
        save(&fixture, &all);
        load_error(fixture.path())
    };
    let fixture = Fixture::new("llama");
    let all = tensors(&fixture);
    let norm = &all["model.norm.weight"];
    let q = "model.layers.1.self_attn.q_proj.weight";
    let with_one = |t: &Tensor, v: f32| {
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let middle = values.len() / 2;
        values[middle] = v;
        Tensor::from_vec(values, t.shape(), &Device::Cpu).unwrap()
    };
    for (value, what) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let message = bad(q, with_one(&all[q], value));
        assert!(
            message.contains(&format!("`{q}` holds NaN or infinity")),
            "{what}: {message}"
        );
    }
    let message = bad("model.norm.weight", norm.to_dtype(DType::U32).unwrap());
    assert!(
        message.contains("`model.norm.weight` is U32, not floating point"),
        "{message}"
    );
    // A finite value too large for f16 becomes infinity when loaded in f16.
    let message = match Worker::load(
        fixture.path(),
        LoadOptions {
            dtype: Dtype::F16,
            ..LoadOptions::default()
        },
    ) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    assert_eq!(message, "", "the fixture loads in f16");
    let message = {
        let fixture = Fixture::new("llama");
        let mut all = tensors(&fixture);
        all.insert(q.to_string(), with_one(&all[q], 1e6));
        save(&fixture, &all);
        match Worker::load(
            fixture.path(),
            LoadOptions {
                dtype: Dtype::F16,
                ..LoadOptions::default()
            },
        ) {
            Ok(_) => panic!("loaded in f16 with a weight of 1e6"),
            Err(e) => e.to_string(),
        }
    };
    assert!(
        message.contains(&format!("`{q}` holds NaN or infinity (in F16")),
        "{message}"
    );
}

#[test]
fn finite_weights_whose_logits_are_nan_are_refused_by_the_warm_up() {
    let fixture = Fixture::new("llama");
    let mut all = tensors(&fixture);
    // Finite, but the final norm's output overflows f32 and the logits become NaN.
    let norm = (all["model.norm.weight"].ones_like().unwrap() * 3e38).unwrap();
    all.insert("model.norm.weight".into(), norm);
    save(&fixture, &all);
    let message = load_error(fixture.path());
    assert!(
        message.contains("the warm-up generation failed: generated token 0: the logits hold NaN"),
        "{message}"
    );
    // The warm-up's 2 prompt and 2 generated tokens fit a context of 4: it still runs.
    fixture.edit_json("config.json", |c| {
        c.insert("max_position_embeddings".into(), json!(4));
    });
    let message = load_error(fixture.path());
    assert!(
        message.contains("the warm-up generation failed"),
        "{message}"
    );
}

#[test]
fn settings_too_large_to_build_are_refused_at_once_with_the_bytes_they_need() {
    let fixture = Fixture::new("llama");
    fixture.edit_json("config.json", |c| {
        c.insert(
            "max_position_embeddings".into(),
            json!(1_000_000_000_000u64),
        );
    });
    let started = std::time::Instant::now();
    let message = load_error(fixture.path());
    assert!(
        message.contains("field `max_position_embeddings`: is 1000000000000 positions")
            && message.contains("the rotary tables alone would need 58.2 TiB"),
        "{message}"
    );
    let fixture = Fixture::new("llama");
    fixture.edit_json("config.json", |c| {
        c.insert("num_hidden_layers".into(), json!(10_000));
    });
    let message = load_error(fixture.path());
    assert!(
        message.contains("field `num_hidden_layers`: is 10000, but the checkpoint holds 2 layers"),
        "{message}"
    );
    fixture.edit_json("config.json", |c| {
        c.insert("num_hidden_layers".into(), json!(1u64 << 62));
    });
    let message = load_error(fixture.path());
    assert!(message.contains("more than 16384 layers"), "{message}");
    // All before anything is allocated for them (a million layers took 36 s and 5 GB).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn truncated_or_corrupt_weight_files_are_refused() {
    let fixture = Fixture::new("phi");
    let path = fixture.file("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(fixture.path());
    assert!(
        message.contains("model.safetensors")
            && message.contains("not a readable SafeTensors file"),
        "{message}"
    );

    std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
    let message = load_error(fixture.path());
    assert!(
        message.contains("not a readable SafeTensors file"),
        "{message}"
    );
}

#[test]
fn only_safetensors_weights_are_loaded() {
    let fixture = Fixture::new("gemma");
    std::fs::rename(
        fixture.file("model.safetensors"),
        fixture.file("pytorch_model.bin"),
    )
    .unwrap();
    let message = load_error(fixture.path());
    assert!(
        message.contains("no weights") && message.contains("pytorch_model.bin"),
        "{message}"
    );
}

#[test]
fn checkpoints_stored_in_half_precision_load_in_f32() {
    let fixture = Fixture::new("stablelm");
    let expected = tokens(&mut fixture.load());
    let halved: HashMap<String, Tensor> = tensors(&fixture)
        .into_iter()
        .map(|(name, t)| (name, t.to_dtype(DType::BF16).unwrap()))
        .collect();
    save(&fixture, &halved);
    let mut worker = fixture.load();
    assert_eq!(
        worker.info().checkpoint.dtypes.keys().collect::<Vec<_>>(),
        ["bf16"]
    );
    // Rounding the weights to bf16 moves the logits a little; the greedy tokens still run.
    assert_eq!(tokens(&mut worker).len(), expected.len());
}

#[test]
fn every_fixture_runs_in_bf16_and_f16_on_cpu() {
    for id in all_fixture_ids() {
        let fixture = Fixture::new(id);
        for dtype in [Dtype::Bf16, Dtype::F16] {
            let options = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let mut worker = Worker::load(fixture.path(), options)
                .unwrap_or_else(|e| panic!("{id} {dtype}: {e}"));
            assert_eq!(tokens(&mut worker).len(), 8, "{id} {dtype}");
        }
    }
}
