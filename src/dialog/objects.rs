//! The Responses and Conversations API objects, field for field as OpenAI returns them
//! (and as the `openai` SDK's types declare them): the response object in each of its
//! states, its usage, the conversation object and item lists. Only this file knows
//! their field names.

use serde_json::{json, Value};

use super::items::Message;
use crate::tools::{ToolChoice, ToolSet};

/// `truncation` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Drop the oldest history turns until the prompt fits.
    Auto,
    /// A prompt that does not fit is an error (OpenAI's default).
    #[default]
    Disabled,
}

impl Truncation {
    pub fn as_str(self) -> &'static str {
        match self {
            Truncation::Auto => "auto",
            Truncation::Disabled => "disabled",
        }
    }
}

/// What a response echoes of its request.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseFields {
    pub model: String,
    pub instructions: Option<String>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_output_tokens: Option<usize>,
    pub truncation: Truncation,
    /// A JSON object of strings.
    pub metadata: Value,
    pub user: Option<String>,
    pub store: bool,
    pub previous_response_id: Option<String>,
    pub conversation_id: Option<String>,
    /// The request's tools (`None`: no tools).
    pub tools: Option<ToolSet>,
    /// `text.format` as the request gave it (`{"type": "text"}` by default).
    pub text_format: Value,
}

/// Token counts of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnUsage {
    pub input_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    pub output_tokens: usize,
}

impl TurnUsage {
    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }
}

/// Where a response is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    InProgress,
    Completed,
    /// Cut short; the reason (`max_output_tokens`, `content_filter`).
    Incomplete(&'static str),
    /// Failed with this error message.
    Failed(String),
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) => "incomplete",
            Status::Failed(_) => "failed",
        }
    }
}

/// The response object `id` in state `status` with `output` so far.
pub fn response_object(
    id: &str,
    created_at: i64,
    fields: &ResponseFields,
    status: &Status,
    output: &[Message],
    usage: Option<TurnUsage>,
) -> Value {
    let output_text: String = output.iter().map(Message::text).collect();
    let incomplete = match status {
        Status::Incomplete(reason) => json!({ "reason": reason }),
        _ => Value::Null,
    };
    let error = match status {
        Status::Failed(message) => json!({"code": "server_error", "message": message}),
        _ => Value::Null,
    };
    let completed_at = match status {
        Status::Completed => json!(crate::store::unix_now()),
        _ => Value::Null,
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status.as_str(),
        "completed_at": completed_at,
        "background": false,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": fields.instructions,
        "max_output_tokens": fields.max_output_tokens,
        "max_tool_calls": null,
        "model": fields.model,
        "output": output.iter().map(Message::to_json).collect::<Vec<_>>(),
        "output_text": output_text,
        "parallel_tool_calls": fields.tools.as_ref().is_some_and(|t| t.parallel),
        "previous_response_id": fields.previous_response_id,
        "conversation": fields.conversation_id.as_ref().map(|id| json!({ "id": id })),
        "reasoning": {"effort": null, "summary": null},
        "store": fields.store,
        "temperature": fields.temperature,
        "text": {"format": fields.text_format},
        "tool_choice": tool_choice(fields.tools.as_ref()),
        "tools": tools_json(fields.tools.as_ref()),
        "top_p": fields.top_p,
        "truncation": fields.truncation.as_str(),
        "usage": usage.map(TurnUsage::to_json),
        "user": fields.user,
        "metadata": fields.metadata,
    })
}

/// `tool_choice` as the Responses API writes it.
fn tool_choice(tools: Option<&ToolSet>) -> Value {
    match tools.map(|t| &t.choice) {
        None | Some(ToolChoice::None) => json!("none"),
        Some(ToolChoice::Auto) => json!("auto"),
        Some(ToolChoice::Required) => json!("required"),
        Some(ToolChoice::Named(name)) => json!({"type": "function", "name": name}),
    }
}

/// `tools` in the Responses API's flat form.
fn tools_json(tools: Option<&ToolSet>) -> Value {
    let functions = tools.map_or(&[][..], |t| t.functions.as_slice());
    functions
        .iter()
        .map(|f| {
            json!({
                "type": "function", "name": f.name, "description": f.description,
                "parameters": f.parameters, "strict": false,
            })
        })
        .collect()
}

/// The conversation object.
pub fn conversation_object(id: &str, created_at: i64, metadata: &Value) -> Value {
    json!({"id": id, "object": "conversation", "created_at": created_at, "metadata": metadata})
}

/// A page of items as a list object (`first_id`/`last_id` are null for an empty page).
pub fn item_list(items: &[Value], has_more: bool) -> Value {
    let id = |v: Option<&Value>| v.map_or(Value::Null, |v| v["id"].clone());
    json!({
        "object": "list",
        "data": items,
        "first_id": id(items.first()),
        "last_id": id(items.last()),
        "has_more": has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::items::Role;

    #[test]
    fn response_objects_carry_openai_fields() {
        let fields = ResponseFields {
            model: "m".into(),
            instructions: None,
            temperature: 1.0,
            top_p: 1.0,
            max_output_tokens: Some(5),
            truncation: Truncation::Auto,
            metadata: json!({}),
            user: None,
            store: true,
            previous_response_id: Some("resp_p".into()),
            conversation_id: None,
            tools: None,
            text_format: json!({"type": "text"}),
        };
        let out = [Message::new(Role::Assistant, "hi", 0)];
        let usage = TurnUsage {
            input_tokens: 10,
            cached_tokens: 8,
            output_tokens: 2,
        };
        let v = response_object(
            "resp_1",
            3,
            &fields,
            &Status::Incomplete("max_output_tokens"),
            &out,
            Some(usage),
        );
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(v["output_text"], "hi");
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 8);
        assert_eq!(v["usage"]["total_tokens"], 12);
        assert_eq!(v["previous_response_id"], "resp_p");
        assert!(v["conversation"].is_null() && v["completed_at"].is_null());
        let list = item_list(&[], false);
        assert!(list["first_id"].is_null());
    }
}
