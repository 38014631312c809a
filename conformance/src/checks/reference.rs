//! Greedy tokens equal transformers' (or leave them only at a near tie, where the tolerance
//! allows it), and the logits teacher-forced on its tokens are within the tolerance.

use llm_worker_rbee_api::Generation;

use super::logits::{max_abs_diff, near_tie, nmse};
use crate::cases::Tolerance;
use crate::record::Differential;
use crate::reference::{Reference, ReferencePrompt};

/// One logit vector per step.
type StepLogits = Vec<Vec<f32>>;

const REGENERATE: &str =
    "regenerate it with `cargo xtask reference` (a fetched model: `--model ID`)";

/// The reference's decoding of `prompt_id` and its logits, checked to be the one this trial
/// is compared with: the same number of tokens and the same prompt ids.
pub fn expected<'a>(
    reference: &'a Result<Option<Reference>, String>,
    model: &str,
    prompt_id: &str,
    max_tokens: usize,
    generation: &Generation,
) -> Result<(&'a ReferencePrompt, Option<StepLogits>), String> {
    let reference = match reference {
        Err(e) => return Err(format!("the reference cannot be read: {e}")),
        Ok(None) => {
            return Err(format!(
                "no reference for `{model}` in golden/reference: {REGENERATE}"
            ))
        }
        Ok(Some(r)) => r,
    };
    if reference.max_tokens != max_tokens {
        return Err(format!(
            "the reference decoded {} tokens, cases.toml asks for {max_tokens}: {REGENERATE}",
            reference.max_tokens
        ));
    }
    let Some(expected) = reference.prompts.get(prompt_id) else {
        return Err(format!(
            "the reference has no prompt `{prompt_id}`: {REGENERATE}"
        ));
    };
    let logits = match reference.has_logits() {
        true => Some(reference.logits(prompt_id).ok_or_else(|| {
            format!("the reference has no logits for `{prompt_id}`: {REGENERATE}")
        })?),
        false => None,
    };
    if expected.prompt_ids != generation.prompt_ids {
        return Err(format!(
            "prompt ids {:?} differ from the reference's {:?}",
            generation.prompt_ids, expected.prompt_ids
        ));
    }
    Ok((expected, logits))
}

/// Compares the trial with the reference: `ours` are the worker's logits teacher-forced on the
/// reference's tokens (one vector per step), `logits` the reference's, or `None` where it keeps
/// only each step's top 5 (a real model's vocabulary makes full logits too large for git): then
/// the logits are compared at those five ids and the NMSE is not measured. Fills the reference
/// figures of `differential`.
pub fn compare(
    expected: &ReferencePrompt,
    logits: Option<&[Vec<f32>]>,
    ours: &[Vec<f32>],
    generation: &Generation,
    tolerance: &Tolerance,
    differential: &mut Differential,
) -> Result<(), String> {
    let forced = &expected.token_ids;
    let sparse;
    let (logits, max_diff, max_nmse) = match logits {
        Some(logits) => {
            let max_diff = ours
                .iter()
                .zip(logits)
                .map(|(a, b)| max_abs_diff(a, b))
                .fold(0.0f32, f32::max);
            let max_nmse = ours
                .iter()
                .zip(logits)
                .map(|(a, b)| nmse(a, b))
                .fold(0.0f32, f32::max);
            (logits, max_diff, Some(max_nmse))
        }
        None => {
            let vocab = ours.first().map_or(0, Vec::len);
            sparse = top5_logits(&expected.top5, vocab);
            (sparse.as_slice(), top5_diff(&expected.top5, ours), None)
        }
    };
    differential.max_reference_logit_diff = Some(max_diff);
    differential.max_reference_nmse = max_nmse;

    let mut failures = Vec::new();
    let divergence = generation
        .token_ids
        .iter()
        .zip(forced)
        .position(|(a, b)| a != b);
    differential.reference_tokens_equal =
        Some(divergence.is_none() && generation.token_ids.len() == forced.len());
    if let Some(step) = divergence {
        let tie = near_tie(
            &ours[step],
            &logits[step],
            generation.token_ids[step],
            forced[step],
        );
        differential.first_divergence = Some(step);
        differential.divergence_margin = tie;
        differential.near_tie = Some(tie.is_some_and(|margin| {
            tolerance
                .near_tie_margin
                .is_some_and(|bound| margin <= bound)
        }));
        let what = format!(
            "tokens leave the reference's at step {step} ({} instead of {}{})",
            generation.token_ids[step],
            forced[step],
            match tie {
                Some(margin) => format!(", both in each other's top 5, margin {margin:e}"),
                None => ", not both in each other's top 5".into(),
            }
        );
        match tolerance.near_tie_margin {
            None => failures.push(format!("{what}; they must equal")),
            Some(bound) if differential.near_tie != Some(true) => failures.push(format!(
                "{what}; a near tie needs a margin of at most {bound:e}"
            )),
            Some(_) => {}
        }
    } else if generation.token_ids.len() != forced.len() {
        failures.push(format!(
            "{} tokens where the reference has {}",
            generation.token_ids.len(),
            forced.len()
        ));
    }
    if let Some(bound) = tolerance.reference_logits.filter(|b| max_diff > *b) {
        failures.push(format!(
            "teacher-forced logits differ from the reference by {max_diff:e} (tolerance {bound:e})"
        ));
    }
    if let Some((bound, max_nmse)) = tolerance
        .reference_nmse
        .zip(max_nmse)
        .filter(|(b, nmse)| nmse > b)
    {
        failures.push(format!(
            "teacher-forced logits have a normalized MSE of {max_nmse:e} against the reference \
             (tolerance {bound:e})"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Each step's logits as vectors of the vocabulary, the top 5 in place and nothing else
/// (negative infinity), so that the near-tie test sees what the reference kept.
fn top5_logits(top5: &[Vec<(u32, f32)>], vocab: usize) -> Vec<Vec<f32>> {
    top5.iter()
        .map(|step| {
            let mut logits = vec![f32::NEG_INFINITY; vocab];
            for &(id, value) in step {
                if let Some(slot) = logits.get_mut(id as usize) {
                    *slot = value;
                }
            }
            logits
        })
        .collect()
}

/// The largest difference of `ours` from the reference at the reference's top-5 ids.
fn top5_diff(top5: &[Vec<(u32, f32)>], ours: &[Vec<f32>]) -> f32 {
    top5.iter()
        .zip(ours)
        .flat_map(|(step, ours)| {
            step.iter().map(|&(id, value)| {
                ours.get(id as usize)
                    .map_or(f32::INFINITY, |o| (o - value).abs())
            })
        })
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::super::testing::generation;
    use super::*;

    fn tolerance(near_tie_margin: Option<f32>) -> Tolerance {
        Tolerance {
            reference_logits: Some(0.01),
            reference_nmse: None,
            recompute_logits: 1.0,
            near_tie_margin,
            ..Tolerance::default()
        }
    }

    fn expected(tokens: &[u32]) -> ReferencePrompt {
        ReferencePrompt {
            prompt_ids: vec![9],
            token_ids: tokens.to_vec(),
            top5: Vec::new(),
        }
    }

    #[test]
    fn the_same_tokens_within_the_tolerance_pass_and_are_recorded() {
        let logits = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
        let ours = vec![vec![0.0, 1.005], vec![1.0, 0.0]];
        let mut differential = Differential::default();
        let verdict = compare(
            &expected(&[1, 0]),
            Some(&logits),
            &ours,
            &generation(&[1, 0], ""),
            &tolerance(None),
            &mut differential,
        );
        assert_eq!(verdict, Ok(()));
        assert_eq!(differential.reference_tokens_equal, Some(true));
        assert!(differential.max_reference_logit_diff.unwrap() > 0.004);
        let mut differential = Differential::default();
        let far = vec![vec![0.0, 1.5], vec![1.0, 0.0]];
        let verdict = compare(
            &expected(&[1, 0]),
            Some(&logits),
            &far,
            &generation(&[1, 0], ""),
            &tolerance(None),
            &mut differential,
        );
        assert!(verdict
            .unwrap_err()
            .contains("differ from the reference by"));
    }

    #[test]
    fn leaving_the_reference_passes_only_at_an_allowed_near_tie() {
        let logits = vec![vec![1.0, 1.02, -5.0]];
        let ours = vec![vec![1.01, 1.0, -5.0]];
        let run = |margin| {
            let mut differential = Differential::default();
            let verdict = compare(
                &expected(&[1]),
                Some(&logits),
                &ours,
                &generation(&[0], ""),
                &Tolerance {
                    reference_logits: None,
                    ..tolerance(margin)
                },
                &mut differential,
            );
            (verdict, differential)
        };
        let (verdict, differential) = run(None);
        assert!(verdict.unwrap_err().contains("they must equal"));
        assert_eq!(differential.first_divergence, Some(0));
        let (verdict, differential) = run(Some(0.05));
        assert_eq!(verdict, Ok(()));
        assert_eq!(differential.near_tie, Some(true));
        let (verdict, _) = run(Some(0.001));
        assert!(verdict.unwrap_err().contains("a near tie needs a margin"));
    }

    #[test]
    fn a_top5_reference_is_compared_at_its_five_ids_and_gives_no_nmse() {
        let mut reference = expected(&[1]);
        reference.top5 = vec![vec![(1, 2.0), (0, 1.5), (3, 0.5), (4, 0.2), (5, 0.1)]];
        // Id 2 is off the reference's top 5: a large difference there is not measured.
        let ours = vec![vec![1.5, 2.004, 9.0, 0.5, 0.2, 0.1]];
        let mut differential = Differential::default();
        let verdict = compare(
            &reference,
            None,
            &ours,
            &generation(&[1], ""),
            &tolerance(None),
            &mut differential,
        );
        assert_eq!(verdict, Ok(()));
        assert!((differential.max_reference_logit_diff.unwrap() - 0.004).abs() < 1e-5);
        assert_eq!(differential.max_reference_nmse, None);
        let far = vec![vec![1.5, 2.5, 0.0, 0.5, 0.2, 0.1]];
        let verdict = compare(
            &reference,
            None,
            &far,
            &generation(&[1], ""),
            &tolerance(None),
            &mut differential,
        );
        assert!(verdict
            .unwrap_err()
            .contains("differ from the reference by"));
    }
}
