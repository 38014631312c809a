//! The KV cache must never carry anything from one request to the next, and generating with it
//! must equal recomputing without it. Checked on every fixture.

mod common;

use std::ops::ControlFlow;

use common::{all_fixture_ids, greedy, prompts, run, Fixture};
use llm_worker_rbee::{Prompt, Request};

const TOKENS: usize = 16;

fn long_request() -> Request {
    greedy(
        Prompt::Text(
            "Once upon a time there was a small model that could count: one, two, three.".into(),
        ),
        24,
    )
}

#[test]
fn the_same_request_twice_gives_the_same_tokens() {
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        for prompt in prompts() {
            let request = greedy(prompt, TOKENS);
            let first = run(&mut worker, &request);
            let second = run(&mut worker, &request);
            assert_eq!(
                first.token_ids, second.token_ids,
                "{id}: {:?}",
                request.prompt
            );
            assert_eq!(first.token_ids.len(), TOKENS, "{id}");
        }
    }
}

#[test]
fn a_request_after_others_equals_it_on_a_fresh_worker() {
    for id in all_fixture_ids() {
        let fixture = Fixture::new(id);
        let a = greedy(Prompt::Text("hello".into()), TOKENS);
        let b = long_request();
        let fresh = run(&mut fixture.load(), &a);

        let mut worker = fixture.load();
        run(&mut worker, &b);
        let first = run(&mut worker, &a);
        let second = run(&mut worker, &a);
        assert_eq!(first.token_ids, fresh.token_ids, "{id}: A after B");
        assert_eq!(second.token_ids, fresh.token_ids, "{id}: A after A");
    }
}

#[test]
fn a_one_token_prompt_after_a_long_request_is_still_right() {
    for id in all_fixture_ids() {
        let fixture = Fixture::new(id);
        let single = greedy(Prompt::Ids(vec![300]), TOKENS);
        let fresh = run(&mut fixture.load(), &single);

        let mut worker = fixture.load();
        run(&mut worker, &long_request());
        let after = run(&mut worker, &single);
        assert_eq!(after.token_ids, fresh.token_ids, "{id}");
    }
}

#[test]
fn a_request_after_a_cancelled_one_is_unaffected() {
    for id in all_fixture_ids() {
        let fixture = Fixture::new(id);
        let request = greedy(Prompt::Text("hello".into()), TOKENS);
        let fresh = run(&mut fixture.load(), &request);

        let mut worker = fixture.load();
        let long = worker.prepare(&long_request()).unwrap();
        let cancelled = worker
            .generate(&long, |token| {
                if token.index == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(cancelled.token_ids.len(), 3, "{id}");
        assert_eq!(
            cancelled.stop_reason,
            llm_worker_rbee::StopReason::Cancelled
        );
        assert_eq!(
            run(&mut worker, &request).token_ids,
            fresh.token_ids,
            "{id}"
        );
    }
}

#[test]
fn a_request_after_a_refused_one_is_unaffected() {
    for id in all_fixture_ids() {
        let fixture = Fixture::new(id);
        let request = greedy(Prompt::Text("hello".into()), TOKENS);
        let fresh = run(&mut fixture.load(), &request);

        let mut worker = fixture.load();
        run(&mut worker, &long_request());
        let too_long = greedy(Prompt::Ids(vec![300; 10]), 1_000);
        assert!(worker.prepare(&too_long).is_err());
        assert_eq!(
            run(&mut worker, &request).token_ids,
            fresh.token_ids,
            "{id}"
        );
    }
}

#[test]
fn decoding_with_the_cache_equals_recomputing_without_it() {
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        for prompt in prompts() {
            let generation = run(&mut worker, &greedy(prompt, TOKENS));
            let tokens = &generation.token_ids;
            let cached = worker
                .step_logits(&generation.prompt_ids, &tokens[..tokens.len() - 1])
                .unwrap();
            assert_eq!(cached.len(), tokens.len());
            for (step, logits) in cached.iter().enumerate() {
                let sequence: Vec<u32> = generation
                    .prompt_ids
                    .iter()
                    .chain(&tokens[..step])
                    .copied()
                    .collect();
                let recomputed = worker.logits_without_cache(&sequence).unwrap();
                let max_diff = logits
                    .iter()
                    .zip(&recomputed)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    max_diff <= 1e-4,
                    "{id} step {step}: logits differ by {max_diff}"
                );
                assert_eq!(
                    argmax(&recomputed),
                    tokens[step] as usize,
                    "{id} step {step}"
                );
            }
        }
    }
}

#[test]
fn continuing_from_a_prefix_equals_generating_in_one_go() {
    const SPLIT: usize = 5;
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        for prompt in prompts() {
            let whole = run(&mut worker, &greedy(prompt, TOKENS));
            let prefix: Vec<u32> = whole
                .prompt_ids
                .iter()
                .chain(&whole.token_ids[..SPLIT])
                .copied()
                .collect();
            let rest = run(&mut worker, &greedy(Prompt::Ids(prefix), TOKENS - SPLIT));
            assert_eq!(rest.token_ids, whole.token_ids[SPLIT..], "{id}");
        }
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}
