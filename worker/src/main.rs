use std::io::Write;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llm_worker_rbee::serve::ServeOptions;
use llm_worker_rbee::{
    Architecture, Backend, Dtype, LoadOptions, ModelInfo, Prompt, Request, StopReason, Worker,
};
use serde::Serialize;

/// A minimal LLM inference worker: loads a model folder (Hugging Face layout, SafeTensors or
/// GGUF) or a model fetched by `cargo xtask fetch-models`, detects its architecture and
/// generates tokens deterministically.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate tokens for one prompt and print them as they come (or one JSON object).
    Generate(GenerateArgs),
    /// Print what was detected in a model folder, without loading the weights.
    Inspect(InspectArgs),
    /// Serve generations over HTTP: `POST /execute` streams tokens as server-sent events,
    /// `GET /health` and `GET /metrics` report the state. Prints `listening on http://ADDR`
    /// once listening; `/health` says `ready` once the model is loaded. Logs JSON lines to
    /// stderr. SIGTERM or ctrl-c cancels the running generation and exits.
    Serve(ServeArgs),
    /// Write a random-weight model with the shape of a real one (its config's sizes, a made-up
    /// tokenizer of its vocabulary size), for measuring speed and memory without downloads.
    Synth(SynthArgs),
    /// Measure load time, prefill and decode speed, memory and the memory-bandwidth roofline
    /// of a model, and the same decode as a plain candle loop; `--check` compares the figures
    /// with targets. Figures, not tests.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder: config.json, tokenizer.json, model.safetensors (or an index and shards),
    /// optionally generation_config.json and tokenizer_config.json; or tokenizer.json and one
    /// .gguf file. Or the id of a model fetched and verified by `cargo xtask fetch-models`.
    #[arg(long, value_name = "DIR|ID")]
    model: PathBuf,
}

impl ModelArgs {
    /// The folder to load: the path given, or the verified folder of a fetched model's id.
    fn folder(&self) -> Result<PathBuf> {
        Ok(llm_worker_rbee::model_id::resolve(&self.model)?)
    }
}

#[derive(Args)]
struct DeviceArgs {
    /// Where to run; `cuda` and `metal` need a binary built with that cargo feature.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Device ordinal for cuda and metal.
    #[arg(long, default_value_t = 0, value_name = "N")]
    device: usize,
    /// Floating-point type for weights and activations. On CPU, bf16 is far slower than f32.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_ids"])))]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; BOS and other special tokens are added as tokenizer_config.json says.
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt as token ids, used as given: `--prompt-ids 1,15043,3186`.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    prompt_ids: Option<Vec<u32>>,
    /// How many tokens to generate at most (fewer if an EOS token comes first).
    #[arg(long, value_name = "N")]
    max_tokens: usize,
    /// 0 is greedy decoding; above 0, tokens are sampled with --seed.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f64,
    /// Nucleus sampling: sample among the most likely tokens that reach this probability.
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
    /// Sample among the K most likely tokens.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Seed of the sampler; the same seed gives the same tokens.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Penalize tokens already in the sequence (1.0 is none).
    #[arg(long, value_name = "R")]
    repeat_penalty: Option<f32>,
    /// Do not stop at EOS tokens.
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// `text` streams the text to stdout and a summary to stderr; `json` prints one object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Address to listen on; the loopback interface unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one (see the `listening on` line).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How many requests may wait while one generates; more get 503 with Retry-After.
    #[arg(long, default_value_t = 32, value_name = "N")]
    queue: usize,
}

#[derive(Args)]
struct SynthArgs {
    /// The real model whose shape to copy.
    #[arg(long, value_enum)]
    shape: llm_worker_rbee::synth::shape::Shape,
    /// The dtype of the stored weights.
    #[arg(long, value_enum, default_value_t = Dtype::Bf16)]
    dtype: Dtype,
    /// The folder to write (created; files in it are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    options: llm_worker_rbee::bench::BenchOptions,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Compare the figures with the targets of this file (ci/bench/targets.toml) that apply to
    /// this backend, dtype and shape; exit 1 if one is missed.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// `text`: progress on stderr, a table on stdout; `json`: the figures on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[path = "cli/bench.rs"]
mod bench;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let outcome = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Inspect(args) => inspect(args),
        Command::Serve(args) => serve(args),
        Command::Synth(args) => synth(args),
        Command::Bench(args) => bench::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (`RUST_LOG` filters them): for `serve`, JSON lines from level info, each
/// line of a job carrying its `job_id`; otherwise text from level warn.
fn init_logging(serving: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if serving { "info" } else { "warn" })
    });
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if serving {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.init();
    }
}

impl DeviceArgs {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            backend: self.backend,
            device: self.device,
            dtype: self.dtype,
        }
    }
}

fn synth(args: SynthArgs) -> Result<()> {
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

fn serve(args: ServeArgs) -> Result<()> {
    llm_worker_rbee::serve::run(ServeOptions {
        model_dir: args.model.folder()?,
        model: args.model.model.display().to_string(),
        load: args.device.load_options(),
        host: args.host,
        port: args.port,
        queue: args.queue,
    })
}

fn generate(args: GenerateArgs) -> Result<()> {
    let prompt = match (args.prompt, args.prompt_ids) {
        (Some(text), _) => Prompt::Text(text),
        (None, Some(ids)) => Prompt::Ids(ids),
        (None, None) => unreachable!("clap requires --prompt or --prompt-ids"),
    };
    let request = Request {
        prompt,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        repeat_penalty: args.repeat_penalty,
        ignore_eos: args.ignore_eos,
    };
    // Parameter errors are reported before the model is loaded.
    request.validate()?;
    let options = args.device.load_options();
    let model_dir = &args.model.folder()?;
    let mut worker = Worker::load(model_dir, options)
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
    architecture: Architecture,
    backend: Backend,
    dtype: Dtype,
    prompt_ids: &'a [u32],
    token_ids: &'a [u32],
    text: &'a str,
    stop_reason: StopReason,
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

fn inspect(args: InspectArgs) -> Result<()> {
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
