//! Decoding with the KV cache picks the tokens a full recompute picks (or, where the tolerance
//! allows near ties, differs only at one), with logits within the tolerance when one is set.

use super::logits::{argmax, max_abs_diff, near_tie};
use crate::cases::Tolerance;

/// How far the cached decode was from the recompute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recompute {
    pub max_logit_diff: f32,
    /// Steps where the two chose different tokens at a near tie.
    pub near_ties: usize,
}

/// `cached[i]`: the logits after the prompt and `tokens[..i]`, decoding with the cache; `full`:
/// those of some steps `i` (every step, or a few where a recompute is costly), recomputed
/// without it. The figures, when every recomputed step was compared, and a failure.
pub fn check(
    tokens: &[u32],
    cached: &[Vec<f32>],
    full: &[(usize, Vec<f32>)],
    tolerance: Option<Tolerance>,
) -> (Option<Recompute>, Result<(), String>) {
    let mut max_diff = 0.0f32;
    let mut near_ties = 0;
    for (step, full) in full {
        let (step, logits) = (*step, &cached[*step]);
        let recomputed = argmax(full) as u32;
        if recomputed != tokens[step] {
            let margin = near_tie(logits, full, tokens[step], recomputed);
            let bound = tolerance.and_then(|t| t.near_tie_margin);
            match (margin, bound) {
                (Some(margin), Some(bound)) if margin <= bound => near_ties += 1,
                _ => {
                    return (
                        None,
                        Err(format!(
                            "step {step}: decoding with the cache chose {}, a full recompute \
                             chooses {recomputed} (near-tie margin {margin:?}, allowed {bound:?})",
                            tokens[step]
                        )),
                    )
                }
            }
        }
        max_diff = max_diff.max(max_abs_diff(logits, full));
    }
    let figures = Recompute {
        max_logit_diff: max_diff,
        near_ties,
    };
    let verdict = match tolerance {
        Some(t) if max_diff > t.recompute_logits => Err(format!(
            "logits with the cache differ from a full recompute by {max_diff:e} (tolerance {:e})",
            t.recompute_logits
        )),
        _ => Ok(()),
    };
    (Some(figures), verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tolerance(recompute_logits: f32, near_tie_margin: Option<f32>) -> Option<Tolerance> {
        Some(Tolerance {
            reference_logits: None,
            reference_nmse: None,
            recompute_logits,
            near_tie_margin,
            ..Tolerance::default()
        })
    }

    #[test]
    fn equal_choices_within_the_tolerance_pass_with_their_figures() {
        let cached = vec![vec![0.0, 2.0, 1.0], vec![3.0, 1.0, 0.0]];
        let full = vec![(0, vec![0.0, 2.001, 1.0]), (1, vec![3.0, 1.0, 0.0])];
        let (figures, verdict) = check(&[1, 0], &cached, &full, tolerance(0.01, None));
        assert_eq!(verdict, Ok(()));
        let figures = figures.unwrap();
        assert!((figures.max_logit_diff - 0.001).abs() < 1e-6);
        assert_eq!(figures.near_ties, 0);
        let (_, verdict) = check(&[1, 0], &cached, &full, tolerance(1e-4, None));
        assert!(verdict
            .unwrap_err()
            .contains("differ from a full recompute"));
    }

    #[test]
    fn another_choice_fails_unless_it_is_an_allowed_near_tie() {
        let cached = vec![vec![2.0, 1.99, 0.0]];
        let full = vec![(0, vec![1.99, 2.0, 0.0])];
        let (figures, verdict) = check(&[0], &cached, &full, tolerance(1.0, None));
        assert!(figures.is_none());
        assert!(verdict
            .unwrap_err()
            .starts_with("step 0: decoding with the cache chose 0"));
        let (figures, verdict) = check(&[0], &cached, &full, tolerance(1.0, Some(0.05)));
        assert_eq!(verdict, Ok(()));
        assert_eq!(figures.unwrap().near_ties, 1);
    }

    #[test]
    fn only_the_recomputed_steps_are_compared() {
        let cached = vec![vec![0.0, 2.0], vec![9.0, 0.0], vec![0.0, 1.0]];
        let full = vec![(2, vec![0.0, 1.5])];
        let (figures, verdict) = check(&[1, 1, 1], &cached, &full, tolerance(1.0, None));
        assert_eq!(verdict, Ok(()));
        assert!((figures.unwrap().max_logit_diff - 0.5).abs() < 1e-6);
        let full = vec![(1, vec![1.0, 0.0])];
        let (_, verdict) = check(&[1, 1, 1], &cached, &full, tolerance(10.0, None));
        assert!(verdict
            .unwrap_err()
            .starts_with("step 1: decoding with the cache chose 1"));
    }
}
