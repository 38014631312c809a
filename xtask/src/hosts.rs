//! `cargo xtask test --host NAME`: the suite on the hosts of ci/hosts.toml, in parallel, over
//! the system's ssh and rsync. A bundle host gets the bundle it lacks (rsync by checksum: a
//! second run moves nothing); a source host gets the source of the current commit and builds the
//! bundle's folder there. Either runs the bundle's run.sh, and its results archive comes back into
//! target/conformance/hosts/<name>/ only when its sha256 matches the host's. A host that cannot
//! be reached, fails to build, fails, or runs past its timeout is that host's error; the others
//! still report.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conformance::record::TrialRecord;
use conformance::report::Report;
use conformance::trial::Transport;
use flate2::read::GzDecoder;
use llm_worker_rbee_api::{Backend, Dtype};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use xshell::Shell;

use crate::harness;
use crate::paths::{conformance_dir, project_root, SOURCE_COMMIT_FILE};

/// How long a host may take to answer ssh at all.
const CONNECT_TIMEOUT_S: u32 = 10;

/// How long stopping a timed-out run on its host may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes cargo findable by a non-interactive ssh shell (rustup's env file), or stops with what
/// to do.
const CARGO_ON_PATH: &str = "{ [ ! -f \"$HOME/.cargo/env\" ] || . \"$HOME/.cargo/env\"; } && \
     { command -v cargo > /dev/null || { echo 'no cargo on the PATH there: install Rust \
     (rustup), or give the host binaries = \"bundle\"' >&2; exit 1; }; }";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    hosts: Vec<Host>,
}

/// One host of ci/hosts.toml (the file documents each field).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    pub ssh: String,
    pub ssh_config: Option<PathBuf>,
    pub backends: Vec<Backend>,
    pub dtypes: Vec<Dtype>,
    pub workdir: String,
    pub binaries: Binaries,
    timeout: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Binaries {
    Bundle,
    Source,
}

pub fn hosts_file() -> PathBuf {
    project_root().join("ci/hosts.toml")
}

/// The hosts of `path`, checked: unique names, something to run, a relative workdir.
pub fn load(path: &Path) -> Result<Vec<Host>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: HostsFile =
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    let mut names = BTreeSet::new();
    for host in &file.hosts {
        let at = |field: &str| format!("{}: host `{}`: `{field}`", path.display(), host.name);
        if !names.insert(host.name.as_str()) {
            bail!("{}: host `{}` is listed twice", path.display(), host.name);
        }
        if host.backends.is_empty() || host.dtypes.is_empty() {
            bail!(
                "{} and `dtypes` must each name at least one",
                at("backends")
            );
        }
        if host.workdir.is_empty() || host.workdir.starts_with('/') || host.workdir.contains("..") {
            bail!(
                "{} must be a folder relative to the remote home, without `..`",
                at("workdir")
            );
        }
        host.timeout()
            .with_context(|| format!("{} is not a duration like \"30m\"", at("timeout")))?;
    }
    Ok(file.hosts)
}

/// The hosts named (`all` for every one), in the order named.
pub fn select(hosts: &[Host], names: &[String]) -> Result<Vec<Host>> {
    if names.iter().any(|n| n == "all") {
        return Ok(hosts.to_vec());
    }
    names
        .iter()
        .map(|name| {
            hosts
                .iter()
                .find(|h| &h.name == name)
                .cloned()
                .with_context(|| {
                    let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                    format!(
                        "no host `{name}` in {} (known: {})",
                        hosts_file().display(),
                        known.join(", ")
                    )
                })
        })
        .collect()
}

impl Host {
    /// This host building from source instead of receiving the bundle.
    pub fn building_from_source(&self) -> Host {
        Host {
            binaries: Binaries::Source,
            ..self.clone()
        }
    }

    fn timeout(&self) -> Result<Duration> {
        Ok(humantime::parse_duration(
            self.timeout.as_deref().unwrap_or("30m"),
        )?)
    }

    /// The arguments that make ssh reach this host (before the remote command).
    fn ssh_args(&self) -> Vec<String> {
        let mut args = vec![
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-o".to_string(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
        ];
        if let Some(config) = &self.ssh_config {
            args.push("-F".into());
            args.push(project_root().join(config).display().to_string());
        }
        // `user@host:port`; an alias or a plain host has no port.
        match self.ssh.rsplit_once(':') {
            Some((dest, port)) if port.parse::<u16>().is_ok() => {
                args.extend(["-p".to_string(), port.to_string(), dest.to_string()]);
            }
            _ => args.push(self.ssh.clone()),
        }
        args
    }

    fn destination(&self) -> &str {
        match self.ssh.rsplit_once(':') {
            Some((dest, port)) if port.parse::<u16>().is_ok() => dest,
            _ => &self.ssh,
        }
    }

    /// `-e` for rsync: ssh with this host's options, less the destination.
    fn rsync_shell(&self) -> String {
        let mut args = self.ssh_args();
        args.pop();
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        format!("ssh {}", quoted.join(" "))
    }
}

/// What one host gave.
pub struct HostRun {
    pub host: Host,
    pub outcome: Result<HostResults, String>,
}

pub struct HostResults {
    /// Where its results were unpacked: target/conformance/hosts/<name>/.
    pub dir: PathBuf,
    pub reports: Vec<(PathBuf, Report)>,
    /// Bytes of the bundle (or source) rsync sent to the host.
    pub sent_bytes: u64,
    pub pending_snapshots: usize,
}

pub fn results_dir(name: &str) -> PathBuf {
    conformance_dir().join("hosts").join(name)
}

/// Runs the suite on `hosts` in parallel (the backend `only`, else each host's own), prints
/// one table and returns every host's outcome; fails only when nothing could start.
pub fn run(
    hosts: &[Host],
    only: Option<Backend>,
    via: Transport,
    filters: &[String],
) -> Result<Vec<HostRun>> {
    let mut backends: Vec<Backend> = Vec::new();
    for host in hosts.iter().filter(|h| h.binaries == Binaries::Bundle) {
        for backend in host_backends(host, only) {
            if !backends.contains(&backend) {
                backends.push(backend);
            }
        }
    }
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let mut staged = Staged {
        bundles: Vec::new(),
        source: None,
    };
    for backend in backends {
        staged.bundles.push((
            backend,
            crate::bundle::stage(&sh, backend, None, crate::bundle::Contents::Full)?.1,
        ));
    }
    if hosts.iter().any(|h| h.binaries == Binaries::Source) {
        staged.source = Some(stage_source(&sh)?);
    }
    let runs: Vec<HostRun> = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|host| {
                let staged = &staged;
                scope.spawn(move || HostRun {
                    host: host.clone(),
                    outcome: run_host(host, only, via, staged, filters).map_err(|e| {
                        let logs = results_dir(&host.name).with_extension("incoming");
                        format!("{e} (logs in {})", logs.display())
                    }),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a host thread panicked"))
            .collect()
    });
    println!("\n{}", table(&runs));
    Ok(runs)
}

/// What was laid out here for the hosts: a bundle folder per backend, and the source tree.
struct Staged {
    bundles: Vec<(Backend, PathBuf)>,
    source: Option<PathBuf>,
}

/// The source of the current commit, as `git archive` gives it, in target/hosts-source/ with
/// its commit named in SOURCE_COMMIT_FILE. Uncommitted changes are not in it.
fn stage_source(sh: &Shell) -> Result<PathBuf> {
    let (commit, dirty) = harness::git_state(sh);
    if dirty {
        eprintln!(
            "hosts: the working tree has uncommitted changes; source hosts build commit {commit} without them"
        );
    }
    let tree = xshell::cmd!(sh, "git archive --format=tar HEAD")
        .output()
        .context("git archive of the current commit")?
        .stdout;
    let dir = crate::paths::target_dir().join("hosts-source");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    tar::Archive::new(tree.as_slice())
        .unpack(&dir)
        .with_context(|| format!("unpacking the source into {}", dir.display()))?;
    std::fs::write(dir.join(SOURCE_COMMIT_FILE), format!("{commit}\n"))?;
    Ok(dir)
}

fn host_backends(host: &Host, only: Option<Backend>) -> Vec<Backend> {
    match only {
        Some(backend) => host
            .backends
            .iter()
            .copied()
            .filter(|b| *b == backend)
            .collect(),
        None => host.backends.clone(),
    }
}

fn run_host(
    host: &Host,
    only: Option<Backend>,
    via: Transport,
    staged: &Staged,
    filters: &[String],
) -> Result<HostResults, String> {
    let dir = results_dir(&host.name);
    // No report from an earlier run may stand for this one.
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    let incoming = dir.with_extension("incoming");
    if incoming.exists() {
        std::fs::remove_dir_all(&incoming).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(&incoming).map_err(|e| e.to_string())?;
    let backends = host_backends(host, only);
    if backends.is_empty() {
        return Err(format!(
            "has no backend {} (it lists {:?})",
            only.map(|b| b.name()).unwrap_or_default(),
            host.backends
        ));
    }
    let deadline = Instant::now() + host.timeout().map_err(|e| e.to_string())?;
    let ssh_log = incoming.join("ssh.log");
    let mut reach = Command::new("ssh");
    reach.args(host.ssh_args()).arg("true");
    run_logged(reach, &ssh_log, deadline).map_err(|e| format!("unreachable: {e}"))?;
    let mut sent_bytes = 0;
    let source = format!("{}/source", host.workdir);
    if host.binaries == Binaries::Source {
        let tree = staged.source.as_ref().expect("the source is staged");
        ssh(host, &format!("mkdir -p '{source}'"), &ssh_log, deadline)?;
        // The host's target/ keeps its build between runs.
        sent_bytes += sync(host, tree, &source, "/target/", &incoming, deadline)
            .map_err(|e| format!("cannot sync the source: {e}"))?;
    }
    for backend in backends {
        let archive = format!("{}/results-{backend}.tar.gz", host.workdir);
        ssh(host, &format!("rm -f '{archive}'"), &ssh_log, deadline)?;
        let bundle = match host.binaries {
            Binaries::Bundle => {
                let stage = &staged
                    .bundles
                    .iter()
                    .find(|(b, _)| *b == backend)
                    .expect("staged")
                    .1;
                let bundle = format!("{}/llm-worker-rbee-{backend}", host.workdir);
                ssh(host, &format!("mkdir -p '{bundle}'"), &ssh_log, deadline)?;
                // The fixtures the host made are kept.
                sent_bytes += sync(host, stage, &bundle, "/fixtures/", &incoming, deadline)
                    .map_err(|e| format!("cannot sync the bundle: {e}"))?;
                bundle
            }
            Binaries::Source => {
                let build = format!(
                    "cd '{source}' && {CARGO_ON_PATH} && cargo xtask bundle --backend {backend} --folder-only"
                );
                let log = incoming.join(format!("build-{backend}.log"));
                ssh(host, &build, &log, deadline)
                    .map_err(|e| format!("the build there failed: {e}"))?;
                format!("{source}/target/bundle/llm-worker-rbee-{backend}")
            }
        };
        let mut command = format!("cd '{bundle}' && ./run.sh --host-label '{}'", host.name);
        for dtype in &host.dtypes {
            command.push_str(&format!(" --dtype {dtype}"));
        }
        command.push_str(&format!(" --via {via} --out \"$HOME/{archive}\""));
        if !filters.is_empty() {
            command.push_str(" --");
            for filter in filters {
                command.push_str(&format!(" '{filter}'"));
            }
        }
        // run.sh exits non-zero when trials failed: those are results, so its archive is
        // fetched whatever its exit status.
        let log = incoming.join(format!("run-{backend}.log"));
        let ran = ssh(host, &command, &log, deadline);
        fetch(host, &archive, &incoming, deadline).map_err(|e| match &ran {
            Err(run) => format!("{run}; no results came back ({e})"),
            Ok(()) => e,
        })?;
    }
    std::fs::rename(&incoming, &dir).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    let results = dir.join("results");
    for run in crate::results::run_dirs(&results).map_err(|e| format!("{e:#}"))? {
        let label = run.file_name().unwrap_or_default().to_string_lossy();
        if !label.starts_with("fault-injection") {
            let path = run.join("report.json");
            let report = Report::load(&path).map_err(|e| e.to_string())?;
            reports.push((path, report));
        }
    }
    let pending_snapshots = std::fs::read_dir(results.join("snapshots"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    Ok(HostResults {
        dir,
        reports,
        sent_bytes,
        pending_snapshots,
    })
}

/// Runs `command` on the host as a run does, its output appended to `log`; past `within`, it is
/// stopped here and there.
pub fn run_remote(host: &Host, command: &str, log: &Path, within: Duration) -> Result<(), String> {
    ssh(host, command, log, Instant::now() + within)
}

/// Runs `command` on the host, its output appended to `log`; an error past `deadline`, when
/// what it started there is stopped too.
fn ssh(host: &Host, command: &str, log: &Path, deadline: Instant) -> Result<(), String> {
    // sshd starts the remote shell as a session (and so process group) leader: its pid names
    // every process the command started.
    let pid_file = format!("{}/remote.pid", host.workdir);
    let mut ssh = Command::new("ssh");
    ssh.args(host.ssh_args()).arg(format!(
        "mkdir -p '{}' && echo $$ > '{pid_file}' && {command}",
        host.workdir
    ));
    let ran = run_logged(ssh, log, deadline);
    if ran.is_err() && Instant::now() > deadline {
        let mut stop = Command::new("ssh");
        stop.args(host.ssh_args()).arg(format!(
            "kill -TERM -- -$(cat '{pid_file}') 2> /dev/null; rm -f '{pid_file}'"
        ));
        let stopped = run_logged(stop, log, Instant::now() + STOP_TIMEOUT);
        return Err(match (ran, stopped) {
            (Err(e), Ok(())) => format!("{e}, here and there"),
            (Err(e), Err(stop)) => format!("{e} here; stopping it there failed: {stop}"),
            (Ok(()), _) => unreachable!(),
        });
    }
    ran
}

/// Runs `command` with stdout and stderr appended to `log`, killed at `deadline`.
fn run_logged(mut command: Command, log: &Path, deadline: Instant) -> Result<(), String> {
    let file = || {
        File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot write {}: {e}", log.display()))
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file()?)
        .stderr(file()?)
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!("{} ({status}): {last}", program(&command)));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} was still running at the host's timeout; stopped",
                program(&command)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn program(command: &Command) -> String {
    command.get_program().to_string_lossy().into_owned()
}

/// Syncs the folder `local` to `remote` by checksum, deleting what `local` lacks except under
/// `keep` (an rsync pattern); returns the bytes of file data sent.
fn sync(
    host: &Host,
    local: &Path,
    remote: &str,
    keep: &str,
    incoming: &Path,
    deadline: Instant,
) -> Result<u64, String> {
    let log = incoming.join("rsync.log");
    let mut rsync = Command::new("rsync");
    rsync
        .args(["-a", "--checksum", "--delete", "--exclude", keep, "--stats"])
        .arg("-e")
        .arg(host.rsync_shell())
        .arg(format!("{}/", local.display()))
        .arg(format!("{}:{remote}/", host.destination()));
    run_logged(rsync, &log, deadline)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The last run's figure: "Total transferred file size: 1,234 bytes".
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("Total transferred file size: "))
        .and_then(|v| v.trim_end_matches(" bytes").replace(',', "").parse().ok())
        .ok_or_else(|| format!("rsync printed no transfer size into {}", log.display()))
}

/// Brings `archive` back and unpacks it into `into`, only when its sha256 equals the host's.
fn fetch(host: &Host, archive: &str, into: &Path, deadline: Instant) -> Result<(), String> {
    let sums = into.join("sha256.txt");
    ssh(host, &format!("sha256sum '{archive}'"), &sums, deadline)
        .map_err(|e| format!("the host has no results archive: {e}"))?;
    let expected = std::fs::read_to_string(&sums)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let local = into.join(Path::new(archive).file_name().unwrap_or_default());
    let mut rsync = Command::new("rsync");
    rsync
        .args(["-a", "-e", &host.rsync_shell()])
        .arg(format!("{}:{archive}", host.destination()))
        .arg(&local);
    run_logged(rsync, &into.join("rsync.log"), deadline)
        .map_err(|e| format!("cannot fetch the results: {e}"))?;
    let mut hasher = Sha256::new();
    let mut file = File::open(&local).map_err(|e| e.to_string())?;
    std::io::copy(&mut file, &mut hasher).map_err(|e| e.to_string())?;
    let actual = conformance::hash::hex(&hasher.finalize());
    if actual != expected {
        return Err(format!(
            "the results archive did not arrive whole (sha256 {actual}, the host's {expected})"
        ));
    }
    tar::Archive::new(GzDecoder::new(
        File::open(&local).map_err(|e| e.to_string())?,
    ))
    .unpack(into)
    .map_err(|e| format!("cannot unpack {}: {e}", local.display()))
}

/// One table: rows = models, columns = host/backend-dtype; then each host's error or summary.
fn table(runs: &[HostRun]) -> String {
    let mut columns: Vec<(String, &TrialRecord)> = Vec::new();
    let mut notes = String::new();
    for run in runs {
        match &run.outcome {
            Ok(results) => {
                for (_, report) in &results.reports {
                    let label = format!(
                        "{}/{}-{}",
                        run.host.name, report.run.backend, report.run.dtype
                    );
                    columns.extend(report.trials.iter().map(|t| (label.clone(), t)));
                }
                notes.push_str(&format!(
                    "{}: {} reports, {} pending snapshots, {} bytes sent; {}\n",
                    run.host.name,
                    results.reports.len(),
                    results.pending_snapshots,
                    results.sent_bytes,
                    results.dir.display()
                ));
            }
            Err(error) => notes.push_str(&format!("{}: error: {error}\n", run.host.name)),
        }
    }
    format!("{}\n{notes}", conformance::table::table_by_column(&columns))
}

/// What `cargo xtask test --host ...` asks for.
pub struct Test<'a> {
    /// Host names of the hosts file, or `all`.
    pub names: &'a [String],
    /// The hosts file [default: ci/hosts.toml].
    pub file: Option<&'a Path>,
    /// The backend to run on every host, else each host's own.
    pub backend: Option<Backend>,
    pub via: Transport,
    pub filters: &'a [String],
    /// Keep each host's reports in golden/reports/.
    pub record: bool,
}

/// `cargo xtask test --host ...`: run, keep what came back, and fail if any host did.
pub fn test(args: &Test) -> Result<()> {
    let file = args.file.map_or_else(hosts_file, Path::to_path_buf);
    let hosts = select(&load(&file)?, args.names)?;
    let runs = run(&hosts, args.backend, args.via, args.filters)?;
    let mut failed = Vec::new();
    for run in &runs {
        match &run.outcome {
            Ok(results) => {
                crate::results::take_snapshots(&results.dir.join("results"))?;
                let trials: usize = results.reports.iter().map(|(_, r)| r.failed()).sum();
                if trials > 0 {
                    failed.push(format!("{}: {trials} trials failed", run.host.name));
                }
                if args.record {
                    for (path, report) in &results.reports {
                        harness::record(report, path, &[])?;
                    }
                }
            }
            Err(error) => failed.push(format!("{}: {error}", run.host.name)),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = r#"
        [[hosts]]
        name = "box"
        ssh = "me@box.local:2200"
        backends = ["cuda"]
        dtypes = ["f32", "bf16"]
        workdir = "rbee"
        binaries = "bundle"
    "#;

    fn parse(text: &str) -> Result<Vec<Host>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn the_committed_hosts_file_loads() {
        let hosts = load(&hosts_file()).unwrap();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["test-a", "test-b"]);
    }

    #[test]
    fn a_destination_with_a_port_becomes_ssh_arguments() {
        let host = &parse(HOST).unwrap()[0];
        let args = host.ssh_args();
        assert_eq!(args[args.len() - 3..], ["-p", "2200", "me@box.local"]);
        assert_eq!(host.destination(), "me@box.local");
        assert_eq!(host.timeout().unwrap(), Duration::from_secs(30 * 60));
        assert!(host.rsync_shell().starts_with("ssh '-o' 'BatchMode=yes'"));
    }

    #[test]
    fn bad_entries_are_refused_with_the_host_and_field() {
        let twice = format!("{HOST}\n{HOST}");
        let error = parse(&twice).unwrap_err().to_string();
        assert!(error.contains("host `box` is listed twice"), "{error}");
        let absolute = HOST.replace(r#"workdir = "rbee""#, r#"workdir = "/srv/rbee""#);
        let error = parse(&absolute).unwrap_err().to_string();
        assert!(error.contains("host `box`: `workdir`"), "{error}");
        let timeout = HOST.replace("binaries", "timeout = \"soon\"\nbinaries");
        let error = parse(&timeout).unwrap_err().to_string();
        assert!(error.contains("`timeout` is not a duration"), "{error}");
        let unknown = HOST.replace("binaries", "colour = \"red\"\nbinaries");
        assert!(parse(&unknown).is_err());
    }

    #[test]
    fn an_unknown_host_is_refused_with_the_known_ones() {
        let hosts = parse(HOST).unwrap();
        let error = select(&hosts, &["other".into()]).unwrap_err().to_string();
        assert!(error.contains("no host `other`"), "{error}");
        assert!(error.contains("(known: box)"), "{error}");
        assert_eq!(select(&hosts, &["all".into()]).unwrap().len(), 1);
    }
}
