//! The `llm-worker-rbee` binary: its output formats, and a clear error with a non-zero exit
//! (never a panic) for every kind of bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Fixture;
use serde_json::{json, Value};

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}

fn generate(model: &Path, extra: &[&str]) -> Output {
    let model = model.to_str().unwrap();
    let mut args = vec!["generate", "--model", model];
    args.extend_from_slice(extra);
    worker(&args)
}

/// Asserts a failure whose stderr names `expected`, and that nothing panicked.
fn fails_with(output: Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected a failure, stderr: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

#[test]
fn generate_prints_one_json_object() {
    let fixture = Fixture::new("qwen2");
    let output = generate(
        fixture.path(),
        &[
            "--prompt",
            "hello",
            "--max-tokens",
            "16",
            "--format",
            "json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let fields = [
        "architecture",
        "backend",
        "dtype",
        "prompt_ids",
        "token_ids",
        "text",
        "stop_reason",
        "timings",
    ];
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut sorted = fields;
    sorted.sort();
    assert_eq!(keys, sorted);
    // In the documented order, too.
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let positions: Vec<usize> = fields
        .iter()
        .map(|f| stdout.find(&format!("\"{f}\"")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    assert_eq!(json["architecture"], "qwen2");
    assert_eq!(json["backend"], "cpu");
    assert_eq!(json["dtype"], "f32");
    assert_eq!(json["token_ids"].as_array().unwrap().len(), 16);
    assert_eq!(json["stop_reason"], "max_tokens");
    for timing in [
        "load_ms",
        "warmup_ms",
        "prefill_ms",
        "decode_ms",
        "decode_tokens_per_s",
    ] {
        assert!(json["timings"][timing].is_number(), "{timing}");
    }
    // The dtype is the one the weights were loaded in.
    let f16 = generate(
        fixture.path(),
        &[
            "--prompt",
            "hello",
            "--max-tokens",
            "2",
            "--dtype",
            "f16",
            "--format",
            "json",
        ],
    );
    let json: Value = serde_json::from_slice(&f16.stdout).unwrap();
    assert_eq!(
        (&json["backend"], &json["dtype"]),
        (&json!("cpu"), &json!("f16"))
    );
}

#[test]
fn generate_streams_text_and_takes_token_ids() {
    let fixture = Fixture::new("llama");
    let json = generate(
        fixture.path(),
        &[
            "--prompt-ids",
            "1,294",
            "--max-tokens",
            "5",
            "--format",
            "json",
        ],
    );
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["prompt_ids"], serde_json::json!([1, 294]));

    let text = generate(
        fixture.path(),
        &["--prompt-ids", "1,294", "--max-tokens", "5"],
    );
    assert!(text.status.success());
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert_eq!(
        stdout.trim_end_matches('\n'),
        json["text"].as_str().unwrap()
    );
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("5 tokens, stop: max_tokens"), "{stderr}");

    let sampled = [
        "--prompt",
        "hello",
        "--max-tokens",
        "8",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--top-k",
        "50",
        "--seed",
        "3",
        "--repeat-penalty",
        "1.1",
        "--ignore-eos",
        "--format",
        "json",
    ];
    let first: Value = serde_json::from_slice(&generate(fixture.path(), &sampled).stdout).unwrap();
    let second: Value = serde_json::from_slice(&generate(fixture.path(), &sampled).stdout).unwrap();
    assert_eq!(first["token_ids"], second["token_ids"]);
}

#[test]
fn inspect_reports_what_was_detected() {
    let fixture = Fixture::new("gemma2-sw8");
    let output = worker(&[
        "inspect",
        "--model",
        fixture.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["architecture"], "gemma2");
    assert_eq!(json["dims"]["num_layers"], 2);
    assert_eq!(json["window"]["handling"], "applied");
    assert_eq!(json["eos_token_ids"], serde_json::json!([2]));
    assert_eq!(json["tokenizer_vocab_size"], 512);
    assert_eq!(
        json["checkpoint"]["dtypes"]["f32"],
        json["checkpoint"]["tensors"]
    );

    let text = worker(&["inspect", "--model", fixture.path().to_str().unwrap()]);
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert!(stdout.contains("architecture:   gemma2"), "{stdout}");
}

#[test]
fn a_bad_model_folder_is_a_clear_error() {
    let hello = ["--prompt", "hello", "--max-tokens", "4"];
    fails_with(
        generate(Path::new("/nonexistent/model"), &hello),
        "does not exist",
    );

    let fixture = Fixture::new("llama");
    std::fs::write(fixture.file("config.json"), "{ \"model_type\": \"llama\", ").unwrap();
    fails_with(
        generate(fixture.path(), &hello),
        "config.json: not valid JSON",
    );

    std::fs::remove_file(fixture.file("config.json")).unwrap();
    fails_with(generate(fixture.path(), &hello), "config.json: missing");

    let fixture = Fixture::new("llama");
    std::fs::remove_file(fixture.file("tokenizer.json")).unwrap();
    fails_with(generate(fixture.path(), &hello), "tokenizer.json: missing");

    let fixture = Fixture::new("llama");
    std::fs::write(fixture.file("tokenizer.json"), "{}").unwrap();
    fails_with(
        generate(fixture.path(), &hello),
        "not a valid tokenizer.json",
    );

    let fixture = Fixture::new("llama");
    let weights = fixture.file("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..1000]).unwrap();
    fails_with(
        generate(fixture.path(), &hello),
        "not a readable SafeTensors file",
    );

    let fixture = Fixture::new("llama");
    fixture.edit_json("config.json", |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    fails_with(
        generate(fixture.path(), &hello),
        "architecture `mamba` is not supported; supported: llama",
    );
}

#[test]
fn bad_arguments_are_a_clear_error() {
    let fixture = Fixture::new("qwen2");
    let model = fixture.path();
    fails_with(
        generate(model, &["--prompt", "", "--max-tokens", "4"]),
        "`prompt`: is empty",
    );
    fails_with(
        generate(model, &["--prompt", "hello", "--max-tokens", "0"]),
        "`max_tokens`: must be at least 1",
    );
    let long = vec!["7"; 200].join(",");
    fails_with(
        generate(model, &["--prompt-ids", &long, "--max-tokens", "4"]),
        "the context is 128 tokens",
    );
    fails_with(
        generate(
            model,
            &["--prompt", "hello", "--max-tokens", "4", "--top-p", "2"],
        ),
        "`top_p`",
    );
    fails_with(
        generate(model, &["--prompt-ids", "1,x", "--max-tokens", "4"]),
        "invalid digit",
    );
    fails_with(generate(model, &["--max-tokens", "4"]), "--prompt");
    fails_with(
        generate(
            model,
            &["--prompt", "hello", "--max-tokens", "4", "--backend", "tpu"],
        ),
        "invalid value 'tpu'",
    );
    if !cfg!(feature = "cuda") {
        fails_with(
            generate(
                model,
                &[
                    "--prompt",
                    "hello",
                    "--max-tokens",
                    "4",
                    "--backend",
                    "cuda",
                ],
            ),
            "backend `cuda`: not compiled into this binary",
        );
    }
    if !cfg!(feature = "metal") {
        fails_with(
            generate(
                model,
                &[
                    "--prompt",
                    "hello",
                    "--max-tokens",
                    "4",
                    "--backend",
                    "metal",
                ],
            ),
            "backend `metal`: not compiled into this binary",
        );
    }
}

#[test]
fn errors_show_no_backtrace_whatever_rust_backtrace_says() {
    let fixture = common::GgufFixture::new("llama-q4_0");
    let file = fixture.file("model.gguf");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let model = fixture.path();
    for setting in ["1", "full"] {
        let output = Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
            .args([
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "hi",
                "--max-tokens",
                "2",
            ])
            .env("RUST_BACKTRACE", setting)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("only 0 remaining in file"), "{stderr}");
        assert!(
            !stderr.contains("candle_core::") && stderr.lines().count() == 1,
            "RUST_BACKTRACE={setting}: {stderr}"
        );
    }
}

#[test]
fn generate_reports_logprobs_and_stops_at_a_stop_string_in_json() {
    let fixture = Fixture::new("qwen2");
    let base = ["--prompt-ids", "1,2,3", "--max-tokens", "8", "--ignore-eos"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let output = generate(fixture.path(), &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let json = run(&["--format", "json", "--logprobs", "2"]);
    let logprobs = json["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 8);
    for (step, entry) in logprobs.iter().enumerate() {
        assert_eq!(entry["top"].as_array().unwrap().len(), 2, "step {step}");
        assert_eq!(
            entry["top"][0]["id"], json["token_ids"][step],
            "greedy: the first"
        );
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
    }
    let text = json["text"].as_str().unwrap();
    let stop: String = text.chars().skip(3).take(2).collect();
    let stopped = run(&["--format", "json", "--stop", &stop]);
    assert_eq!(stopped["text"], &text[..text.find(&stop).unwrap()]);
    assert_eq!(stopped["stop_reason"], "stop_string");
    assert!(run(&["--format", "json"]).get("logprobs").is_none());
    fails_with(
        generate(fixture.path(), &[&base[..], &["--logprobs", "2"]].concat()),
        "--logprobs",
    );
}
