//! Moderation on the generation routes: the glue between `crate::safety` and the OpenAI
//! request and response shapes.
//!
//! - `screen_chat` / `screen_completion`: level 1 on a parsed request, before validation
//!   tokenizes it (masks must change the text the model sees). Chat checks every
//!   message's text (`max_input_chars` applies to user messages); completions check every
//!   prompt, token-id prompts decoded first (a masked one is sent on as text).
//! - `ChoiceGuard`: level 2 on one choice's token events. Token ids and logprobs are held
//!   with the text they produced and released with it; those of a masked span are left
//!   out (their token strings would show what the mask hides), those after a block cut
//!   are dropped. A block ends the choice with `content_filter` and aborts its sequence.
//! - Azure OpenAI's annotations: `prompt_filter_results` (top level of the response, or a
//!   first `choices: []` chunk) when an input rule matched, and `content_filter_results`
//!   on a choice an output rule matched (on its finish chunk when streamed), each per
//!   category `{"filtered", "detected"}`. Requests without hits carry none, so passing
//!   responses are the same bytes with and without a policy.
//!
//! Other text routes (`/v1/responses`, the WebSocket chat) use the same pieces: take
//! `AppState::moderation.screen(|| request_id)` once per request (`None`: no moderation),
//! pass their input texts to `Screen::check_input` as `InputText`s before building the
//! prompt (a `ModerationError::Blocked` becomes the same 400), wrap each output stream's
//! events in a `ChoiceGuard` (`finish_reason == ContentFilter` means cut: the Responses
//! API reports `status: incomplete`, `incomplete_details.reason: content_filter`), and
//! report with `prompt_filter_results` / `content_filter_results`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::request::{int, ChatCompletionRequest, CompletionRequest, MessageContent, PromptField};
use crate::engine::stream::{RequestTimings, TokenEvent};
use crate::error::ApiError;
use crate::model::tokenizer::Tokenizer;
use crate::request::{FinishReason, TokenId, TokenLogprobs};
use crate::safety::{Action, Hit, InputText, OutputGuard, Screen, Stage};

/// Level 1 on a chat request: checks and masks every message's text.
pub fn screen_chat(screen: &Screen, req: &mut ChatCompletionRequest) -> Result<(), ApiError> {
    let Some(messages) = req.messages.as_mut() else {
        return Ok(());
    };
    let mut fields = Vec::new();
    for (i, message) in messages.iter_mut().enumerate() {
        let limited = message.role.as_deref() == Some("user");
        match message.content.as_mut() {
            Some(MessageContent::Text(text)) => fields.push(InputText {
                param: format!("messages[{i}].content"),
                prompt: 0,
                limited,
                text,
            }),
            Some(MessageContent::Parts(parts)) => {
                for (j, part) in parts.iter_mut().enumerate() {
                    if let Some(text) = part.text.as_mut() {
                        fields.push(InputText {
                            param: format!("messages[{i}].content[{j}].text"),
                            prompt: 0,
                            limited,
                            text,
                        });
                    }
                }
            }
            None => {}
        }
    }
    Ok(screen.check_input(&mut fields)?)
}

/// Level 1 on a completion request: checks and masks every prompt.
pub fn screen_completion(
    screen: &Screen,
    req: &mut CompletionRequest,
    tokenizer: &Tokenizer,
) -> Result<(), ApiError> {
    let (mut texts, ids, single) = match req.prompt.take() {
        None => return Ok(()),
        Some(PromptField::Text(text)) => (vec![text], None, true),
        Some(PromptField::Texts(texts)) => (texts, None, false),
        Some(PromptField::Ids(ids)) => {
            let text = tokenizer.decode(&int::plain(ids.clone()), false)?;
            (vec![text], Some(PromptField::Ids(ids)), true)
        }
        Some(PromptField::IdLists(lists)) => {
            let texts = lists
                .iter()
                .map(|ids| tokenizer.decode(&int::plain(ids.clone()), false))
                .collect::<Result<Vec<_>, _>>()?;
            (texts, Some(PromptField::IdLists(lists)), false)
        }
    };
    let before = ids.as_ref().map(|_| texts.clone());
    let mut fields: Vec<InputText> = texts
        .iter_mut()
        .enumerate()
        .map(|(i, text)| InputText {
            param: if single {
                "prompt".into()
            } else {
                format!("prompt[{i}]")
            },
            prompt: i,
            limited: true,
            text,
        })
        .collect();
    let checked = screen.check_input(&mut fields);
    drop(fields);
    req.prompt = Some(match (ids, before) {
        // Token ids with nothing masked stay token ids.
        (Some(ids), Some(before)) if before == texts => ids,
        _ if single => PromptField::Text(texts.swap_remove(0)),
        _ => PromptField::Texts(texts),
    });
    Ok(checked?)
}

/// Token ids (and logprobs) of one event, held until their text is released.
struct HeldTokens {
    /// Stream bytes of the event's text.
    span: Range<usize>,
    ids: Vec<TokenId>,
    logprobs: Option<Vec<TokenLogprobs>>,
}

/// Level 2 on one choice's token events.
pub struct ChoiceGuard {
    guard: OutputGuard,
    /// Stream bytes pushed so far.
    received: usize,
    held: VecDeque<HeldTokens>,
    /// Stream byte ranges released as `*`.
    masked: Vec<Range<usize>>,
}

impl ChoiceGuard {
    /// The guard of output `choice` of `screen`'s request (`None`: no output rules).
    pub fn new(screen: &Arc<Screen>, choice: usize) -> Option<Self> {
        Some(Self {
            guard: screen.output_guard(choice)?,
            received: 0,
            held: VecDeque::new(),
            masked: Vec::new(),
        })
    }

    /// Passes `ev` through the guard. On a block the returned event finishes the choice
    /// with `content_filter`, and `cut` aborts the sequence in the engine (e.g.
    /// `RequestStream::cut`; it returns the request's timings unless it had finished).
    pub fn apply(
        &mut self,
        mut ev: TokenEvent,
        cut: impl FnOnce() -> Option<RequestTimings>,
    ) -> TokenEvent {
        let start = self.received;
        self.received += ev.text.len();
        self.held.push_back(HeldTokens {
            span: start..self.received,
            ids: std::mem::take(&mut ev.token_ids),
            logprobs: ev.logprobs.take(),
        });
        let mut step = self.guard.push(&ev.text);
        if ev.finish_reason.is_some() && !step.blocked {
            let tail = self.guard.finish();
            step.text.push_str(&tail.text);
            step.masked.extend(tail.masked);
            step.upto = tail.upto;
            step.blocked = tail.blocked;
        }
        self.masked.extend(step.masked);
        ev.text = step.text;
        (ev.token_ids, ev.logprobs) = self.release_tokens(step.upto);
        if step.blocked {
            self.held.clear();
            ev.finish_reason = Some(FinishReason::ContentFilter);
            if let Some(timings) = cut() {
                ev.timing.request = Some(timings);
            }
        }
        ev
    }

    /// The held tokens whose text is released by now (`upto` stream bytes), less those
    /// of masked text.
    fn release_tokens(&mut self, upto: usize) -> (Vec<TokenId>, Option<Vec<TokenLogprobs>>) {
        let (mut ids, mut logprobs): (Vec<TokenId>, Option<Vec<TokenLogprobs>>) =
            (Vec::new(), None);
        while self.held.front().is_some_and(|h| h.span.end <= upto) {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            let hidden = self
                .masked
                .iter()
                .any(|m| m.start < held.span.end && held.span.start < m.end);
            if hidden {
                continue;
            }
            ids.extend(held.ids);
            if let Some(lp) = held.logprobs {
                logprobs.get_or_insert_with(Vec::new).extend(lp);
            }
        }
        self.masked.retain(|m| m.end > upto);
        (ids, logprobs)
    }
}

/// `{category: {"filtered", "detected"}}` of `hits` (filtered: text was blocked or masked).
fn category_results(hits: &[Hit]) -> Value {
    let mut by_category: BTreeMap<&str, bool> = BTreeMap::new();
    for hit in hits {
        let filtered = hit.action != Action::Flag;
        *by_category.entry(&hit.category).or_default() |= filtered;
    }
    let results: Map<String, Value> = by_category
        .into_iter()
        .map(|(c, filtered)| {
            (
                c.to_string(),
                json!({"filtered": filtered, "detected": true}),
            )
        })
        .collect();
    Value::Object(results)
}

/// `prompt_filter_results` (one entry per prompt with input hits), if any.
pub fn prompt_filter_results(screen: &Screen) -> Option<Value> {
    let hits = screen.hits(Stage::Input, None);
    let mut prompts: Vec<usize> = hits.iter().map(|h| h.index).collect();
    prompts.sort_unstable();
    prompts.dedup();
    let entries: Vec<Value> = prompts
        .into_iter()
        .map(|p| {
            let of_prompt: Vec<Hit> = hits.iter().filter(|h| h.index == p).cloned().collect();
            json!({"prompt_index": p, "content_filter_results": category_results(&of_prompt)})
        })
        .collect();
    (!entries.is_empty()).then_some(Value::Array(entries))
}

/// `content_filter_results` of output `choice`, if an output rule matched it.
pub fn content_filter_results(screen: &Screen, choice: usize) -> Option<Value> {
    let hits = screen.hits(Stage::Output, Some(choice));
    (!hits.is_empty()).then(|| category_results(&hits))
}

/// Adds the annotations of `screen` to a whole (non-streamed) response.
pub fn annotate_response(response: &mut Value, screen: &Screen) {
    if let Some(choices) = response.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            let index = choice["index"].as_u64().unwrap_or(0) as usize;
            if let Some(results) = content_filter_results(screen, index) {
                choice["content_filter_results"] = results;
            }
        }
    }
    if let Some(results) = prompt_filter_results(screen) {
        response["prompt_filter_results"] = results;
    }
}

/// The fields of a streamed choice's finish chunk: its `content_filter_results`.
pub fn finish_fields(screen: Option<&Screen>, choice: usize) -> Map<String, Value> {
    let mut fields = Map::new();
    if let Some(results) = screen.and_then(|s| content_filter_results(s, choice)) {
        fields.insert("content_filter_results".into(), results);
    }
    fields
}

#[cfg(test)]
mod tests;
