//! The options of `cargo xtask models` and `cargo xtask fetch-models`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The models manifest [default: conformance/models.toml].
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Model ids of the manifest (`cargo xtask models` lists them).
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Fetch every model of the manifest.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// The models manifest; its lock is the file beside it with the extension `.lock`.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}
