//! OpenAI response bodies: whole responses, SSE chunks, usage and logprobs, for both
//! `chat.completion` and `text_completion`. Only this file knows their field names
//! (`openapi.yaml` is their contract).
//!
//! Invariants: every choice and chunk carries `index`, `logprobs` and `finish_reason`
//! (null until the end); a streamed chat choice's first delta carries `role`; chunks
//! carry `"usage": null` exactly when the client asked for `include_usage`. A chat
//! answer parsed for tool calls has `message.tool_calls` (content `null` when it made
//! only calls) and `finish_reason: "tool_calls"`; streamed, its calls come as
//! `delta.tool_calls` chunks. Prompt
//! logprobs come in OpenAI's legacy `echo` shape (the prompt's tokens lead the
//! completion's `logprobs` lists, the first with `null`) and in vLLM's `prompt_logprobs`
//! shape (`[null, {"<id>": {logprob, rank, decoded_token}}, …]`).

use serde_json::{json, Map, Value};

use crate::engine::stream::Usage;
use crate::model::tokenizer::Tokenizer;
use crate::request::{FinishReason, PromptLogprob, TokenId, TokenLogprobs};
use crate::tools::ToolCall;

/// Identifies this build in `system_fingerprint`.
pub const SYSTEM_FINGERPRINT: &str = concat!("tessera-", env!("CARGO_PKG_VERSION"));

/// OpenAI sends this for a log-probability that is minus infinity.
const MIN_LOGPROB: f32 = -9999.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What every response and chunk of one request shares.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
    /// Streaming only: put `"usage": null` on chunks and send a usage chunk.
    pub include_usage: bool,
}

/// Which log-probabilities a response carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogprobShape {
    /// The sampled tokens' logprobs (`logprobs` / `top_logprobs`).
    pub sampled: bool,
    /// Completions `echo` with `logprobs: k`: the echoed prompt leads the `logprobs`
    /// lists, with `k` alternatives per prompt token.
    pub echo: Option<usize>,
    /// vLLM `prompt_logprobs: k`: on each choice (completions) or on the response (chat).
    pub prompt: Option<usize>,
}

/// One finished choice of a non-streamed response.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    pub index: usize,
    /// Generated text, with the echoed prompt in front for `echo`.
    pub text: String,
    pub token_ids: Vec<TokenId>,
    pub logprobs: Vec<TokenLogprobs>,
    /// Length of the echoed prompt in `text` (the offset of the first token's text).
    pub echo_len: usize,
    pub finish_reason: Option<FinishReason>,
    /// The prompt's tokens and their logprobs (entry `i` scores token `i + 1`), when the
    /// response carries prompt logprobs.
    pub prompt_ids: Vec<TokenId>,
    pub prompt_logprobs: Vec<PromptLogprob>,
    /// Chat with tools: the calls parsed out of the answer (`text` is then its content
    /// alone); `None` when the answer is not parsed for calls.
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// The `finish_reason` of a choice: `tool_calls` when a finished answer made calls.
pub fn finish_str(reason: FinishReason, made_calls: bool) -> &'static str {
    match reason {
        FinishReason::Stop if made_calls => "tool_calls",
        other => other.as_str(),
    }
}

/// A chat choice's `message`: content (`null` when a parsed answer has none) and its
/// `tool_calls`.
fn chat_message(c: &ChoiceOutput) -> Value {
    let Some(calls) = &c.tool_calls else {
        return json!({"role": "assistant", "content": c.text});
    };
    let content = Some(&c.text).filter(|t| !t.is_empty());
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("system_fingerprint".into(), json!(SYSTEM_FINGERPRINT));
        m.insert("choices".into(), Value::Array(choices));
        m
    }

    /// The whole non-streamed response.
    pub fn full(
        &self,
        choices: &[ChoiceOutput],
        usage: &Usage,
        tok: &Tokenizer,
        shape: LogprobShape,
    ) -> Value {
        let rendered = choices
            .iter()
            .map(|c| {
                let mut lp = shape
                    .sampled
                    .then(|| self.logprobs_json(&c.token_ids, &c.logprobs, c.echo_len, tok));
                if let (Some(k), Some(sampled)) = (shape.echo, lp.as_mut()) {
                    let prompt = prompt_entries(&c.prompt_ids, &c.prompt_logprobs, k);
                    let mut echoed = completion_logprobs(prompt, 0, tok);
                    append_lists(&mut echoed, sampled);
                    *sampled = echoed;
                }
                let made_calls = c.tool_calls.as_ref().is_some_and(|t| !t.is_empty());
                let mut choice = json!({
                    "index": c.index,
                    "logprobs": lp,
                    "finish_reason": c.finish_reason.map(|r| finish_str(r, made_calls)),
                });
                match self.endpoint {
                    Endpoint::Chat => choice["message"] = chat_message(c),
                    Endpoint::Completion => choice["text"] = json!(c.text),
                }
                if let (Some(k), Endpoint::Completion) = (shape.prompt, self.endpoint) {
                    choice["prompt_logprobs"] =
                        vllm_prompt_logprobs(&c.prompt_ids, &c.prompt_logprobs, k, tok);
                }
                choice
            })
            .collect();
        let mut m = self.envelope(false, rendered);
        if let (Some(k), Endpoint::Chat, Some(c)) = (shape.prompt, self.endpoint, choices.first()) {
            let lp = vllm_prompt_logprobs(&c.prompt_ids, &c.prompt_logprobs, k, tok);
            m.insert("prompt_logprobs".into(), lp);
        }
        m.insert("usage".into(), usage_json(usage));
        Value::Object(m)
    }

    /// The echoed prompt of a streamed completion choice with its logprobs (`echo` with
    /// `logprobs: k`), sent when the choice's first event brings them.
    pub fn echo_chunk(
        &self,
        index: usize,
        text: &str,
        prompt_ids: &[TokenId],
        prompt_logprobs: &[PromptLogprob],
        k: usize,
        tok: &Tokenizer,
    ) -> String {
        let entries = prompt_entries(prompt_ids, prompt_logprobs, k);
        let lp = completion_logprobs(entries, 0, tok);
        self.completion_choice(index, text, lp, None)
    }

    /// One SSE `data:` event holding one choice update.
    fn chunk(&self, choice: Value) -> String {
        let mut m = self.envelope(true, vec![choice]);
        if self.include_usage {
            m.insert("usage".into(), Value::Null);
        }
        sse_data(&Value::Object(m))
    }

    /// First event of a streamed choice: the role (chat) or the echoed prompt (completion).
    pub fn opening_chunk(&self, index: usize, echo: Option<&str>) -> Option<String> {
        match (self.endpoint, echo) {
            (Endpoint::Chat, _) => Some(self.chunk(json!({
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null,
            }))),
            (Endpoint::Completion, Some(text)) => {
                Some(self.completion_choice(index, text, Value::Null, None))
            }
            (Endpoint::Completion, None) => None,
        }
    }

    /// New text (and logprobs) of one choice; `text_offset` is where `text` starts.
    pub fn delta_chunk(
        &self,
        index: usize,
        text: &str,
        ids: &[TokenId],
        logprobs: Option<&[TokenLogprobs]>,
        text_offset: usize,
        tok: &Tokenizer,
    ) -> String {
        let lp = logprobs.map_or(Value::Null, |lp| {
            self.logprobs_json(ids, lp, text_offset, tok)
        });
        match self.endpoint {
            Endpoint::Chat => self.chunk(json!({
                "index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null,
            })),
            Endpoint::Completion => self.completion_choice(index, text, lp, None),
        }
    }

    /// The one chunk of a choice that carries its `finish_reason`.
    pub fn finish_chunk(&self, index: usize, reason: FinishReason) -> String {
        self.finish_chunk_with(index, reason.as_str(), Map::new())
    }

    /// `finish_chunk` with `reason` as sent (`finish_str`) and `extra` fields on the
    /// choice (`content_filter_results`).
    pub fn finish_chunk_with(
        &self,
        index: usize,
        reason: &str,
        extra: Map<String, Value>,
    ) -> String {
        let mut choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": index, "delta": {}, "logprobs": null, "finish_reason": reason,
            }),
            Endpoint::Completion => json!({
                "index": index, "text": "", "logprobs": null, "finish_reason": reason,
            }),
        };
        if let Value::Object(fields) = &mut choice {
            fields.extend(extra);
        }
        self.chunk(choice)
    }

    /// A chat chunk with one piece of tool call `call` of choice `index`: its start (`id`
    /// and `name` given, `arguments` empty or not) or more of its `arguments`.
    pub fn tool_call_chunk(
        &self,
        index: usize,
        call: usize,
        start: Option<(&str, &str)>,
        arguments: &str,
    ) -> String {
        let delta = match start {
            Some((id, name)) => json!({
                "index": call, "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments},
            }),
            None => json!({"index": call, "function": {"arguments": arguments}}),
        };
        self.chunk(json!({
            "index": index, "delta": {"tool_calls": [delta]}, "logprobs": null,
            "finish_reason": null,
        }))
    }

    /// A `choices: []` chunk carrying `fields` at the top level (Azure OpenAI's first
    /// chunk with `prompt_filter_results`).
    pub fn annotation_chunk(&self, fields: Map<String, Value>) -> String {
        let mut m = self.envelope(true, Vec::new());
        if self.include_usage {
            m.insert("usage".into(), Value::Null);
        }
        m.extend(fields);
        sse_data(&Value::Object(m))
    }

    fn completion_choice(
        &self,
        index: usize,
        text: &str,
        lp: Value,
        reason: Option<FinishReason>,
    ) -> String {
        self.chunk(json!({
            "index": index, "text": text, "logprobs": lp,
            "finish_reason": reason.map(FinishReason::as_str),
        }))
    }

    /// The `choices: []` chunk that carries the usage (`include_usage`).
    pub fn usage_chunk(&self, usage: &Usage) -> String {
        let mut m = self.envelope(true, Vec::new());
        m.insert("usage".into(), usage_json(usage));
        sse_data(&Value::Object(m))
    }

    fn logprobs_json(
        &self,
        ids: &[TokenId],
        lps: &[TokenLogprobs],
        offset: usize,
        tok: &Tokenizer,
    ) -> Value {
        match self.endpoint {
            Endpoint::Chat => chat_logprobs(ids, lps, tok),
            Endpoint::Completion => completion_logprobs(sampled_entries(ids, lps), offset, tok),
        }
    }
}

/// `usage` with `prompt_tokens_details.cached_tokens` (prefix-cache hits).
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// `data: <json>\n\n`.
pub fn sse_data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// The last event of every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// An SSE comment that keeps idle connections (and proxies) open.
pub const SSE_KEEPALIVE: &str = ": keep-alive\n\n";

fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        MIN_LOGPROB
    }
}

fn token_text(tok: &Tokenizer, id: TokenId) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// Chat shape: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
fn chat_logprobs(ids: &[TokenId], lps: &[TokenLogprobs], tok: &Tokenizer) -> Value {
    let entry = |id: TokenId, lp: f32| {
        let text = token_text(tok, id);
        json!({"token": text, "logprob": finite(lp), "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = ids
        .iter()
        .zip(lps)
        .map(|(&id, lp)| {
            let mut e = entry(id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// One position of a completions `logprobs` object: the token and, unless it is the
/// prompt's first token, its logprob and alternatives.
type Scored<'a> = (TokenId, Option<(f32, &'a [(TokenId, f32)])>);

fn sampled_entries<'a>(
    ids: &'a [TokenId],
    lps: &'a [TokenLogprobs],
) -> impl Iterator<Item = Scored<'a>> {
    ids.iter()
        .zip(lps)
        .map(|(&id, lp)| (id, Some((lp.logprob, lp.top.as_slice()))))
}

/// The prompt's positions: the first unscored, the others with up to `k` alternatives.
fn prompt_entries<'a>(
    ids: &'a [TokenId],
    lps: &'a [PromptLogprob],
    k: usize,
) -> impl Iterator<Item = Scored<'a>> {
    ids.iter().enumerate().map(move |(i, &id)| {
        let scored = i.checked_sub(1).and_then(|j| lps.get(j));
        (
            id,
            scored.map(|p| (p.logprob, &p.top[..k.min(p.top.len())])),
        )
    })
}

/// Completions shape: parallel `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`
/// (`null` logprob and alternatives for an unscored position); offsets start at `offset`.
fn completion_logprobs<'a>(
    entries: impl Iterator<Item = Scored<'a>>,
    offset: usize,
    tok: &Tokenizer,
) -> Value {
    let (mut tokens, mut token_logprobs, mut top, mut offsets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut at = offset;
    for (id, scored) in entries {
        let text = token_text(tok, id);
        offsets.push(at);
        at += text.len();
        match scored {
            None => {
                token_logprobs.push(Value::Null);
                top.push(Value::Null);
            }
            Some((logprob, alternatives)) => {
                let mut listed = Map::new();
                for &(t, l) in alternatives {
                    listed.insert(token_text(tok, t), json!(finite(l)));
                }
                listed.entry(text.clone()).or_insert(json!(finite(logprob)));
                token_logprobs.push(json!(finite(logprob)));
                top.push(Value::Object(listed));
            }
        }
        tokens.push(text);
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

/// Appends the four lists of completions logprobs `tail` to those of `head`.
fn append_lists(head: &mut Value, tail: &Value) {
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        if let (Some(h), Some(t)) = (head[key].as_array_mut(), tail[key].as_array()) {
            h.extend(t.iter().cloned());
        }
    }
}

/// vLLM's `prompt_logprobs`: `null` for the first token, then per token an object keyed
/// by token id (the prompt token, then up to `k` alternatives) of
/// `{logprob, rank, decoded_token}`.
fn vllm_prompt_logprobs(
    ids: &[TokenId],
    lps: &[PromptLogprob],
    k: usize,
    tok: &Tokenizer,
) -> Value {
    let entry = |id: TokenId, logprob: f32, rank: usize| json!({"logprob": finite(logprob), "rank": rank, "decoded_token": token_text(tok, id)});
    let mut out = vec![Value::Null];
    for (&id, lp) in ids.iter().skip(1).zip(lps) {
        let mut listed = Map::new();
        listed.insert(id.to_string(), entry(id, lp.logprob, lp.rank));
        for (j, &(t, l)) in lp.top.iter().take(k).enumerate() {
            listed
                .entry(t.to_string())
                .or_insert_with(|| entry(t, l, j + 1));
        }
        out.push(Value::Object(listed));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(endpoint: Endpoint, include_usage: bool) -> ResponseMeta {
        ResponseMeta {
            id: "x-1".into(),
            created: 7,
            model: "m".into(),
            endpoint,
            include_usage,
        }
    }

    fn parse(event: &str) -> Value {
        let body = event
            .strip_prefix("data: ")
            .and_then(|s| s.strip_suffix("\n\n"))
            .expect("framed");
        serde_json::from_str(body).expect("json")
    }

    #[test]
    fn chat_chunks_have_openai_shapes() {
        let m = meta(Endpoint::Chat, true);
        let first = parse(&m.opening_chunk(0, None).expect("chat opens"));
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let fin = parse(&m.finish_chunk(1, FinishReason::Length));
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        assert_eq!(fin["choices"][0]["index"], 1);
        let usage = parse(&m.usage_chunk(&Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 1,
        }));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    }

    #[test]
    fn usage_field_absent_without_include_usage() {
        let m = meta(Endpoint::Completion, false);
        assert!(m.opening_chunk(0, None).is_none());
        let echo = parse(&m.opening_chunk(0, Some("hi")).expect("echo"));
        assert_eq!(echo["choices"][0]["text"], "hi");
        assert!(echo.get("usage").is_none());
        assert_eq!(echo["object"], "text_completion");
    }
}
