//! Comparing logit vectors: the measures the checks on logits share.

/// When `ours_token` (our argmax) and `reference_token` (the reference's) are each in the other
/// side's top 5, the larger of the two sides' preference for its own token; else `None`.
pub fn near_tie(
    ours: &[f32],
    reference: &[f32],
    ours_token: u32,
    reference_token: u32,
) -> Option<f32> {
    let (o, r) = (ours_token as usize, reference_token as usize);
    let in_top5 =
        |logits: &[f32], token: usize| logits.iter().filter(|v| **v > logits[token]).count() < 5;
    if o >= ours.len() || r >= ours.len() || o >= reference.len() || r >= reference.len() {
        return None;
    }
    (in_top5(ours, r) && in_top5(reference, o))
        .then(|| (ours[o] - ours[r]).max(reference[r] - reference[o]))
}

/// Normalized mean squared error: the squared differences summed, over the squared reference
/// values summed.
pub fn nmse(ours: &[f32], reference: &[f32]) -> f32 {
    if ours.len() != reference.len() {
        return f32::INFINITY;
    }
    let error: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let scale: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
    (error / scale.max(f64::MIN_POSITIVE)) as f32
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The lowest index of the largest value, as the worker's greedy decoding picks.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Each step's logits as a repeat penalty leaves them, written from transformers'
/// `RepetitionPenaltyLogitsProcessor`: at step `i` every id of `prompt` and `tokens[..i]`, once,
/// has a positive logit divided by `penalty` and a negative one multiplied by it. The checks
/// compare the logits a token was chosen from.
pub fn penalized(steps: &mut [Vec<f32>], prompt: &[u32], tokens: &[u32], penalty: f32) {
    for (step, logits) in steps.iter_mut().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for &id in prompt.iter().chain(&tokens[..step.min(tokens.len())]) {
            if let Some(logit) = logits.get_mut(id as usize).filter(|_| seen.insert(id)) {
                *logit = if *logit < 0.0 {
                    *logit * penalty
                } else {
                    *logit / penalty
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_penalty_reaches_each_id_of_the_prompt_and_earlier_steps_once() {
        let mut steps = vec![vec![4.0, -1.0, 2.0, 3.0]; 3];
        penalized(&mut steps, &[1, 1], &[0, 3, 2], 2.0);
        assert_eq!(steps[0], [4.0, -2.0, 2.0, 3.0]);
        assert_eq!(steps[1], [2.0, -2.0, 2.0, 3.0]);
        assert_eq!(steps[2], [2.0, -2.0, 2.0, 1.5]);
    }

    #[test]
    fn a_near_tie_needs_both_tokens_in_each_others_top_five() {
        let ours = [5.0, 4.9, 1.0, 0.0, -1.0, -2.0, -3.0];
        let reference = [4.95, 5.0, 1.0, 0.0, -1.0, -2.0, -3.0];
        let margin = near_tie(&ours, &reference, 0, 1).unwrap();
        assert!((margin - 0.1).abs() < 1e-6, "{margin}");
        // Token 6 is last in both: not a near tie.
        let far = [5.0, 4.9, 1.0, 0.0, -1.0, -2.0, 6.0];
        assert_eq!(near_tie(&far, &reference, 6, 1), None);
    }

    #[test]
    fn nmse_is_relative_to_the_reference_scale() {
        assert_eq!(nmse(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((nmse(&[1.1, 2.0], &[1.0, 2.0]) - 0.01 / 5.0).abs() < 1e-7);
        assert_eq!(nmse(&[1.0], &[1.0, 2.0]), f32::INFINITY);
    }

    #[test]
    fn differences_are_the_largest_and_infinite_across_lengths() {
        assert_eq!(max_abs_diff(&[1.0, -2.0], &[1.5, 0.0]), 2.0);
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f32::INFINITY);
    }

    #[test]
    fn argmax_takes_the_lowest_of_equal_values() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        assert_eq!(argmax(&[2.0]), 0);
    }
}
