//! `llm-worker-rbee generate`: one prompt, its tokens streamed to stdout (or one JSON object).

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::{Context, Result};
use clap::Args;
use llm_worker_rbee::{
    Architecture, Backend, Dtype, ModelFiles, Prompt, Request, StopReason, TokenLogprobs, Worker,
};
use serde::Serialize;

use super::args::{DeviceArgs, Format, ModelArgs};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_ids"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; BOS and other special tokens are added as tokenizer_config.json says.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Prompt as token ids, used as given: `--prompt-ids 1,15043,3186`.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub prompt_ids: Option<Vec<u32>>,
    /// How many tokens to generate at most (fewer if an EOS token comes first).
    #[arg(long, value_name = "N")]
    pub max_tokens: usize,
    /// 0 is greedy decoding; above 0, tokens are sampled with --seed.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f64,
    /// Nucleus sampling: sample among the most likely tokens that reach this probability.
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Sample among the K most likely tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Seed of the sampler; the same seed gives the same tokens.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Penalize tokens already in the sequence (1.0 is none).
    #[arg(long, value_name = "R")]
    pub repeat_penalty: Option<f32>,
    /// Do not stop at EOS tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// End once the text contains STRING, which is left out (repeat for up to 4).
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,
    /// With `--format json`: each token's log-probability and the K most likely tokens' (0 to
    /// 20), of the distribution it was chosen from (after --temperature; greedy: temperature 1).
    #[arg(long, value_name = "K")]
    pub logprobs: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// `text` streams the text to stdout and a summary to stderr; `json` prints one object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompt = match (args.prompt, args.prompt_ids) {
        (Some(text), _) => Prompt::Text(text),
        (None, Some(ids)) => Prompt::Ids(ids),
        (None, None) => unreachable!("clap requires --prompt or --prompt-ids"),
    };
    if args.logprobs.is_some() && args.format != Format::Json {
        anyhow::bail!("--logprobs: log-probabilities are printed with --format json only");
    }
    let request = Request {
        prompt,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        repeat_penalty: args.repeat_penalty,
        ignore_eos: args.ignore_eos,
        stop: args.stop,
        logprobs: args.logprobs,
    };
    let options = args.device.load_options();
    let model_dir = &args.model.folder()?;
    let files = ModelFiles::open(model_dir)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;
    // The request is checked and tokenized before the weights are loaded.
    let request = files.prompter().prepare(&request)?;
    let mut worker = Worker::from_files(files, options)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;

    let streaming = args.format == Format::Text;
    let mut stdout = std::io::stdout().lock();
    let generation = worker.generate(&request, |token| {
        if streaming {
            // A closed stdout (e.g. `| head`) stops generation instead of failing.
            if write!(stdout, "{}", token.text)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;

    let info = worker.info();
    let load = worker.load_timings();
    if streaming {
        writeln!(stdout).ok();
        eprintln!(
            "{} tokens, stop: {}, prefill {:.1} ms, decode {:.1} tokens/s ({} on {} {})",
            generation.token_ids.len(),
            generation.stop_reason.name(),
            generation.timings.prefill_ms,
            generation.timings.decode_tokens_per_s,
            info.architecture,
            worker.options().backend,
            worker.options().dtype,
        );
        return Ok(());
    }
    let output = GenerateOutput {
        architecture: info.architecture,
        backend: worker.options().backend,
        dtype: worker.options().dtype,
        prompt_ids: &generation.prompt_ids,
        token_ids: &generation.token_ids,
        text: &generation.text,
        stop_reason: generation.stop_reason,
        logprobs: generation.logprobs.as_deref(),
        timings: Timings {
            load_ms: load.load_ms,
            warmup_ms: load.warmup_ms,
            prefill_ms: generation.timings.prefill_ms,
            decode_ms: generation.timings.decode_ms,
            decode_tokens_per_s: generation.timings.decode_tokens_per_s,
        },
    };
    writeln!(stdout, "{}", serde_json::to_string_pretty(&output)?)?;
    Ok(())
}

/// `generate --format json`: one object, fields in this order.
#[derive(Serialize)]
struct GenerateOutput<'a> {
    architecture: &'static dyn Architecture,
    backend: Backend,
    dtype: Dtype,
    prompt_ids: &'a [u32],
    token_ids: &'a [u32],
    text: &'a str,
    stop_reason: StopReason,
    /// One per token, with `--logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<&'a [TokenLogprobs]>,
    timings: Timings,
}

#[derive(Serialize)]
struct Timings {
    load_ms: f64,
    warmup_ms: f64,
    prefill_ms: f64,
    decode_ms: f64,
    decode_tokens_per_s: f64,
}
