//! A GGUF model against the SafeTensors model of the same weights (or against llama.cpp): how
//! many leading greedy steps agree. For fixtures a figure for reports, not a failure:
//! quantization moves near ties. A real model states, per prompt, the fewest it must reach.

use crate::record::SourceAgreement;

/// `tokens` (the GGUF fixture's) against `source_tokens` (its source's, same request).
pub fn agreement(source: &str, source_tokens: &[u32], tokens: &[u32]) -> SourceAgreement {
    SourceAgreement {
        source: source.to_string(),
        equal_steps: source_tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count(),
        steps: source_tokens.len(),
    }
}

/// A failure when `agreement` reaches fewer leading steps than `min_steps`.
pub fn check(agreement: &SourceAgreement, min_steps: Option<usize>) -> Option<String> {
    let bound = min_steps?;
    (agreement.equal_steps < bound).then(|| {
        format!(
            "greedy tokens follow {}'s for {} of {} steps; cases.toml asks for at least {bound}",
            agreement.source, agreement.equal_steps, agreement.steps
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_below_the_stated_leading_steps_only() {
        let a = agreement("llama.cpp", &[1, 2, 3, 4], &[1, 2, 9, 4]);
        assert_eq!(check(&a, None), None);
        assert_eq!(check(&a, Some(2)), None);
        let message = check(&a, Some(3)).unwrap();
        assert!(
            message.contains("llama.cpp's for 2 of 4 steps"),
            "{message}"
        );
    }

    #[test]
    fn counts_the_leading_steps_that_agree() {
        let a = agreement("llama", &[1, 2, 3, 4], &[1, 2, 9, 4]);
        assert_eq!((a.equal_steps, a.steps, a.source.as_str()), (2, 4, "llama"));
        assert_eq!(agreement("s", &[1, 2], &[1, 2]).equal_steps, 2);
        assert_eq!(agreement("s", &[1, 2], &[]).equal_steps, 0);
    }
}
