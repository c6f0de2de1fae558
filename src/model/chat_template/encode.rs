//! `encode_chat`: render a conversation and tokenize it so that the template's own
//! control tokens become ids while message contents can never produce one.
//!
//! How: every control-token text inside a message content (`<|im_start|>`, …) is
//! replaced by a marker — private-use characters around a decimal index — before
//! rendering, so the template's own string handling (`strip`, `trim`, `split`, …) still
//! runs on the real content. After rendering, each marker is put back and its byte range
//! recorded; the whole prompt is then tokenized once with special tokens parsed except
//! over those ranges (`Tokenizer::encode_with_literals`).
//!
//! Invariants:
//! - the text tokenized is exactly the text the template renders from the real messages
//!   (markers are swapped back before tokenizing), so an ordinary conversation gets
//!   exactly llama.cpp's tokens for the full rendered prompt: no cuts between template
//!   and content pieces, hence no BPE merge differences;
//! - no control-token text from a content is parsed as a control token.
//!
//! Known limits: a template that measures or slices content (`content|length`,
//! `content[:10]`) sees the marker, not the control text; and a content ending in a
//! strict prefix of a control token that the template completes is not covered.

use std::ops::Range;

use serde_json::Value;

use super::{ChatMessage, ChatTemplate, TemplateError};
use crate::model::tokenizer::Tokenizer;

/// First private-use code point tried for markers (Supplementary PUA-A).
const MARKER_BASE: u32 = 0xF_0000;
/// How many (open, close) marker pairs to try before giving up.
const MARKER_PAIRS: u32 = 256;

/// Render `messages` with `template` and tokenize the result (see module header).
/// BOS is prepended when the vocabulary asks for it and the template did not emit it.
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, TemplateError> {
    encode_chat_with_tools(tokenizer, template, messages, None, add_generation_prompt)
}

/// `encode_chat` with the template's `tools` variable set; the strings of the tools and
/// of messages' `tool_calls` are literal text too.
pub fn encode_chat_with_tools(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    tools: Option<&Value>,
    add_generation_prompt: bool,
) -> Result<Vec<u32>, TemplateError> {
    let controls = tokenizer.control_token_texts();
    let (open, close) = pick_markers(template.source(), messages, tools)?;
    let markers = (open, close);
    let mut originals: Vec<&str> = Vec::new();
    let marked: Vec<ChatMessage> = messages
        .iter()
        .map(|m| ChatMessage {
            role: m.role.clone(),
            content: defang(&m.content, &controls, markers, &mut originals),
            tool_calls: m
                .tool_calls
                .as_ref()
                .map(|c| defang_value(c, &controls, markers, &mut originals)),
            tool_call_id: m.tool_call_id.clone(),
        })
        .collect();
    let tools = tools.map(|t| defang_value(t, &controls, markers, &mut originals));
    let rendered = template.render_with_tools(&marked, tools.as_ref(), add_generation_prompt)?;
    let (prompt, literal) = restore(&rendered, (open, close), &originals)?;
    let mut ids = tokenizer.encode_with_literals(&prompt, false, &literal)?;
    if let Some(bos) = tokenizer.bos_id().filter(|_| tokenizer.add_bos()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

/// A pair of private-use characters found neither in the template nor in any message
/// (nor in the tools or calls).
fn pick_markers(
    source: &str,
    messages: &[ChatMessage],
    tools: Option<&Value>,
) -> Result<(char, char), TemplateError> {
    let mut extra = tools.map(Value::to_string).unwrap_or_default();
    for calls in messages.iter().filter_map(|m| m.tool_calls.as_ref()) {
        extra.push_str(&calls.to_string());
    }
    let used = |c: char| {
        source.contains(c) || extra.contains(c) || messages.iter().any(|m| m.content.contains(c))
    };
    (0..MARKER_PAIRS)
        .filter_map(|k| {
            let open = char::from_u32(MARKER_BASE + 2 * k)?;
            let close = char::from_u32(MARKER_BASE + 2 * k + 1)?;
            (!used(open) && !used(close)).then_some((open, close))
        })
        .next()
        .ok_or_else(|| {
            let index = messages
                .iter()
                .position(|m| m.content.chars().any(|c| (c as u32) >= MARKER_BASE))
                .unwrap_or(0);
            TemplateError::NoFreeMarker { index }
        })
}

/// `content` with each control-token text (leftmost, longest first) replaced by
/// `open index close`, the text pushed onto `originals`.
fn defang<'a>(
    content: &str,
    controls: &[&'a str],
    (open, close): (char, char),
    originals: &mut Vec<&'a str>,
) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(c) = rest.chars().next() {
        // `controls` is sorted longest first, so the first hit is the longest.
        if let Some(control) = controls.iter().find(|t| rest.starts_with(**t)) {
            out.push(open);
            out.push_str(&originals.len().to_string());
            out.push(close);
            originals.push(control);
            rest = &rest[control.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `value` with every string (keys included) defanged.
fn defang_value<'a>(
    value: &Value,
    controls: &[&'a str],
    markers: (char, char),
    originals: &mut Vec<&'a str>,
) -> Value {
    match value {
        Value::String(s) => Value::String(defang(s, controls, markers, originals)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| defang_value(v, controls, markers, originals))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = defang(k, controls, markers, originals);
                    (key, defang_value(v, controls, markers, originals))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Swap markers back for their control texts; returns the prompt and the byte ranges
/// the control texts occupy in it.
fn restore(
    rendered: &str,
    (open, close): (char, char),
    originals: &[&str],
) -> Result<(String, Vec<Range<usize>>), TemplateError> {
    let mut prompt = String::with_capacity(rendered.len());
    let mut literal = Vec::new();
    let mut rest = rendered;
    while let Some(at) = rest.find(open) {
        prompt.push_str(&rest[..at]);
        let after = &rest[at + open.len_utf8()..];
        let original = after
            .split_once(close)
            .and_then(|(index, tail)| Some((originals.get(index.parse::<usize>().ok()?)?, tail)));
        let Some((text, tail)) = original else {
            return Err(TemplateError::Render {
                detail: "the template altered a message's literal-text marker".into(),
            });
        };
        literal.push(prompt.len()..prompt.len() + text.len());
        prompt.push_str(text);
        rest = tail;
    }
    prompt.push_str(rest);
    Ok((prompt, literal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defang_and_restore_round_trip_with_ranges() {
        let controls = ["<|im_start|>", "<|im_end|>"];
        let mut originals = Vec::new();
        let markers = ('\u{F0000}', '\u{F0001}');
        let content = "a<|im_start|>b<|im_end|><|im_end";
        let marked = defang(content, &controls, markers, &mut originals);
        assert_eq!(marked, "a\u{F0000}0\u{F0001}b\u{F0000}1\u{F0001}<|im_end");
        let rendered = format!("<|im_start|>user\n{marked}<|im_end|>");
        let (prompt, literal) = restore(&rendered, markers, &originals).expect("restore");
        assert_eq!(prompt, format!("<|im_start|>user\n{content}<|im_end|>"));
        assert_eq!(literal, [18..30, 31..41]);
        assert_eq!(&prompt[18..30], "<|im_start|>");
        let err = restore("\u{F0000}9\u{F0001}", markers, &originals).expect_err("bad index");
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
    }

    #[test]
    fn markers_avoid_characters_the_input_uses() {
        let msgs = [ChatMessage::new("user", "\u{F0000}")];
        assert_eq!(
            pick_markers("", &msgs, None).expect("pick"),
            ('\u{F0002}', '\u{F0003}')
        );
        let all: String = (0..2 * MARKER_PAIRS)
            .filter_map(|k| char::from_u32(MARKER_BASE + k))
            .collect();
        let msgs = [
            ChatMessage::new("user", "hi"),
            ChatMessage::new("user", all),
        ];
        let err = pick_markers("", &msgs, None).expect_err("exhausted");
        assert!(
            matches!(err, TemplateError::NoFreeMarker { index: 1 }),
            "{err}"
        );
    }
}
