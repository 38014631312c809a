//! Sampling settings that leave only the greedy token give the greedy tokens, whatever the
//! temperature and seed: top-k 1, and a tiny top-p.

use llm_worker_rbee_api::{Generation, Request};

/// The requests to send beside the greedy one, each with its name.
pub fn greedy_equivalents(greedy: &Request) -> [(&'static str, Request); 2] {
    [
        (
            "top_k 1",
            Request {
                temperature: 0.8,
                top_k: Some(1),
                seed: 11,
                ..greedy.clone()
            },
        ),
        (
            "top_p 1e-6",
            Request {
                temperature: 0.8,
                top_p: Some(1e-6),
                seed: 12,
                ..greedy.clone()
            },
        ),
    ]
}

/// A failure when the equivalent request `what` did not give the greedy tokens.
pub fn check(
    greedy: &Generation,
    what: &str,
    outcome: Result<Generation, String>,
) -> Option<String> {
    match outcome {
        Ok(g) if g.token_ids == greedy.token_ids => None,
        Ok(g) => Some(format!(
            "{what} gave {:?}, greedy gave {:?}",
            g.token_ids, greedy.token_ids
        )),
        Err(e) => Some(format!("{what} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use llm_worker_rbee_api::Prompt;

    use super::super::testing::generation;
    use super::*;

    #[test]
    fn the_equivalents_sample_but_keep_only_the_top_token() {
        let greedy = Request::greedy(Prompt::Ids(vec![1]), 4);
        for (_, request) in greedy_equivalents(&greedy) {
            assert!(request.temperature > 0.0);
            assert!(request.top_k == Some(1) || request.top_p.is_some_and(|p| p < 1e-3));
            assert_eq!(request.prompt, greedy.prompt);
            assert_eq!(request.max_tokens, greedy.max_tokens);
        }
    }

    #[test]
    fn other_tokens_or_an_error_fail() {
        let greedy = generation(&[1, 2], "x");
        assert_eq!(
            check(&greedy, "top_k 1", Ok(generation(&[1, 2], "x"))),
            None
        );
        let message = check(&greedy, "top_k 1", Ok(generation(&[1, 3], "y"))).unwrap();
        assert!(message.starts_with("top_k 1 gave [1, 3]"), "{message}");
        assert!(check(&greedy, "top_p 1e-6", Err("no".into())).is_some());
    }
}
