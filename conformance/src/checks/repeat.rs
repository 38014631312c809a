//! The same request twice gives the same tokens and text.

use llm_worker_rbee_api::Generation;

/// A failure when `again`, the trial's request repeated, is not `first`.
pub fn check(first: &Generation, again: Result<Generation, String>) -> Option<String> {
    match again {
        Ok(again) if again.token_ids == first.token_ids && again.text == first.text => None,
        Ok(again) => Some(format!(
            "the same request again gave other tokens: {:?}, first {:?}",
            again.token_ids, first.token_ids
        )),
        Err(e) => Some(format!("the same request again failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::generation;
    use super::*;

    #[test]
    fn only_the_same_tokens_and_text_pass() {
        let first = generation(&[5, 6], "ab");
        assert_eq!(check(&first, Ok(generation(&[5, 6], "ab"))), None);
        let other = check(&first, Ok(generation(&[5, 7], "ab"))).unwrap();
        assert!(other.contains("[5, 7]"), "{other}");
        assert!(check(&first, Ok(generation(&[5, 6], "ac"))).is_some());
        let failed = check(&first, Err("boom".into())).unwrap();
        assert!(failed.contains("boom"), "{failed}");
    }
}
