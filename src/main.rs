//! tessera command line: `generate` and `chat` (the HTTP `serve` command arrives with the
//! HTTP layer). Parsing only; the work lives in `tessera::cli`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tessera::config::{default_model_path, parse_bytes, EngineConfig};
use tessera::engine::request::SamplingParams;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "OpenAI-compatible LLM inference server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt and print it as it streams.
    Generate {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// The prompt (a user message, unless --raw).
        #[arg(long, short)]
        prompt: String,
        /// Send the prompt as raw text instead of through the chat template.
        #[arg(long)]
        raw: bool,
    },
    /// Chat interactively (multi-turn) on the terminal.
    Chat {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// System message.
        #[arg(long)]
        system: Option<String>,
    },
    /// Measure in-process throughput: N concurrent greedy requests of fixed length.
    Bench {
        #[command(flatten)]
        engine: EngineArgs,
        /// Concurrency levels to run, e.g. 1,32.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
    },
}

/// Engine flags (vLLM names); every flag is also read from `TESSERA_*`.
#[derive(Args)]
struct EngineArgs {
    /// GGUF model file (default: the fetched SmolLM2-135M-Instruct Q4_1).
    #[arg(long, env = "TESSERA_MODEL")]
    model: Option<PathBuf>,
    #[arg(long, env = "TESSERA_MAX_NUM_SEQS", default_value_t = 64)]
    max_num_seqs: usize,
    #[arg(long, env = "TESSERA_MAX_NUM_BATCHED_TOKENS", default_value_t = 1024)]
    max_num_batched_tokens: usize,
    /// Maximum prompt + output tokens (default: the model's context length).
    #[arg(long, env = "TESSERA_MAX_MODEL_LEN")]
    max_model_len: Option<usize>,
    #[arg(long, env = "TESSERA_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// KV cache size, e.g. 1GiB, 512MiB.
    #[arg(long, env = "TESSERA_KV_CACHE_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    kv_cache_memory: u64,
    /// Exact number of KV blocks (overrides --kv-cache-memory).
    #[arg(long, env = "TESSERA_NUM_KV_BLOCKS")]
    num_kv_blocks: Option<usize>,
    #[arg(long, env = "TESSERA_NO_PREFIX_CACHING")]
    no_prefix_caching: bool,
    /// Compute threads (default: available cores).
    #[arg(long, env = "TESSERA_THREADS", default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct SamplingArgs {
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long)]
    ignore_eos: bool,
}

impl EngineArgs {
    fn config(&self) -> (PathBuf, EngineConfig) {
        let cfg = EngineConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            block_size: self.block_size,
            kv_cache_memory: self.kv_cache_memory,
            num_kv_blocks: self.num_kv_blocks,
            enable_prefix_caching: !self.no_prefix_caching,
            long_prefill_token_threshold: 0,
            num_threads: self.threads,
        };
        (self.model.clone().unwrap_or_else(default_model_path), cfg)
    }
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone(),
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            ..SamplingParams::default()
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate {
            engine,
            sampling,
            prompt,
            raw,
        } => {
            let (path, cfg) = engine.config();
            tessera::cli::start_engine(&path, &cfg)
                .and_then(|e| tessera::cli::generate(&e, prompt, *raw, sampling.params()))
        }
        Command::Chat {
            engine,
            sampling,
            system,
        } => {
            let (path, cfg) = engine.config();
            tessera::cli::start_engine(&path, &cfg)
                .and_then(|e| tessera::cli::chat(&e, system.as_deref(), sampling.params()))
        }
        Command::Bench {
            engine,
            concurrency,
            prompt_len,
            max_tokens,
        } => {
            let (path, cfg) = engine.config();
            tessera::cli::start_engine(&path, &cfg).and_then(|e| {
                for &c in concurrency {
                    let r = tessera::cli::bench(&e, c, *prompt_len, *max_tokens)?;
                    println!(
                        "concurrency {c:>3}: {:>6} tokens in {:>6.2}s = {:>7.1} output tok/s | \
                         ttft {:>7.1} ms | per-stream decode {:>6.1} tok/s",
                        r.output_tokens,
                        r.seconds,
                        r.output_tokens as f64 / r.seconds,
                        r.ttft_ms,
                        r.decode_tok_s
                    );
                }
                Ok(())
            })
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
