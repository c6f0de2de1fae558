//! Scenarios: how requests are shaped and paced. Every scenario builds all of its requests
//! before its clock starts (text prompts may need `/tokenize` calls), runs them, and
//! returns records and figures; none of them knows which server it talks to.
//!
//! `Target` is the server as the client sees it: URL, model name, prompt mode, timeout.

pub mod conversation;
pub mod dialog;
pub mod prefill;
pub mod rate;
pub mod sweep;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::BenchError;
use crate::http::{self, Endpoint};
use crate::prompts::{self, PromptMode};
use crate::stream::{self, RequestRecord, StreamRequest};

/// Stack size of request threads: they hold a 16 KiB read buffer and little else.
pub const REQUEST_THREAD_STACK: usize = 256 * 1024;

/// A server as the client sees it.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub ep: Endpoint,
    pub model: String,
    pub mode: PromptMode,
    pub timeout: Duration,
    /// Token ids of token-id prompts are drawn from `[lo, hi)`.
    pub token_range: (u32, u32),
}

impl Target {
    /// Resolves the model name (given, else the first of `/v1/models`) and the prompt mode
    /// (given, else probed with a 1-token completion).
    pub fn connect(
        url: &str,
        model: Option<String>,
        mode: Option<PromptMode>,
        timeout: Duration,
        token_range: (u32, u32),
    ) -> Result<Target, BenchError> {
        if token_range.0 >= token_range.1 {
            return Err(BenchError::Arg(format!(
                "--token-range must be LO..HI with LO < HI. Given: {}..{}",
                token_range.0, token_range.1
            )));
        }
        let ep = Endpoint::parse(url)?;
        let model = match model {
            Some(m) => m,
            None => first_model(&ep, timeout)?,
        };
        let mode = match mode {
            Some(m) => m,
            None => prompts::detect_mode(&ep, &model, timeout)?,
        };
        Ok(Target {
            url: url.to_string(),
            ep,
            model,
            mode,
            timeout,
            token_range,
        })
    }

    /// A streaming completion of a `prompt_len`-token prompt unique to `seed`.
    pub fn completion(
        &self,
        seed: u64,
        prompt_len: usize,
        max_tokens: usize,
    ) -> Result<StreamRequest, BenchError> {
        let (prompt, sent) = match self.mode {
            PromptMode::TokenIds => {
                let (lo, hi) = self.token_range;
                (
                    json!(prompts::token_ids(seed, prompt_len, lo, hi)),
                    Some(prompt_len),
                )
            }
            PromptMode::Text => {
                let (text, n) = prompts::text_of_tokens(&self.ep, seed, prompt_len, self.timeout)?;
                (json!(text), Some(n))
            }
        };
        let mut body = self.common_body(max_tokens);
        body["prompt"] = prompt;
        Ok(StreamRequest {
            path: "/v1/completions".into(),
            body,
            prompt_tokens_sent: sent,
        })
    }

    /// A streaming chat completion of `messages` (`[{"role","content"}…]`).
    pub fn chat(&self, messages: &[Value], max_tokens: usize) -> StreamRequest {
        let mut body = self.common_body(max_tokens);
        body["messages"] = json!(messages);
        StreamRequest {
            path: "/v1/chat/completions".into(),
            body,
            prompt_tokens_sent: None,
        }
    }

    /// Greedy, exactly `max_tokens` (ignore_eos), streamed with usage.
    fn common_body(&self, max_tokens: usize) -> Value {
        json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    }

    /// One short request whose figures are thrown away (first-request costs).
    pub fn warm_up(&self) -> Result<(), BenchError> {
        let req = self.completion(u64::MAX, 16, 4)?;
        let rec = stream::run_stream(&self.ep, &req, Instant::now(), self.timeout);
        match rec.error {
            None => Ok(()),
            Some(e) => Err(BenchError::Http(format!("warm-up request failed: {e}"))),
        }
    }
}

/// The first model id of `GET /v1/models`.
fn first_model(ep: &Endpoint, timeout: Duration) -> Result<String, BenchError> {
    let v = http::get(ep, "/v1/models", timeout)?.into_json("/v1/models")?;
    v.get("data")
        .and_then(|d| d.get(0))
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| BenchError::Http(format!("/v1/models lists no model: {v}")))
}

/// Polls until `GET /health` answers 200 and `GET /ready` answers 200 or 404 (servers
/// without a readiness route), or `limit` passes.
pub fn wait_ready(ep: &Endpoint, limit: Duration) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let status = |path: &str| match http::get(ep, path, Duration::from_secs(5)) {
        Ok(resp) => Ok(resp.status),
        Err(e) => Err(e.to_string()),
    };
    loop {
        let last = match (status("/health"), status("/ready")) {
            (Ok(200), Ok(200 | 404)) => return Ok(start.elapsed()),
            (Ok(h), Ok(r)) => format!("/health {h}, /ready {r}"),
            (Err(e), _) | (_, Err(e)) => e,
        };
        if start.elapsed() > limit {
            return Err(BenchError::Http(format!(
                "server at {}:{} not ready after {:.0}s (last: {last})",
                ep.host,
                ep.port,
                limit.as_secs_f64()
            )));
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `requests` with `concurrency` workers, each sending its next request as soon as its
/// previous one ends (closed loop). Returns records in request order and the wall time.
pub fn closed_loop(
    target: &Target,
    requests: &[StreamRequest],
    concurrency: usize,
) -> (Vec<RequestRecord>, f64) {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<RequestRecord>>> = Mutex::new(vec![None; requests.len()]);
    let epoch = Instant::now();
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(req) = requests.get(i) else { break };
        let rec = stream::run_stream(&target.ep, req, epoch, target.timeout);
        if let Ok(mut slots) = slots.lock() {
            slots[i] = Some(rec);
        }
    };
    thread::scope(|s| {
        let mut started = 0;
        for _ in 0..concurrency.clamp(1, requests.len().max(1)) {
            let builder = thread::Builder::new().stack_size(REQUEST_THREAD_STACK);
            if builder.spawn_scoped(s, worker).is_err() {
                break; // fewer workers than asked; the started ones take all requests
            }
            started += 1;
        }
        if started == 0 {
            worker();
        }
    });
    let wall = epoch.elapsed().as_secs_f64();
    let records = slots
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    (records, wall)
}
