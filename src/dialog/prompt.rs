//! Prompt assembly: `instructions` (as the system message), the history window and the
//! new input, rendered through the model's chat template and tokenized (`encode_chat`:
//! message text can never become control tokens), then fitted to the context. With
//! tools, the tools and the turn's `function_call` / `function_call_output` items are
//! rendered as `crate::tools::render` says (calls join the assistant message before
//! them; an output is a `tool` message).
//!
//! The output budget: `max_output_tokens` when given; else whatever the context leaves
//! after the prompt. Truncation `auto` moves the window start (`WindowRule::starts`)
//! until the prompt leaves room for `max_output_tokens`, or without it for
//! `default_reserve` tokens; `disabled` refuses a prompt that does not fit.

use serde_json::Value;

use super::items::{ItemKind, Message};
use super::objects::Truncation;
use super::window::{first_fitting, split_turns, WindowRule};
use super::DialogError;
use crate::engine::error::EngineError;
use crate::model::chat_template::ChatMessage;
use crate::model::ModelAssets;
use crate::request::TokenId;

/// What went into a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowInfo {
    /// Completed turns in the history.
    pub history_turns: usize,
    /// Index of the first history turn in the prompt (`history_turns`: none).
    pub first_kept: usize,
    /// Turns the window rule alone would have kept but the context limit dropped.
    pub dropped_for_context: usize,
}

impl WindowInfo {
    pub fn kept_turns(&self) -> usize {
        self.history_turns - self.first_kept
    }
}

/// The inputs of one prompt.
pub struct PromptSpec<'a> {
    pub instructions: Option<&'a str>,
    pub history: &'a [Message],
    pub input: &'a [Message],
    pub rule: WindowRule,
    pub truncation: Truncation,
    pub max_output_tokens: Option<usize>,
    pub max_model_len: usize,
    /// The active tools in chat form (the template's `tools`).
    pub tools: Option<&'a Value>,
}

/// A tokenized prompt and its output budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPrompt {
    pub token_ids: Vec<TokenId>,
    pub max_tokens: usize,
    pub window: WindowInfo,
}

/// Appends item `m` to the template messages: a call joins the assistant message just
/// before it (or starts one), a call's output is a `tool` message.
fn push_item(out: &mut Vec<ChatMessage>, m: &Message) {
    match &m.kind {
        ItemKind::Message => out.push(ChatMessage::new(m.role.template_role(), m.text())),
        ItemKind::FunctionCall {
            call_id,
            name,
            arguments,
        } => {
            let args = serde_json::from_str(arguments)
                .unwrap_or_else(|_| Value::String(arguments.clone()));
            let call = serde_json::json!({
                "id": call_id, "type": "function",
                "function": {"name": name, "arguments": args},
            });
            match out.last_mut() {
                Some(last) if last.role == "assistant" => {
                    let calls = last
                        .tool_calls
                        .get_or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(list) = calls {
                        list.push(call);
                    }
                }
                _ => {
                    let mut message = ChatMessage::new("assistant", "");
                    message.tool_calls = Some(Value::Array(vec![call]));
                    out.push(message);
                }
            }
        }
        ItemKind::FunctionCallOutput { call_id } => {
            let mut message = ChatMessage::new("tool", m.text());
            message.tool_call_id = Some(call_id.clone());
            out.push(message);
        }
    }
}

/// Output tokens truncation `auto` keeps room for when `max_output_tokens` is not given:
/// a quarter of the context, at most 1024.
pub fn default_reserve(max_model_len: usize) -> usize {
    (max_model_len / 4).clamp(1, 1024)
}

impl PromptSpec<'_> {
    /// The template messages with history turns from `first_kept` on.
    fn messages(&self, first_kept: usize) -> Vec<ChatMessage> {
        let turns = split_turns(self.history);
        let from = turns
            .turns
            .get(first_kept)
            .map_or(self.history.len(), |t| t.start);
        let kept = self.history[..turns.preamble]
            .iter()
            .chain(&self.history[from..])
            .chain(self.input);
        let mut out: Vec<ChatMessage> = self
            .instructions
            .map(|text| ChatMessage::new("system", text))
            .into_iter()
            .collect();
        for m in kept {
            push_item(&mut out, m);
        }
        out
    }

    /// Renders and tokenizes the prompt and fits it to the context (module header).
    pub fn build(&self, model: &ModelAssets) -> Result<BuiltPrompt, DialogError> {
        let completed = split_turns(self.history).turns.len();
        let starts = self.rule.starts(completed);
        let encode = |first: usize| {
            crate::tools::render::encode_prompt(
                &model.tokenizer,
                &model.chat_template,
                self.messages(first),
                self.tools,
            )
        };
        let reserve = self
            .max_output_tokens
            .unwrap_or_else(|| match self.truncation {
                Truncation::Auto => default_reserve(self.max_model_len),
                Truncation::Disabled => 1,
            });
        let fits = |ids: &[TokenId]| ids.len().saturating_add(reserve) <= self.max_model_len;
        let rule_start = starts[0];
        let (first_kept, token_ids) = match self.truncation {
            Truncation::Disabled => (rule_start, encode(rule_start)?),
            Truncation::Auto => {
                let found = first_fitting(&starts, |s| encode(s).map(|ids| fits(&ids)))?;
                let first = found.unwrap_or(completed);
                (first, encode(first)?)
            }
        };
        if !fits(&token_ids) {
            let prompt_tokens = token_ids.len();
            return Err(DialogError::Context(EngineError::ContextLength {
                max_model_len: self.max_model_len,
                prompt_tokens,
                max_tokens: reserve,
                total: prompt_tokens.saturating_add(reserve),
            }));
        }
        let max_tokens = self
            .max_output_tokens
            .unwrap_or(self.max_model_len - token_ids.len());
        Ok(BuiltPrompt {
            token_ids,
            max_tokens,
            window: WindowInfo {
                history_turns: completed,
                first_kept,
                dropped_for_context: first_kept - rule_start,
            },
        })
    }
}
