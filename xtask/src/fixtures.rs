//! `cargo xtask fixtures`: the tiny random-weight models the tests run on, and the GGUF models
//! quantized from some of them, written afresh and checked (`conformance/examples/fixtures.rs`,
//! built with the harness); or a model with a real model's shape (`llm-worker-rbee synth`).

use std::path::PathBuf;

use anyhow::Result;
use llm_worker_rbee_api::Dtype;
use xshell::{cmd, Shell};

use crate::paths::{fixtures_dir, project_root, shape_dir, target_dir};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Where to write the fixtures [default: target/fixtures].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Rewrite conformance/fixtures.lock from the files written now: the deliberate way to
    /// change a fixture.
    #[arg(long)]
    update_lock: bool,
    /// For one fixture, try seeds from --from up and print the first whose decoding passes the
    /// checks (to pick its `seed` in worker/src/arch/ after changing its shape).
    #[arg(long, value_name = "ID")]
    search_seed: Option<String>,
    /// With --search-seed: the first seed to try.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SEED",
        requires = "search_seed"
    )]
    from: u64,
    /// Instead of the fixtures: a random-weight model with this real model's shape
    /// (tinyllama-1.1b, qwen2.5-0.5b, phi-2, mistral-7b: `llm-worker-rbee synth --help`), for
    /// `cargo xtask bench`; written to target/shapes/<shape>-<dtype>/ or --out.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["update_lock", "search_seed"])]
    shape: Option<String>,
    /// With --shape: the dtype of its weights.
    #[arg(long, value_enum, default_value_t = Dtype::Bf16, requires = "shape")]
    dtype: Dtype,
}

pub fn run(args: &Args) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    if let Some(shape) = &args.shape {
        let dtype = args.dtype.name();
        let out = args.out.clone().unwrap_or_else(|| shape_dir(shape, dtype));
        cmd!(
            sh,
            "cargo run -p llm-worker-rbee -- synth --shape {shape} --dtype {dtype} --out {out}"
        )
        .run()?;
        return Ok(());
    }
    let out = args.out.clone().unwrap_or_else(fixtures_dir);
    let mut flags = vec!["--out".to_string(), out.display().to_string()];
    if args.update_lock {
        flags.push("--update-lock".into());
    }
    if let Some(id) = &args.search_seed {
        let scratch = target_dir().join("fixture-seed-search");
        flags = vec![
            "--out".into(),
            scratch.display().to_string(),
            "--search-seed".into(),
            id.clone(),
            "--from".into(),
            args.from.to_string(),
        ];
    }
    examples_fixtures(&sh, &flags)
}

/// Writes the fixtures whose folder is missing into target/fixtures (this command checks
/// their bytes).
pub fn write_missing() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let out = fixtures_dir().display().to_string();
    examples_fixtures(&sh, &["--out".into(), out, "--missing".into()])
}

/// Runs `conformance/examples/fixtures.rs`: an example, so that it shares the harness's build.
fn examples_fixtures(sh: &Shell, flags: &[String]) -> Result<()> {
    Ok(cmd!(
        sh,
        "cargo run -p conformance --example fixtures -- {flags...}"
    )
    .run()?)
}
