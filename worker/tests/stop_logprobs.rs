//! Stop strings and log-probabilities through `Worker::generate`: what is streamed, where the
//! text ends, and the reported figures against the model's own logits.

mod common;

use std::ops::ControlFlow;

use common::{greedy, run, Fixture};
use llm_worker_rbee::{Generation, Prompt, Request, StopReason, Worker};

const TOKENS: usize = 24;

/// Each token's streamed piece, and the generation.
fn pieces(worker: &mut Worker, request: &Request) -> (Vec<String>, Generation) {
    let prepared = worker.prepare(request).unwrap();
    let mut pieces = Vec::new();
    let generation = worker
        .generate(&prepared, |token| {
            pieces.push(token.text.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
    (pieces, generation)
}

#[test]
fn a_stop_string_over_two_tokens_ends_the_text_before_it_and_is_never_streamed() {
    for id in ["llama", "qwen2", "phi"] {
        let mut worker = Fixture::new(id).load();
        let request = greedy(Prompt::Text("hello".into()), TOKENS);
        let (plain, whole) = pieces(&mut worker, &request);
        // The end of one token's text and the start of the next's.
        let at = (TOKENS / 2..TOKENS - 1)
            .find(|&i| !plain[i].is_empty() && !plain[i + 1].is_empty())
            .unwrap_or_else(|| panic!("{id}: no two neighbouring tokens with text"));
        let last_char = |s: &str| s.chars().last().unwrap().to_string();
        let first_char = |s: &str| s.chars().next().unwrap().to_string();
        let stop = last_char(&plain[at]) + &first_char(&plain[at + 1]);
        let cut = whole.text.find(&stop).unwrap();

        let stopped_request = Request {
            stop: vec![stop.clone()],
            ..request.clone()
        };
        let (streamed, stopped) = pieces(&mut worker, &stopped_request);
        assert_eq!(stopped.text, whole.text[..cut], "{id}: stop {stop:?}");
        assert_eq!(streamed.concat(), stopped.text, "{id}");
        assert_eq!(stopped.stop_reason, StopReason::StopString, "{id}");
        assert!(
            whole.token_ids.starts_with(&stopped.token_ids),
            "{id}: the tokens up to the stop are the same"
        );
        // Generation ended at the token that completed the stop string, not later.
        let decoded = worker.codec().decode(&stopped.token_ids).unwrap();
        let before = worker
            .codec()
            .decode(&stopped.token_ids[..stopped.token_ids.len() - 1])
            .unwrap();
        assert!(decoded.contains(&stop) && !before.contains(&stop), "{id}");

        let never = Request {
            stop: vec!["\u{2603}never\u{2603}".into()],
            ..request.clone()
        };
        let unchanged = run(&mut worker, &never);
        assert_eq!(unchanged.token_ids, whole.token_ids, "{id}");
        assert_eq!(unchanged.text, whole.text, "{id}");
        assert_eq!(unchanged.stop_reason, StopReason::MaxTokens, "{id}");
    }
}

fn log_softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let scaled: Vec<f64> = logits.iter().map(|l| (l / temperature) as f64).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = scaled.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|l| (l - max - log_sum) as f32).collect()
}

#[test]
fn logprobs_are_the_chosen_distribution_and_change_no_token() {
    let mut worker = Fixture::new("qwen2").load();
    let greedy_request = greedy(Prompt::Text("hello".into()), 8);
    let sampled_request = Request {
        temperature: 0.7,
        seed: 11,
        ..greedy_request.clone()
    };
    for (request, temperature) in [(greedy_request, 1.0), (sampled_request, 0.7)] {
        let plain = run(&mut worker, &request);
        assert_eq!(plain.logprobs, None);
        let asked = run(
            &mut worker,
            &Request {
                logprobs: Some(4),
                ..request.clone()
            },
        );
        assert_eq!(asked.token_ids, plain.token_ids, "logprobs change no token");
        let reported = asked.logprobs.unwrap();
        assert_eq!(reported.len(), asked.token_ids.len());
        let steps = worker
            .step_logits(
                &asked.prompt_ids,
                &asked.token_ids[..asked.token_ids.len() - 1],
            )
            .unwrap();
        for (step, ((logits, token), reported)) in steps
            .iter()
            .zip(&asked.token_ids)
            .zip(&reported)
            .enumerate()
        {
            let expected = log_softmax(logits, temperature);
            let close = |a: f32, b: f32| (a - b).abs() < 1e-4;
            assert!(
                close(reported.logprob, expected[*token as usize]),
                "step {step}"
            );
            assert_eq!(reported.top.len(), 4);
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
            for (top, id) in reported.top.iter().zip(&order) {
                assert_eq!(top.id as usize, *id, "step {step}: most likely first");
                assert!(close(top.logprob, expected[*id]), "step {step}");
                assert_eq!(top.token, worker.codec().token_text(top.id).unwrap());
            }
            if temperature == 1.0 {
                assert_eq!(reported.top[0].id, *token, "greedy picks the first");
            }
        }
    }
}

#[test]
fn more_than_four_stop_strings_or_twenty_logprobs_are_refused() {
    let worker = Fixture::new("llama").load();
    let request = greedy(Prompt::Text("hello".into()), 4);
    let too_many = Request {
        stop: (0..5).map(|i| i.to_string()).collect(),
        ..request.clone()
    };
    let error = worker.prepare(&too_many).unwrap_err().to_string();
    assert!(error.contains("stop"), "{error}");
    let empty = Request {
        stop: vec![String::new()],
        ..request.clone()
    };
    assert!(worker.prepare(&empty).is_err());
    let wide = Request {
        logprobs: Some(21),
        ..request
    };
    let error = worker.prepare(&wide).unwrap_err().to_string();
    assert!(error.contains("logprobs"), "{error}");
}
