//! The command line's arguments (clap): `serve`'s flags, each with its `TESSERA_*`
//! variable, the engine and sampling flags `generate`, `chat` and `bench` share, and the
//! `feedback` / `audit` subcommands; each group turns itself into the library's config.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::Device;
use crate::config::{default_model_path, parse_bytes, EngineConfig, LoraOptions};
use crate::metrics::MetricsCompat;
use crate::model::kv_storage::KvCacheDtype;
use crate::model::quantize::Quantization;
use crate::request::SamplingParams;
use crate::server::logging::LogFormat;
use crate::spec_decode::SpecDecodeConfig;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "OpenAI-compatible LLM inference server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible HTTP API (the default model unless --model).
    Serve {
        #[command(flatten)]
        engine: EngineArgs,
        // Boxed: the server's flags make this variant far larger than the others.
        #[command(flatten)]
        server: Box<ServeArgs>,
    },
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
    /// Ratings of answers (thumbs up/down from the chat page and the API).
    Feedback {
        #[command(subcommand)]
        command: FeedbackCommand,
    },
    /// The conversation log: `export` writes what it holds for a time range.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Perplexity of a text file with llama.cpp's llama-perplexity semantics (chunks of
    /// --ctx tokens, the second half of each scored).
    Perplexity {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        args: PerplexityArgs,
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

/// `tessera perplexity`'s own flags (llama-perplexity's names).
#[derive(Args, Debug, Clone)]
pub struct PerplexityArgs {
    /// The text file (not with --kl-divergence: the base file holds the tokens).
    #[arg(
        long,
        required_unless_present = "kl_divergence",
        conflicts_with = "kl_divergence"
    )]
    pub file: Option<PathBuf>,
    /// Tokens per chunk (llama-perplexity's -c; --kl-divergence uses the base file's).
    #[arg(long, default_value_t = 512, conflicts_with = "kl_divergence")]
    pub ctx: usize,
    /// Score at most this many chunks (llama-perplexity's --chunks; default: all).
    #[arg(long, conflicts_with = "kl_divergence")]
    pub chunks: Option<usize>,
    /// Saved log-probabilities, in llama-perplexity's format: written by a run with
    /// --file, read by --kl-divergence (llama-perplexity's files work too).
    #[arg(long, value_name = "FILE")]
    pub kl_divergence_base: Option<PathBuf>,
    /// Compare this model with the rows saved in --kl-divergence-base: KL divergence,
    /// same top token, PPL ratio.
    #[arg(long, requires = "kl_divergence_base")]
    pub kl_divergence: bool,
}

#[derive(Subcommand)]
pub enum FeedbackCommand {
    /// Write the rated conversations as fine-tuning JSONL (`{"messages": [...]}` per
    /// line): OUT_DIR/feedback-good.jsonl and OUT_DIR/feedback-bad.jsonl.
    Export {
        /// First day (UTC) of ratings to export: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
        #[arg(long)]
        since: String,
        /// End (exclusive) of the period; default: now.
        #[arg(long)]
        until: Option<String>,
        /// Directory the two files are written to (created if missing).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// The store to read (as for `serve`).
        #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
        data_dir: PathBuf,
        #[arg(long, env = "TESSERA_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Export the logged exchanges made in [--since, --until) as JSON lines, oldest first,
    /// reading the store directly (the server need not run).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Start of the range: a date (2026-01-31, UTC), a UTC time (2026-01-31T08:00:00Z) or
    /// unix seconds.
    #[arg(long)]
    pub since: String,
    /// End of the range, exclusive (same forms; default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Output format: `jsonl` (one JSON object per exchange and line).
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Where the store is (shared by `serve` and `audit export`).
#[derive(Args)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store of conversations, responses and the
    /// conversation log (created on first start); unused with --database-url.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL store shared by replicas, e.g. postgres://user:password@host:5432/db
    /// (instead of SQLite in --data-dir).
    #[arg(long, env = "TESSERA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StoreArgs {
    pub fn config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig::from_flags(self.data_dir.clone(), self.database_url.clone())
    }
}

/// Engine flags (vLLM names); every flag is also read from `TESSERA_*`.
#[derive(Args)]
pub struct EngineArgs {
    /// GGUF file or Hugging Face model folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, env = "TESSERA_MODEL")]
    pub model: Option<PathBuf>,
    /// Most sequences the engine runs in one step; more wait in the queue.
    #[arg(long, env = "TESSERA_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget of one engine step (longer prompts are prefilled in chunks).
    #[arg(long, env = "TESSERA_MAX_NUM_BATCHED_TOKENS", default_value_t = 1024)]
    pub max_num_batched_tokens: usize,
    /// Maximum prompt + output tokens (default: the model's context length).
    #[arg(long, env = "TESSERA_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// Tokens per KV cache block (the unit of prefix sharing).
    #[arg(long, env = "TESSERA_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// KV cache size, e.g. 1GiB, 512MiB.
    #[arg(long, env = "TESSERA_KV_CACHE_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub kv_cache_memory: u64,
    /// Exact number of KV blocks (overrides --kv-cache-memory).
    #[arg(long, env = "TESSERA_NUM_KV_BLOCKS")]
    pub num_kv_blocks: Option<usize>,
    /// Turn off the prefix cache (equal prompt prefixes no longer share KV blocks).
    #[arg(long, env = "TESSERA_NO_PREFIX_CACHING")]
    pub no_prefix_caching: bool,
    /// Compute threads (default: available cores).
    #[arg(long, env = "TESSERA_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Quantize an F32/F16/BF16 model's weights at load: `q8_0` or `q4_0` (the bits
    /// llama-quantize writes: Q8_0, or `--pure` Q4_0).
    #[arg(long, env = "TESSERA_QUANTIZATION")]
    pub quantization: Option<Quantization>,
    /// A LoRA adapter (GGUF, as llama.cpp's convert_lora_to_gguf.py writes it, or a PEFT
    /// folder) served as `name`: `--lora-modules name=path` (repeatable). Requests select
    /// it with `model: "name"`; more load at run time (`POST /v1/load_lora_adapter`).
    #[arg(long, env = "TESSERA_LORA_MODULES", value_delimiter = ',', value_parser = crate::config::parse_lora_module)]
    pub lora_modules: Vec<(String, PathBuf)>,
    /// Most LoRA adapters loaded at once (start-up and run-time loads together).
    #[arg(long, env = "TESSERA_MAX_LORAS", default_value_t = 1)]
    pub max_loras: usize,
    /// Largest LoRA rank accepted (a larger adapter is refused at load).
    #[arg(long, env = "TESSERA_MAX_LORA_RANK", default_value_t = 16)]
    pub max_lora_rank: usize,
    /// Speculative decoding with a model-free n-gram (prompt-lookup) drafter: a decoding
    /// request's draft is what followed the latest earlier occurrence of its last tokens;
    /// the draft is verified in the same step (output unchanged: greedy identical,
    /// sampling identically distributed). Helps when the output repeats the prompt
    /// (code editing, summaries, extraction). Not for structured-output requests.
    #[arg(long, env = "TESSERA_SPECULATIVE_NGRAM")]
    pub speculative_ngram: bool,
    /// With --speculative-ngram: most draft tokens per request and step (1-32).
    #[arg(long, env = "TESSERA_NUM_SPECULATIVE_TOKENS", default_value_t = SpecDecodeConfig::default().num_speculative_tokens)]
    pub num_speculative_tokens: usize,
    /// With --speculative-ngram: shortest n-gram looked up (>= 1).
    #[arg(long, env = "TESSERA_PROMPT_LOOKUP_MIN", default_value_t = SpecDecodeConfig::default().prompt_lookup_min)]
    pub prompt_lookup_min: usize,
    /// With --speculative-ngram: longest n-gram looked up, tried first (>= --prompt-lookup-min).
    #[arg(long, env = "TESSERA_PROMPT_LOOKUP_MAX", default_value_t = SpecDecodeConfig::default().prompt_lookup_max)]
    pub prompt_lookup_max: usize,
    /// K/V cache storage: `auto` (f16) or `q8_0` (llama.cpp's `-ctk q8_0 -ctv q8_0`: blocks
    /// of 32 int8 + an f16 scale along head_dim, ~1.9x the sequences in the same memory).
    #[arg(long, env = "TESSERA_KV_CACHE_DTYPE", default_value = "auto")]
    pub kv_cache_dtype: KvCacheDtype,
    /// Where the forward pass runs: `cpu`, or `cuda` / `cuda:N` (a build with
    /// `--features cuda`; weights in F16 on the GPU, KV cache in GPU memory).
    #[arg(long, env = "TESSERA_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// With --device cuda: share of the GPU's memory for weights, activations and the KV
    /// cache together (the KV cache gets what the rest leaves), in (0, 1].
    #[arg(long, env = "TESSERA_GPU_MEMORY_UTILIZATION", default_value_t = 0.9, value_parser = parse_utilization)]
    pub gpu_memory_utilization: f64,
}

/// `--gpu-memory-utilization`: a share in (0, 1].
fn parse_utilization(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
        _ => Err(format!("`{text}` is not a share in (0, 1], e.g. 0.9")),
    }
}

/// HTTP server flags (vLLM names where vLLM has them); each also read from `TESSERA_*`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0: every interface).
    #[arg(long, env = "TESSERA_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, env = "TESSERA_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Name(s) the model is served under (repeatable; default: the model file's name).
    #[arg(long, env = "TESSERA_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Vec<String>,
    /// Accepted API key (repeatable; the env variable takes a comma-separated list).
    /// Without any, the API is open.
    #[arg(
        long,
        env = "TESSERA_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Sequences that may wait beyond --max-num-seqs; more get 429.
    #[arg(long, env = "TESSERA_MAX_QUEUED_REQUESTS", default_value_t = 256)]
    pub max_queued_requests: usize,
    /// Seconds in-flight requests may run after SIGTERM (the process exits a few seconds
    /// later whatever still runs).
    #[arg(long, env = "TESSERA_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Seconds a client may take to send a whole request head; slower ones get 408.
    #[arg(long, env = "TESSERA_REQUEST_HEAD_TIMEOUT", default_value_t = 5.0)]
    pub request_head_timeout: f64,
    /// Largest request body, e.g. 10MiB; larger ones get 413.
    #[arg(long, env = "TESSERA_MAX_REQUEST_BYTES", default_value = "10MiB", value_parser = parse_bytes)]
    pub max_request_bytes: u64,
    /// Seconds between SSE keep-alive comments while a stream has nothing to send.
    #[arg(long, env = "TESSERA_SSE_KEEPALIVE", default_value_t = 10.0)]
    pub sse_keepalive: f64,
    /// Log line format: `text` or `json` (one object per line).
    #[arg(long, env = "TESSERA_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Also log each request's prompt and output text (off: token counts only).
    #[arg(long, env = "TESSERA_LOG_REQUESTS")]
    pub log_requests: bool,
    /// Also export vLLM's metric names (`vllm`), e.g. `vllm:num_requests_waiting`.
    #[arg(long, env = "TESSERA_METRICS_COMPAT", default_value = "none")]
    pub metrics_compat: MetricsCompat,
    /// How tool calls are read from the model's text: `auto`, `hermes` or `none` (off).
    #[arg(long, env = "TESSERA_TOOL_CALL_PARSER", default_value = "auto")]
    pub tool_call_parser: crate::tools::ToolParser,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Fewest recent completed turns of a stored dialog kept in the prompt (0 = all).
    #[arg(long, env = "TESSERA_HISTORY_TURNS", default_value_t = 3)]
    pub history_turns: usize,
    /// Turns the history window's start jumps at once (keeps N..N+STEP-1 turns, so the
    /// prompt stays a prefix-cache hit between jumps); 1 = slide every turn.
    #[arg(long, env = "TESSERA_HISTORY_STEP", default_value_t = crate::dialog::window::DEFAULT_STEP)]
    pub history_step: usize,
    /// Memory for recent dialog histories (saves store reads), e.g. 64MiB; 0 = off.
    #[arg(long, env = "TESSERA_DIALOG_CACHE_SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    pub dialog_cache_size: u64,
    /// Moderation policy (TOML; see deploy/moderation/example.toml): checks input and
    /// streamed output on every text route. Reloaded on SIGHUP and on
    /// POST /admin/v1/moderation/reload. Without it: no moderation, no overhead.
    #[arg(long, env = "TESSERA_MODERATION_POLICY")]
    pub moderation_policy: Option<PathBuf>,
    /// Key of the admin API under /admin/ (repeatable; the env variable takes a
    /// comma-separated list). The --api-key keys never open it; without any, it is closed.
    #[arg(
        long,
        env = "TESSERA_ADMIN_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_api_key: Vec<String>,
    /// Do not serve the chat page at / (the WebSocket /v1/chat/ws stays).
    #[arg(long, env = "TESSERA_NO_WEB_UI")]
    pub no_web_ui: bool,
    /// Defaults of a chat-page turn, e.g. temperature=0.7,top_p=0.9,repetition_penalty=1.2,max_tokens=200,history_turns=3.
    #[arg(long, env = "TESSERA_CHAT_DEFAULTS", default_value = "")]
    pub chat_defaults: String,
    /// Limits of a chat WebSocket, e.g. max_message_bytes=64KiB,messages_per_second=20,burst=40,sockets_per_key=256,send_buffer=1MiB (docs/websocket.md lists all).
    #[arg(long, env = "TESSERA_WS_LIMITS", default_value = "")]
    pub ws_limits: String,
    /// This replica's name in the X-Tessera-Replica response header (default:
    /// hostname:port).
    #[arg(long, env = "TESSERA_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Seconds the oldest exchange not yet written to the conversation log may wait;
    /// beyond it new requests (and /ready) get 503 audit_unavailable until it catches up.
    #[arg(long, env = "TESSERA_AUDIT_MAX_LAG", default_value_t = 30.0)]
    pub audit_max_lag: f64,
    /// Days the conversation log keeps exchanges (a daily job deletes older ones; those
    /// reviewed as violations stay until an admin deletes them); at least 180.
    #[arg(long, env = "TESSERA_AUDIT_RETENTION_DAYS", default_value_t = 180)]
    pub audit_retention_days: u32,
    /// Accept --audit-retention-days below 180 (not for regulated deployments).
    #[arg(long, env = "TESSERA_ALLOW_SHORT_RETENTION")]
    pub allow_short_retention: bool,
    /// Share of exchanges without moderation hits drawn into the human review queue
    /// (0 to 1); every exchange with a hit is queued.
    #[arg(long, env = "TESSERA_REVIEW_SAMPLE_RATE", default_value_t = 0.01)]
    pub review_sample_rate: f64,
    /// Write no conversation log (not for regulated deployments).
    #[arg(long, env = "TESSERA_DISABLE_AUDIT_LOG")]
    pub disable_audit_log: bool,
}

impl ServeArgs {
    pub fn audit(&self) -> Result<crate::audit::AuditConfig, String> {
        let days = self.audit_retention_days;
        let min = crate::audit::MIN_RETENTION_DAYS;
        if days == 0 || (days < min && !self.allow_short_retention) {
            return Err(format!(
                "--audit-retention-days must be >= {min} (the log must be kept {min} days; \
                 --allow-short-retention accepts 1 or more). Given: {days}"
            ));
        }
        if !(0.0..=1.0).contains(&self.review_sample_rate) {
            return Err(format!(
                "--review-sample-rate must be in 0..=1. Given: {}",
                self.review_sample_rate
            ));
        }
        let max_lag = Duration::try_from_secs_f64(self.audit_max_lag)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "--audit-max-lag must be a number of seconds > 0. Given: {}",
                    self.audit_max_lag
                )
            })?;
        Ok(crate::audit::AuditConfig {
            enabled: !self.disable_audit_log,
            max_lag,
            retention_days: days,
            review_sample_rate: self.review_sample_rate,
            ..crate::audit::AuditConfig::default()
        })
    }

    pub fn config(&self) -> Result<crate::server::ServerConfig, String> {
        let seconds = |flag: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| format!("--{flag} must be a number of seconds >= 0. Given: {v}"))
        };
        let keepalive = seconds("sse-keepalive", self.sse_keepalive)?;
        let head_timeout = seconds("request-head-timeout", self.request_head_timeout)?;
        for (flag, value) in [
            ("sse-keepalive", keepalive),
            ("request-head-timeout", head_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("--{flag} must be > 0"));
            }
        }
        Ok(crate::server::ServerConfig {
            host: self.host.clone(),
            port: self.port,
            served_model_names: self.served_model_name.clone(),
            api_keys: self.api_key.clone(),
            max_queued_requests: self.max_queued_requests,
            shutdown_timeout: seconds("shutdown-timeout", self.shutdown_timeout)?,
            request_head_timeout: head_timeout,
            max_request_bytes: usize::try_from(self.max_request_bytes).unwrap_or(usize::MAX),
            sse_keepalive: keepalive,
            log_requests: self.log_requests,
            metrics_compat: self.metrics_compat,
            tool_call_parser: self.tool_call_parser,
            moderation_policy: self.moderation_policy.clone(),
            admin_api_keys: self.admin_api_key.clone(),
            replica_id: self.replica_id.clone(),
            dialog: self.dialog()?,
            chat: crate::server::ws::ChatConfig {
                defaults: crate::server::ws::ChatDefaults::parse(&self.chat_defaults)?,
                limits: crate::server::ws::WsLimits::parse(&self.ws_limits)?,
                web_ui: !self.no_web_ui,
            },
            audit: self.audit()?,
            ..crate::server::ServerConfig::default()
        })
    }

    pub fn dialog(&self) -> Result<crate::dialog::DialogConfig, String> {
        if self.history_step == 0 {
            return Err("--history-step must be >= 1".into());
        }
        Ok(crate::dialog::DialogConfig {
            store: self.store.config(),
            window: crate::dialog::WindowRule {
                min_turns: self.history_turns,
                step: self.history_step,
            },
            cache_bytes: usize::try_from(self.dialog_cache_size).unwrap_or(usize::MAX),
        })
    }
}

#[derive(Args)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long)]
    pub ignore_eos: bool,
}

impl EngineArgs {
    pub fn config(&self) -> (PathBuf, EngineConfig) {
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
            quantization: self.quantization,
            lora: LoraOptions {
                modules: self.lora_modules.clone(),
                max_loras: self.max_loras,
                max_lora_rank: self.max_lora_rank,
            },
            speculative: self.speculative_ngram.then_some(SpecDecodeConfig {
                num_speculative_tokens: self.num_speculative_tokens,
                prompt_lookup_min: self.prompt_lookup_min,
                prompt_lookup_max: self.prompt_lookup_max,
            }),
            kv_cache_dtype: self.kv_cache_dtype,
            device: self.device,
            gpu_memory_utilization: self.gpu_memory_utilization,
        };
        (self.model.clone().unwrap_or_else(default_model_path), cfg)
    }
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
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
