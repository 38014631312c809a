use std::path::{Path, PathBuf};

use llm_worker_rbee_api::error::{FileError, RequestError};

/// Everything the worker can refuse or fail at. Each variant names what was wrong and where, so
/// the message alone tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the model folder is missing, unreadable or malformed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// A field of `config.json` (or another JSON file of the folder) is missing, malformed, or
    /// asks for something the worker cannot honour.
    #[error("{}: field `{field}`: {message}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// The checkpoint does not match what the architecture needs.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },

    /// A generation request that cannot be served as asked.
    #[error("invalid request: `{field}`: {message}")]
    Request {
        field: &'static str,
        message: String,
    },

    /// The backend asked for is not compiled in or has no device.
    #[error("backend `{backend}`: {message}")]
    Backend { backend: String, message: String },

    /// The engine asked for cannot run this model here.
    #[error("engine `fast`: {0}")]
    Engine(String),

    /// The KV cache type asked for is not built for this model.
    #[error("KV cache `{kv_cache}`: {message}")]
    KvCache { kv_cache: String, message: String },

    /// Generated token ids could not be turned into text.
    #[error("cannot decode the generated tokens: {0}")]
    Decode(String),

    /// The model computed logits no token can be chosen from: its weights or settings hold
    /// numbers it cannot compute with.
    #[error(
        "generated token {step}: the logits hold {what}; the model's weights or config give \
         numbers it cannot compute with"
    )]
    NotFinite { step: usize, what: &'static str },

    /// A failure inside candle while running the model.
    #[error("model execution failed: {0}")]
    Candle(#[source] candle_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        Error::Candle(without_backtrace(error))
    }
}

/// `error` without the backtrace candle wraps its errors in when RUST_BACKTRACE is set, which
/// would end up in messages to users and clients; the cause is what they need.
pub fn without_backtrace(mut error: candle_core::Error) -> candle_core::Error {
    while let candle_core::Error::WithBacktrace { inner, .. } = error {
        error = *inner;
    }
    error
}

impl From<RequestError> for Error {
    fn from(error: RequestError) -> Self {
        Error::Request {
            field: error.field,
            message: error.message,
        }
    }
}

impl From<FileError> for Error {
    fn from(error: FileError) -> Self {
        Error::File {
            path: error.path,
            message: error.message,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn field(path: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Field {
            path: path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn weights(path: &Path, message: impl Into<String>) -> Self {
        Error::Weights {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn request(field: &'static str, message: impl Into<String>) -> Self {
        Error::Request {
            field,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candle_error_reads_as_its_cause_without_the_backtrace() {
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("out of memory".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(traced.to_string().len() > "out of memory".len());
        assert_eq!(
            Error::from(traced).to_string(),
            "model execution failed: out of memory"
        );
    }
}
