//! Conversation: `users` concurrent dialogs of `turns` turns, each run twice — stateful
//! through `/v1/responses` (the client sends only the new message and
//! `previous_response_id`; the server keeps the history and windows it), then stateless
//! through `/v1/chat/completions` (the client resends the whole history every turn). The
//! two passes use different questions, so neither rides on the other's prefix cache.
//!
//! Figures per turn and path: TTFT and end-to-end latency (p50/p90), the share of prompt
//! tokens the server served from its prefix cache (`cached_tokens / input_tokens`), and
//! the request size the client sent. A user whose turn fails stops; its later turns count
//! as failures.

use std::sync::Mutex;
use std::thread;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{dialog, Target, REQUEST_THREAD_STACK};
use crate::error::BenchError;
use crate::prompts::words;
use crate::stats::Summary;
use crate::stream::{self, RequestRecord, StreamRequest};

#[derive(Debug, Clone)]
pub struct ConversationConfig {
    pub users: usize,
    pub turns: usize,
    pub system_words: usize,
    pub user_words: usize,
    pub max_tokens: usize,
    pub seed: u64,
    /// The paths to run, in order.
    pub paths: Vec<Path>,
    /// Run the paths at the same time (each with `users` users), so both see the same
    /// machine load: on a shared machine, back-to-back runs differ by more than the paths do.
    pub together: bool,
}

/// Which way the dialog is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// `/v1/responses` with `previous_response_id`.
    Stateful,
    /// `/v1/chat/completions` with the whole history.
    Stateless,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnFigures {
    /// Latencies and token counts, as the dialog scenario reports them.
    #[serde(flatten)]
    pub figures: dialog::TurnFigures,
    /// Σ cached / Σ prompt tokens over the users' successful requests.
    pub cached_share: Option<f64>,
    pub mean_request_bytes: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathFigures {
    pub path: Path,
    pub per_turn: Vec<TurnFigures>,
    /// Cached share over turns 2..=T together.
    pub cached_share_after_first: Option<f64>,
    pub overall: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationResult {
    pub users: usize,
    pub turns: usize,
    pub system_words: usize,
    pub user_words: usize,
    pub max_tokens: usize,
    pub paths: Vec<PathFigures>,
}

/// One request and its size.
struct Sent {
    record: RequestRecord,
    bytes: usize,
}

pub fn run(target: &Target, cfg: &ConversationConfig) -> Result<ConversationResult, BenchError> {
    if cfg.users == 0 || cfg.turns == 0 || cfg.max_tokens == 0 || cfg.paths.is_empty() {
        return Err(BenchError::Arg(format!(
            "--users, --turns, --max-tokens and --paths must be >= 1. Given: {}, {}, {}, {}",
            cfg.users,
            cfg.turns,
            cfg.max_tokens,
            cfg.paths.len()
        )));
    }
    target.warm_up()?;
    let system = format!(
        "You are a helpful assistant. {}",
        words(cfg.seed, cfg.system_words)
    );
    let system = &system;
    let paths = if cfg.together {
        thread::scope(|s| {
            let runs: Vec<_> = cfg
                .paths
                .iter()
                .map(|&path| s.spawn(move || run_path(target, cfg, system, path)))
                .collect();
            runs.into_iter().filter_map(|r| r.join().ok()).collect()
        })
    } else {
        cfg.paths
            .iter()
            .map(|&path| run_path(target, cfg, system, path))
            .collect()
    };
    Ok(ConversationResult {
        users: cfg.users,
        turns: cfg.turns,
        system_words: cfg.system_words,
        user_words: cfg.user_words,
        max_tokens: cfg.max_tokens,
        paths,
    })
}

fn run_path(target: &Target, cfg: &ConversationConfig, system: &str, path: Path) -> PathFigures {
    let by_user: Mutex<Vec<Vec<Sent>>> = Mutex::new(Vec::new());
    let epoch = Instant::now();
    thread::scope(|s| {
        for user in 0..cfg.users {
            let by_user = &by_user;
            let converse = move || {
                let sent = converse(target, cfg, system, user, path, epoch);
                if let Ok(mut all) = by_user.lock() {
                    all.push(sent);
                }
            };
            let builder = thread::Builder::new().stack_size(REQUEST_THREAD_STACK);
            if let Err(e) = builder.spawn_scoped(s, converse) {
                eprintln!("client could not start a thread: {e}");
            }
        }
    });
    let wall = epoch.elapsed().as_secs_f64();
    let by_user = by_user.into_inner().unwrap_or_default();
    let per_turn: Vec<TurnFigures> = (0..cfg.turns)
        .map(|t| turn_figures(t, by_user.iter().filter_map(|u| u.get(t)).collect()))
        .collect();
    let later: Vec<&Sent> = by_user.iter().flat_map(|u| u.iter().skip(1)).collect();
    let all: Vec<RequestRecord> = by_user.iter().flatten().map(|s| s.record.clone()).collect();
    PathFigures {
        path,
        per_turn,
        cached_share_after_first: cached_share(&later),
        overall: Summary::of(&all, wall),
    }
}

/// One user's dialog on `path`; always `cfg.turns` entries.
fn converse(
    target: &Target,
    cfg: &ConversationConfig,
    system: &str,
    user: usize,
    path: Path,
    epoch: Instant,
) -> Vec<Sent> {
    let mut history: Vec<Value> = vec![json!({"role": "system", "content": system})];
    let mut previous: Option<String> = None;
    let mut out = Vec::with_capacity(cfg.turns);
    let salt = if path == Path::Stateful {
        0x57A7E
    } else {
        0x57A7E1E55
    };
    for turn in 0..cfg.turns {
        let seed = cfg.seed ^ salt ^ ((user as u64 + 1) << 20) ^ (turn as u64 + 1);
        let question = format!(
            "Question {} from user {user}: {}",
            turn + 1,
            words(seed, cfg.user_words)
        );
        let req = match path {
            Path::Stateful => {
                responses_request(target, cfg, system, &question, previous.as_deref())
            }
            Path::Stateless => {
                history.push(json!({"role": "user", "content": question}));
                target.chat(&history, cfg.max_tokens)
            }
        };
        let bytes = req.body.to_string().len();
        let record = stream::run_stream(&target.ep, &req, epoch, target.timeout);
        history.push(json!({"role": "assistant", "content": record.text}));
        previous = record.response_id.clone();
        let failed = record.error.clone();
        out.push(Sent { record, bytes });
        if let Some(e) = failed {
            while out.len() < cfg.turns {
                out.push(Sent {
                    record: RequestRecord {
                        error: Some(format!("skipped: turn {} failed ({e})", turn + 1)),
                        ..RequestRecord::default()
                    },
                    bytes: 0,
                });
            }
            break;
        }
    }
    out
}

/// A streamed `/v1/responses` turn: greedy, exactly `max_tokens` (ignore_eos), the system
/// prompt as `instructions` (not carried over by `previous_response_id`).
fn responses_request(
    target: &Target,
    cfg: &ConversationConfig,
    system: &str,
    question: &str,
    previous: Option<&str>,
) -> StreamRequest {
    let mut body = json!({
        "model": target.model,
        "input": question,
        "instructions": system,
        "max_output_tokens": cfg.max_tokens,
        "temperature": 0.0,
        "ignore_eos": true,
        "stream": true,
    });
    if let Some(previous) = previous {
        body["previous_response_id"] = json!(previous);
    }
    StreamRequest {
        path: "/v1/responses".into(),
        body,
        prompt_tokens_sent: None,
    }
}

fn cached_share(sent: &[&Sent]) -> Option<f64> {
    let ok = sent.iter().filter(|s| s.record.ok());
    let (cached, prompt) = ok.fold((0, 0), |(c, p), s| {
        (
            c + s.record.cached_tokens.unwrap_or(0),
            p + s.record.prompt_tokens.unwrap_or(0),
        )
    });
    (prompt > 0).then(|| cached as f64 / prompt as f64)
}

/// Figures of turn `t` (0-based) over all users.
fn turn_figures(t: usize, sent: Vec<&Sent>) -> TurnFigures {
    let records: Vec<RequestRecord> = sent.iter().map(|s| s.record.clone()).collect();
    TurnFigures {
        figures: dialog::turn_figures(t, records),
        cached_share: cached_share(&sent),
        mean_request_bytes: sent.iter().map(|s| s.bytes as f64).sum::<f64>()
            / sent.len().max(1) as f64,
    }
}

impl ConversationResult {
    /// Markdown: one table per path, a row per turn.
    pub fn markdown(&self, label: &str) -> String {
        let mut out = format!(
            "## conversation: {label}, {} users × {} turns, {} output tokens per turn\n",
            self.users, self.turns, self.max_tokens
        );
        for p in &self.paths {
            let share = p
                .cached_share_after_first
                .map_or("-".into(), |s| format!("{:.1} %", s * 100.0));
            out += &format!(
                "\n### {:?} (cached share, turns 2-{}: {share})\n\n| turn | ok | TTFT p50 ms | TTFT p90 ms | e2e p50 ms | e2e p90 ms | prompt tok | cached share | request bytes |\n|---|---|---|---|---|---|---|---|---|\n",
                p.path, self.turns
            );
            for (t, extra) in p.per_turn.iter().map(|t| (&t.figures, t)) {
                let ms = |d: Option<crate::stats::Dist>, p90: bool| {
                    d.map_or("-".into(), |d| {
                        format!("{:.0}", if p90 { d.p90 } else { d.p50 })
                    })
                };
                out += &format!(
                    "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
                    t.turn,
                    t.summary.succeeded,
                    t.summary.requests,
                    ms(t.summary.ttft_ms, false),
                    ms(t.summary.ttft_ms, true),
                    ms(t.summary.e2e_ms, false),
                    ms(t.summary.e2e_ms, true),
                    t.mean_prompt_tokens
                        .map_or("-".into(), |n| format!("{n:.0}")),
                    extra
                        .cached_share
                        .map_or("-".into(), |s| format!("{:.1} %", s * 100.0)),
                    extra.mean_request_bytes,
                );
            }
        }
        out
    }
}
