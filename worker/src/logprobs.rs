//! Log-probabilities of a step's distribution, as requests with `logprobs` report them.

use crate::error::Result;
use crate::request::{TokenLogprobs, TopLogprob};
use crate::tokens::TextCodec;

/// The log-probabilities of `chosen` and of the `top` most likely tokens, in f32, from the
/// step's `logits` (after any repetition penalty) divided by `temperature` (1 for greedy; never
/// 0).
pub fn token_logprobs(
    logits: &[f32],
    temperature: f64,
    chosen: u32,
    top: usize,
    codec: &TextCodec,
) -> Result<TokenLogprobs> {
    let logprobs = log_softmax(logits, (1.0 / temperature) as f32);
    let mut order: Vec<u32> = (0..logprobs.len() as u32).collect();
    let top = top.min(order.len());
    if top > 0 {
        // Most likely first, ordered by the logits themselves (greedy's argmax reads them, and
        // rounding may make two close logits equal log-probabilities); equal ones by id, as
        // the argmax breaks ties.
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        order.select_nth_unstable_by(top - 1, by_logit);
        order.truncate(top);
        order.sort_by(by_logit);
    }
    let top = order
        .into_iter()
        .take(top)
        .map(|id| {
            Ok(TopLogprob {
                id,
                token: codec.token_text(id)?,
                logprob: logprobs[id as usize],
            })
        })
        .collect::<Result<_>>()?;
    Ok(TokenLogprobs {
        token: codec.token_text(chosen)?,
        logprob: logprobs[chosen as usize],
        top,
    })
}

/// `log(softmax(scale * logits))`, with the maximum subtracted first so that nothing
/// overflows; tokens ruled out (-inf) get -inf.
fn log_softmax(logits: &[f32], scale: f32) -> Vec<f32> {
    let max = logits
        .iter()
        .map(|l| l * scale)
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l * scale - max).exp()).sum();
    let log_sum = sum.ln();
    logits.iter().map(|l| l * scale - max - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_keeps_the_differences_of_the_scaled_logits() {
        let logits = [2.0, 1.0, -1.0, 0.5];
        for scale in [1.0, 2.0, 0.25] {
            let lp = log_softmax(&logits, scale);
            let total: f32 = lp.iter().map(|l| l.exp()).sum();
            assert!((total - 1.0).abs() < 1e-6, "{total}");
            assert!(((lp[0] - lp[1]) - scale).abs() < 1e-6);
        }
    }

    #[test]
    fn large_logits_do_not_overflow_and_ruled_out_tokens_stay_impossible() {
        let lp = log_softmax(&[1.0e4, 1.0e4 - 1.0, f32::NEG_INFINITY], 1.0);
        assert!(lp[0].is_finite() && lp[1].is_finite());
        assert!((lp[0].exp() + lp[1].exp() - 1.0).abs() < 1e-6);
        assert_eq!(lp[2], f32::NEG_INFINITY);
    }
}
