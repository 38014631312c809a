//! `serve`: a client that leaves cancels its generation between tokens. In a test binary of its
//! own so that nothing else competes for the CPU while it runs: the bound on the tokens
//! generated after the client left holds while the client reads and leaves faster than the
//! model makes one token, which a larger model (milliseconds per token) leaves ample room for.

mod common;

use common::http::{lengthen, library, without_end, Server};
use common::Fixture;
use llm_worker_rbee::synth::{self, FixtureSize};
use llm_worker_rbee::Prompt;
use serde_json::json;

#[test]
fn a_client_that_leaves_after_2_tokens_stops_its_generation_by_the_third() {
    let small = synth::fixture("llama").unwrap();
    let fixture = lengthen(Fixture::of(synth::FixtureSpec {
        size: FixtureSize {
            hidden: 1024,
            intermediate: 2048,
            layers: 4,
        },
        ..small
    }));
    let server = Server::start(fixture.path());
    let max_tokens = 4000;
    let mut response = server.execute(&json!({"job_id": "leaver", "prompt": "hello",
        "max_tokens": max_tokens, "ignore_eos": true}));
    assert_eq!(response.status, 200);
    assert_eq!(response.event().unwrap().0, "started");
    assert_eq!(response.event().unwrap().0, "token");
    assert_eq!(response.event().unwrap().0, "token");
    drop(response);

    let request = common::greedy(Prompt::Text("hello".into()), 8);
    let output = server.generate(&json!({"prompt": "hello", "max_tokens": 8, "ignore_eos": true}));
    assert_eq!(without_end(output), library(&fixture, &request));

    // The jobs run one after the other, so the cancelled one is recorded by now.
    let metrics = server.metrics();
    let prefix = "llm_worker_job_tokens{job_id=\"leaver\",stop_reason=\"cancelled\"} ";
    let tokens: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no cancelled job in {metrics}"))
        .parse()
        .unwrap();
    assert!((2..=3).contains(&tokens), "{tokens} tokens");
    assert!(metrics.contains("llm_worker_requests_total{outcome=\"cancelled\"} 1"));
}
