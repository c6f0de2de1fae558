//! One timed streaming request: POST, read the SSE stream as it arrives, and record what
//! the client saw: time to first content, every gap between content chunks, end-to-end
//! time, tokens received, and success or the reason for failure.
//!
//! A "content chunk" is an SSE data event whose first choice carries non-empty text
//! (`choices[0].text` for completions, `choices[0].delta.content` for chat). Output tokens
//! are `usage.completion_tokens` when the server reports usage, else the content-chunk
//! count. A request succeeds only with HTTP 200, no error event, and `data: [DONE]`.

use std::io::Read;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::{self, Endpoint};
use crate::sse::{SseEvent, SseParser};

/// What to send.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// `/v1/completions` or `/v1/chat/completions`.
    pub path: String,
    pub body: Value,
    /// Prompt length when the client knows it (token-id prompts).
    pub prompt_tokens_sent: Option<usize>,
}

/// What happened to one request. Times in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Send time, relative to the scenario's start.
    pub start_s: f64,
    pub ttft_s: Option<f64>,
    /// Gaps between consecutive content chunks.
    pub itl_s: Vec<f64>,
    pub e2e_s: f64,
    pub output_tokens: usize,
    pub content_chunks: usize,
    /// From `usage.prompt_tokens`, else what the client sent.
    pub prompt_tokens: Option<usize>,
    /// Prompt tokens the server says it served from cache, when it says so.
    pub cached_tokens: Option<usize>,
    pub usage_reported: bool,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    /// The generated text (kept by the dialog scenario to continue the conversation).
    #[serde(skip)]
    pub text: String,
    /// The response id of a Responses API stream (to chain the next turn).
    #[serde(skip)]
    pub response_id: Option<String>,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Time per output token after the first: (e2e − TTFT) / (tokens − 1).
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - ttft) / (self.output_tokens - 1) as f64)
    }
}

/// Accumulates a record from the events of one stream.
struct StreamState {
    sent: Instant,
    last_content: Option<Instant>,
    record: RequestRecord,
    done: bool,
}

impl StreamState {
    /// Applies one event received at `at`.
    fn on_event(&mut self, ev: &SseEvent, at: Instant) {
        if ev.is_done() {
            self.done = true;
            return;
        }
        let json: Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(e) => {
                self.record.error = Some(format!(
                    "SSE data is not JSON ({e}): {}",
                    http::snippet(&ev.data)
                ));
                return;
            }
        };
        if let Some(kind) = json.get("type").and_then(Value::as_str) {
            return self.on_response_event(kind, &json, at);
        }
        if ev.event.as_deref() == Some("error") || json.get("error").is_some_and(|e| !e.is_null()) {
            self.record.error = Some(format!("error event: {}", http::snippet(&ev.data)));
            return;
        }
        let choice = json.get("choices").and_then(|c| c.get(0));
        if let Some(choice) = choice {
            let text = choice
                .get("text")
                .or_else(|| choice.get("delta").and_then(|d| d.get("content")))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !text.is_empty() {
                self.on_content(text, at);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.record.finish_reason = Some(reason.to_string());
            }
        }
        if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
            self.on_usage(usage);
        }
    }

    /// A typed event of the Responses API: deltas are content; `response.completed` /
    /// `response.incomplete` end the stream (it has no `[DONE]`) with the usage.
    fn on_response_event(&mut self, kind: &str, json: &Value, at: Instant) {
        match kind {
            "response.output_text.delta" => {
                let text = json.get("delta").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    self.on_content(text, at);
                }
            }
            "response.completed" | "response.incomplete" => {
                let response = &json["response"];
                self.record.response_id = response["id"].as_str().map(str::to_string);
                self.record.finish_reason = response["status"].as_str().map(str::to_string);
                let usage = &response["usage"];
                let field = |v: &Value| v.as_u64().map(|n| n as usize);
                if let Some(n) = field(&usage["output_tokens"]) {
                    self.record.output_tokens = n;
                    self.record.usage_reported = true;
                }
                self.record.prompt_tokens = field(&usage["input_tokens"]);
                self.record.cached_tokens = field(&usage["input_tokens_details"]["cached_tokens"]);
                self.done = true;
            }
            "response.failed" | "error" => {
                self.record.error = Some(format!("{kind}: {}", http::snippet(&json.to_string())));
            }
            _ => {}
        }
    }

    fn on_content(&mut self, text: &str, at: Instant) {
        match self.last_content {
            None => self.record.ttft_s = Some((at - self.sent).as_secs_f64()),
            Some(prev) => self.record.itl_s.push((at - prev).as_secs_f64()),
        }
        self.last_content = Some(at);
        self.record.content_chunks += 1;
        self.record.text.push_str(text);
    }

    fn on_usage(&mut self, usage: &Value) {
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).map(|n| n as usize);
        if let Some(n) = field(usage, "completion_tokens") {
            self.record.output_tokens = n;
            self.record.usage_reported = true;
        }
        if let Some(n) = field(usage, "prompt_tokens") {
            self.record.prompt_tokens = Some(n);
        }
        if let Some(n) = usage
            .get("prompt_tokens_details")
            .and_then(|d| field(d, "cached_tokens"))
        {
            self.record.cached_tokens = Some(n);
        }
    }
}

/// Sends `req` and reads its stream to the end. Never fails: failures are recorded.
/// `epoch` is the scenario's start (for `start_s`).
pub fn run_stream(
    ep: &Endpoint,
    req: &StreamRequest,
    epoch: Instant,
    timeout: Duration,
) -> RequestRecord {
    let sent = Instant::now();
    let mut state = StreamState {
        sent,
        last_content: None,
        record: RequestRecord {
            start_s: (sent - epoch).as_secs_f64(),
            prompt_tokens: req.prompt_tokens_sent,
            ..RequestRecord::default()
        },
        done: false,
    };
    if let Err(e) = read_stream(ep, req, &mut state, timeout) {
        state.record.error.get_or_insert(e);
    }
    let record = &mut state.record;
    record.e2e_s = sent.elapsed().as_secs_f64();
    if !record.usage_reported {
        record.output_tokens = record.content_chunks;
    }
    if record.error.is_none() && !state.done {
        record.error = Some("stream ended without `data: [DONE]`".to_string());
    }
    state.record
}

/// Drives the HTTP exchange; an `Err` is the failure message.
fn read_stream(
    ep: &Endpoint,
    req: &StreamRequest,
    state: &mut StreamState,
    timeout: Duration,
) -> Result<(), String> {
    let mut resp = http::post_json(ep, &req.path, &req.body, timeout).map_err(|e| e.to_string())?;
    if resp.status != 200 {
        let status = resp.status;
        let body = resp.into_string().unwrap_or_default();
        return Err(format!("HTTP {status}: {}", http::snippet(&body)));
    }
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    if !content_type.starts_with("text/event-stream") {
        let body = resp.into_string().unwrap_or_default();
        return Err(format!(
            "expected text/event-stream, got `{content_type}`: {}",
            http::snippet(&body)
        ));
    }
    let mut parser = SseParser::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !state.done && state.record.error.is_none() {
        let n = resp
            .read(&mut buf)
            .map_err(|e| format!("reading the stream: {e}"))?;
        let at = Instant::now();
        if n == 0 {
            break;
        }
        for ev in parser.feed(&buf[..n]) {
            state.on_event(&ev, at);
            if state.done || state.record.error.is_some() {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        StreamState {
            sent: Instant::now(),
            last_content: None,
            record: RequestRecord::default(),
            done: false,
        }
    }

    fn data(s: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: s.to_string(),
        }
    }

    #[test]
    fn completion_and_chat_chunks_count_as_content() {
        let mut st = state();
        let t = st.sent;
        st.on_event(
            &data(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            t,
        );
        assert_eq!(st.record.content_chunks, 0);
        st.on_event(
            &data(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#),
            t + Duration::from_millis(10),
        );
        st.on_event(
            &data(r#"{"choices":[{"text":" there","finish_reason":"length"}]}"#),
            t + Duration::from_millis(25),
        );
        st.on_event(
            &data(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}"#),
            t + Duration::from_millis(26),
        );
        st.on_event(&data("[DONE]"), t + Duration::from_millis(27));
        let r = &st.record;
        assert!(st.done && r.ok());
        assert_eq!(r.content_chunks, 2);
        assert_eq!(r.text, "Hi there");
        assert!((r.ttft_s.unwrap() - 0.010).abs() < 1e-9);
        assert_eq!(r.itl_s.len(), 1);
        assert!((r.itl_s[0] - 0.015).abs() < 1e-9);
        assert_eq!(
            (r.output_tokens, r.prompt_tokens, r.cached_tokens),
            (3, Some(7), Some(4))
        );
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn error_events_and_bad_json_fail_the_request() {
        let mut st = state();
        st.on_event(
            &data(r#"{"error":{"message":"context too long"}}"#),
            st.sent,
        );
        assert!(st
            .record
            .error
            .as_deref()
            .unwrap()
            .contains("context too long"));
        let mut st = state();
        let ev = SseEvent {
            event: Some("error".into()),
            data: r#"{"message":"x"}"#.into(),
        };
        st.on_event(&ev, st.sent);
        assert!(st.record.error.is_some());
        let mut st = state();
        st.on_event(&data("not json"), st.sent);
        assert!(st.record.error.as_deref().unwrap().contains("not JSON"));
    }

    #[test]
    fn tpot_needs_two_tokens() {
        let mut r = RequestRecord {
            ttft_s: Some(0.1),
            e2e_s: 1.1,
            output_tokens: 11,
            ..RequestRecord::default()
        };
        assert!((r.tpot_s().unwrap() - 0.1).abs() < 1e-12);
        r.output_tokens = 1;
        assert_eq!(r.tpot_s(), None);
    }

    #[test]
    fn responses_streams_give_content_usage_and_the_response_id() {
        let now = Instant::now();
        let mut state = StreamState {
            sent: now,
            last_content: None,
            record: RequestRecord::default(),
            done: false,
        };
        let event = |kind: &str, data: &str| SseEvent {
            event: Some(kind.to_string()),
            data: data.to_string(),
        };
        state.on_event(
            &event(
                "response.created",
                r#"{"type":"response.created","sequence_number":0}"#,
            ),
            now,
        );
        state.on_event(
            &event(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
            ),
            now,
        );
        state.on_event(
            &event(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":" there"}"#,
            ),
            now,
        );
        assert!(!state.done);
        let done = r#"{"type":"response.completed","response":{"id":"resp_1","status":"completed",
            "usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":32},"output_tokens":2}}}"#;
        state.on_event(&event("response.completed", done), now);
        let r = &state.record;
        assert!(state.done && r.ok());
        assert_eq!((r.text.as_str(), r.content_chunks), ("Hi there", 2));
        assert_eq!(
            (r.prompt_tokens, r.cached_tokens, r.output_tokens),
            (Some(40), Some(32), 2)
        );
        assert_eq!(r.response_id.as_deref(), Some("resp_1"));
        state.on_event(
            &event("response.failed", r#"{"type":"response.failed"}"#),
            now,
        );
        assert!(state.record.error.is_some());
    }
}
