//! `conformance/models.toml` (what to fetch) and `conformance/models.lock` (what the first real
//! fetch of each file read, trusted on first use).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::paths::project_root;

pub fn default_manifest() -> PathBuf {
    project_root().join("conformance/models.toml")
}

/// The lock beside a manifest: `models.toml` -> `models.lock`.
pub fn lock_path(manifest: &Path) -> PathBuf {
    manifest.with_extension("lock")
}

/// The manifest given (else the committed one), its lock, and where the lock lives.
pub fn load(manifest: Option<&Path>) -> Result<(Manifest, Lock, PathBuf)> {
    let manifest = manifest.map_or_else(default_manifest, Path::to_path_buf);
    let lock_path = lock_path(&manifest);
    Ok((
        Manifest::load(&manifest)?,
        Lock::load(&lock_path)?,
        lock_path,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub models: Vec<Model>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    pub architecture: String,
    pub format: Format,
    /// The hub repo of the files that do not name their own; empty for a model from a package.
    #[serde(default)]
    pub repo: String,
    /// A package of a registry whose archive holds the files, in place of a hub repo.
    #[serde(default)]
    pub package: Option<Package>,
    /// The id of a GGUF model of this manifest whose weights this model holds as SafeTensors:
    /// `llm-worker-rbee synth --from-gguf` writes it (dequantized to f32), and its files are
    /// pinned here like a package's, from a real run.
    #[serde(default)]
    pub from_gguf: Option<String>,
    /// A pinned commit for the files that do not pin their own; empty: the first fetch takes
    /// `main` and records the commit in the lock.
    #[serde(default)]
    pub revision: String,
    /// Anything a user must know to fetch it (a gated repo, a licence).
    #[serde(default)]
    pub note: Option<String>,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Safetensors,
    Gguf,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
        }
    }
}

/// A package of a registry that the machines reach (the hub may be out of reach): its archive
/// is downloaded with the registry's own client and the files are unpacked from it. Both the
/// archive and every file are pinned by hand, from a real download.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub registry: Registry,
    pub name: String,
    pub version: String,
    /// The archive's file name, as the registry serves it.
    pub archive: String,
    pub sha256: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    /// The Python Package Index, or the index pip is configured with (`PIP_INDEX_URL`, ...).
    Pypi,
}

impl Package {
    /// `pypi:name==version`, where a hub file names its repo.
    pub fn label(&self) -> String {
        match self.registry {
            Registry::Pypi => format!("pypi:{}=={}", self.name, self.version),
        }
    }

    /// Where its files are unpacked: `packages/<name>-<version>/` beside the models folder.
    pub fn dir(&self) -> PathBuf {
        beside_models("packages").join(format!("{}-{}", self.name, self.version))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The path in the repo, or in the package's archive.
    pub path: String,
    /// Another repo than the model's (a GGUF's tokenizer).
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub revision: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub sha256: String,
}

/// One file of one model with everything that pins it, from the manifest or else the lock.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub model: String,
    pub repo: String,
    pub path: String,
    /// The file's name in the model folder.
    pub name: String,
    pub revision: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Where a package's file is unpacked (a hub file's place depends on its commit).
    pub unpacked: Option<PathBuf>,
}

impl FileSpec {
    pub fn label(&self) -> String {
        format!("{}/{}", self.repo, self.path)
    }
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the models manifest {}", path.display()))?;
        let manifest: Manifest = toml::from_str(&text)
            .with_context(|| format!("{}: not a valid models manifest", path.display()))?;
        manifest
            .validate()
            .with_context(|| format!("{}: invalid", path.display()))?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        let mut ids = BTreeSet::new();
        for model in &self.models {
            let id = &model.id;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            {
                bail!("model id `{id}`: use lowercase letters, digits, `.`, `_` and `-`");
            }
            if !ids.insert(id.as_str()) {
                bail!("model id `{id}` is used twice");
            }
            check_revision(id, &model.revision)?;
            check_source(model)?;
            let mut names = BTreeSet::new();
            for file in &model.files {
                check_revision(id, &file.revision)?;
                if !file.sha256.is_empty() && !is_hex(&file.sha256, 64) {
                    bail!(
                        "model `{id}`, file `{}`: sha256 must be 64 hex digits or empty",
                        file.path
                    );
                }
                let name = file_name(&file.path);
                if !names.insert(name) {
                    bail!("model `{id}`: two files are named `{name}` in the model folder");
                }
            }
            if let Some(gguf) = &model.from_gguf {
                let source = self.models.iter().find(|m| &m.id == gguf);
                if source.is_none_or(|m| m.format != Format::Gguf) {
                    bail!("model `{id}`: `from_gguf = \"{gguf}\"` names no gguf model of this manifest");
                }
            }
            let has = |wanted: &dyn Fn(&str) -> bool| names.iter().filter(|n| wanted(n)).count();
            match model.format {
                Format::Safetensors => {
                    for required in ["config.json", "tokenizer.json"] {
                        if !names.contains(required) {
                            bail!("model `{id}`: a safetensors model needs `{required}`");
                        }
                    }
                    if has(&|n| n.ends_with(".safetensors")) == 0 {
                        bail!("model `{id}`: a safetensors model needs a .safetensors file");
                    }
                }
                // The tokenizer comes from the GGUF's metadata unless a tokenizer.json is listed.
                Format::Gguf => {
                    if has(&|n| n.ends_with(".gguf")) != 1 {
                        bail!("model `{id}`: a gguf model needs exactly one .gguf file");
                    }
                }
            }
        }
        Ok(())
    }

    /// The models `ids` names (all of them for `all`), in manifest order.
    pub fn select(&self, ids: &[String], all: bool) -> Result<Vec<&Model>> {
        if all {
            return Ok(self.models.iter().collect());
        }
        if ids.is_empty() {
            bail!(
                "name the models to fetch, or pass --all; the manifest has: {}",
                self.ids()
            );
        }
        let mut selected: Vec<&Model> = Vec::new();
        for id in ids {
            let model = self.find(id)?;
            // A twin is written from its GGUF, which comes first.
            if let Some(gguf) = &model.from_gguf {
                let source = self.find(gguf)?;
                if !selected.iter().any(|m| m.id == source.id) {
                    selected.push(source);
                }
            }
            if !selected.iter().any(|m| m.id == model.id) {
                selected.push(model);
            }
        }
        Ok(selected)
    }

    fn find(&self, id: &str) -> Result<&Model> {
        self.models
            .iter()
            .find(|m| m.id == id)
            .with_context(|| format!("no model `{id}` in the manifest; it has: {}", self.ids()))
    }

    fn ids(&self) -> String {
        self.models
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Model {
    /// Its files with their pins: what the manifest says, else what the lock recorded. A
    /// manifest pin that disagrees with the lock is an error.
    pub fn files(&self, lock: &Lock) -> Result<Vec<FileSpec>> {
        if let Some(package) = &self.package {
            let dir = package.dir().join("files");
            return Ok(self.pinned_files(package.label(), Some(package.version.clone()), &dir));
        }
        if let Some(gguf) = &self.from_gguf {
            let source = format!("synth --from-gguf {gguf}");
            return Ok(self.pinned_files(source, None, &twin_dir(&self.id)));
        }
        self.files
            .iter()
            .map(|file| {
                let repo = file.repo.clone().unwrap_or_else(|| self.repo.clone());
                let locked = lock.find(&self.id, &repo, &file.path);
                let label = format!("model `{}`, {repo}/{}", self.id, file.path);
                let revision = pin(
                    &label,
                    "revision",
                    &[&file.revision, &self.revision],
                    locked.map(|l| &l.revision),
                )?;
                let sha256 = pin(&label, "sha256", &[&file.sha256], locked.map(|l| &l.sha256))?;
                let size = match (file.size, locked.map(|l| l.size)) {
                    (Some(a), Some(b)) if a != b => {
                        bail!("{label}: the manifest says {a} bytes, models.lock recorded {b}")
                    }
                    (a, b) => a.or(b),
                };
                Ok(FileSpec {
                    model: self.id.clone(),
                    name: file_name(&file.path).to_string(),
                    path: file.path.clone(),
                    repo,
                    revision,
                    size,
                    sha256,
                    unpacked: None,
                })
            })
            .collect()
    }

    /// Files each pinned in the manifest (validated), which come from `source` (a package, or
    /// `synth --from-gguf`) at `revision` and lie under `dir`.
    fn pinned_files(&self, source: String, revision: Option<String>, dir: &Path) -> Vec<FileSpec> {
        self.files
            .iter()
            .map(|file| FileSpec {
                model: self.id.clone(),
                repo: source.clone(),
                path: file.path.clone(),
                name: file_name(&file.path).to_string(),
                revision: revision.clone(),
                size: file.size,
                sha256: Some(file.sha256.clone()),
                unpacked: Some(dir.join(&file.path)),
            })
            .collect()
    }
}

/// `name` beside the models folder, under the same cache.
fn beside_models(name: &str) -> PathBuf {
    let models = llm_worker_rbee_api::model_id::models_dir();
    let parent = models.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    parent.join(name)
}

/// Where `synth --from-gguf` writes model `id`: `twins/<id>/` beside the models folder.
pub fn twin_dir(id: &str) -> PathBuf {
    beside_models("twins").join(id)
}

/// Each file pinned by its sha256 and size, measured on a real download or run.
fn check_pinned(model: &Model, what: &str) -> Result<()> {
    for file in &model.files {
        let path = &file.path;
        if file.repo.is_some() || !file.revision.is_empty() {
            bail!(
                "model `{}`, file `{path}`: {what} file names no repo or revision",
                model.id
            );
        }
        if file.sha256.is_empty() || file.size.is_none() {
            bail!(
                "model `{}`, file `{path}`: {what} file is pinned by its sha256 and size, \
                 measured on a real run",
                model.id
            );
        }
        if path.split('/').any(|part| part.is_empty() || part == "..") {
            bail!(
                "model `{}`, file `{path}`: not a plain relative path",
                model.id
            );
        }
    }
    Ok(())
}

/// A hub repo, a package or a GGUF model of the manifest, one of them; a package or a twin
/// pins every file by hand, since the lock records hub downloads only.
fn check_source(model: &Model) -> Result<()> {
    let id = &model.id;
    if let Some(gguf) = &model.from_gguf {
        if !model.repo.is_empty() || !model.revision.is_empty() || model.package.is_some() {
            bail!("model `{id}`: a model written from `{gguf}` has no hub `repo`, `revision` or `package`");
        }
        if model.format != Format::Safetensors {
            bail!("model `{id}`: `from_gguf` writes a safetensors model");
        }
        return check_pinned(model, "a written");
    }
    let Some(package) = &model.package else {
        if model.repo.is_empty() {
            bail!("model `{id}`: name its hub `repo` or its `package`");
        }
        return Ok(());
    };
    if !model.repo.is_empty() || !model.revision.is_empty() {
        bail!("model `{id}`: a model from a package has no hub `repo` or `revision`");
    }
    if !is_hex(&package.sha256, 64) {
        bail!("model `{id}`: the package's sha256 must be 64 hex digits");
    }
    for (what, value) in [
        ("name", &package.name),
        ("version", &package.version),
        ("archive", &package.archive),
    ] {
        if value.is_empty() || value.contains(['/', '\\']) || value.starts_with('.') {
            bail!("model `{id}`: the package's {what} `{value}` is not a plain name");
        }
    }
    check_pinned(model, "a package's")
}

/// The first non-empty value the manifest states, else the locked one; both must agree.
fn pin(
    label: &str,
    what: &str,
    stated: &[&String],
    locked: Option<&String>,
) -> Result<Option<String>> {
    let stated = stated.iter().copied().find(|v| !v.is_empty());
    match (stated, locked) {
        (Some(m), Some(l)) if m != l => bail!(
            "{label}: the manifest pins {what} {m}, models.lock recorded {l}; if the manifest \
             change is deliberate, delete that entry of models.lock"
        ),
        (Some(v), _) | (None, Some(v)) => Ok(Some(v.clone())),
        (None, None) => Ok(None),
    }
}

fn check_revision(id: &str, revision: &str) -> Result<()> {
    if !revision.is_empty() && !is_hex(revision, 40) {
        bail!(
            "model `{id}`: revision `{revision}` is not a commit hash (40 hex digits); a branch \
             or tag is not a pin, leave it empty to record the commit on first fetch"
        );
    }
    Ok(())
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.chars().all(|c| c.is_ascii_hexdigit())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What the first real fetch of each file read: `trust = "first-use"` says nobody pinned it
/// by hand, the fetch that recorded it was trusted.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    #[serde(default)]
    pub files: Vec<LockedFile>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub model: String,
    pub repo: String,
    pub path: String,
    pub revision: String,
    pub size: u64,
    pub sha256: String,
    pub trust: String,
    pub recorded: String,
}

const LOCK_HEADER: &str = "\
# Written by `cargo xtask fetch-models`; commit it. Each entry is what the first real download
# of a file read (trust = \"first-use\"): its commit, size and sha256. Later fetches must match.
# To re-pin a file deliberately, delete its entry and fetch again.
";

impl Lock {
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{}: not a valid models lock", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn find(&self, model: &str, repo: &str, path: &str) -> Option<&LockedFile> {
        self.files
            .iter()
            .find(|f| f.model == model && f.repo == repo && f.path == path)
    }

    /// Records a first fetch (never replaces an entry: pins only change by hand).
    pub fn record(&mut self, entry: LockedFile) {
        if self.find(&entry.model, &entry.repo, &entry.path).is_none() {
            self.files.push(entry);
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = format!("{LOCK_HEADER}\n{}", toml::to_string(self)?);
        let partial = path.with_extension("lock.partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn manifest(extra: &str) -> Result<Manifest> {
        let text = format!(
            r#"
            [[models]]
            id = "m"
            architecture = "llama"
            format = "safetensors"
            repo = "o/m"
            files = [{{ path = "config.json" }}, {{ path = "tokenizer.json" }}, {{ path = "model.safetensors" {extra} }}]
            "#
        );
        parse(&text)
    }

    #[test]
    fn committed_manifest_is_valid_and_pins_hub_files_only_through_the_lock() {
        let manifest = Manifest::load(&default_manifest()).unwrap();
        assert!(manifest.models.len() >= 8);
        for model in manifest
            .models
            .iter()
            .filter(|m| m.package.is_none() && m.from_gguf.is_none())
        {
            assert!(model.revision.is_empty(), "{}", model.id);
            for file in &model.files {
                // Only a real download may pin a file (models.lock).
                assert!(file.sha256.is_empty() && file.revision.is_empty() && file.size.is_none());
            }
        }
    }

    fn package_model(file: &str) -> Result<Manifest> {
        let sha = "c".repeat(64);
        let text = format!(
            r#"
            [[models]]
            id = "p"
            architecture = "llama"
            format = "gguf"
            package = {{ registry = "pypi", name = "llm-p", version = "1.0", archive = "llm_p-1.0-py3-none-any.whl", sha256 = "{sha}" }}
            files = [{file}]
            "#
        );
        parse(&text)
    }

    #[test]
    fn a_package_pins_its_archive_and_each_file_and_lays_them_out_beside_the_models() {
        let sha = "d".repeat(64);
        let pinned = format!(r#"{{ path = "llm_p/m.gguf", size = 7, sha256 = "{sha}" }}"#);
        let manifest = package_model(&pinned).unwrap();
        let files = manifest.models[0].files(&Lock::default()).unwrap();
        assert_eq!(files[0].repo, "pypi:llm-p==1.0");
        assert_eq!(files[0].name, "m.gguf");
        assert_eq!(files[0].sha256.as_deref(), Some(sha.as_str()));
        let unpacked = files[0].unpacked.as_ref().unwrap();
        assert!(
            unpacked.ends_with("packages/llm-p-1.0/files/llm_p/m.gguf"),
            "{unpacked:?}"
        );

        let unpinned = package_model(r#"{ path = "llm_p/m.gguf" }"#).unwrap_err();
        assert!(
            unpinned
                .to_string()
                .contains("pinned by its sha256 and size"),
            "{unpinned}"
        );
        let escaping = format!(r#"{{ path = "../m.gguf", size = 7, sha256 = "{sha}" }}"#);
        let err = package_model(&escaping).unwrap_err();
        assert!(
            err.to_string().contains("not a plain relative path"),
            "{err}"
        );
    }

    fn twin_model(from: &str, file: &str) -> Result<Manifest> {
        let sha = "c".repeat(64);
        let text = format!(
            r#"
            [[models]]
            id = "p"
            architecture = "llama"
            format = "gguf"
            package = {{ registry = "pypi", name = "llm-p", version = "1.0", archive = "llm_p-1.0-py3-none-any.whl", sha256 = "{sha}" }}
            files = [{{ path = "llm_p/m.gguf", size = 7, sha256 = "{sha}" }}]

            [[models]]
            id = "p-safetensors"
            architecture = "llama"
            format = "safetensors"
            from_gguf = "{from}"
            files = [{{ path = "config.json", size = 1, sha256 = "{sha}" }}, {{ path = "tokenizer.json", size = 1, sha256 = "{sha}" }}, {file}]
            "#
        );
        parse(&text)
    }

    #[test]
    fn a_twin_names_its_gguf_pins_each_file_and_is_fetched_after_it() {
        let sha = "e".repeat(64);
        let weights = format!(r#"{{ path = "model.safetensors", size = 9, sha256 = "{sha}" }}"#);
        let manifest = twin_model("p", &weights).unwrap();
        let files = manifest.models[1].files(&Lock::default()).unwrap();
        assert_eq!(files[2].repo, "synth --from-gguf p");
        let written = files[2].unpacked.as_ref().unwrap();
        assert!(
            written.ends_with("twins/p-safetensors/model.safetensors"),
            "{written:?}"
        );
        let ids = |models: Vec<&Model>| models.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        let twin_only = manifest.select(&["p-safetensors".into()], false).unwrap();
        assert_eq!(ids(twin_only), ["p", "p-safetensors"]);
        let both = manifest
            .select(&["p-safetensors".into(), "p".into()], false)
            .unwrap();
        assert_eq!(ids(both), ["p", "p-safetensors"]);

        let err = twin_model("nope", &weights).unwrap_err();
        assert!(err.to_string().contains("names no gguf model"), "{err}");
        let err = twin_model("p", r#"{ path = "model.safetensors" }"#).unwrap_err();
        assert!(
            err.to_string().contains("pinned by its sha256 and size"),
            "{err}"
        );
    }

    #[test]
    fn rejects_branch_names_and_bad_hashes() {
        let err = manifest(r#", revision = "main""#).unwrap_err();
        assert!(err.to_string().contains("not a commit hash"), "{err}");
        let err = manifest(r#", sha256 = "abc""#).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        assert!(manifest("").is_ok());
    }

    #[test]
    fn the_lock_pins_what_the_manifest_leaves_empty_and_must_agree_with_it() {
        let sha = "a".repeat(64);
        let mut lock = Lock::default();
        lock.record(LockedFile {
            model: "m".into(),
            repo: "o/m".into(),
            path: "model.safetensors".into(),
            revision: "1".repeat(40),
            size: 10,
            sha256: sha.clone(),
            trust: "first-use".into(),
            recorded: "now".into(),
        });
        let files = manifest("").unwrap().models[0].files(&lock).unwrap();
        assert_eq!(files[2].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(files[2].size, Some(10));
        assert_eq!(files[0].sha256, None);
        let other = format!(r#", sha256 = "{}""#, "b".repeat(64));
        let err = manifest(&other).unwrap().models[0]
            .files(&lock)
            .unwrap_err();
        assert!(err.to_string().contains("models.lock recorded"), "{err}");
    }
}
