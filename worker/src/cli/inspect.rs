//! `llm-worker-rbee inspect`: what was detected in a model folder, without loading weights.

use anyhow::{Context, Result};
use clap::Args;
use llm_worker_rbee::ModelInfo;

use super::args::{Format, ModelArgs};

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let model_dir = &args.model.folder()?;
    let info = ModelInfo::inspect(model_dir)
        .with_context(|| format!("cannot read the model in {}", model_dir.display()))?;
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let d = &info.dims;
    println!("model:          {}", info.model_dir.display());
    println!("architecture:   {}", info.architecture);
    println!(
        "layers:         {} x hidden {} (intermediate {}), {} heads / {} kv heads of {}",
        d.num_layers, d.hidden_size, d.intermediate_size, d.num_heads, d.num_kv_heads, d.head_dim
    );
    println!(
        "vocabulary:     model {}, tokenizer {}",
        d.vocab_size, info.tokenizer_vocab_size
    );
    println!(
        "context:        {} tokens (max_position_embeddings {})",
        info.context_length, d.max_position_embeddings
    );
    println!("sliding window: {}", serde_json::to_string(&info.window)?);
    println!("rope:           {}", serde_json::to_string(&info.rope)?);
    println!("tied output:    {}", info.tie_word_embeddings);
    println!("bos added:      {:?}", info.bos_token_id);
    println!("eos ids:        {:?}", info.eos_token_ids);
    let c = &info.checkpoint;
    println!(
        "checkpoint:     {} tensors, {} parameters, {} bytes in {} file(s), dtypes {:?}",
        c.tensors,
        c.parameters,
        c.file_bytes,
        c.files.len(),
        c.dtypes
    );
    if !info.unrecognized_config_keys.is_empty() {
        println!(
            "unrecognized:   {} (not read by the worker; check they do not change the math)",
            info.unrecognized_config_keys.join(", ")
        );
    }
    Ok(())
}
