//! Tools and tool messages in the prompt. A chat template written for Hermes-style tools
//! (it reads `tools` and prints `<tool_call>`, as Qwen2.5's does) renders them itself:
//! it gets the `tools` variable, assistant messages with `tool_calls` and `tool` messages
//! as they are. Any other template gets tessera's generic format (docs/tools.md), made
//! of plain messages every template renders:
//!
//! - the tools go into the system message (appended to the first one, or a new one
//!   first), as a `# Tools` section listing each tool's JSON in `<tools></tools>` and
//!   asking for calls as `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`;
//! - an assistant message with `tool_calls` becomes its content followed by one such
//!   block per call;
//! - a run of `tool` messages becomes one user message of
//!   `<tool_response>\n…\n</tool_response>` blocks.
//!
//! The wording is Qwen2.5's, so a model answers the same way in either form.

use serde_json::Value;

use crate::model::chat_template::{
    encode_chat, encode_chat_with_tools, ChatMessage, ChatTemplate, TemplateError,
};
use crate::model::tokenizer::Tokenizer;

/// The prompt of `messages` with `tools` (chat form; `None`: no active tools): through
/// the template when it renders Hermes tools, else in the generic format (only when
/// there are tools or tool messages; a plain conversation renders as ever).
pub fn encode_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: Vec<ChatMessage>,
    tools: Option<&Value>,
) -> Result<Vec<u32>, TemplateError> {
    let has_tool_messages = messages
        .iter()
        .any(|m| m.tool_calls.is_some() || m.role == "tool");
    if template_renders_tools(template.source()) {
        encode_chat_with_tools(tokenizer, template, &messages, tools, true)
    } else if tools.is_some() || has_tool_messages {
        encode_chat(
            tokenizer,
            template,
            &generic_messages(messages, tools),
            true,
        )
    } else {
        encode_chat(tokenizer, template, &messages, true)
    }
}

/// Whether `source` (a chat template) renders Hermes-style tools itself.
pub fn template_renders_tools(source: &str) -> bool {
    source.contains("tools") && source.contains("<tool_call>")
}

/// The `# Tools` section of the generic format for `tools` (chat form).
pub fn tools_section(tools: &Value) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools.as_array().into_iter().flatten() {
        text.push('\n');
        text.push_str(&python_json(tool));
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// `messages` in the generic format, with `tools` (chat form) in the system message
/// when given.
pub fn generic_messages(messages: Vec<ChatMessage>, tools: Option<&Value>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        match m.role.as_str() {
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(last)
                        if last.role == "user" && last.content.ends_with("</tool_response>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            "assistant" if m.tool_calls.is_some() => {
                let mut text = m.content.clone();
                for call in m
                    .tool_calls
                    .iter()
                    .flat_map(|c| c.as_array().into_iter().flatten())
                {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&call_block(call));
                }
                out.push(ChatMessage::new("assistant", text));
            }
            _ => out.push(ChatMessage::new(m.role, m.content)),
        }
    }
    if let Some(tools) = tools {
        let section = tools_section(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{section}", first.content);
            }
            _ => out.insert(0, ChatMessage::new("system", section)),
        }
    }
    out
}

/// One call (template form: `{"function": {"name", "arguments"}}`) as a Hermes block.
fn call_block(call: &Value) -> String {
    let function = call.get("function").unwrap_or(call);
    let name = function.get("name").and_then(Value::as_str).unwrap_or("");
    let arguments = function.get("arguments").cloned().unwrap_or(Value::Null);
    format!(
        "<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>",
        python_json(&Value::String(name.to_string())),
        python_json(&arguments)
    )
}

/// JSON as Python's `json.dumps` writes it (`", "` and `": "` separators, non-ASCII
/// kept), as templates' `tojson` does.
pub fn python_json(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_json).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generic_format_puts_tools_in_the_system_message_and_calls_in_content() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(
            json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]),
        );
        let mut r1 = ChatMessage::new("tool", "sunny");
        r1.tool_call_id = Some("call_1".into());
        let r2 = ChatMessage::new("tool", "warm");
        let msgs = vec![ChatMessage::new("user", "weather?"), call, r1, r2];
        let out = generic_messages(msgs, Some(&tools));
        assert_eq!(out[0].role, "system");
        assert!(out[0].content.starts_with("# Tools\n"));
        assert!(out[0].content.contains("\n{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}}\n</tools>"));
        assert_eq!(out[2].role, "assistant");
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>"
        );
        assert_eq!(out[3].role, "user");
        assert_eq!(
            out[3].content,
            "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwarm\n</tool_response>"
        );
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|m| m.tool_calls.is_none()));
    }

    #[test]
    fn an_existing_system_message_gets_the_tools_appended() {
        let tools = json!([]);
        let out = generic_messages(
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "hi"),
            ],
            Some(&tools),
        );
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn templates_are_told_apart() {
        let qwen =
            include_str!("../../tests/fixtures/chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja");
        assert!(template_renders_tools(qwen));
        assert!(!template_renders_tools(
            crate::model::chat_template::CHATML_TEMPLATE
        ));
    }
}
