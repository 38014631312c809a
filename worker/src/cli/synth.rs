//! `llm-worker-rbee synth`: models with random weights, the fixture models or the shape of a
//! real one; or a GGUF model written back as a SafeTensors folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llm_worker_rbee::synth::{self, shape};
use llm_worker_rbee::Dtype;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("models").required(true).args(["shape", "fixtures", "from_gguf"])))]
pub struct SynthArgs {
    /// The real model whose shape to copy.
    #[arg(long, value_enum)]
    pub shape: Option<shape::Shape>,
    /// With --shape: the dtype of the stored weights.
    #[arg(long, value_enum, default_value_t = Dtype::Bf16)]
    pub dtype: Dtype,
    /// Every fixture model the tests run on, one folder each under --out.
    #[arg(long)]
    pub fixtures: bool,
    /// A GGUF model (a .gguf file or a folder with one) as a SafeTensors folder: f32 weights
    /// under transformers' names, config.json from the metadata, the tokenizer and chat
    /// template from the files beside it or else from the metadata. Or the id of a fetched
    /// model.
    #[arg(long, value_name = "FILE|DIR|ID")]
    pub from_gguf: Option<PathBuf>,
    /// Keep what is there: fixtures whose folder has its weights, a shape folder that is
    /// complete (its synth-shape.json, written last, says so).
    #[arg(long)]
    pub missing: bool,
    /// The folder to write (created; files in it are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: SynthArgs) -> Result<()> {
    if let Some(gguf) = &args.from_gguf {
        let gguf = llm_worker_rbee::model_id::resolve(gguf)?;
        synth::write_safetensors(&gguf, &args.out)?;
        eprintln!(
            "{} written as SafeTensors into {}",
            gguf.display(),
            args.out.display()
        );
        println!("{}", args.out.display());
        return Ok(());
    }
    let Some(shape) = args.shape else {
        if !args.missing {
            std::fs::remove_dir_all(&args.out).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
        }
        let written = synth::write_missing(&args.out)?;
        eprintln!(
            "{} fixtures written into {}",
            written.len(),
            args.out.display()
        );
        println!("{}", args.out.display());
        return Ok(());
    };
    let complete = shape::read_shape_info(&args.out)
        .is_some_and(|info| info.shape == shape && info.dtype == args.dtype);
    if args.missing && complete {
        eprintln!(
            "{} already holds the {} shape in {}",
            args.out.display(),
            shape.name(),
            args.dtype
        );
        println!("{}", args.out.display());
        return Ok(());
    }
    let total = shape.weight_bytes(args.dtype);
    eprintln!(
        "writing the {} shape in {} ({:.2} GB of weights) into {}",
        shape.name(),
        args.dtype,
        total as f64 / 1e9,
        args.out.display()
    );
    let last_tenth = std::sync::atomic::AtomicU64::new(0);
    let progress = |done: u64, total: u64| {
        let tenth = done * 10 / total.max(1);
        if tenth > last_tenth.swap(tenth, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("  {}%", tenth * 10);
        }
    };
    shape::write_shape(shape, args.dtype, &args.out, &progress)?;
    println!("{}", args.out.display());
    Ok(())
}
