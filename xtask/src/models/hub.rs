//! One file from the hub into the standard Hugging Face cache, with hf-hub: resumed where an
//! earlier download stopped, and verified before anything links to it.
//!
//! The cache layout is the one huggingface_hub and hf-hub share: `models--{owner}--{name}/`
//! with `blobs/{etag}`, `snapshots/{commit}/{path}` (a relative link to the blob) and
//! `refs/{branch}`. A download in progress is `blobs/{etag}.incomplete`, as both name it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use hf_hub::{HFClient, HFError};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::manifest::FileSpec;

/// Why a file could not be fetched: the hub could not be reached at all (so no other file can
/// be either), or this file failed.
#[derive(Debug)]
pub enum FetchError {
    Unreachable(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> Self {
        FetchError::Failed(e)
    }
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        FetchError::Failed(e.into())
    }
}

/// A file whose sha256 was computed from the bytes in the cache.
pub struct Fetched {
    /// `snapshots/{commit}/{path}` in the cache.
    pub snapshot: PathBuf,
    pub revision: String,
    pub size: u64,
    pub sha256: String,
}

pub struct Hub {
    client: HFClient,
    runtime: tokio::runtime::Runtime,
    cache: PathBuf,
}

impl Hub {
    /// The client honours `HF_ENDPOINT` and `HF_TOKEN`; the cache is `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            client: HFClient::builder().build()?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            cache: hf_hub::resolve_cache_dir(),
        })
    }

    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        repo_dir(&self.cache, repo)
    }

    /// Fetches `spec` (unless its pinned bytes are already in the cache) and checks its sha256
    /// against the pin. A file that does not match is deleted, never linked.
    pub fn fetch(&self, spec: &FileSpec) -> Result<Fetched, FetchError> {
        let repo_dir = self.repo_dir(&spec.repo);
        if let (Some(revision), Some(_)) = (&spec.revision, &spec.sha256) {
            let snapshot = repo_dir.join("snapshots").join(revision).join(&spec.path);
            if snapshot.is_file() {
                let fetched = self.measure(spec, &snapshot, revision)?;
                check_pins(spec, &fetched, "the cached file").map_err(|e| {
                    anyhow!("{e:#}; it came from another tool or an older fetch: delete {} and fetch again", snapshot.display())
                })?;
                return Ok(fetched);
            }
        }
        let (owner, name) = spec
            .repo
            .split_once('/')
            .with_context(|| format!("repo `{}` is not owner/name", spec.repo))?;
        let repo = self.client.model(owner, name);
        let revision = spec.revision.as_deref().unwrap_or("main");
        let meta = self
            .runtime
            .block_on(
                repo.get_file_metadata()
                    .filepath(&spec.path)
                    .revision(revision)
                    .send(),
            )
            .map_err(|e| self.classify(e, spec, revision))?;
        if spec
            .revision
            .as_ref()
            .is_some_and(|r| *r != meta.commit_hash)
        {
            return Err(anyhow!(
                "{}: asked for commit {revision}, the hub answered for {}",
                spec.label(),
                meta.commit_hash
            )
            .into());
        }
        if let Some(size) = spec.size.filter(|s| *s != meta.file_size) {
            return Err(anyhow!(
                "{}: the hub says {} bytes, the pin says {size}; nothing was downloaded",
                spec.label(),
                meta.file_size
            )
            .into());
        }
        let etag = meta.etag.trim_matches('"');
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(anyhow!("{}: unusable ETag `{}`", spec.label(), meta.etag).into());
        }
        let blob = repo_dir.join("blobs").join(etag);
        let downloaded = !blob.is_file();
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        let file = if downloaded {
            self.download(&repo, spec, &meta.commit_hash, meta.file_size, &partial)?;
            &partial
        } else {
            &blob
        };
        let fetched = self.measure(spec, file, &meta.commit_hash)?;
        let checked = check_pins(spec, &fetched, "the download").and_then(|()| {
            if fetched.size == meta.file_size {
                Ok(())
            } else {
                Err(anyhow!(
                    "{} bytes where the hub announced {}",
                    fetched.size,
                    meta.file_size
                ))
            }
        });
        if let Err(e) = checked {
            if downloaded {
                std::fs::remove_file(file)?;
                return Err(anyhow!("{}: {e:#}; the download was deleted", spec.label()).into());
            }
            return Err(anyhow!(
                "{}: {e:#}; the cached blob {} is not the file pinned: delete it and fetch again",
                spec.label(),
                blob.display()
            )
            .into());
        }
        if downloaded {
            std::fs::rename(&partial, &blob)?;
        }
        link_snapshot(&repo_dir, &meta.commit_hash, &spec.path, etag)?;
        if spec.revision.is_none() {
            let refs = repo_dir.join("refs");
            std::fs::create_dir_all(&refs)?;
            std::fs::write(refs.join(revision), &meta.commit_hash)?;
        }
        Ok(fetched)
    }

    /// Downloads into `partial`, continuing from the bytes it already holds with a Range
    /// request. On any interruption the bytes received stay there for the next run.
    fn download(
        &self,
        repo: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
        spec: &FileSpec,
        commit: &str,
        size: u64,
        partial: &Path,
    ) -> Result<(), FetchError> {
        std::fs::create_dir_all(partial.parent().expect("a blob has a folder"))?;
        let mut held = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if held > size {
            held = 0;
        }
        if held == size && size > 0 {
            return Ok(());
        }
        let bar = progress_bar(&spec.label(), size, held);
        let range = (held > 0).then_some(held..size);
        let resumed_from = held;
        self.runtime.block_on(async {
            let (_, mut stream) = repo
                .download_file_stream()
                .filename(&spec.path)
                .revision(commit)
                .maybe_range(range)
                .send()
                .await
                .map_err(|e| self.classify(e, spec, commit))?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(partial)?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    bar.abandon();
                    anyhow!(
                        "{}: the download stopped after {held} of {size} bytes ({e}); they are \
                         kept in {}: run the same command again to resume",
                        spec.label(),
                        partial.display()
                    )
                })?;
                file.write_all(&chunk)?;
                held += chunk.len() as u64;
                bar.set_position(held);
            }
            file.sync_all()?;
            bar.finish_and_clear();
            Ok::<(), FetchError>(())
        })?;
        // More bytes than asked for: the server ignored the range and sent the file from its
        // start, so what the partial file holds is not the file.
        if held > size {
            std::fs::remove_file(partial)?;
            return Err(anyhow!(
                "{}: asked for bytes {resumed_from}.. the server sent {} bytes; the partial \
                 download was deleted, run the same command again to start over",
                spec.label(),
                held - resumed_from
            )
            .into());
        }
        if held != size {
            return Err(anyhow!(
                "{}: the server sent {held} of {size} bytes; run the same command again to resume",
                spec.label()
            )
            .into());
        }
        Ok(())
    }

    fn measure(&self, spec: &FileSpec, file: &Path, revision: &str) -> Result<Fetched, FetchError> {
        Ok(Fetched {
            snapshot: self
                .repo_dir(&spec.repo)
                .join("snapshots")
                .join(revision)
                .join(&spec.path),
            revision: revision.to_string(),
            size: std::fs::metadata(file)?.len(),
            sha256: sha256_file(file)?,
        })
    }

    fn classify(&self, error: HFError, spec: &FileSpec, revision: &str) -> FetchError {
        let at = format!("{} at {revision} on {}", spec.label(), self.endpoint());
        match &error {
            HFError::Request { source, .. } if source.is_connect() || source.is_timeout() => {
                let mut causes = Vec::new();
                let mut cause: Option<&dyn std::error::Error> = Some(source);
                while let Some(e) = cause {
                    causes.push(e.to_string());
                    cause = e.source();
                }
                FetchError::Unreachable(format!("{}: {}", self.endpoint(), causes.join(": ")))
            }
            HFError::EntryNotFound { .. } => FetchError::Failed(anyhow!(
                "{at}: no such file (404); check the path and repo in the manifest"
            )),
            HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => {
                FetchError::Failed(anyhow!("{at}: {error}; check the repo and revision"))
            }
            HFError::AuthRequired { .. } | HFError::Forbidden { .. } => {
                FetchError::Failed(anyhow!(
                "{at}: {error}; the repo is gated or private (accept its licence on the hub and \
                 set HF_TOKEN), or it does not exist"
            ))
            }
            _ => FetchError::Failed(anyhow!("{at}: {error}")),
        }
    }
}

pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn check_pins(spec: &FileSpec, fetched: &Fetched, what: &str) -> anyhow::Result<()> {
    if let Some(expected) = spec.sha256.as_ref().filter(|e| **e != fetched.sha256) {
        bail!(
            "sha256 mismatch: {what} has {}, pinned {expected}",
            fetched.sha256
        );
    }
    if let Some(expected) = spec.size.filter(|e| *e != fetched.size) {
        bail!("{what} has {} bytes, pinned {expected}", fetched.size);
    }
    Ok(())
}

/// `snapshots/{commit}/{path}` -> `../../blobs/{etag}` (one more `..` per folder in `path`).
fn link_snapshot(repo_dir: &Path, commit: &str, path: &str, etag: &str) -> std::io::Result<()> {
    let link = repo_dir.join("snapshots").join(commit).join(path);
    std::fs::create_dir_all(link.parent().expect("a snapshot file has a folder"))?;
    let depth = path.matches('/').count() + 2;
    let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    symlink(&target, &link)
}

#[cfg(unix)]
pub fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
pub fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn progress_bar(label: &str, size: u64, held: u64) -> ProgressBar {
    let bar = ProgressBar::new(size)
        .with_position(held)
        .with_message(label.to_string());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}
