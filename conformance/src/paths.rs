//! Where the suite finds and puts things.

use std::path::{Path, PathBuf};

use crate::cases::Cases;

/// The workspace root, as built.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("conformance/ lives in the workspace")
        .to_path_buf()
}

/// Where the suite finds and puts things; each can be moved with an environment variable, so a
/// bundle can run away from the source tree.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `CONFORMANCE_CASES`: the case file.
    pub cases: PathBuf,
    /// `CONFORMANCE_FIXTURES`: the fixture models, one folder each.
    pub fixtures: PathBuf,
    /// `CONFORMANCE_GOLDEN`: snapshots (`snapshots/`) and the reference (`reference/`).
    pub golden: PathBuf,
    /// `CONFORMANCE_RECORDS`: one result record per trial.
    pub records: PathBuf,
    /// `CONFORMANCE_MODELS`: lines of `id=folder`. When set, the suite runs these models (real
    /// models fetched by `cargo xtask fetch-models`) instead of the fixtures.
    pub models: Vec<(String, PathBuf)>,
    /// `CONFORMANCE_WORKER`: the `llm-worker-rbee` binary the http transport starts.
    pub worker_binary: Option<PathBuf>,
}

impl Paths {
    pub fn from_env() -> Self {
        let root = workspace_root();
        let var = |name: &str, default: PathBuf| {
            std::env::var_os(name).map(PathBuf::from).unwrap_or(default)
        };
        Self {
            cases: var("CONFORMANCE_CASES", crate::cases::default_path()),
            fixtures: var("CONFORMANCE_FIXTURES", root.join("target/fixtures")),
            golden: var("CONFORMANCE_GOLDEN", root.join("golden")),
            records: var(
                "CONFORMANCE_RECORDS",
                root.join("target/conformance/records"),
            ),
            models: std::env::var("CONFORMANCE_MODELS")
                .unwrap_or_default()
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(id, folder)| (id.trim().to_string(), PathBuf::from(folder.trim())))
                .collect(),
            worker_binary: std::env::var_os("CONFORMANCE_WORKER").map(PathBuf::from),
        }
    }

    /// The models a run covers: those of `CONFORMANCE_MODELS`, else every fixture of `cases`.
    pub fn model_ids(&self, cases: &Cases) -> Vec<String> {
        if self.models.is_empty() {
            cases.models.ids()
        } else {
            self.models.iter().map(|(id, _)| id.clone()).collect()
        }
    }

    /// The folder of model `id`: as listed; in a run of real models, one not listed (the source
    /// a real GGUF is compared with) from the fetched models; else a fixture.
    pub fn model_dir(&self, id: &str) -> PathBuf {
        match self.models.iter().find(|(model, _)| model == id) {
            Some((_, folder)) => folder.clone(),
            None if !self.models.is_empty() => llm_worker_rbee_api::model_id::models_dir().join(id),
            None => self.fixtures.join(id),
        }
    }

    pub fn snapshots(&self) -> PathBuf {
        self.golden.join("snapshots")
    }

    pub fn reference(&self) -> PathBuf {
        self.golden.join("reference")
    }
}
