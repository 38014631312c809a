//! Generation on every fixture: stopping, special tokens, sampling, streaming text, and the
//! checks a request passes before it runs.

mod common;

use std::ops::ControlFlow;

use common::{all_fixture_ids, greedy, prompts, run, Fixture};
use llm_worker_rbee::tokens::IncrementalText;
use llm_worker_rbee::{Error, Prompt, Request, StopReason, Worker};
use serde_json::json;

const TOKENS: usize = 16;

#[test]
fn every_fixture_loads_and_generates_on_cpu() {
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        let request = Request::greedy(Prompt::Text("hello".into()), TOKENS);
        let generation = run(&mut worker, &request);
        assert_eq!(generation.token_ids.len(), TOKENS, "{id}");
        assert_eq!(generation.stop_reason, StopReason::MaxTokens, "{id}");
        assert_eq!(
            generation.text,
            worker.codec().decode(&generation.token_ids).unwrap(),
            "{id}"
        );
    }
}

#[test]
fn streamed_pieces_add_up_to_the_text_and_the_decode_of_all_ids() {
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        for prompt in prompts() {
            let mut pieces = Vec::new();
            let request = worker.prepare(&greedy(prompt, TOKENS)).unwrap();
            let generation = worker
                .generate(&request, |token| {
                    pieces.push((token.index, token.id, token.text.clone()));
                    ControlFlow::Continue(())
                })
                .unwrap();
            let indices: Vec<usize> = pieces.iter().map(|p| p.0).collect();
            assert_eq!(indices, (0..TOKENS).collect::<Vec<_>>(), "{id}");
            let ids: Vec<u32> = pieces.iter().map(|p| p.1).collect();
            assert_eq!(ids, generation.token_ids, "{id}");
            let streamed: String = pieces.iter().map(|p| p.2.as_str()).collect();
            assert_eq!(streamed, generation.text, "{id}");
            assert_eq!(
                streamed,
                worker.codec().decode(&generation.token_ids).unwrap(),
                "{id}"
            );
        }
    }
}

#[test]
fn a_character_split_across_tokens_is_streamed_once_complete() {
    let worker = Fixture::new("qwen2").load();
    let codec = worker.codec();
    // The fixture tokenizer never saw "€": it is three byte tokens.
    let euro = codec.encode("€").unwrap();
    assert_eq!(euro.len(), 3);
    let mut text = IncrementalText::new(codec);
    let pieces: Vec<String> = euro
        .iter()
        .map(|id| text.push(*id, false).unwrap())
        .collect();
    assert_eq!(pieces, ["", "", "€"]);

    // Bytes that never form a character come out as U+FFFD, where the full decode has them.
    let a = codec.encode("A").unwrap();
    let mut text = IncrementalText::new(codec);
    assert_eq!(text.push(euro[0], false).unwrap(), "");
    assert_eq!(text.push(a[0], false).unwrap(), "\u{FFFD}A");
    let mut text = IncrementalText::new(codec);
    assert_eq!(text.push(euro[0], false).unwrap(), "");
    assert_eq!(
        text.push(euro[1], true).unwrap(),
        codec.decode(&euro[..2]).unwrap()
    );
    assert!(text.text().contains('\u{FFFD}'));
}

#[test]
fn a_long_stream_of_any_tokens_adds_up_to_the_decode_of_all_ids() {
    let worker = Fixture::new("qwen2").load();
    let codec = worker.codec();
    let vocab = codec.vocab_size() as u64;
    // Arbitrary ids, special and lone byte tokens among them, with runs of a split "€".
    let euro = codec.encode("€").unwrap();
    let mut state = 7u64;
    let mut ids = Vec::new();
    for i in 0..600 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if i % 37 == 0 {
            ids.extend(&euro);
        }
        ids.push(((state >> 33) % vocab) as u32);
    }
    let mut text = IncrementalText::new(codec);
    let last = ids.len() - 1;
    let mut streamed = String::new();
    for (i, id) in ids.iter().enumerate() {
        streamed.push_str(&text.push(*id, i == last).unwrap());
        // Nothing is held back but an unfinished character: this tokenizer has no byte tokens.
        let decoded = codec.decode(&ids[..=i]).unwrap();
        let complete = if i == last {
            decoded.as_str()
        } else {
            decoded.trim_end_matches('\u{FFFD}')
        };
        assert_eq!(streamed, complete, "after {} tokens", i + 1);
    }
    assert!(streamed.contains('€') && streamed.contains('\u{FFFD}'));
}

#[test]
fn generation_stops_at_any_eos_id_unless_told_to_ignore_it() {
    let fixture = Fixture::new("qwen2");
    let request = Request::greedy(Prompt::Text("hello".into()), TOKENS);
    let free = run(&mut fixture.load(), &request);
    assert_eq!(fixture.load().codec().eos_ids(), [3, 5]);

    // Make the fourth generated token an EOS token, next to the two the fixture has.
    let stop_at = free.token_ids[3];
    fixture.edit_json("generation_config.json", |g| {
        g.insert("eos_token_id".into(), json!([3, stop_at, 5]));
    });
    let mut worker = fixture.load();
    let stopped = run(&mut worker, &request);
    let first = free.token_ids.iter().position(|t| *t == stop_at).unwrap();
    assert_eq!(stopped.stop_reason, StopReason::Eos);
    assert_eq!(stopped.token_ids, free.token_ids[..=first]);

    let mut ignoring = request.clone();
    ignoring.ignore_eos = true;
    let ignored = run(&mut worker, &ignoring);
    assert_eq!(ignored.token_ids, free.token_ids);
    assert_eq!(ignored.stop_reason, StopReason::MaxTokens);
}

#[test]
fn bos_is_added_as_tokenizer_config_says() {
    let hello = Prompt::Text("hello".into());
    let llama = Fixture::new("llama");
    let with_bos = run(&mut llama.load(), &Request::greedy(hello.clone(), 1));
    assert_eq!(with_bos.prompt_ids[0], 1, "llama adds <s>");

    let qwen2 = run(
        &mut Fixture::new("qwen2").load(),
        &Request::greedy(hello.clone(), 1),
    );
    assert_eq!(
        qwen2.prompt_ids,
        with_bos.prompt_ids[1..],
        "qwen2 adds nothing"
    );

    // tokenizer_config.json overrides the post-processor of tokenizer.json, which adds <s>.
    llama.edit_json("tokenizer_config.json", |t| {
        t.insert("add_bos_token".into(), json!(false));
    });
    let without = run(&mut llama.load(), &Request::greedy(hello.clone(), 1));
    assert_eq!(without.prompt_ids, with_bos.prompt_ids[1..]);

    // Special tokens written as objects, as older tokenizer_config.json files have them.
    llama.edit_json("tokenizer_config.json", |t| {
        t.insert("add_bos_token".into(), json!(true));
        t.insert(
            "bos_token".into(),
            json!({"content": "<s>", "lstrip": false}),
        );
        t.insert(
            "eos_token".into(),
            json!({"content": "</s>", "lstrip": false}),
        );
    });
    let objects = llama.load();
    assert_eq!(objects.codec().eos_ids(), [2]);
    assert_eq!(
        run(&mut { objects }, &Request::greedy(hello.clone(), 1)).prompt_ids,
        with_bos.prompt_ids
    );

    // Ids are used exactly as given.
    let ids = run(
        &mut llama.load(),
        &Request::greedy(Prompt::Ids(vec![294]), 1),
    );
    assert_eq!(ids.prompt_ids, [294]);
}

fn sampled(seed: u64) -> Request {
    Request {
        temperature: 0.8,
        top_p: Some(0.95),
        seed,
        ignore_eos: true,
        ..Request::greedy(Prompt::Text("hello".into()), TOKENS)
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_depends_on_the_seed() {
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        let first = run(&mut worker, &sampled(7));
        assert_eq!(
            run(&mut worker, &sampled(7)).token_ids,
            first.token_ids,
            "{id}"
        );
        let others: Vec<Vec<u32>> = (8..12)
            .map(|seed| run(&mut worker, &sampled(seed)).token_ids)
            .collect();
        assert!(
            others.iter().any(|o| *o != first.token_ids),
            "{id}: every seed gives the same tokens"
        );
    }
}

#[test]
fn top_k_one_and_a_tiny_top_p_give_the_greedy_tokens() {
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        let greedy_tokens =
            run(&mut worker, &greedy(Prompt::Text("hello".into()), TOKENS)).token_ids;
        let top_k = Request {
            top_k: Some(1),
            top_p: None,
            ..sampled(3)
        };
        assert_eq!(
            run(&mut worker, &top_k).token_ids,
            greedy_tokens,
            "{id}: top_k 1"
        );
        let top_p = Request {
            top_p: Some(1e-6),
            ..sampled(3)
        };
        assert_eq!(
            run(&mut worker, &top_p).token_ids,
            greedy_tokens,
            "{id}: top_p 1e-6"
        );
    }
}

#[test]
fn the_repeat_penalty_steers_away_from_tokens_already_seen() {
    let mut changed = 0;
    for id in all_fixture_ids() {
        let mut worker = Fixture::new(id).load();
        let plain = greedy(Prompt::Text("hello".into()), TOKENS);
        let base = run(&mut worker, &plain).token_ids;
        let neutral = Request {
            repeat_penalty: Some(1.0),
            ..plain.clone()
        };
        assert_eq!(
            run(&mut worker, &neutral).token_ids,
            base,
            "{id}: penalty 1 changes nothing"
        );
        let strong = Request {
            repeat_penalty: Some(100.0),
            ..plain
        };
        let penalized = run(&mut worker, &strong).token_ids;
        assert_eq!(
            run(&mut worker, &strong).token_ids,
            penalized,
            "{id}: deterministic"
        );
        changed += usize::from(penalized != base);
        // With a huge penalty, a token that was already in the sequence wins only when
        // every other choice is penalized too: in 16 tokens from 512 that does not happen.
        let distinct: std::collections::BTreeSet<_> = penalized.iter().collect();
        assert_eq!(distinct.len(), penalized.len(), "{id}: {penalized:?}");

        // The prompt's tokens are penalized too, as transformers does: with the greedy
        // continuation as the prompt, none of its tokens comes again.
        let prompt: Vec<u32> = base.iter().copied().chain(base.iter().copied()).collect();
        let echo = Request {
            prompt: Prompt::Ids(prompt.clone()),
            repeat_penalty: Some(1e9),
            ..greedy(Prompt::Text(String::new()), TOKENS)
        };
        let continued = run(&mut worker, &echo).token_ids;
        let repeated: Vec<_> = continued.iter().filter(|t| prompt.contains(t)).collect();
        assert!(
            repeated.is_empty(),
            "{id}: {repeated:?} of the prompt came again"
        );
    }
    assert!(changed > 0);
}

fn refused(worker: &mut Worker, request: Request) -> String {
    match worker.prepare(&request) {
        Err(error @ Error::Request { .. }) => error.to_string(),
        other => panic!("expected a request error, got {other:?}"),
    }
}

#[test]
fn bad_requests_are_refused_with_the_field_and_the_rule() {
    let mut worker = Fixture::new("llama").load();
    let ok = Request::greedy(Prompt::Text("hello".into()), 4);
    let cases: Vec<(Request, &str)> = vec![
        (
            Request {
                prompt: Prompt::Text(String::new()),
                ..ok.clone()
            },
            "`prompt`: is empty",
        ),
        (
            Request {
                prompt: Prompt::Ids(vec![]),
                ..ok.clone()
            },
            "`prompt_ids`: is empty",
        ),
        (
            Request {
                max_tokens: 0,
                ..ok.clone()
            },
            "`max_tokens`: must be at least 1",
        ),
        (
            Request {
                temperature: -1.0,
                ..ok.clone()
            },
            "`temperature`",
        ),
        (
            Request {
                temperature: f64::NAN,
                ..ok.clone()
            },
            "`temperature`",
        ),
        (
            Request {
                top_p: Some(0.0),
                ..ok.clone()
            },
            "`top_p`",
        ),
        (
            Request {
                top_p: Some(1.5),
                ..ok.clone()
            },
            "`top_p`",
        ),
        (
            Request {
                top_k: Some(0),
                ..ok.clone()
            },
            "`top_k`",
        ),
        (
            Request {
                repeat_penalty: Some(0.0),
                ..ok.clone()
            },
            "`repeat_penalty`",
        ),
        (
            Request {
                prompt: Prompt::Ids(vec![512]),
                ..ok.clone()
            },
            "outside the model's vocabulary",
        ),
        (
            Request {
                prompt: Prompt::Ids(vec![7; 128]),
                ..ok.clone()
            },
            "the context is 128 tokens",
        ),
        (
            Request {
                prompt: Prompt::Ids(vec![7; 100]),
                max_tokens: 29,
                ..ok.clone()
            },
            "at most 28",
        ),
    ];
    for (request, expected) in cases {
        let message = refused(&mut worker, request);
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
    // The longest request that fits runs.
    let fits = Request {
        prompt: Prompt::Ids(vec![7; 100]),
        max_tokens: 28,
        ignore_eos: true,
        ..ok
    };
    assert_eq!(run(&mut worker, &fits).token_ids.len(), 28);
}

#[test]
fn a_window_the_module_cannot_apply_limits_the_context_and_says_why() {
    // phi3's fixture has a 64-token window, as Phi-3-mini-4k has one of 2047.
    let mut worker = Fixture::new("phi3").load();
    assert_eq!(worker.info().context_length, 64);
    let message = refused(&mut worker, greedy(Prompt::Ids(vec![7; 60]), 8));
    assert!(
        message.contains("sliding window") && message.contains("at most 4"),
        "{message}"
    );
    assert_eq!(
        run(&mut worker, &greedy(Prompt::Ids(vec![7; 60]), 4))
            .token_ids
            .len(),
        4
    );
}

#[test]
fn the_small_windows_change_the_tokens_of_prompts_that_run_past_them() {
    let long =
        Prompt::Text("The quick brown fox jumps over the lazy dog while the cat sleeps.".into());
    for (id, applied) in [
        ("mistral-sw8", true),
        ("gemma2-sw8", true),
        ("starcoder2-sw8", true),
        ("qwen2-sw8", false),
    ] {
        let fixture = Fixture::new(id);
        let windowed = run(&mut fixture.load(), &greedy(long.clone(), TOKENS)).token_ids;
        fixture.edit_json("config.json", |c| {
            c.insert("sliding_window".into(), json!(128));
        });
        let unwindowed = run(&mut fixture.load(), &greedy(long.clone(), TOKENS)).token_ids;
        assert_eq!(windowed != unwindowed, applied, "{id}");
    }
}

#[test]
fn positions_past_the_context_are_refused_before_any_forward_pass() {
    let mut worker = Fixture::new("llama").load();
    let context = worker.info().context_length;
    let past = |result: Result<_, Error>| match result {
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&format!("it needs 1 to {context} (the context)")),
                "{message}"
            );
        }
        Ok(_) => panic!("a sequence past the context of {context} was accepted"),
    };
    // The last position of the context has a decode step; the one after it has none.
    assert!(worker.decode_graph(context - 1).unwrap().is_none(), "cpu");
    past(worker.decode_graph(context).map(drop));
    let prompt = vec![7; context - 1];
    assert_eq!(worker.step_logits(&prompt, &[7]).unwrap().len(), 2);
    past(worker.step_logits(&prompt, &[7, 7]).map(drop));
    assert_eq!(
        worker
            .logits_without_cache(&vec![7; context])
            .unwrap()
            .len(),
        512
    );
    past(worker.logits_without_cache(&vec![7; context + 1]).map(drop));
    past(worker.logits_without_cache(&[]).map(drop));
}

#[test]
fn the_first_token_is_the_prefill_and_the_rest_the_decode() {
    let mut worker = Fixture::new("llama").load();
    let one = run(&mut worker, &greedy(Prompt::Text("hello".into()), 1));
    assert!(one.timings.prefill_ms > 0.0, "{:?}", one.timings);
    assert_eq!(one.timings.decode_tokens_per_s, 0.0);
    let many = run(&mut worker, &greedy(Prompt::Text("hello".into()), 8));
    let t = &many.timings;
    assert!(t.prefill_ms > 0.0 && t.decode_ms > 0.0, "{t:?}");
    let rate = 7.0 / (t.decode_ms / 1000.0);
    assert!((t.decode_tokens_per_s - rate).abs() < 1e-6 * rate, "{t:?}");
}
