//! The log-probabilities a generation reports are close to the reference's, as vLLM's
//! `check_logprobs_close` holds them: at every step up to the first differing token, each of
//! the worker's top 5 within the tolerance of the reference's log-probability of that token;
//! at that token, each side's token among the other's top 5.

use llm_worker_rbee_api::{Generation, TokenLogprobs};

/// How many alternatives the check asks for and compares.
pub const TOP: usize = 5;

/// The largest difference found, and the verdict.
pub struct Closeness {
    pub max_diff: Option<f32>,
    pub verdict: Result<(), String>,
}

/// Compares `generation` (asked for `TOP` log-probabilities) with the reference's greedy
/// tokens and its logits at each step.
pub fn compare(
    reference_tokens: &[u32],
    reference_logits: &[Vec<f32>],
    generation: &Generation,
    tolerance: f32,
) -> Closeness {
    let Some(ours) = generation.logprobs.as_deref() else {
        return Closeness {
            max_diff: None,
            verdict: Err("the generation carried no logprobs".into()),
        };
    };
    if ours.len() != generation.token_ids.len() {
        return Closeness {
            max_diff: None,
            verdict: Err(format!(
                "{} tokens came with {} logprobs",
                generation.token_ids.len(),
                ours.len()
            )),
        };
    }
    let mut max_diff = 0.0f32;
    let steps = generation
        .token_ids
        .iter()
        .zip(reference_tokens)
        .zip(ours.iter().zip(reference_logits))
        .enumerate();
    for (step, ((&token, &theirs_token), (ours, logits))) in steps {
        let theirs = log_softmax(logits);
        if let Err(message) = top_is_complete(ours, token) {
            return failed(max_diff, format!("step {step}: {message}"));
        }
        for top in &ours.top {
            let expected = theirs[top.id as usize];
            let diff = (top.logprob - expected).abs();
            max_diff = max_diff.max(diff);
            if diff > tolerance {
                return failed(
                    max_diff,
                    format!(
                        "step {step}: token {} has logprob {}, the reference's is {expected} \
                         (difference {diff}, tolerance {tolerance})",
                        top.id, top.logprob
                    ),
                );
            }
        }
        if token != theirs_token {
            let their_top = top_ids(&theirs);
            let in_ours = ours.top.iter().any(|t| t.id == theirs_token);
            if !in_ours || !their_top.contains(&token) {
                return failed(
                    max_diff,
                    format!(
                        "step {step}: the worker chose {token} (the reference's top {TOP}: \
                         {their_top:?}), the reference {theirs_token} (the worker's top {TOP}: \
                         {:?}); each must be among the other's",
                        ours.top.iter().map(|t| t.id).collect::<Vec<_>>()
                    ),
                );
            }
            break;
        }
    }
    Closeness {
        max_diff: Some(max_diff),
        verdict: Ok(()),
    }
}

fn failed(max_diff: f32, message: String) -> Closeness {
    Closeness {
        max_diff: Some(max_diff),
        verdict: Err(format!("logprobs: {message}")),
    }
}

/// The worker's list holds `TOP` tokens, most likely first, the chosen greedy token first.
fn top_is_complete(ours: &TokenLogprobs, token: u32) -> Result<(), String> {
    if ours.top.len() != TOP {
        return Err(format!("{} top logprobs, not {TOP}", ours.top.len()));
    }
    if ours.top.windows(2).any(|w| w[0].logprob < w[1].logprob) {
        return Err("the top logprobs are not in descending order".into());
    }
    if ours.top[0].id != token || ours.top[0].logprob != ours.logprob {
        return Err(format!(
            "the greedy token {token} (logprob {}) is not the first of the top logprobs ({}: {})",
            ours.logprob, ours.top[0].id, ours.top[0].logprob
        ));
    }
    Ok(())
}

/// The `TOP` most likely ids, the lower id first among equal ones.
fn top_ids(logprobs: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logprobs.len() as u32).collect();
    ids.sort_by(|a, b| {
        logprobs[*b as usize]
            .total_cmp(&logprobs[*a as usize])
            .then(a.cmp(b))
    });
    ids.truncate(TOP);
    ids
}

/// In f64, so that the reference side adds no rounding of its own.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|l| (*l as f64 - max).exp()).sum();
    let log_sum = sum.ln();
    logits
        .iter()
        .map(|l| (*l as f64 - max - log_sum) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use llm_worker_rbee_api::TopLogprob;

    use super::*;
    use crate::checks::testing::generation;

    /// Logits over 8 ids whose greedy choice is `best`, the others in id order below it.
    fn logits(best: u32) -> Vec<f32> {
        (0..8u32)
            .map(|id| if id == best { 5.0 } else { -(id as f32) })
            .collect()
    }

    /// What a worker whose logits are `logits` plus `shift` at every step would report.
    fn reported(steps: &[Vec<f32>], tokens: &[u32], shift: f32) -> Generation {
        let logprobs = steps
            .iter()
            .zip(tokens)
            .map(|(logits, &token)| {
                let lp = log_softmax(logits);
                let top: Vec<TopLogprob> = top_ids(&lp)
                    .into_iter()
                    .map(|id| TopLogprob {
                        id,
                        token: String::new(),
                        logprob: lp[id as usize] + shift,
                    })
                    .collect();
                TokenLogprobs {
                    token: String::new(),
                    logprob: lp[token as usize] + shift,
                    top,
                }
            })
            .collect();
        Generation {
            logprobs: Some(logprobs),
            ..generation(tokens, "")
        }
    }

    #[test]
    fn logprobs_within_the_tolerance_pass_and_beyond_it_fail() {
        let steps = vec![logits(3), logits(1)];
        let close = compare(&[3, 1], &steps, &reported(&steps, &[3, 1], 0.01), 0.02);
        assert!(close.verdict.is_ok(), "{:?}", close.verdict);
        assert!((close.max_diff.unwrap() - 0.01).abs() < 1e-6);
        let far = compare(&[3, 1], &steps, &reported(&steps, &[3, 1], 0.05), 0.02);
        assert!(far.verdict.unwrap_err().contains("step 0: token 3"));
    }

    #[test]
    fn a_differing_token_must_be_in_the_other_sides_top_five() {
        // The worker's own logits pick 0 at step 1; the reference's top 5 there hold 0.
        let reference = vec![logits(3), logits(1)];
        let ours = vec![logits(3), {
            let mut l = logits(1);
            l[0] = 6.0;
            l
        }];
        let near = compare(&[3, 1], &reference, &reported(&ours, &[3, 0], 0.0), 10.0);
        assert!(near.verdict.is_ok(), "{:?}", near.verdict);
        // Token 7 is the reference's least likely: not in its top 5.
        let ours = vec![logits(3), logits(7)];
        let far = compare(&[3, 1], &reference, &reported(&ours, &[3, 7], 0.0), 100.0);
        assert!(far
            .verdict
            .unwrap_err()
            .contains("each must be among the other's"));
    }

    #[test]
    fn a_list_not_led_by_the_greedy_token_is_refused() {
        let steps = vec![logits(3)];
        let mut generation = reported(&steps, &[3], 0.0);
        generation.logprobs.as_mut().unwrap()[0].top.swap(0, 1);
        let refused = compare(&[3], &steps, &generation, 1.0);
        assert!(refused.verdict.is_err());
    }
}
