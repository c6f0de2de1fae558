//! The `generate`, `chat` and `bench` commands: load the model, start the engine, stream
//! tokens to the terminal. They use only the public engine API, and validate what they
//! submit as the HTTP routes do (`server::validate::validate_sequence`). Also
//! `feedback export` (the store's ratings as fine-tuning files).

pub mod args;
pub mod perplexity;

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use crate::config::EngineConfig;
use crate::engine::handle::EngineHandle;
use crate::engine::launch::launch;
use crate::engine::stream::RequestStream;
use crate::error::ApiError;
use crate::model::chat_template::{encode_chat, ChatMessage};
use crate::request::SamplingParams;
use crate::server::validate::validate_sequence;

/// Loads `path` and starts an engine over it (`engine::launch`), saying how long the
/// model took to load.
pub fn start_engine(
    path: &Path,
    cfg: &EngineConfig,
) -> Result<EngineHandle, Box<dyn std::error::Error>> {
    let launched = launch(path, cfg)?;
    eprintln!("loaded {} in {:.1}s", path.display(), launched.load_seconds);
    Ok(launched.engine)
}

/// Prompt token ids: the chat template around `text` as one user turn, or `text` raw.
pub fn prompt_ids(
    engine: &EngineHandle,
    messages: &[ChatMessage],
    raw: Option<&str>,
) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let assets = engine.model();
    Ok(match raw {
        Some(text) => assets.tokenizer.encode(text, true, false)?,
        None => encode_chat(&assets.tokenizer, &assets.chat_template, messages, true)?,
    })
}

/// Prints a stream's text as it arrives; returns the full text.
pub fn print_stream(mut stream: RequestStream) -> Result<String, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut first_token = None;
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    while let Some(ev) = stream.blocking_next() {
        let ev = ev?;
        first_token.get_or_insert_with(|| started.elapsed());
        print!("{}", ev.text);
        stdout.flush()?;
        text.push_str(&ev.text);
        if let Some(reason) = ev.finish_reason {
            let usage = ev.usage;
            let total = started.elapsed().as_secs_f64();
            let ttft = first_token.map_or(0.0, |d| d.as_secs_f64());
            let decode_tps =
                (usage.completion_tokens.saturating_sub(1)) as f64 / (total - ttft).max(1e-9);
            eprintln!(
                "\n[{} | prompt {} tokens ({} cached) | {} tokens | ttft {:.0} ms | {:.1} tok/s]",
                reason.as_str(),
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens,
                ttft * 1e3,
                decode_tps
            );
        }
    }
    Ok(text)
}

/// One-shot generation.
pub fn generate(
    engine: &EngineHandle,
    prompt: &str,
    raw: bool,
    sampling: SamplingParams,
) -> Result<(), Box<dyn std::error::Error>> {
    let messages = [ChatMessage::new("user", prompt)];
    let ids = prompt_ids(engine, &messages, raw.then_some(prompt))?;
    print_stream(submit(engine, ids, sampling)?)?;
    Ok(())
}

/// Validates one sequence and submits it.
fn submit(
    engine: &EngineHandle,
    ids: Vec<u32>,
    sampling: SamplingParams,
) -> Result<RequestStream, ApiError> {
    let (ids, sampling) = validate_sequence(ids, sampling, engine.info())?;
    Ok(engine.submit(ids, sampling)?)
}

/// Interactive multi-turn chat on stdin/stdout.
pub fn chat(
    engine: &EngineHandle,
    system: Option<&str>,
    sampling: SamplingParams,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut history: Vec<ChatMessage> = system
        .map(|s| vec![ChatMessage::new("system", s)])
        .unwrap_or_default();
    eprintln!(
        "chatting with {} (empty line or Ctrl-D to quit)",
        engine.model().name
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        history.push(ChatMessage::new("user", line.trim_end()));
        let ids = prompt_ids(engine, &history, None)?;
        match submit(engine, ids, sampling.clone()) {
            Ok(stream) => {
                let reply = print_stream(stream)?;
                history.push(ChatMessage::new("assistant", &reply));
            }
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
            }
        }
    }
}

/// Result of one in-process throughput run.
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub concurrency: usize,
    pub output_tokens: usize,
    pub seconds: f64,
    /// Mean time to first token.
    pub ttft_ms: f64,
    /// Mean per-stream decode rate after the first token.
    pub decode_tok_s: f64,
}

/// Token id number `i` of a fixed run of ordinary ids (past the special tokens at the
/// start of most vocabularies), for bench prompts that must differ.
fn distinct_token(i: usize, vocab: usize) -> u32 {
    let first = 1000.min(vocab / 2);
    (first + i % (vocab - first)) as u32
}

/// Runs `concurrency` identical-length requests (`prompt_len` tokens, exactly
/// `max_tokens` outputs) at once through the engine and measures throughput.
pub fn bench(
    engine: &EngineHandle,
    concurrency: usize,
    prompt_len: usize,
    max_tokens: usize,
) -> Result<BenchResult, Box<dyn std::error::Error>> {
    let tok = &engine.model().tokenizer;
    let text =
        "The quick brown fox jumps over the lazy dog while the cat watches. ".repeat(prompt_len);
    let base = tok.encode(&text, false, false)?;
    let started = Instant::now();
    let streams: Vec<RequestStream> = (0..concurrency)
        .map(|i| {
            // Distinct first tokens, so no two prompts share a prefix-cache block (the
            // text repeats every few tokens: picking its tokens by index would not do).
            let mut ids = vec![distinct_token(i, engine.info().vocab)];
            ids.extend_from_slice(&base[..prompt_len - 1]);
            // With LoRA adapters served, the streams are spread over them round-robin.
            let adapters = engine.model().adapters.adapters();
            let params = SamplingParams {
                ignore_eos: true,
                lora: (!adapters.is_empty()).then(|| adapters[i % adapters.len()].lora.clone()),
                ..SamplingParams::greedy(max_tokens)
            };
            submit(engine, ids, params)
        })
        .collect::<Result<_, _>>()?;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let (mut first, mut n) = (None, 0usize);
                while let Some(Ok(ev)) = s.blocking_next() {
                    n += ev.token_ids.len();
                    first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                }
                let total = t0.elapsed().as_secs_f64();
                let ttft = first.unwrap_or(total);
                (
                    n,
                    ttft,
                    (n.saturating_sub(1)) as f64 / (total - ttft).max(1e-9),
                )
            })
        })
        .collect();
    let results: Vec<(usize, f64, f64)> = handles
        .into_iter()
        .map(|h| h.join().map_err(|_| "bench thread panicked"))
        .collect::<Result<_, _>>()?;
    let seconds = started.elapsed().as_secs_f64();
    let n = results.len() as f64;
    Ok(BenchResult {
        concurrency,
        output_tokens: results.iter().map(|r| r.0).sum(),
        seconds,
        ttft_ms: results.iter().map(|r| r.1).sum::<f64>() / n * 1e3,
        decode_tok_s: results.iter().map(|r| r.2).sum::<f64>() / n,
    })
}

/// `tessera feedback export`: the ratings made in `[since, until)` as
/// `OUT_DIR/feedback-good.jsonl` and `OUT_DIR/feedback-bad.jsonl`.
pub fn export_feedback(
    store: &crate::store::StoreConfig,
    since: &str,
    until: Option<&str>,
    out_dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::dialog::feedback::{export_feedback, parse_date};
    let since = parse_date(since).map_err(|e| format!("--since: {e}"))?;
    let until = match until {
        Some(u) => parse_date(u).map_err(|e| format!("--until: {e}"))?,
        None => crate::store::unix_now() + 1,
    };
    if until <= since {
        return Err("--until must be after --since".into());
    }
    let pool = crate::store::StorePool::open(store)
        .map_err(|e| format!("opening the store ({}): {e}", store.describe()))?;
    let export = export_feedback(&pool, since, until)?;
    std::fs::create_dir_all(out_dir)?;
    for (name, lines) in [
        ("feedback-good.jsonl", &export.good),
        ("feedback-bad.jsonl", &export.bad),
    ] {
        let path = out_dir.join(name);
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(&path, text)?;
        println!("{}: {} conversations", path.display(), lines.len());
    }
    Ok(())
}
