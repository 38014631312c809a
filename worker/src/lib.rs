//! llm-worker-rbee: load a model folder (SafeTensors, or GGUF with its tokenizer), detect its
//! architecture, and generate tokens deterministically on cpu, cuda or metal.
//!
//! ```no_run
//! use llm_worker_rbee::{LoadOptions, Prompt, Request, Worker};
//!
//! let mut worker = Worker::load("model-dir".as_ref(), LoadOptions::default())?;
//! let request = Request::greedy(Prompt::Text("hello".into()), 16);
//! let generation = worker.generate(&request, |token| {
//!     print!("{}", token.text);
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! println!("\n{:?}", generation.stop_reason);
//! # Ok::<(), llm_worker_rbee::Error>(())
//! ```

pub mod arch;
pub mod backend;
pub mod bench;
pub mod config;
pub mod error;
pub mod folder;
pub mod generate;
pub mod model_id;
pub mod serve;
pub mod synth;
pub mod tokens;
pub mod weights;
pub mod worker;

pub use arch::Architecture;
pub use backend::{Backend, Dtype};
pub use error::{Error, Result};
pub use generate::{Generation, Prompt, Request, StopReason, TokenEvent};
pub use worker::{LoadOptions, ModelInfo, Worker};

/// This crate's version, as reports record it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
