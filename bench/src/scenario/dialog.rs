//! Dialog: `users` concurrent conversations of `turns` turns each over one shared system
//! prompt (`/v1/chat/completions`). Each turn resends the whole conversation, including the
//! server's own previous replies, so a server with prefix caching recomputes only the new
//! user message. Figures per turn; a user whose turn fails stops, and its later turns are
//! recorded as failures.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Target, REQUEST_THREAD_STACK};
use crate::error::BenchError;
use crate::prompts::words;
use crate::stats::Summary;
use crate::stream::{self, RequestRecord};

#[derive(Debug, Clone)]
pub struct DialogConfig {
    pub users: usize,
    pub turns: usize,
    pub system_words: usize,
    pub user_words: usize,
    pub max_tokens: usize,
    pub think_ms: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnFigures {
    /// 1-based.
    pub turn: usize,
    pub summary: Summary,
    pub mean_prompt_tokens: Option<f64>,
    /// Mean prompt tokens the server reported as cached (when it reports them).
    pub mean_cached_tokens: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DialogResult {
    pub users: usize,
    pub turns: usize,
    pub system_words: usize,
    pub user_words: usize,
    pub max_tokens: usize,
    pub per_turn: Vec<TurnFigures>,
    pub overall: Summary,
}

pub fn run(target: &Target, cfg: &DialogConfig) -> Result<DialogResult, BenchError> {
    if cfg.users == 0 || cfg.turns == 0 || cfg.max_tokens == 0 {
        return Err(BenchError::Arg(format!(
            "--users, --turns and --max-tokens must be >= 1. Given: {}, {}, {}",
            cfg.users, cfg.turns, cfg.max_tokens
        )));
    }
    target.warm_up()?;
    let system = format!(
        "You are a helpful assistant. {}",
        words(cfg.seed, cfg.system_words)
    );
    let by_user: Mutex<Vec<(usize, Vec<RequestRecord>)>> = Mutex::new(Vec::new());
    let epoch = Instant::now();
    thread::scope(|s| {
        for user in 0..cfg.users {
            let (system, by_user) = (&system, &by_user);
            let converse = move || {
                let records = conversation(target, cfg, system, user, epoch);
                if let Ok(mut all) = by_user.lock() {
                    all.push((user, records));
                }
            };
            let builder = thread::Builder::new().stack_size(REQUEST_THREAD_STACK);
            if let Err(e) = builder.spawn_scoped(s, converse) {
                let failed = failed_turns(
                    0,
                    cfg.turns,
                    &format!("client could not start a thread: {e}"),
                );
                if let Ok(mut all) = by_user.lock() {
                    all.push((user, failed));
                }
            }
        }
    });
    let wall = epoch.elapsed().as_secs_f64();
    let mut by_user = by_user.into_inner().unwrap_or_default();
    by_user.sort_by_key(|(u, _)| *u);
    let per_turn = (0..cfg.turns)
        .map(|t| {
            turn_figures(
                t,
                by_user
                    .iter()
                    .filter_map(|(_, recs)| recs.get(t))
                    .cloned()
                    .collect(),
            )
        })
        .collect();
    let all: Vec<RequestRecord> = by_user.into_iter().flat_map(|(_, r)| r).collect();
    Ok(DialogResult {
        users: cfg.users,
        turns: cfg.turns,
        system_words: cfg.system_words,
        user_words: cfg.user_words,
        max_tokens: cfg.max_tokens,
        per_turn,
        overall: Summary::of(&all, wall),
    })
}

/// One user's turns, in order; always `cfg.turns` records.
fn conversation(
    target: &Target,
    cfg: &DialogConfig,
    system: &str,
    user: usize,
    epoch: Instant,
) -> Vec<RequestRecord> {
    let mut messages: Vec<Value> = vec![json!({"role": "system", "content": system})];
    let mut records = Vec::with_capacity(cfg.turns);
    for turn in 0..cfg.turns {
        let seed = cfg.seed ^ ((user as u64 + 1) << 20) ^ (turn as u64 + 1);
        let question = format!(
            "Question {} from user {user}: {}",
            turn + 1,
            words(seed, cfg.user_words)
        );
        messages.push(json!({"role": "user", "content": question}));
        let rec = stream::run_stream(
            &target.ep,
            &target.chat(&messages, cfg.max_tokens),
            epoch,
            target.timeout,
        );
        messages.push(json!({"role": "assistant", "content": rec.text}));
        let failed = rec.error.clone();
        records.push(rec);
        if let Some(e) = failed {
            records.extend(failed_turns(
                turn + 1,
                cfg.turns,
                &format!("skipped: turn {} failed ({e})", turn + 1),
            ));
            break;
        }
        if cfg.think_ms > 0 && turn + 1 < cfg.turns {
            thread::sleep(Duration::from_millis(cfg.think_ms));
        }
    }
    records
}

fn failed_turns(from: usize, to: usize, why: &str) -> Vec<RequestRecord> {
    (from..to)
        .map(|_| RequestRecord {
            error: Some(why.to_string()),
            ..RequestRecord::default()
        })
        .collect()
}

/// Figures of turn `t` (0-based) over all users; its duration spans its first send to its
/// last completion.
pub fn turn_figures(t: usize, records: Vec<RequestRecord>) -> TurnFigures {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let first = ok.iter().map(|r| r.start_s).fold(f64::INFINITY, f64::min);
    let last = ok.iter().map(|r| r.start_s + r.e2e_s).fold(0.0, f64::max);
    let mean = |xs: Vec<usize>| {
        (!xs.is_empty()).then(|| xs.iter().sum::<usize>() as f64 / xs.len() as f64)
    };
    TurnFigures {
        turn: t + 1,
        summary: Summary::of(&records, if ok.is_empty() { 0.0 } else { last - first }),
        mean_prompt_tokens: mean(ok.iter().filter_map(|r| r.prompt_tokens).collect()),
        mean_cached_tokens: mean(ok.iter().filter_map(|r| r.cached_tokens).collect()),
    }
}
