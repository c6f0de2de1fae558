//! tessera-bench command line: one subcommand per scenario (sweep, rate, dialog, prefill),
//! `machine` for the host's limits, `report` for the side-by-side comparison, `wait` for a
//! server to come up. Parsing and printing only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tessera_bench::compare::{self, Pair, Runs};
use tessera_bench::error::BenchError;
use tessera_bench::gguf;
use tessera_bench::http::Endpoint;
use tessera_bench::machine::{self, Bounds, MachineReport};
use tessera_bench::plot;
use tessera_bench::procfs;
use tessera_bench::prompts::PromptMode;
use tessera_bench::report::{summary_cells, RunReport, ScenarioResult};
use tessera_bench::scenario::{self, conversation, dialog, prefill, rate, sweep, Target};

#[derive(Parser)]
#[command(
    name = "tessera-bench",
    version,
    about = "Load generator for OpenAI-compatible servers (SSE)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed loop at each concurrency level, fixed prompt/output lengths.
    Sweep(SweepArgs),
    /// Open loop: Poisson arrivals at --rate requests/s for --duration-s seconds.
    Rate(RateArgs),
    /// N users × T turns of chat over one shared system prompt.
    Dialog(DialogArgs),
    /// TTFT for each prompt length at concurrency 1.
    Prefill(PrefillArgs),
    /// N users × T turns through /v1/responses (previous_response_id), then the same
    /// dialog shape statelessly through /v1/chat/completions; figures per turn.
    Conversation(ConversationArgs),
    /// Measure memory bandwidth (triad) and fp32 FMA peak; bounds for a model.
    Machine(MachineArgs),
    /// Side-by-side markdown (+ PNG plots) from a directory of run JSONs.
    Report(ReportArgs),
    /// Wait until GET /health answers 200 (and /ready, where the server has it).
    Wait {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value_t = 180)]
        timeout_s: u64,
    },
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16, 32, 64])]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Requests per level = max(concurrency × rounds, --min-requests).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, default_value_t = 8)]
    min_requests: usize,
    /// Keep every request's record (TTFT, gaps …) in the JSON.
    #[arg(long)]
    keep_records: bool,
}

#[derive(Args)]
struct RateArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 60.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Client-side cap on requests in flight (one thread each).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
}

#[derive(Args)]
struct DialogArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 8)]
    users: usize,
    #[arg(long, default_value_t = 5)]
    turns: usize,
    #[arg(long, default_value_t = 400)]
    system_words: usize,
    #[arg(long, default_value_t = 40)]
    user_words: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Pause between a reply and the user's next turn.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
}

#[derive(Args)]
struct ConversationArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 4)]
    users: usize,
    #[arg(long, default_value_t = 20)]
    turns: usize,
    #[arg(long, default_value_t = 100)]
    system_words: usize,
    #[arg(long, default_value_t = 20)]
    user_words: usize,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Which paths to run: stateful (/v1/responses), stateless (/v1/chat/completions).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [conversation::Path::Stateful, conversation::Path::Stateless])]
    paths: Vec<conversation::Path>,
    /// Run the paths at the same time (same machine load for both).
    #[arg(long)]
    together: bool,
}

#[derive(Args)]
struct PrefillArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 256, 512, 1024, 2048, 4096])]
    lengths: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
}

#[derive(Args)]
struct ReportArgs {
    /// Directory holding the runs' JSON (and machine.json); plots are written here.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "tessera")]
    candidate: String,
    #[arg(long, default_value = "llama-server")]
    baseline: String,
    #[arg(long, default_value = "tessera vs llama-server")]
    title: String,
    /// Markdown output (default: stdout); plot links are relative to this file.
    #[arg(long)]
    out_md: Option<PathBuf>,
    #[arg(long)]
    no_plots: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    TokenIds,
    Text,
}

#[derive(Args)]
struct CommonArgs {
    /// Server base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Model name to send (default: the first of GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Name of the server in reports, e.g. tessera, llama-server.
    #[arg(long, default_value = "server")]
    label: String,
    /// How to send prompts (default: token ids if the server takes them, else text).
    #[arg(long, value_enum)]
    prompt_mode: Option<ModeArg>,
    /// Token ids of token-id prompts are drawn from LO..HI.
    #[arg(long, default_value = "1000..20000", value_parser = parse_range)]
    token_range: (u32, u32),
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Server pid for peak RSS (default: the local process listening on the URL's port).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the run's JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct MachineArgs {
    /// Threads (0 = all available cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Size of each of the triad's three arrays.
    #[arg(long, default_value_t = 128)]
    triad_mib: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// GGUF model to size the bounds with.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Bytes of weights read per decoded token (overrides the GGUF's figure).
    #[arg(long)]
    weight_bytes: Option<u64>,
    /// Parameters in matmuls per token (overrides the GGUF's figure; MoE: active only).
    #[arg(long)]
    active_params: Option<u64>,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = s
        .split_once("..")
        .ok_or_else(|| format!("expected LO..HI, got `{s}`"))?;
    let p = |x: &str| x.trim().parse::<u32>().map_err(|e| format!("`{x}`: {e}"));
    Ok((p(lo)?, p(hi)?))
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), BenchError> {
    match command {
        Command::Sweep(a) => {
            let cfg = sweep::SweepConfig {
                concurrency: a.concurrency,
                prompt_len: a.prompt_len,
                max_tokens: a.max_tokens,
                rounds: a.rounds,
                min_requests: a.min_requests,
                seed: a.common.seed,
                keep_records: a.keep_records,
            };
            measure(&a.common, |t| {
                let progress = |l: &sweep::SweepLevel| {
                    eprintln!("c={:<3}|{}", l.concurrency, summary_cells(&l.summary))
                };
                sweep::run(t, &cfg, progress).map(ScenarioResult::Sweep)
            })
        }
        Command::Rate(a) => {
            let cfg = rate::RateConfig {
                rate: a.rate,
                duration_s: a.duration_s,
                prompt_len: a.prompt_len,
                max_tokens: a.max_tokens,
                max_in_flight: a.max_in_flight,
                seed: a.common.seed,
            };
            measure(&a.common, |t| rate::run(t, &cfg).map(ScenarioResult::Rate))
        }
        Command::Dialog(a) => {
            let cfg = dialog::DialogConfig {
                users: a.users,
                turns: a.turns,
                system_words: a.system_words,
                user_words: a.user_words,
                max_tokens: a.max_tokens,
                think_ms: a.think_ms,
                seed: a.common.seed,
            };
            measure(&a.common, |t| {
                dialog::run(t, &cfg).map(ScenarioResult::Dialog)
            })
        }
        Command::Prefill(a) => prefill_cmd(a),
        Command::Conversation(a) => conversation_cmd(&a),
        Command::Machine(args) => machine_cmd(&args),
        Command::Report(a) => report_cmd(&a),
        Command::Wait { url, timeout_s } => {
            let limit = Duration::from_secs(timeout_s);
            let waited = scenario::wait_ready(&Endpoint::parse(&url)?, limit)?;
            eprintln!("{url} ready after {:.1} s", waited.as_secs_f64());
            Ok(())
        }
    }
}

fn prefill_cmd(a: PrefillArgs) -> Result<(), BenchError> {
    let cfg = prefill::PrefillConfig {
        lengths: a.lengths,
        repeats: a.repeats,
        max_tokens: a.max_tokens,
        seed: a.common.seed,
    };
    measure(&a.common, |t| {
        let progress = |p: &prefill::PrefillPoint| {
            eprintln!("{:>5} tok|{}", p.prompt_len, summary_cells(&p.summary))
        };
        prefill::run(t, &cfg, progress).map(ScenarioResult::Prefill)
    })
}

fn conversation_cmd(a: &ConversationArgs) -> Result<(), BenchError> {
    let cfg = conversation::ConversationConfig {
        users: a.users,
        turns: a.turns,
        system_words: a.system_words,
        user_words: a.user_words,
        max_tokens: a.max_tokens,
        seed: a.common.seed,
        paths: a.paths.clone(),
        together: a.together,
    };
    let target = connect(&a.common)?;
    let result = conversation::run(&target, &cfg)?;
    println!("{}", result.markdown(&a.common.label));
    if let Some(path) = &a.common.out {
        let text =
            serde_json::to_string_pretty(&result).map_err(BenchError::json("a run report"))?;
        std::fs::write(path, text + "\n")
            .map_err(BenchError::io(format!("writing {}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The target of `common`'s flags.
fn connect(common: &CommonArgs) -> Result<Target, BenchError> {
    let mode = common.prompt_mode.map(|m| match m {
        ModeArg::TokenIds => PromptMode::TokenIds,
        ModeArg::Text => PromptMode::Text,
    });
    Target::connect(
        &common.url,
        common.model.clone(),
        mode,
        Duration::from_secs(common.timeout_s),
        common.token_range,
    )
}

/// Connects, runs one scenario, and prints / writes its report.
fn measure(
    common: &CommonArgs,
    scenario: impl FnOnce(&Target) -> Result<ScenarioResult, BenchError>,
) -> Result<(), BenchError> {
    let target = connect(common)?;
    let server_pid = common.server_pid.or_else(|| local_pid(&target.ep));
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (cpu0, t0) = (procfs::client_cpu_seconds(), Instant::now());
    let result = scenario(&target)?;
    let report = RunReport {
        tool: format!("tessera-bench {}", env!("CARGO_PKG_VERSION")),
        label: common.label.clone(),
        url: common.url.clone(),
        model: target.model.clone(),
        prompt_mode: target.mode,
        started_unix_s,
        wall_s: t0.elapsed().as_secs_f64(),
        client_cpu_s: procfs::client_cpu_seconds() - cpu0,
        server_pid,
        server_peak_rss_bytes: server_pid.and_then(|p| procfs::peak_rss_bytes(p).ok()),
        scenario: result,
    };
    println!("{}", report.markdown());
    if let Some(path) = &common.out {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The pid listening on the endpoint's port, when the server is on this machine.
fn local_pid(ep: &Endpoint) -> Option<u32> {
    let local = matches!(ep.host.as_str(), "localhost" | "::1") || ep.host.starts_with("127.");
    if !local {
        return None;
    }
    procfs::pid_listening_on(ep.port)
        .inspect_err(|e| eprintln!("note: no server peak RSS: {e}"))
        .ok()
}

fn machine_cmd(args: &MachineArgs) -> Result<(), BenchError> {
    eprintln!("measuring triad bandwidth and FMA peak …");
    let limits = machine::measure(args.threads, args.triad_mib, args.repeats);
    let model = args.model.as_deref().map(gguf::model_size).transpose()?;
    let weight_bytes = args
        .weight_bytes
        .or(model.as_ref().map(|m| m.weight_bytes_per_token));
    let params = args
        .active_params
        .or(model.as_ref().map(|m| m.matmul_params));
    let bounds = match (weight_bytes, params) {
        (Some(w), Some(p)) => Some(Bounds::new(&limits, w, p)),
        _ => None,
    };
    let report = MachineReport {
        cpu: machine::cpu_name(),
        limits,
        model,
        bounds,
    };
    println!("CPU {}, {}", report.cpu, report.limits);
    if let Some(b) = &report.bounds {
        println!(
            "model: {} B/token, {} params → decode ≤ {:.0} tok/s (bandwidth), ≤ {:.0} tok/s (FLOPs)",
            b.weight_bytes_per_token, b.matmul_params, b.decode_tok_per_s_bound, b.flop_tok_per_s_bound
        );
    }
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&report)
            .map_err(BenchError::json("the machine report"))?;
        std::fs::write(path, text + "\n")
            .map_err(BenchError::io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

fn report_cmd(a: &ReportArgs) -> Result<(), BenchError> {
    let (dir, out_md) = (&a.dir, &a.out_md);
    let pair = Pair {
        candidate: &a.candidate,
        baseline: &a.baseline,
    };
    let runs = Runs::load_dir(dir)?;
    if runs.runs.is_empty() {
        return Err(BenchError::Arg(format!("no run JSON in {}", dir.display())));
    }
    let mut links = Vec::new();
    if !a.no_plots {
        let md_dir = out_md
            .as_deref()
            .and_then(|p| p.parent())
            .map(std::path::Path::to_path_buf);
        for name in plot::plot_runs(&runs, dir)? {
            let file = dir.join(&name);
            let link = md_dir
                .as_deref()
                .and_then(|m| file.strip_prefix(m).ok())
                .unwrap_or(&file);
            links.push(link.display().to_string());
        }
    }
    let md = compare::markdown(&runs, &pair, &a.title, &links);
    match out_md {
        Some(path) => {
            std::fs::write(path, md)
                .map_err(BenchError::io(format!("writing {}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{md}"),
    }
    Ok(())
}
