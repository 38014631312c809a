//! A small HTTP server on 127.0.0.1 that answers the hub's download URLs
//! (`/{owner}/{name}/resolve/{revision}/{path}`) for the files it holds, the way the hub does
//! for a plain (non-Xet) file: ETag, X-Repo-Commit, sizes, Range requests. It logs every request,
//! and can cut one download short to test resuming.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};

/// The commit every repo of the fake hub is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// `owner/name/path`.
    pub file: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct Hub {
    /// `owner/name` -> path -> bytes.
    files: HashMap<String, HashMap<String, Vec<u8>>>,
    /// `owner/name/path` and a byte count: the next full GET of that file sends only that many
    /// bytes, then drops the connection.
    cut: Mutex<Option<(String, usize)>>,
    log: Mutex<Vec<Logged>>,
}

pub struct FakeHub {
    pub url: String,
    hub: Arc<Hub>,
}

impl FakeHub {
    /// Serves `files` as `(repo, path, bytes)`.
    pub fn start(files: Vec<(String, String, Vec<u8>)>, cut: Option<(&str, usize)>) -> Self {
        let mut hub = Hub::default();
        for (repo, path, bytes) in files {
            hub.files.entry(repo).or_default().insert(path, bytes);
        }
        *hub.cut.lock().unwrap() = cut.map(|(file, n)| (file.to_string(), n));
        let hub = Arc::new(hub);
        let app = axum::Router::new()
            .route(
                "/{owner}/{name}/resolve/{revision}/{*path}",
                axum::routing::get(resolve),
            )
            .with_state(hub.clone());
        let addr = crate::local_server::serve(app);
        Self {
            url: format!("http://{addr}"),
            hub,
        }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.hub.log.lock().unwrap().clone()
    }
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    method: Method,
    Path((owner, name, revision, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    hub.log.lock().unwrap().push(Logged {
        method: method.to_string(),
        file: format!("{repo}/{path}"),
        range: range.clone(),
    });
    let not_found = |code: &str| {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("x-error-code", code)
            .body(Body::empty())
            .unwrap()
    };
    let Some(files) = hub.files.get(&repo) else {
        return not_found("RepoNotFound");
    };
    if revision != "main" && revision != COMMIT {
        return not_found("RevisionNotFound");
    }
    let Some(bytes) = files.get(&path) else {
        return not_found("EntryNotFound");
    };
    let size = bytes.len();
    let response = Response::builder()
        .header("etag", format!("\"{:x}\"", Sha256::digest(bytes)))
        .header("x-repo-commit", COMMIT)
        .header("x-linked-size", size)
        .header("accept-ranges", "bytes");
    if let Some(range) = range {
        let (start, end) = parse_range(&range, size);
        return response
            .status(StatusCode::PARTIAL_CONTENT)
            .header("content-range", format!("bytes {start}-{}/{size}", end - 1))
            .body(Body::from(bytes[start..end].to_vec()))
            .unwrap();
    }
    let cut = {
        let mut cut = hub.cut.lock().unwrap();
        match cut.as_ref() {
            Some((file, n)) if method == Method::GET && *file == format!("{repo}/{path}") => {
                let n = *n;
                *cut = None;
                Some(n)
            }
            _ => None,
        }
    };
    let response = response.header("content-length", size);
    match cut {
        Some(n) => {
            let head = Bytes::from(bytes[..n].to_vec());
            let body = futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(
                futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err(std::io::Error::other("cut by the fake hub"))
                }),
            );
            response.body(Body::from_stream(body)).unwrap()
        }
        None => response.body(Body::from(bytes.clone())).unwrap(),
    }
}

use futures::StreamExt as _;

/// `bytes=a-b` or `bytes=a-` -> `(a, b + 1)`.
fn parse_range(range: &str, size: usize) -> (usize, usize) {
    let spec = range.strip_prefix("bytes=").expect("a bytes range");
    let (start, end) = spec.split_once('-').expect("a-b");
    let start: usize = start.parse().unwrap();
    let end = if end.is_empty() {
        size
    } else {
        end.parse::<usize>().unwrap() + 1
    };
    (start, end.min(size))
}
