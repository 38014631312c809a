//! llm-worker-rbee: load a model folder (SafeTensors, or GGUF with its tokenizer), detect its
//! architecture, and generate tokens deterministically on cpu, cuda or metal.
//!
//! ```no_run
//! use llm_worker_rbee::{LoadOptions, Prompt, Request, Worker};
//!
//! let mut worker = Worker::load("model-dir".as_ref(), LoadOptions::default())?;
//! let request = worker.prepare(&Request::greedy(Prompt::Text("hello".into()), 16))?;
//! let generation = worker.generate(&request, |token| {
//!     print!("{}", token.text);
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! println!("\n{:?}", generation.stop_reason);
//! # Ok::<(), llm_worker_rbee::Error>(())
//! ```
//!
//! The library is the worker alone; the binary's other parts are features it enables: `serve`
//! (the HTTP worker), `synth` (fixture and shape models) and `bench`.

pub mod arch;
pub mod backend;
#[cfg(feature = "bench")]
pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod fast;
pub mod files;
pub mod fixture;
pub mod folder;
pub mod gguf;
mod logprobs;
pub mod memory;
pub mod model;
pub mod modules;
pub mod prompter;
pub mod request;
#[cfg(feature = "serve")]
pub mod serve;
mod stop;
#[cfg(feature = "synth")]
pub mod synth;
pub mod tokens;
pub mod weights;
pub mod worker;

pub use backend::{Backend, Dtype, KvCache};
pub use error::{Error, Result};
pub use files::{ModelFiles, ModelInfo};
pub use llm_worker_rbee_api::model_id;
pub use model::Architecture;
pub use request::{
    Generation, Message, PreparedRequest, Prompt, Request, StopReason, TokenEvent, TokenLogprobs,
};
pub use worker::{LoadOptions, Worker};

/// This crate's version, as reports record it.
pub const VERSION: &str = llm_worker_rbee_api::VERSION;
