//! tessera command line: `serve` (the OpenAI-compatible HTTP server), `generate`, `chat`,
//! `audit export` and `bench`. Parsing only; the work lives in `tessera::server`,
//! `tessera::audit` and `tessera::cli`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tessera::config::{default_model_path, parse_bytes, EngineConfig};
use tessera::metrics::MetricsCompat;
use tessera::model::quantize::Quantization;
use tessera::request::SamplingParams;
use tessera::server::logging::LogFormat;

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
        /// The text file.
        #[arg(long)]
        file: PathBuf,
        /// Tokens per chunk (llama-perplexity's -c).
        #[arg(long, default_value_t = 512)]
        ctx: usize,
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

#[derive(Subcommand)]
enum FeedbackCommand {
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
enum AuditCommand {
    /// Export the logged exchanges made in [--since, --until) as JSON lines, oldest first,
    /// reading the store directly (the server need not run).
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Start of the range: a date (2026-01-31, UTC), a UTC time (2026-01-31T08:00:00Z) or
    /// unix seconds.
    #[arg(long)]
    since: String,
    /// End of the range, exclusive (same forms; default: now).
    #[arg(long)]
    until: Option<String>,
    /// Output format: `jsonl` (one JSON object per exchange and line).
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Where the store is (shared by `serve` and `audit export`).
#[derive(Args)]
struct StoreArgs {
    /// Directory of the embedded SQLite store of conversations, responses and the
    /// conversation log (created on first start); unused with --database-url.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
    data_dir: PathBuf,
    /// PostgreSQL store shared by replicas, e.g. postgres://user:password@host:5432/db
    /// (instead of SQLite in --data-dir).
    #[arg(long, env = "TESSERA_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl StoreArgs {
    fn config(&self) -> tessera::store::StoreConfig {
        tessera::store::StoreConfig::from_flags(self.data_dir.clone(), self.database_url.clone())
    }
}

/// Engine flags (vLLM names); every flag is also read from `TESSERA_*`.
#[derive(Args)]
struct EngineArgs {
    /// GGUF file or Hugging Face model folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, env = "TESSERA_MODEL")]
    model: Option<PathBuf>,
    /// Most sequences the engine runs in one step; more wait in the queue.
    #[arg(long, env = "TESSERA_MAX_NUM_SEQS", default_value_t = 64)]
    max_num_seqs: usize,
    /// Token budget of one engine step (longer prompts are prefilled in chunks).
    #[arg(long, env = "TESSERA_MAX_NUM_BATCHED_TOKENS", default_value_t = 1024)]
    max_num_batched_tokens: usize,
    /// Maximum prompt + output tokens (default: the model's context length).
    #[arg(long, env = "TESSERA_MAX_MODEL_LEN")]
    max_model_len: Option<usize>,
    /// Tokens per KV cache block (the unit of prefix sharing).
    #[arg(long, env = "TESSERA_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// KV cache size, e.g. 1GiB, 512MiB.
    #[arg(long, env = "TESSERA_KV_CACHE_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    kv_cache_memory: u64,
    /// Exact number of KV blocks (overrides --kv-cache-memory).
    #[arg(long, env = "TESSERA_NUM_KV_BLOCKS")]
    num_kv_blocks: Option<usize>,
    /// Turn off the prefix cache (equal prompt prefixes no longer share KV blocks).
    #[arg(long, env = "TESSERA_NO_PREFIX_CACHING")]
    no_prefix_caching: bool,
    /// Compute threads (default: available cores).
    #[arg(long, env = "TESSERA_THREADS", default_value_t = 0)]
    threads: usize,
    /// Quantize an F32/F16/BF16 model's weights at load: `q8_0` (llama.cpp's Q8_0 bits).
    #[arg(long, env = "TESSERA_QUANTIZATION")]
    quantization: Option<Quantization>,
}

/// HTTP server flags (vLLM names where vLLM has them); each also read from `TESSERA_*`.
#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (0.0.0.0: every interface).
    #[arg(long, env = "TESSERA_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, env = "TESSERA_PORT", default_value_t = 8000)]
    port: u16,
    /// Name(s) the model is served under (repeatable; default: the model file's name).
    #[arg(long, env = "TESSERA_SERVED_MODEL_NAME", value_delimiter = ',')]
    served_model_name: Vec<String>,
    /// Accepted API key (repeatable; the env variable takes a comma-separated list).
    /// Without any, the API is open.
    #[arg(
        long,
        env = "TESSERA_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key: Vec<String>,
    /// Sequences that may wait beyond --max-num-seqs; more get 429.
    #[arg(long, env = "TESSERA_MAX_QUEUED_REQUESTS", default_value_t = 256)]
    max_queued_requests: usize,
    /// Seconds in-flight requests may run after SIGTERM (the process exits a few seconds
    /// later whatever still runs).
    #[arg(long, env = "TESSERA_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Seconds a client may take to send a whole request head; slower ones get 408.
    #[arg(long, env = "TESSERA_REQUEST_HEAD_TIMEOUT", default_value_t = 5.0)]
    request_head_timeout: f64,
    /// Largest request body, e.g. 10MiB; larger ones get 413.
    #[arg(long, env = "TESSERA_MAX_REQUEST_BYTES", default_value = "10MiB", value_parser = parse_bytes)]
    max_request_bytes: u64,
    /// Seconds between SSE keep-alive comments while a stream has nothing to send.
    #[arg(long, env = "TESSERA_SSE_KEEPALIVE", default_value_t = 10.0)]
    sse_keepalive: f64,
    /// Log line format: `text` or `json` (one object per line).
    #[arg(long, env = "TESSERA_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Also log each request's prompt and output text (off: token counts only).
    #[arg(long, env = "TESSERA_LOG_REQUESTS")]
    log_requests: bool,
    /// Also export vLLM's metric names (`vllm`), e.g. `vllm:num_requests_waiting`.
    #[arg(long, env = "TESSERA_METRICS_COMPAT", default_value = "none")]
    metrics_compat: MetricsCompat,
    /// How tool calls are read from the model's text: `auto`, `hermes` or `none` (off).
    #[arg(long, env = "TESSERA_TOOL_CALL_PARSER", default_value = "auto")]
    tool_call_parser: tessera::tools::ToolParser,
    #[command(flatten)]
    store: StoreArgs,
    /// Fewest recent completed turns of a stored dialog kept in the prompt (0 = all).
    #[arg(long, env = "TESSERA_HISTORY_TURNS", default_value_t = 3)]
    history_turns: usize,
    /// Turns the history window's start jumps at once (keeps N..N+STEP-1 turns, so the
    /// prompt stays a prefix-cache hit between jumps); 1 = slide every turn.
    #[arg(long, env = "TESSERA_HISTORY_STEP", default_value_t = tessera::dialog::window::DEFAULT_STEP)]
    history_step: usize,
    /// Memory for recent dialog histories (saves store reads), e.g. 64MiB; 0 = off.
    #[arg(long, env = "TESSERA_DIALOG_CACHE_SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    dialog_cache_size: u64,
    /// Moderation policy (TOML; see deploy/moderation/example.toml): checks input and
    /// streamed output on every text route. Reloaded on SIGHUP and on
    /// POST /admin/v1/moderation/reload. Without it: no moderation, no overhead.
    #[arg(long, env = "TESSERA_MODERATION_POLICY")]
    moderation_policy: Option<PathBuf>,
    /// Key of the admin API under /admin/ (repeatable; the env variable takes a
    /// comma-separated list). The --api-key keys never open it; without any, it is closed.
    #[arg(
        long,
        env = "TESSERA_ADMIN_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    admin_api_key: Vec<String>,
    /// Do not serve the chat page at / (the WebSocket /v1/chat/ws stays).
    #[arg(long, env = "TESSERA_NO_WEB_UI")]
    no_web_ui: bool,
    /// Defaults of a chat-page turn, e.g. temperature=0.7,top_p=0.9,repetition_penalty=1.2,max_tokens=200,history_turns=3.
    #[arg(long, env = "TESSERA_CHAT_DEFAULTS", default_value = "")]
    chat_defaults: String,
    /// Limits of a chat WebSocket, e.g. max_message_bytes=64KiB,messages_per_second=20,burst=40,sockets_per_key=256,send_buffer=1MiB (docs/websocket.md lists all).
    #[arg(long, env = "TESSERA_WS_LIMITS", default_value = "")]
    ws_limits: String,
    /// This replica's name in the X-Tessera-Replica response header (default:
    /// hostname:port).
    #[arg(long, env = "TESSERA_REPLICA_ID")]
    replica_id: Option<String>,
    /// Seconds the oldest exchange not yet written to the conversation log may wait;
    /// beyond it new requests (and /ready) get 503 audit_unavailable until it catches up.
    #[arg(long, env = "TESSERA_AUDIT_MAX_LAG", default_value_t = 30.0)]
    audit_max_lag: f64,
    /// Days the conversation log keeps exchanges (a daily job deletes older ones; those
    /// reviewed as violations stay until an admin deletes them); at least 180.
    #[arg(long, env = "TESSERA_AUDIT_RETENTION_DAYS", default_value_t = 180)]
    audit_retention_days: u32,
    /// Accept --audit-retention-days below 180 (not for regulated deployments).
    #[arg(long, env = "TESSERA_ALLOW_SHORT_RETENTION")]
    allow_short_retention: bool,
    /// Share of exchanges without moderation hits drawn into the human review queue
    /// (0 to 1); every exchange with a hit is queued.
    #[arg(long, env = "TESSERA_REVIEW_SAMPLE_RATE", default_value_t = 0.01)]
    review_sample_rate: f64,
    /// Write no conversation log (not for regulated deployments).
    #[arg(long, env = "TESSERA_DISABLE_AUDIT_LOG")]
    disable_audit_log: bool,
}

impl ServeArgs {
    fn audit(&self) -> Result<tessera::audit::AuditConfig, String> {
        let days = self.audit_retention_days;
        let min = tessera::audit::MIN_RETENTION_DAYS;
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
        Ok(tessera::audit::AuditConfig {
            enabled: !self.disable_audit_log,
            max_lag,
            retention_days: days,
            review_sample_rate: self.review_sample_rate,
            ..tessera::audit::AuditConfig::default()
        })
    }

    fn config(&self) -> Result<tessera::server::ServerConfig, String> {
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
        Ok(tessera::server::ServerConfig {
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
            chat: tessera::server::ws::ChatConfig {
                defaults: tessera::server::ws::ChatDefaults::parse(&self.chat_defaults)?,
                limits: tessera::server::ws::WsLimits::parse(&self.ws_limits)?,
                web_ui: !self.no_web_ui,
            },
            audit: self.audit()?,
            ..tessera::server::ServerConfig::default()
        })
    }

    fn dialog(&self) -> Result<tessera::dialog::DialogConfig, String> {
        if self.history_step == 0 {
            return Err("--history-step must be >= 1".into());
        }
        Ok(tessera::dialog::DialogConfig {
            store: self.store.config(),
            window: tessera::dialog::WindowRule {
                min_turns: self.history_turns,
                step: self.history_step,
            },
            cache_bytes: usize::try_from(self.dialog_cache_size).unwrap_or(usize::MAX),
        })
    }
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
            quantization: self.quantization,
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
        Command::Serve { engine, server } => {
            tessera::server::logging::init(server.log_format);
            let (path, cfg) = engine.config();
            cpu_kernels().and_then(|()| {
                server
                    .config()
                    .map_err(Into::into)
                    .and_then(|server_cfg| tessera::server::serve(path, cfg, server_cfg))
            })
        }
        Command::Generate {
            engine,
            sampling,
            prompt,
            raw,
        } => {
            let (path, cfg) = engine.config();
            cpu_kernels()
                .and_then(|()| tessera::cli::start_engine(&path, &cfg))
                .and_then(|e| tessera::cli::generate(&e, prompt, *raw, sampling.params()))
        }
        Command::Chat {
            engine,
            sampling,
            system,
        } => {
            let (path, cfg) = engine.config();
            cpu_kernels()
                .and_then(|()| tessera::cli::start_engine(&path, &cfg))
                .and_then(|e| tessera::cli::chat(&e, system.as_deref(), sampling.params()))
        }
        Command::Feedback {
            command:
                FeedbackCommand::Export {
                    since,
                    until,
                    out_dir,
                    data_dir,
                    database_url,
                },
        } => {
            let store =
                tessera::store::StoreConfig::from_flags(data_dir.clone(), database_url.clone());
            tessera::cli::export_feedback(&store, since, until.as_deref(), out_dir)
        }
        Command::Audit {
            command: AuditCommand::Export(a),
        } => tessera::audit::export::ExportRange::parse(&a.since, a.until.as_deref())
            .and_then(|range| {
                tessera::audit::export::run(
                    &a.store.config(),
                    &range,
                    &a.format,
                    a.output.as_deref(),
                )
            })
            .map(|n| eprintln!("exported {n} exchanges"))
            .map_err(Into::into),
        Command::Perplexity { engine, file, ctx } => {
            let (path, cfg) = engine.config();
            tessera::cli::start_engine(&path, &cfg).and_then(|e| {
                let text = std::fs::read_to_string(file)
                    .map_err(|err| format!("reading {}: {err}", file.display()))?;
                let r = tessera::perplexity::perplexity(&e, &text, *ctx, |i, ppl| {
                    print!("[{i}]{ppl:.4},");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                })?;
                println!();
                println!(
                    "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {ctx} tokens, {} scored)",
                    r.ppl, r.error, r.chunks, r.scored
                );
                Ok(())
            })
        }
        Command::Bench {
            engine,
            concurrency,
            prompt_len,
            max_tokens,
        } => {
            let (path, cfg) = engine.config();
            cpu_kernels()
                .and_then(|()| tessera::cli::start_engine(&path, &cfg))
                .and_then(|e| {
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

/// Decides which instruction-set level the CPU kernels use (what the CPU has, capped by
/// `TESSERA_CPU_FEATURES`) before a model is loaded, so a bad value stops the process with
/// its message; logs the choice (`serve`'s startup log).
fn cpu_kernels() -> Result<(), Box<dyn std::error::Error>> {
    let cpu = tessera::ops::cpu_features::init()?;
    tracing::info!(
        level = %cpu.level,
        vnni = cpu.vnni,
        host = %cpu.host,
        "CPU kernels: {} (TESSERA_CPU_FEATURES caps it; this CPU has {})",
        cpu.level,
        cpu.host
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_serve_flag_has_its_tessera_env_variable() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve command");
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let expected = format!("TESSERA_{}", id.to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{id}"
            );
            checked += 1;
        }
        // Guards against a walk that checks nothing; the exact count changes with every flag.
        assert!(checked >= 38, "only {checked} serve flags were checked");
    }

    #[test]
    fn quantization_takes_q8_0_and_names_a_wrong_value() {
        let parse = |value: &str| {
            Cli::try_parse_from(["tessera", "generate", "-p", "x", "--quantization", value])
        };
        let Ok(Cli {
            command: Command::Generate { engine, .. },
        }) = parse("q8_0")
        else {
            panic!("--quantization q8_0 parses")
        };
        assert_eq!(engine.config().1.quantization, Some(Quantization::Q8_0));
        let err = parse("int4").err().expect("int4 is refused").to_string();
        assert!(
            err.contains("--quantization must be one of: q8_0. Given: `int4`"),
            "{err}"
        );
    }

    #[test]
    fn every_serve_flag_has_one_line_of_help() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve command");
        let bare: Vec<String> = serve
            .get_arguments()
            .filter(|arg| {
                arg.get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
            })
            .map(|arg| format!("--{}", arg.get_id().as_str().replace('_', "-")))
            .collect();
        assert!(bare.is_empty(), "flags without help text: {bare:?}");
    }

    fn audit_config(flags: &[&str]) -> Result<tessera::audit::AuditConfig, String> {
        let cli = Cli::try_parse_from([&["tessera", "serve"][..], flags].concat()).expect("parses");
        let Command::Serve { server, .. } = cli.command else {
            panic!("not serve")
        };
        server.audit()
    }

    #[test]
    fn a_retention_below_180_days_needs_allow_short_retention() {
        let default = audit_config(&[]).expect("the defaults are valid");
        assert_eq!(default.retention_days, 180);
        assert_eq!(default.max_lag, Duration::from_secs(30));
        let refused = audit_config(&["--audit-retention-days", "179"]).expect_err("too short");
        assert!(
            refused.contains("--audit-retention-days must be >= 180")
                && refused.contains("Given: 179"),
            "{refused}"
        );
        let short = ["--audit-retention-days", "7", "--allow-short-retention"];
        assert_eq!(audit_config(&short).expect("allowed").retention_days, 7);
        let zero = ["--audit-retention-days", "0", "--allow-short-retention"];
        assert!(audit_config(&zero).is_err(), "0 days is never accepted");
        assert_eq!(
            audit_config(&["--audit-retention-days", "365"]).map(|c| c.retention_days),
            Ok(365)
        );
        for (flag, value) in [
            ("--audit-max-lag", "0"),
            ("--audit-max-lag", "-1"),
            ("--review-sample-rate", "1.5"),
        ] {
            let refused = audit_config(&[&format!("{flag}={value}")]).expect_err(flag);
            assert!(
                refused.contains(flag) && refused.contains(value),
                "{refused}"
            );
        }
    }

    #[test]
    fn serve_reads_its_config_from_the_environment() {
        // Only this test sets these variables in this process.
        std::env::set_var("TESSERA_PORT", "9123");
        std::env::set_var("TESSERA_API_KEY", "sk-a,sk-b");
        std::env::set_var("TESSERA_SHUTDOWN_TIMEOUT", "2.5");
        std::env::set_var("TESSERA_MAX_REQUEST_BYTES", "1KiB");
        std::env::set_var("TESSERA_DATABASE_URL", "postgres://u@db/tessera");
        let cli =
            Cli::try_parse_from(["tessera", "serve", "--served-model-name", "m"]).expect("parses");
        let Command::Serve { server, .. } = cli.command else {
            panic!("not serve")
        };
        let cfg = server.config().expect("valid");
        assert_eq!(cfg.port, 9123);
        assert_eq!(cfg.api_keys, vec!["sk-a".to_string(), "sk-b".to_string()]);
        assert_eq!(cfg.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.max_request_bytes, 1024);
        assert_eq!(cfg.served_model_names, vec!["m".to_string()]);
        assert_eq!(cfg.host, "127.0.0.1");
        assert_eq!(
            cfg.dialog.store,
            tessera::store::StoreConfig::Postgres {
                url: "postgres://u@db/tessera".into()
            }
        );
        assert_eq!(cfg.dialog.window, tessera::dialog::WindowRule::default());
    }
}
