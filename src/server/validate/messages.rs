//! Chat messages as the client sent them → the template's messages: roles (`developer`
//! is the system role), text parts joined, an assistant's `tool_calls` and a `tool`
//! message's `tool_call_id` checked; anything else a 400 naming the message.

use super::{invalid, unsupported};
use crate::error::ApiError;
use crate::model::chat_template::ChatMessage;
use crate::server::request::{ChatMessageIn, MessageContent};
use crate::server::tool_calls::history_calls;

/// OpenAI messages → template messages (text only; `developer` is the system role; an
/// assistant message may carry `tool_calls`, a `tool` message answers one by
/// `tool_call_id`).
pub(crate) fn chat_messages(messages: Vec<ChatMessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(invalid(
            "messages",
            "`messages` must hold at least one message".into(),
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect()
}

fn chat_message(i: usize, m: ChatMessageIn) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_deref() {
        Some("system") | Some("developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("tool") => "tool",
        Some("function") => {
            return Err(unsupported(
                &format!("messages[{i}].role"),
                " for role `function` (the legacy form of `tool`: use `tool`)",
            ))
        }
        Some(other) => {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("`messages[{i}].role` must be one of system, developer, user, assistant, tool. Given: {other:?}"),
            ))
        }
        None => {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("`messages[{i}].role` is required"),
            ))
        }
    };
    let calls = m.tool_calls.as_ref().filter(|t| !t.is_null());
    let tool_calls = match (role, calls) {
        (_, None) => None,
        ("assistant", Some(calls)) => {
            Some(history_calls(&format!("messages[{i}].tool_calls"), calls)?)
        }
        (_, Some(_)) => {
            return Err(invalid(
                &format!("messages[{i}].tool_calls"),
                format!("`messages[{i}].tool_calls` is only allowed on assistant messages"),
            ))
        }
    };
    if role == "tool" && m.tool_call_id.is_none() {
        return Err(invalid(
            &format!("messages[{i}].tool_call_id"),
            format!("`messages[{i}].tool_call_id` is required for role `tool`"),
        ));
    }
    let content = match m.content {
        Some(MessageContent::Text(text)) => text,
        Some(MessageContent::Parts(parts)) => text_parts(i, parts)?,
        None if role == "assistant" => String::new(),
        None => {
            return Err(invalid(
                &format!("messages[{i}].content"),
                format!("`messages[{i}].content` is required for role `{role}`"),
            ))
        }
    };
    let mut message = ChatMessage::new(role, content);
    message.tool_calls = tool_calls;
    message.tool_call_id = m.tool_call_id.filter(|_| role == "tool");
    Ok(message)
}

fn text_parts(
    i: usize,
    parts: Vec<crate::server::request::ContentPart>,
) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        match (part.kind.as_str(), part.text) {
            ("text", Some(text)) => texts.push(text),
            ("text", None) => {
                return Err(invalid(
                    &param,
                    format!("`{param}.text` is required for a text part"),
                ))
            }
            (other, _) => {
                return Err(unsupported(
                    &format!("{param}.type"),
                    &format!(" for `{other}` parts (only `text` is served)"),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}
