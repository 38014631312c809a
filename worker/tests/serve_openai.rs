//! OpenAI's API of `llm-worker-rbee serve`: answers equal to the library's, streams that hold
//! back stop strings, and errors in OpenAI's shape.

mod common;

use common::http::{library, long_fixture, Server};
use common::Fixture;
use llm_worker_rbee::Prompt;
use serde_json::{json, Value};

/// The `data:` payloads of an OpenAI stream, `[DONE]` last.
fn chunks(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {block:?}"))
                .to_string()
        })
        .collect()
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Vec<String>, String) {
    let mut response = server.send("POST", path, body.to_string().as_bytes());
    let headers = response.headers.clone();
    (response.status, headers, response.text())
}

#[test]
fn completions_equal_the_library_and_streams_hold_back_stop_strings() {
    let fixture = Fixture::new("llama");
    let server = Server::start(fixture.path());
    let expected = library(
        &fixture,
        &common::greedy(Prompt::Ids(vec![1, 300, 301]), 16),
    );
    // The model as `serve` was given it: the fixture's folder.
    let model = fixture.path().to_str().unwrap();
    let body = json!({"model": model, "prompt": [1, 300, 301], "max_tokens": 16,
        "temperature": 0, "ignore_eos": true, "return_token_ids": true});
    let (status, _, text) = post(&server, "/v1/completions", &body);
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["choices"][0]["token_ids"], json!(expected.ids));
    assert_eq!(answer["choices"][0]["text"], expected.text.as_str());
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 16);

    // Two characters from the middle of the text: a stop string the stream must hold back.
    let chars: Vec<char> = expected.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = expected.text.find(&stop).unwrap();
    let mut streamed = body.clone();
    streamed["stop"] = json!(stop);
    streamed["stream"] = json!(true);
    let (status, headers, text) = post(&server, "/v1/completions", &streamed);
    assert_eq!(status, 200, "{text}");
    assert!(headers.contains(&"content-type: text/event-stream".to_string()));
    let chunks = chunks(&text);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let sent: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(sent, expected.text[..cut], "stop {stop:?}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[test]
fn errors_take_openais_shape_with_todays_statuses() {
    let fixture = long_fixture();
    let server = Server::start_with(fixture.path(), &["--queue", "0"]);
    let model = fixture.path().to_str().unwrap();
    let chat = |extra: Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (
            chat(json!({"model": "other"})),
            404,
            "model",
            "model_not_found",
        ),
        (chat(json!({"n": 3})), 400, "n", ""),
        (chat(json!({"bogus": true})), 400, "bogus", ""),
        (chat(json!({"max_tokens": 0})), 400, "max_tokens", ""),
        (
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            "stop",
            "",
        ),
    ];
    for (body, status, param, code) in cases {
        let (got, _, text) = post(&server, "/v1/chat/completions", &body);
        assert_eq!(got, status, "{body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["param"], param, "{text}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{text}");
        assert_eq!(
            error["error"]["code"].as_str().unwrap_or(""),
            code,
            "{text}"
        );
        assert!(error["error"]["message"].is_string());
    }
    let big = vec![b' '; llm_worker_rbee::serve::BODY_LIMIT + 1];
    let mut response = server.send("POST", "/v1/completions", &big);
    let status = response.status;
    assert_eq!(status, 413, "{}", response.text());

    // A long generation runs and nothing may wait: the next request is turned away.
    let running = server.send(
        "POST",
        "/v1/completions",
        json!({"model": model, "prompt": "hello", "max_tokens": 4000, "ignore_eos": true,
               "stream": true})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(running.status, 200);
    let (status, headers, text) = post(&server, "/v1/chat/completions", &chat(json!({})));
    assert_eq!(status, 503, "{text}");
    assert!(
        headers.contains(&"retry-after: 1".to_string()),
        "{headers:?}"
    );
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{text}");
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    // Its id is the folder's name.
    let id = fixture.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(models["data"][0]["id"], id, "{models}");
}
