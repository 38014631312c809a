//! The types a client of llm-worker-rbee shares with it, without candle: where a model runs
//! ([`Backend`], [`Dtype`]), what it is asked ([`Request`]) and what it answers
//! ([`Generation`]), and the records of fetched models ([`model_id`]). The conformance suite
//! and `cargo xtask` build on these alone.

pub mod backend;
pub mod error;
pub mod model_id;
pub mod process;
pub mod request;

pub use backend::{Backend, Dtype, Engine, KvCache};
pub use error::RequestError;
pub use request::{
    Generation, GenerationTimings, Message, Prompt, Request, StopReason, TokenEvent, TokenLogprobs,
    TopLogprob,
};

/// The worker's version, as reports record it (the workspace's crates share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
