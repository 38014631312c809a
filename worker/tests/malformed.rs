//! A corpus of malformed inputs, each run through the real binary: model folders broken in
//! their settings, weights, tokenizer and GGUF metadata, and HTTP requests broken in their
//! framing and bodies. Every one must be refused with an error (exit 1, a one-line message; a
//! 4xx answer or a closed connection), never a panic, an abort or a hang.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::http::Server;
use common::{Fixture, GgufFixture};
use serde_json::{json, Value};

/// Longer than any refusal takes; a run past it is a hang.
const HANG: Duration = Duration::from_secs(60);

/// How one broken folder is made from a fresh fixture folder.
type Break = Box<dyn Fn(&Path)>;

fn config(edits: Value) -> Break {
    json_file("config.json", edits)
}

fn write(name: &'static str, contents: &'static [u8]) -> Break {
    Box::new(move |dir| std::fs::write(dir.join(name), contents).unwrap())
}

fn remove(name: &'static str) -> Break {
    Box::new(move |dir| std::fs::remove_file(dir.join(name)).unwrap())
}

fn truncate(name: &'static str) -> Break {
    Box::new(move |dir| {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        std::fs::write(dir.join(name), &bytes[..bytes.len() / 2]).unwrap();
    })
}

/// Replaces one tensor of model.safetensors (`None`: removes it).
fn tensor(name: &'static str, make: fn(&Tensor) -> Option<Tensor>) -> Break {
    Box::new(move |dir| {
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        match make(&tensors[name]) {
            Some(t) => tensors.insert(name.to_string(), t),
            None => tensors.remove(name),
        };
        candle_core::safetensors::save(&tensors, &path).unwrap();
    })
}

fn json_file(name: &'static str, edits: Value) -> Break {
    Box::new(move |dir| {
        let path = dir.join(name);
        let mut value: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (key, v) in edits.as_object().unwrap() {
            value[key] = v.clone();
        }
        std::fs::write(&path, value.to_string()).unwrap();
    })
}

fn safetensors_corpus() -> Vec<(&'static str, Break)> {
    const Q: &str = "model.layers.0.self_attn.q_proj.weight";
    vec![
        (
            "config not JSON",
            write("config.json", b"{ \"model_type\": "),
        ),
        ("config an array", write("config.json", b"[1, 2, 3]")),
        ("config empty object", write("config.json", b"{}")),
        (
            "unknown model_type",
            config(json!({"model_type": "bogus", "architectures": null})),
        ),
        ("hidden_size 0", config(json!({"hidden_size": 0}))),
        ("hidden_size negative", config(json!({"hidden_size": -64}))),
        ("hidden_size a string", config(json!({"hidden_size": "64"}))),
        ("hidden_size a float", config(json!({"hidden_size": 64.5}))),
        (
            "hidden_size huge",
            config(json!({"hidden_size": 1u64 << 40})),
        ),
        (
            "num_attention_heads 0",
            config(json!({"num_attention_heads": 0})),
        ),
        (
            "heads do not divide",
            config(json!({"num_attention_heads": 3})),
        ),
        (
            "num_key_value_heads 0",
            config(json!({"num_key_value_heads": 0})),
        ),
        (
            "kv heads do not divide",
            config(json!({"num_key_value_heads": 3})),
        ),
        ("vocab_size 0", config(json!({"vocab_size": 0}))),
        (
            "vocab_size below the tokenizer's",
            config(json!({"vocab_size": 10})),
        ),
        (
            "intermediate_size 0",
            config(json!({"intermediate_size": 0})),
        ),
        (
            "num_hidden_layers 0",
            config(json!({"num_hidden_layers": 0})),
        ),
        (
            "num_hidden_layers a million",
            config(json!({"num_hidden_layers": 1_000_000})),
        ),
        (
            "max_position_embeddings 0",
            config(json!({"max_position_embeddings": 0})),
        ),
        (
            "max_position_embeddings 1e12",
            config(json!({"max_position_embeddings": 1_000_000_000_000u64})),
        ),
        ("rope_theta 0", config(json!({"rope_theta": 0.0}))),
        ("rope_theta negative", config(json!({"rope_theta": -1.0}))),
        ("rope_theta a string", config(json!({"rope_theta": "x"}))),
        ("rms_norm_eps 0", config(json!({"rms_norm_eps": 0.0}))),
        (
            "rms_norm_eps negative",
            config(json!({"rms_norm_eps": -1e-5})),
        ),
        (
            "unknown rope type",
            config(json!({"rope_scaling": {"rope_type": "bogus"}})),
        ),
        (
            "llama3 rope without its factor",
            config(json!({"rope_scaling": {"rope_type": "llama3"}})),
        ),
        ("unknown activation", config(json!({"hidden_act": "bogus"}))),
        (
            "tie_word_embeddings a string",
            config(json!({"tie_word_embeddings": "yes"})),
        ),
        (
            "eos_token_id a string",
            config(json!({"eos_token_id": "x"})),
        ),
        ("eos_token_id negative", config(json!({"eos_token_id": -5}))),
        ("weights empty", write("model.safetensors", b"")),
        (
            "weights random bytes",
            write(
                "model.safetensors",
                b"\x07\x00\x00\x00\x00\x00\x00\x00garbage",
            ),
        ),
        ("weights truncated", truncate("model.safetensors")),
        ("weights missing", remove("model.safetensors")),
        (
            "a weight holding NaN",
            tensor(Q, |t| Some((t * f64::NAN).unwrap())),
        ),
        (
            "a weight holding infinity",
            tensor(Q, |t| Some((t / 0.0).unwrap())),
        ),
        (
            "a weight stored as integers",
            tensor(Q, |t| Some(t.to_dtype(DType::U32).unwrap())),
        ),
        ("a weight missing", tensor(Q, |_| None)),
        (
            "a weight of the wrong shape",
            tensor(Q, |t| {
                Some(
                    t.t()
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .narrow(0, 0, 32)
                        .unwrap(),
                )
            }),
        ),
        ("tokenizer missing", remove("tokenizer.json")),
        ("tokenizer not JSON", write("tokenizer.json", b"{ not json")),
        (
            "bos_token outside the vocabulary",
            json_file(
                "tokenizer_config.json",
                json!({"add_bos_token": true, "bos_token": "<nope>"}),
            ),
        ),
        (
            "add_bos_token a string",
            json_file("tokenizer_config.json", json!({"add_bos_token": "x"})),
        ),
        (
            "generation eos_token_id a string",
            json_file("generation_config.json", json!({"eos_token_id": "x"})),
        ),
    ]
}

/// A GGUF header of one metadata key `k` whose value is `value` (type id and bytes), and
/// padding.
fn gguf_with_value(value_type: u32, value: Vec<u8>) -> Break {
    Box::new(move |dir| {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(value_type.to_le_bytes());
        bytes.extend(&value);
        bytes.extend([0u8; 256]);
        std::fs::write(dir.join("model.gguf"), bytes).unwrap();
    })
}

fn gguf_corpus() -> Vec<(&'static str, Break)> {
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;
    let huge = (1u64 << 40).to_le_bytes().to_vec();
    let array_of_strings = [STRING.to_le_bytes().to_vec(), huge.clone()].concat();
    vec![
        ("GGUF string of 2^40 bytes", gguf_with_value(STRING, huge)),
        (
            "GGUF array of 2^40 strings",
            gguf_with_value(ARRAY, array_of_strings),
        ),
        ("GGUF empty", write("model.gguf", b"")),
        (
            "GGUF random bytes",
            write(
                "model.gguf",
                b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
            ),
        ),
        ("GGUF truncated", truncate("model.gguf")),
        (
            "GGUF without a tokenizer anywhere",
            remove("tokenizer.json"),
        ),
    ]
}

/// Runs `generate` on `dir`; what was wrong unless it was a clean refusal.
fn refusal(label: &str, dir: &Path) -> Result<(), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "hello",
        ])
        .args(["--max-tokens", "2"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HANG {
            child.kill().unwrap();
            panic!("{label}: still running after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // Exit code 1 is a refusal; a panic exits 101, an abort is a signal (no code).
    if status.code() != Some(1) {
        return Err(format!("{label}: {status}: {stderr}"));
    }
    if !(stderr.starts_with("error: ") && stderr.lines().count() == 1) {
        return Err(format!("{label}: not a one-line error: {stderr}"));
    }
    Ok(())
}

#[test]
fn every_malformed_model_folder_is_refused_with_a_one_line_error() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for (label, broken) in safetensors_corpus() {
        let fixture = Fixture::new("llama");
        broken(fixture.path());
        failures.extend(refusal(label, fixture.path()).err());
        cases += 1;
    }
    for (label, broken) in gguf_corpus() {
        let fixture = GgufFixture::new("llama-q4_0");
        broken(&fixture.path());
        failures.extend(refusal(label, &fixture.path()).err());
        cases += 1;
    }
    assert!(cases >= 40, "{cases}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A raw request broken in its framing or body, and the statuses it may get (`None`: the
/// connection closed without an answer).
type HttpCase = (&'static str, Vec<u8>, &'static [Option<u16>]);

fn http_corpus() -> Vec<HttpCase> {
    let post = |body: &[u8]| -> Vec<u8> {
        let mut request = format!(
            "POST /execute HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let raw = |text: &str| text.as_bytes().to_vec();
    const BAD: &[Option<u16>] = &[Some(400)];
    const CLOSED_OR_BAD: &[Option<u16>] = &[None, Some(400)];
    let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let keys: String = (0..20_000)
        .map(|i| format!("\"k{i}\": {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        ("not HTTP", raw("hello\r\n\r\n"), CLOSED_OR_BAD),
        ("HTTP/0.9", raw("GET /health\r\n\r\n"), CLOSED_OR_BAD),
        ("HTTP/2 preface", raw("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), CLOSED_OR_BAD),
        ("bad method", raw("G@T /health HTTP/1.1\r\nHost: t\r\n\r\n"), CLOSED_OR_BAD),
        ("no host", raw("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"), &[Some(200), Some(400)]),
        ("header without colon", raw("GET /health HTTP/1.1\r\nHost t\r\n\r\n"), CLOSED_OR_BAD),
        ("header of 100 KB", format!("GET /health HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n", "a".repeat(100_000)).into_bytes(), &[None, Some(200), Some(400), Some(431)]),
        ("10,000 headers", format!("GET /health HTTP/1.1\r\nHost: t\r\n{}\r\n", "X: y\r\n".repeat(10_000)).into_bytes(), &[None, Some(400), Some(431)]),
        ("URL of 100 KB", format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100_000)).into_bytes(), &[None, Some(400), Some(404), Some(414), Some(431)]),
        ("unknown path", raw("GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), &[Some(404)]),
        ("GET /execute", raw("GET /execute HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), &[Some(405)]),
        ("POST /health", raw("POST /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), &[Some(405)]),
        ("two content lengths", raw("POST /execute HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"), CLOSED_OR_BAD),
        ("negative content length", raw("POST /execute HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"), CLOSED_OR_BAD),
        ("content length not a number", raw("POST /execute HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n"), CLOSED_OR_BAD),
        ("content length of 2^64", raw("POST /execute HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551616\r\n\r\n"), CLOSED_OR_BAD),
        ("content length over the limit", raw("POST /execute HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 999999999\r\n\r\n"), &[None, Some(413)]),
        ("bad chunk size", raw("POST /execute HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"), CLOSED_OR_BAD),
        ("chunked and content length", raw("POST /execute HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), &[None, Some(400)]),
        ("empty body", post(b""), BAD),
        ("not JSON", post(b"{ nope"), BAD),
        ("JSON string", post(b"\"hello\""), BAD),
        ("JSON null", post(b"null"), BAD),
        ("JSON array", post(b"[1, 2]"), BAD),
        ("not UTF-8", post(b"{\"prompt\": \"\xff\xfe\", \"max_tokens\": 2}"), BAD),
        ("NUL in the prompt", post(b"{\"prompt\": \"a\\u0000b\", \"max_tokens\": 2}"), &[Some(200), Some(400)]),
        ("lone surrogate", post(b"{\"prompt\": \"\\ud800\", \"max_tokens\": 2}"), BAD),
        ("nested 10,000 deep", post(nested.as_bytes()), BAD),
        ("20,000 keys", post(format!("{{{keys}}}").as_bytes()), BAD),
        ("duplicate key", post(b"{\"prompt\": \"a\", \"prompt\": \"b\", \"max_tokens\": 2}"), BAD),
        ("max_tokens 2^64 - 1", post(b"{\"prompt\": \"a\", \"max_tokens\": 18446744073709551615}"), BAD),
        ("max_tokens 2^64", post(b"{\"prompt\": \"a\", \"max_tokens\": 18446744073709551616}"), BAD),
        ("max_tokens a float", post(b"{\"prompt\": \"a\", \"max_tokens\": 2.5}"), BAD),
        ("temperature 1e-320", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"temperature\": 1e-320}"), BAD),
        ("temperature 1e400", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"temperature\": 1e400}"), BAD),
        ("top_p NaN-like", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"top_p\": \"NaN\"}"), BAD),
        ("top_k 2^64", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"top_k\": 18446744073709551616}"), BAD),
        ("seed negative", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"seed\": -1}"), BAD),
        ("repeat_penalty negative", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"repeat_penalty\": -1}"), BAD),
        ("prompt ids past the vocabulary", post(b"{\"prompt_ids\": [4294967295], \"max_tokens\": 2}"), BAD),
        ("prompt ids of strings", post(b"{\"prompt_ids\": [\"a\"], \"max_tokens\": 2}"), BAD),
        ("messages of numbers", post(b"{\"messages\": [1, 2], \"max_tokens\": 2}"), BAD),
        ("message without content", post(b"{\"messages\": [{\"role\": \"user\"}], \"max_tokens\": 2}"), BAD),
        ("job_id an object", post(b"{\"prompt\": \"a\", \"max_tokens\": 2, \"job_id\": {}}"), BAD),
    ]
}

/// The status of the answer to `request`, or `None` when the server closed the connection
/// without one.
fn status_of(server: &Server, label: &str, request: &[u8]) -> Option<u16> {
    let mut stream = server.connect();
    stream.set_read_timeout(Some(HANG)).unwrap();
    // The server may answer and close before reading everything: a failed write is fine. The
    // write side stays open: a client that half-closes is taken to have left (hyper's default).
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{label}: no answer and not closed after {HANG:?}: {e}"),
    }
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split(' ').nth(1)?.parse().ok();
    status
}

#[test]
fn every_malformed_request_is_refused_and_the_server_keeps_serving() {
    let fixture = Fixture::new("llama");
    // Requests cut short wait for the timeouts.
    let limits = ["--header-timeout", "1", "--body-timeout", "1"];
    let server = Server::start_with(fixture.path(), &limits);
    let corpus = http_corpus();
    assert!(corpus.len() >= 40, "{}", corpus.len());
    let mut failures = Vec::new();
    for (label, request, allowed) in &corpus {
        let status = status_of(&server, label, request);
        if !allowed.contains(&status) {
            failures.push(format!("{label}: {status:?}, allowed {allowed:?}"));
        }
        assert_eq!(server.get("/health").0, 200, "after {label}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let output = server.generate(&json!({"prompt": "hello", "max_tokens": 4}));
    assert_eq!(output.ids.len(), 4);
    let log = std::fs::read_to_string(server.log.path()).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
