//! `cargo xtask fetch-models` and `cargo xtask models`, run as a user runs them, against a fake
//! hub on 127.0.0.1 serving a fixture model (no machine here reaches the real hub).

mod fake_hub;
mod local_server;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fake_hub::{FakeHub, COMMIT};
use llm_worker_rbee::model_id::{self, VerifiedModel};
use llm_worker_rbee::{synth, LoadOptions, Prompt, Request, Worker};
use sha2::{Digest, Sha256};

const REPO: &str = "fixtures/llama";
const ID: &str = "tiny-llama";
const FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// A temporary HF_HOME, a fixture model, and a manifest listing it.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// `extra` is added to the file entry of `model.safetensors`; `more_files` to the list.
    fn new(extra_tokenizer: &str, more_files: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = synth::fixture("llama").unwrap();
        synth::write_fixture(&spec, &dir.path().join("fixture")).unwrap();
        let files: Vec<String> = FILES
            .iter()
            .map(|f| match *f {
                "tokenizer.json" => format!("{{ path = \"{f}\"{extra_tokenizer} }}"),
                _ => format!("{{ path = \"{f}\" }}"),
            })
            .collect();
        let manifest = format!(
            "[[models]]\nid = \"{ID}\"\narchitecture = \"llama\"\nformat = \"safetensors\"\n\
             repo = \"{REPO}\"\nfiles = [{}{more_files}]\n",
            files.join(", ")
        );
        std::fs::write(dir.path().join("models.toml"), manifest).unwrap();
        Self { dir }
    }

    fn fixture_file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join("fixture").join(name)).unwrap()
    }

    fn hub(&self, cut: Option<(&str, usize)>) -> FakeHub {
        let files = FILES
            .iter()
            .map(|f| (REPO.to_string(), f.to_string(), self.fixture_file(f)))
            .collect();
        FakeHub::start(files, cut)
    }

    fn hf_home(&self) -> PathBuf {
        self.dir.path().join("hf")
    }

    fn models_dir(&self) -> PathBuf {
        self.hf_home().join("llm-worker-rbee/models")
    }

    fn repo_dir(&self) -> PathBuf {
        self.hf_home().join("hub/models--fixtures--llama")
    }

    /// Runs `cargo xtask ARGS --manifest <the manifest>` against `endpoint`.
    fn xtask(&self, endpoint: &str, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .args(args)
            .arg("--manifest")
            .arg(self.dir.path().join("models.toml"))
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HOME", self.hf_home());
        for var in [
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN",
            "LLM_WORKER_MODELS",
            "XDG_CACHE_HOME",
        ] {
            command.env_remove(var);
        }
        command.output().unwrap()
    }

    fn fetch(&self, endpoint: &str) -> Output {
        self.xtask(endpoint, &["fetch-models", ID])
    }

    fn state(&self) -> String {
        let output = self.xtask("http://127.0.0.1:9", &["models", "--format", "json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        listed[0]["state"].as_str().unwrap().to_string()
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("models.lock")).unwrap_or_default()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn greedy_tokens(folder: &Path) -> Vec<u32> {
    let mut worker = Worker::load(folder, LoadOptions::default()).unwrap();
    let request = Request::greedy(Prompt::Text("hello".into()), 8);
    let request = worker.prepare(&request).unwrap();
    worker
        .generate(&request, |_| ControlFlow::Continue(()))
        .unwrap()
        .token_ids
}

#[test]
fn a_full_fetch_verifies_every_file_records_the_lock_and_serves_the_worker_by_id() {
    let setup = Setup::new("", "");
    let hub = setup.hub(None);
    assert_eq!(setup.state(), "absent");

    let output = setup.fetch(&hub.url);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("recorded in the lock (first use)"));

    // Every file went through HEAD and GET, and sits in the standard cache layout.
    let log = hub.log();
    for file in FILES {
        let of = |method: &str| {
            log.iter()
                .filter(|l| l.method == method && l.file == format!("{REPO}/{file}"))
                .count()
        };
        assert!(of("HEAD") >= 1 && of("GET") == 1, "{file}: {log:?}");
        let cached = setup.repo_dir().join("snapshots").join(COMMIT).join(file);
        assert_eq!(std::fs::read(&cached).unwrap(), setup.fixture_file(file));
        assert!(cached.is_symlink());
    }
    assert_eq!(
        std::fs::read_to_string(setup.repo_dir().join("refs/main")).unwrap(),
        COMMIT
    );

    // The lock holds what was read, trusted on first use.
    let lock = setup.lock();
    for file in FILES {
        assert!(lock.contains(&sha256(&setup.fixture_file(file))), "{lock}");
    }
    assert_eq!(
        lock.matches("\ntrust = \"first-use\"").count(),
        FILES.len(),
        "{lock}"
    );
    assert_eq!(lock.matches(COMMIT).count(), FILES.len(), "{lock}");

    // The worker takes the id, and computes what it computes from the fixture folder.
    assert_eq!(setup.state(), "verified");
    let folder = model_id::resolve_in(&setup.models_dir(), Path::new(ID)).unwrap();
    let record = VerifiedModel::read(&folder).unwrap();
    assert_eq!(record.files.len(), FILES.len());
    assert_eq!(
        greedy_tokens(&folder),
        greedy_tokens(&setup.dir.path().join("fixture"))
    );

    // Fetching again needs no network: every file is verified and pinned.
    let requests = hub.log().len();
    let again = setup.fetch(&hub.url);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(hub.log().len(), requests);
    let offline = setup.fetch("http://127.0.0.1:9");
    assert!(offline.status.success(), "{}", stderr(&offline));

    // Files pinned by the lock and present in the cache are verified again without the network.
    std::fs::remove_dir_all(setup.models_dir()).unwrap();
    assert_eq!(setup.state(), "present");
    let from_cache = setup.fetch("http://127.0.0.1:9");
    assert!(from_cache.status.success(), "{}", stderr(&from_cache));
    assert_eq!(hub.log().len(), requests);
    assert_eq!(setup.state(), "verified");
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request_from_the_bytes_held() {
    const CUT: usize = 200_000;
    let setup = Setup::new("", "");
    let weights = setup.fixture_file("model.safetensors");
    assert!(weights.len() > 2 * CUT);
    let hub = setup.hub(Some((&format!("{REPO}/model.safetensors"), CUT)));

    let output = setup.fetch(&hub.url);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!("stopped after {CUT} of {} bytes", weights.len())),
        "{message}"
    );
    assert!(
        message.contains("run the same command again to resume"),
        "{message}"
    );
    let partial = setup
        .repo_dir()
        .join(format!("blobs/{}.incomplete", sha256(&weights)));
    assert_eq!(std::fs::read(&partial).unwrap(), weights[..CUT]);
    assert!(model_id::resolve_in(&setup.models_dir(), Path::new(ID)).is_err());
    assert_eq!(setup.state(), "partial");

    let resumed = setup.fetch(&hub.url);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let ranges: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.method == "GET" && l.file.ends_with("model.safetensors"))
        .map(|l| l.range)
        .collect();
    assert_eq!(
        ranges,
        [None, Some(format!("bytes={CUT}-{}", weights.len() - 1))]
    );
    let folder = model_id::resolve_in(&setup.models_dir(), Path::new(ID)).unwrap();
    assert_eq!(
        std::fs::read(folder.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(!partial.exists());
    assert!(setup.lock().contains(&sha256(&weights)));
}

#[test]
fn a_file_with_the_wrong_hash_is_deleted_and_never_used() {
    let wrong = "0".repeat(64);
    let setup = Setup::new(&format!(", sha256 = \"{wrong}\""), "");
    let hub = setup.hub(None);
    let tokenizer = setup.fixture_file("tokenizer.json");

    let output = setup.fetch(&hub.url);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "sha256 mismatch: the download has {}, pinned {wrong}",
            sha256(&tokenizer)
        )),
        "{message}"
    );
    assert!(message.contains("the download was deleted"), "{message}");
    assert!(
        message.contains("were not verified and will not be used"),
        "{message}"
    );
    let blobs = setup.repo_dir().join("blobs");
    assert!(!blobs.join(sha256(&tokenizer)).exists());
    assert!(!blobs
        .join(format!("{}.incomplete", sha256(&tokenizer)))
        .exists());
    assert!(!setup
        .repo_dir()
        .join("snapshots")
        .join(COMMIT)
        .join("tokenizer.json")
        .exists());
    let refused = model_id::resolve_in(&setup.models_dir(), Path::new(ID)).unwrap_err();
    assert!(refused.to_string().contains("fetch-models"), "{refused}");
    assert_ne!(setup.state(), "verified");
    // A pinned hash is the manifest's, not a first use: nothing of it goes into the lock.
    assert!(!setup.lock().contains(&sha256(&tokenizer)));
}

#[test]
fn a_file_the_hub_does_not_have_is_a_clear_error() {
    let setup = Setup::new("", ", { path = \"missing.json\" }");
    let hub = setup.hub(None);
    let output = setup.fetch(&hub.url);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "{REPO}/missing.json at main on {}: no such file (404)",
            hub.url
        )),
        "{message}"
    );
    assert!(model_id::resolve_in(&setup.models_dir(), Path::new(ID)).is_err());
}

#[test]
fn without_a_hub_it_lists_what_is_missing_and_how_to_get_it() {
    let setup = Setup::new("", "");
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = setup.fetch(&format!("http://{closed}"));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("cannot reach the hub at"), "{message}");
    for file in FILES {
        assert!(message.contains(&format!("{REPO}/{file}")), "{message}");
    }
    assert!(message.contains("to get them"), "{message}");
    assert!(!setup.repo_dir().join("blobs").exists());
}

#[test]
fn the_real_manifest_lists_offline_with_every_model_absent() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["models", "--format", "json"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_CACHE")
        .env_remove("LLM_WORKER_MODELS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for id in [
        "tinyllama-1.1b-chat-v1.0",
        "qwen2.5-0.5b-instruct",
        "qwen2-0.5b-instruct",
        "phi-2",
        "phi-3-mini-4k-instruct",
        "mistral-7b-instruct-v0.2",
        "qwen2.5-0.5b-instruct-q4_k_m",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    assert!(listed.iter().all(|m| m["state"] == "absent"), "{listed:?}");
}
