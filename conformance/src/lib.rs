//! The conformance suite: cases as data (`cases.toml`), trials run with the worker library or
//! over HTTP and checked against reviewed insta snapshots and the transformers reference, and
//! the reports and support matrix produced from those runs.

pub mod cases;
pub mod checks;
pub mod engine;
pub mod error;
pub mod hash;
pub mod http;
pub mod matrix;
pub mod paths;
pub mod record;
pub mod reference;
pub mod report;
pub mod suite;
pub mod table;
pub mod trial;
