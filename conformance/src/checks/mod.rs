//! The checks a trial is held to, one module each, each a function over the trial's outputs:
//! the golden snapshot, the same request repeated, sampling settings that must act greedily,
//! decoding with the cache against a full recompute, the transformers reference (logits and
//! reported log-probabilities), for GGUF
//! models the agreement with their source, and for a real GGUF the agreement with llama.cpp.
//! `suite` runs the requests and calls them.

pub mod llama_cpp;
pub mod logits;
pub mod logprobs;
pub mod recompute;
pub mod reference;
pub mod repeat;
pub mod sampling;
pub mod snapshot;
pub mod source;

#[cfg(test)]
mod testing {
    use llm_worker_rbee_api::GenerationTimings;
    use llm_worker_rbee_api::{Generation, StopReason};

    /// A generation of `tokens` after the prompt `[9]`.
    pub fn generation(tokens: &[u32], text: &str) -> Generation {
        Generation {
            prompt_ids: vec![9],
            token_ids: tokens.to_vec(),
            text: text.into(),
            stop_reason: StopReason::MaxTokens,
            timings: GenerationTimings {
                prefill_ms: 0.0,
                decode_ms: 0.0,
                decode_tokens_per_s: 0.0,
            },
            logprobs: None,
        }
    }
}
