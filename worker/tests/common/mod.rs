//! Shared helpers of the worker's integration tests: fixture models in temporary folders.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod http;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use llm_worker_rbee::{synth, Generation, LoadOptions, Prompt, Request, Worker};
use serde_json::Value;

/// A fixture model written into its own temporary folder, removed when dropped.
pub struct Fixture {
    dir: tempfile::TempDir,
    pub id: &'static str,
}

impl Fixture {
    pub fn new(id: &str) -> Self {
        Self::of(synth::fixture(id).unwrap_or_else(|| panic!("no fixture `{id}`")))
    }

    /// A fixture of another spec, e.g. one of the fixtures made larger.
    pub fn of(spec: synth::FixtureSpec) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        synth::write_fixture(&spec, dir.path()).expect("fixture written");
        Self { dir, id: spec.id }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn load(&self) -> Worker {
        Worker::load(self.path(), LoadOptions::default())
            .unwrap_or_else(|e| panic!("fixture `{}` loads: {e}", self.id))
    }

    /// Rewrites one of the fixture's JSON files.
    pub fn edit_json(&self, name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let path = self.file(name);
        let mut value: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(value.as_object_mut().unwrap());
        std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    }
}

pub fn all_fixture_ids() -> Vec<&'static str> {
    synth::fixtures().iter().map(|f| f.id).collect()
}

/// Prompts of the kinds the suite uses: short text, one token, longer than the windows.
pub fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Text("hello".into()),
        Prompt::Ids(vec![300]),
        Prompt::Text("The quick brown fox jumps over the lazy dog while the cat sleeps.".into()),
    ]
}

pub fn greedy(prompt: Prompt, max_tokens: usize) -> Request {
    let mut request = Request::greedy(prompt, max_tokens);
    request.ignore_eos = true;
    request
}

pub fn run(worker: &mut Worker, request: &Request) -> Generation {
    let prepared = worker
        .prepare(request)
        .unwrap_or_else(|e| panic!("the request is valid: {e}"));
    worker
        .generate(&prepared, |_| ControlFlow::Continue(()))
        .unwrap_or_else(|e| panic!("generation succeeds: {e}"))
}

/// A GGUF fixture and its SafeTensors source, written into one temporary folder, removed when
/// dropped.
pub struct GgufFixture {
    dir: tempfile::TempDir,
    pub id: &'static str,
    pub source: &'static str,
}

impl GgufFixture {
    pub fn new(id: &str) -> Self {
        let spec = synth::gguf_fixture(id).unwrap_or_else(|| panic!("no GGUF fixture `{id}`"));
        let source = synth::fixture(spec.source).expect("the source fixture exists");
        let dir = tempfile::tempdir().expect("temporary folder");
        synth::write_fixture(&source, &dir.path().join(source.id)).expect("source written");
        synth::write_gguf_fixture(
            &spec,
            &dir.path().join(source.id),
            &dir.path().join(spec.id),
        )
        .expect("GGUF fixture written");
        Self {
            dir,
            id: spec.id,
            source: spec.source,
        }
    }

    /// The GGUF model folder.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(self.id)
    }

    /// The SafeTensors folder it was made from.
    pub fn source_path(&self) -> PathBuf {
        self.dir.path().join(self.source)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub fn load(&self) -> Worker {
        Worker::load(&self.path(), LoadOptions::default())
            .unwrap_or_else(|e| panic!("GGUF fixture `{}` loads: {e}", self.id))
    }

    pub fn load_source(&self) -> Worker {
        Worker::load(&self.source_path(), LoadOptions::default())
            .unwrap_or_else(|e| panic!("fixture `{}` loads: {e}", self.source))
    }
}

pub fn all_gguf_fixture_ids() -> Vec<&'static str> {
    synth::gguf_fixtures().iter().map(|f| f.id).collect()
}
