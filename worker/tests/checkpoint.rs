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
