//! A request that cannot be served as asked, naming the field at fault.

/// `field` is the request's field as the client sent it (`prompt`, `messages`, `max_tokens`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: `{field}`: {message}")]
pub struct RequestError {
    pub field: &'static str,
    pub message: String,
}

impl RequestError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A file that is missing, unreadable or not what it should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct FileError {
    pub path: std::path::PathBuf,
    pub message: String,
}

impl FileError {
    pub fn new(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
