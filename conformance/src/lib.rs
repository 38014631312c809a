//! The conformance suite: cases as data (`cases.toml`), trials run with the worker library or
//! over HTTP and checked against reviewed insta snapshots and the transformers reference, and
//! the reports and support matrix produced from those runs. Without the `harness` feature, only
//! what `cargo xtask` reads and writes, with no candle.

pub mod cases;
#[cfg(feature = "harness")]
pub mod checks;
#[cfg(feature = "harness")]
pub mod engine;
pub mod error;
#[cfg(feature = "harness")]
pub mod fixtures;
pub mod hash;
pub mod http;
pub mod matrix;
pub mod paths;
pub mod record;
#[cfg(feature = "harness")]
pub mod reference;
pub mod report;
#[cfg(feature = "harness")]
pub mod suite;
pub mod table;
pub mod trial;
