//! `llm-worker-rbee serve`: the real binary on a free port, spoken to over plain HTTP/1.1.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{library, long_fixture, without_end, Output, Server};
use common::Fixture;
use llm_worker_rbee::Prompt;
use serde_json::{json, Value};

#[test]
fn execute_streams_the_library_output() {
    let fixture = Fixture::new("llama");
    let server = Server::start(fixture.path());
    let mut sampled = common::greedy(Prompt::Ids(vec![1, 300, 301]), 12);
    sampled.temperature = 0.9;
    sampled.top_p = Some(0.95);
    sampled.seed = 7;
    let cases = [
        (
            json!({"job_id": "a", "prompt": "hello", "max_tokens": 16, "ignore_eos": true}),
            common::greedy(Prompt::Text("hello".into()), 16),
        ),
        (
            json!({"prompt_ids": [1, 300, 301], "max_tokens": 12, "temperature": 0.9,
                   "top_p": 0.95, "seed": 7, "ignore_eos": true}),
            sampled,
        ),
    ];
    for (body, request) in cases {
        let output = server.generate(&body);
        let end = output.end.clone().expect("an end event");
        assert_eq!(end["tokens_out"], request.max_tokens);
        assert_eq!(end["stop_reason"], "max_tokens");
        assert_eq!(without_end(output), library(&fixture, &request), "{body}");
    }
}

#[test]
fn malformed_bodies_get_a_status_naming_the_field() {
    let fixture = Fixture::new("llama");
    let server = Server::start(fixture.path());
    let ok = |extra: Value| {
        let mut body = json!({"prompt": "hi", "max_tokens": 4});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body.to_string().into_bytes()
    };
    let raw = |s: &str| s.as_bytes().to_vec();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (raw("not json"), 400, "body"),
        (raw(r#"{"prompt": "hi", "max_tokens": 4"#), 400, "body"),
        (vec![0xff, 0xfe, 0x7b], 400, "body"),
        (raw("[]"), 400, "body"),
        (raw(r#""text""#), 400, "body"),
        (raw("{}"), 400, "prompt"),
        (raw(r#"{"prompt": "hi"}"#), 400, "max_tokens"),
        (
            raw(r#"{"prompt": "hi", "max_tokens": 4, "max_tokens": 8}"#),
            400,
            "max_tokens",
        ),
        (
            raw(
                r#"{"messages": [{"role": "user", "content": "x", "role": "system"}], "max_tokens": 4}"#,
            ),
            400,
            "role",
        ),
        (ok(json!({"bogus": 1})), 400, "bogus"),
        (ok(json!({"prompt_ids": [1]})), 400, "prompt"),
        (
            ok(json!({"messages": [{"role": "user", "content": "x"}]})),
            400,
            "prompt",
        ),
        (ok(json!({"prompt": ""})), 400, "prompt"),
        (ok(json!({"prompt": 5})), 400, "prompt"),
        (
            raw(r#"{"prompt_ids": [], "max_tokens": 4}"#),
            400,
            "prompt_ids",
        ),
        (
            raw(r#"{"prompt_ids": [-1], "max_tokens": 4}"#),
            400,
            "prompt_ids",
        ),
        (
            raw(r#"{"prompt_ids": [100000], "max_tokens": 4}"#),
            400,
            "prompt_ids",
        ),
        (
            json!({"prompt_ids": vec![300; 200], "max_tokens": 4})
                .to_string()
                .into_bytes(),
            400,
            "prompt_ids",
        ),
        (
            json!({"prompt_ids": vec![300; 100], "max_tokens": 100})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (ok(json!({"max_tokens": 0})), 400, "max_tokens"),
        (ok(json!({"max_tokens": 100000})), 400, "max_tokens"),
        (ok(json!({"max_tokens": -1})), 400, "max_tokens"),
        (ok(json!({"max_tokens": "4"})), 400, "max_tokens"),
        (ok(json!({"temperature": -0.5})), 400, "temperature"),
        (ok(json!({"temperature": 1e-320})), 400, "temperature"),
        (ok(json!({"temperature": 1e-6})), 400, "temperature"),
        (ok(json!({"top_p": 0.0})), 400, "top_p"),
        (ok(json!({"top_p": 1.5})), 400, "top_p"),
        (ok(json!({"top_k": 0})), 400, "top_k"),
        (ok(json!({"repeat_penalty": 0.0})), 400, "repeat_penalty"),
        (ok(json!({"seed": "x"})), 400, "seed"),
        (ok(json!({"ignore_eos": "yes"})), 400, "ignore_eos"),
        (ok(json!({"job_id": 5})), 400, "job_id"),
        // The fixture's Llama 2 template raises unless the roles alternate from the user's.
        (
            raw(r#"{"messages": [{"role": "assistant", "content": "x"}], "max_tokens": 4}"#),
            400,
            "messages",
        ),
        (raw(r#"{"messages": [], "max_tokens": 4}"#), 400, "messages"),
        (
            raw(r#"{"messages": [{"role": "user"}], "max_tokens": 4}"#),
            400,
            "messages",
        ),
        (
            ok(json!({"prompt": "x".repeat(super_limit())})),
            413,
            "body",
        ),
    ];
    assert!(cases.len() >= 20);
    for (body, status, field) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        let mut response = server.send("POST", "/execute", &body);
        let text = response.text();
        assert_eq!(response.status, status, "{shown}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(error["error"]["field"], field, "{shown}: {text}");
        assert!(
            !error["error"]["message"].as_str().unwrap().is_empty(),
            "{text}"
        );
    }
    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ready");
    assert_eq!(health["architecture"], "llama");
    assert_eq!(health["backend"], "cpu");
    assert_eq!(health["dtype"], "f32");
    // The server still generates.
    let output = server.generate(&json!({"prompt": "hello", "max_tokens": 3}));
    assert!(output.end.is_some());
}

/// A body just over the server's 1 MiB limit.
fn super_limit() -> usize {
    llm_worker_rbee::serve::BODY_LIMIT + 1
}

#[test]
fn concurrent_clients_get_their_sequential_outputs() {
    // One server per fixture: llama, qwen2 and a GGUF model.
    let fixtures = [Fixture::new("llama"), Fixture::new("qwen2")];
    let gguf = common::GgufFixture::new("qwen2-q8_0");
    let servers: Vec<Server> = fixtures
        .iter()
        .map(|f| Server::start(f.path()))
        .chain([Server::start(&gguf.path())])
        .collect();
    let bodies: Vec<Value> = ["hello", "The quick brown fox", "one two three", "x"]
        .iter()
        .flat_map(|prompt| {
            [
                json!({"prompt": prompt, "max_tokens": 4, "ignore_eos": true}),
                json!({"prompt": prompt, "max_tokens": 4, "temperature": 1.0, "seed": 3,
                       "ignore_eos": true}),
                json!({"prompt": prompt, "max_tokens": 4, "temperature": 0.7, "top_k": 20,
                       "seed": 11, "ignore_eos": true}),
            ]
        })
        .collect();
    // Every (server, body) pair, alone first.
    let kinds: Vec<(&Server, &Value)> = servers
        .iter()
        .flat_map(|server| bodies.iter().map(move |body| (server, body)))
        .collect();
    let sequential: Vec<Output> = kinds
        .iter()
        .map(|(server, body)| without_end(server.generate(body)))
        .collect();
    const CLIENTS: usize = 16;
    const REQUESTS: usize = 200;
    let mismatches: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (kinds, sequential) = (&kinds, &sequential);
                scope.spawn(move || {
                    (client..REQUESTS)
                        .step_by(CLIENTS)
                        .filter(|i| {
                            let kind = i % kinds.len();
                            let (server, body) = kinds[kind];
                            without_end(server.generate(body)) != sequential[kind]
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(mismatches, 0);
    let count = |outcome| servers.iter().map(|s| s.requests(outcome)).sum::<u64>();
    assert_eq!(count("completed") as usize, REQUESTS + kinds.len());
    for outcome in ["cancelled", "invalid", "overloaded", "failed"] {
        assert_eq!(count(outcome), 0, "{outcome}");
    }
}

#[test]
fn a_full_queue_gets_503_with_retry_after() {
    let fixture = long_fixture();
    let server = Server::start_with(fixture.path(), &["--queue", "0"]);
    let mut running = server.execute(&json!({"job_id": "long", "prompt": "hello",
        "max_tokens": 4000, "ignore_eos": true}));
    assert_eq!(running.status, 200);
    assert_eq!(running.event().unwrap().0, "started");
    // The long job runs and nothing may wait: the next request is turned away.
    let mut refused = server.execute(&json!({"prompt": "hello", "max_tokens": 2}));
    let headers = refused.headers.clone();
    let text = refused.text();
    assert_eq!(refused.status, 503, "{text}");
    assert!(
        headers.contains(&"retry-after: 1".to_string()),
        "{headers:?}"
    );
    let metrics = server.metrics();
    assert!(
        metrics.contains("llm_worker_requests_total{outcome=\"overloaded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("llm_worker_busy 1"), "{metrics}");
    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "busy", "{health}");
}

#[test]
fn sigterm_during_a_generation_ends_it_and_exits_0_within_2_s() {
    let fixture = long_fixture();
    let mut server = Server::start(fixture.path());
    let mut response = server.execute(&json!({"prompt": "hello", "max_tokens": 4000,
        "ignore_eos": true}));
    assert_eq!(response.status, 200);
    assert_eq!(response.event().unwrap().0, "started");
    assert_eq!(response.event().unwrap().0, "token");
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The stream ends with `end` or `error`, or just closes; reads time out after GUARD.
    let mut last = None;
    let mut tokens = 1;
    while let Some((name, data)) = response.event() {
        tokens += usize::from(name == "token");
        last = Some((name, data));
    }
    let (name, data) = last.expect("events after the signal");
    match name.as_str() {
        "end" => {
            assert_eq!(data["stop_reason"], "cancelled", "{data}");
            assert_eq!(data["tokens_out"], tokens, "the tokens sent: {data}");
        }
        "token" | "error" => {}
        other => panic!("unexpected event {other}: {data}"),
    }
    let exit = server.wait();
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after SIGTERM"
    );
}

#[test]
fn chat_messages_use_the_model_template() {
    let fixture = Fixture::new("llama");
    let template = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n\
                    {{ m.content.strip() }}<|im_end|>\n{% endfor %}\
                    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    fixture.edit_json("tokenizer_config.json", |c| {
        c.insert("chat_template".into(), json!(template));
    });
    let server = Server::start(fixture.path());
    let messages = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "  hello there\n"},
    ]);
    let output = server.generate(&json!({"messages": messages, "max_tokens": 8,
        "ignore_eos": true}));

    let rendered = "<s><|im_start|>system\nbe brief<|im_end|>\n\
                    <|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n";
    let tokenizer = tokenizers::Tokenizer::from_file(fixture.file("tokenizer.json")).unwrap();
    let ids = tokenizer
        .encode(rendered, false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], 1, "the template's BOS is the <s> token");
    let request = common::greedy(Prompt::Ids(ids), 8);
    assert_eq!(without_end(output), library(&fixture, &request));
}

#[test]
fn chat_template_jinja_wins_over_tokenizer_config_as_in_transformers_5() {
    let fixture = Fixture::new("llama");
    fixture.edit_json("tokenizer_config.json", |c| {
        c.insert(
            "chat_template".into(),
            json!("4.x: {{ messages[0].content }}"),
        );
    });
    let messages = vec![llm_worker_rbee::Message {
        role: "user".into(),
        content: "hello".into(),
    }];
    let request = common::greedy(Prompt::Messages(messages), 1);
    let prompt_ids = |path: &std::path::Path| {
        let files = llm_worker_rbee::ModelFiles::open(path).unwrap();
        files
            .prompter()
            .prepare(&request)
            .unwrap()
            .prompt_ids()
            .to_vec()
    };
    let tokenizer = tokenizers::Tokenizer::from_file(fixture.file("tokenizer.json")).unwrap();
    let ids = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(prompt_ids(fixture.path()), ids("4.x: hello"));
    std::fs::write(
        fixture.file("chat_template.jinja"),
        "5.x: {{ bos_token }}{{ messages[0].content }}",
    )
    .unwrap();
    assert_eq!(prompt_ids(fixture.path()), ids("5.x: <s>hello"));
}

#[test]
fn a_chat_template_that_does_not_parse_stops_serve_before_it_listens() {
    let fixture = Fixture::new("llama");
    fixture.edit_json("tokenizer_config.json", |c| {
        c.insert("chat_template".into(), json!("{% for m in messages %}"));
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
        .args([
            "serve",
            "--model",
            fixture.path().to_str().unwrap(),
            "--port",
            "0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > common::http::GUARD {
            child.kill().unwrap();
            panic!("serve kept running with a chat template that does not parse");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it listened");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the chat template of tokenizer_config.json: ")
            && stderr.contains("unexpected end of input"),
        "{stderr}"
    );
}

#[test]
fn a_chat_prompt_past_the_context_is_a_400_naming_messages() {
    let fixture = Fixture::new("llama");
    let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    fixture.edit_json("tokenizer_config.json", |c| {
        c.insert("chat_template".into(), json!(template));
    });
    let server = Server::start(fixture.path());
    let long = "the cat sat on the mat ".repeat(40);
    let mut response = server.execute(&json!({"max_tokens": 4,
        "messages": [{"role": "user", "content": long}]}));
    let text = response.text();
    assert_eq!(response.status, 400, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["field"], "messages", "{text}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the context is 128 tokens"),
        "{text}"
    );
}

#[test]
fn a_model_without_a_chat_template_answers_messages_with_a_400() {
    let fixture = Fixture::new("llama");
    fixture.edit_json("tokenizer_config.json", |c| {
        c.remove("chat_template");
    });
    let server = Server::start(fixture.path());
    let mut response = server.execute(&json!({"max_tokens": 4,
        "messages": [{"role": "user", "content": "x"}]}));
    let text = response.text();
    assert_eq!(response.status, 400, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["field"], "messages");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the model has no chat template"),
        "{text}"
    );
}

#[test]
fn a_chat_template_that_raises_is_a_400_naming_messages() {
    let fixture = Fixture::new("llama");
    let template = "{% if messages[0].role != 'user' %}\
                    {{ raise_exception('the first message must be the user\\'s') }}\
                    {% endif %}{{ messages[0].content }}";
    fixture.edit_json("tokenizer_config.json", |c| {
        c.insert("chat_template".into(), json!(template));
    });
    let server = Server::start(fixture.path());
    let mut response = server.execute(&json!({"max_tokens": 4,
        "messages": [{"role": "system", "content": "x"}]}));
    let text = response.text();
    assert_eq!(response.status, 400, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["field"], "messages");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the first message must be the user's"),
        "{message}"
    );
    let output = server.generate(&json!({"max_tokens": 4, "ignore_eos": true,
        "messages": [{"role": "user", "content": "hello"}]}));
    assert_eq!(output.ids.len(), 4);
}

#[test]
fn logs_are_json_lines_that_carry_the_job_id() {
    let fixture = Fixture::new("llama");
    let server = Server::start(fixture.path());
    server.generate(
        &json!({"job_id": "logged", "prompt": "hello", "max_tokens": 3,
        "ignore_eos": true}),
    );
    let mut refused =
        server.execute(&json!({"job_id": "refused", "prompt_ids": [100000], "max_tokens": 3}));
    let text = refused.text();
    assert_eq!(refused.status, 400, "{text}");
    let lines = server.log_lines();
    let messages = |job: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|line| line["span"]["job_id"] == job)
            .map(|line| line["message"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(messages("logged"), ["started", "finished"], "{lines:?}");
    assert_eq!(messages("refused"), ["refused"], "{lines:?}");
    let finished = lines
        .iter()
        .find(|line| line["span"]["job_id"] == "logged" && line["message"] == "finished")
        .unwrap();
    assert_eq!(finished["tokens"], 3);
    assert_eq!(finished["stop_reason"], "max_tokens");
    assert!(lines.iter().any(|line| line["message"] == "model loaded"));
}

#[test]
fn a_request_whose_client_left_while_it_waited_is_not_run() {
    let fixture = long_fixture();
    let server = Server::start(fixture.path());
    let mut running = server.execute(&json!({"job_id": "running", "prompt": "hello",
        "max_tokens": 4000, "ignore_eos": true}));
    assert_eq!(running.event().unwrap().0, "started");
    // Queued behind the running job; its client leaves before it starts.
    let mut waiting = server.connect();
    let body = json!({"job_id": "left-waiting", "prompt": "hello", "max_tokens": 4}).to_string();
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut waiting, head.as_bytes()).unwrap();
    // Both ends are on loopback: the server sees the close long before the running job ends.
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(waiting);
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(running);

    let output = server.generate(&json!({"prompt": "hello", "max_tokens": 8, "ignore_eos": true}));
    assert_eq!(output.ids.len(), 8);
    let metrics = server.metrics();
    assert!(
        metrics.contains("job_id=\"running\",stop_reason=\"cancelled\""),
        "{metrics}"
    );
    assert!(!metrics.contains("left-waiting"), "{metrics}");
    assert_eq!(server.requests("cancelled"), 2, "{metrics}");
    assert_eq!(server.requests("completed"), 1, "{metrics}");
}
