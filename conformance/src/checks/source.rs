//! A GGUF fixture against the SafeTensors fixture it was quantized from: how many leading greedy
//! steps agree. A figure for reports, not a failure: quantization moves near ties.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_leading_steps_that_agree() {
        let a = agreement("llama", &[1, 2, 3, 4], &[1, 2, 9, 4]);
        assert_eq!((a.equal_steps, a.steps, a.source.as_str()), (2, 4, "llama"));
        assert_eq!(agreement("s", &[1, 2], &[1, 2]).equal_steps, 2);
        assert_eq!(agreement("s", &[1, 2], &[]).equal_steps, 0);
    }
}
