//! `llm-worker-rbee synth`: a random-weight model with the shape of a real one.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llm_worker_rbee::Dtype;

#[derive(Args)]
pub struct SynthArgs {
    /// The real model whose shape to copy.
    #[arg(long, value_enum)]
    pub shape: llm_worker_rbee::synth::shape::Shape,
    /// The dtype of the stored weights.
    #[arg(long, value_enum, default_value_t = Dtype::Bf16)]
    pub dtype: Dtype,
    /// The folder to write (created; files in it are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let total = args.shape.weight_bytes(args.dtype);
    eprintln!(
        "writing the {} shape in {} ({:.2} GB of weights) into {}",
        args.shape.name(),
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
    llm_worker_rbee::synth::shape::write_shape(args.shape, args.dtype, &args.out, &progress)?;
    println!("{}", args.out.display());
    Ok(())
}
