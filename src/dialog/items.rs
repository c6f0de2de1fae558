//! Items: the messages a dialog is made of, as the dialog layer sees them (`Message`) and
//! as OpenAI's Responses and Conversations APIs show them (message items with
//! `input_text` / `output_text` parts; `function_call` items, the model's tool calls;
//! `function_call_output` items, the client's results of them). Parses client input
//! (`input`, `items`) into messages and renders messages back into item JSON.
//!
//! Invariants: every message gets a fresh server-made id (`msg_…`): a client replaying
//! earlier output items as input never collides with the stored ones; one request holds
//! at most `MAX_INPUT_ITEMS` items; only text content is accepted, anything else is
//! refused by name (`input[2].content[0].type`).

use serde_json::{json, Value};

use super::DialogError;
use crate::store::ItemRecord;

/// Most items one request may carry (`input` of a response, `items` of a conversation).
pub const MAX_INPUT_ITEMS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
    Developer,
    /// A tool's result (`function_call_output` items only).
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Developer => "developer",
            Role::Tool => "tool",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            "developer" => Role::Developer,
            _ => return None,
        })
    }

    /// The role the chat template sees (`developer` is the system role).
    pub fn template_role(self) -> &'static str {
        match self {
            Role::Developer | Role::System => "system",
            other => other.as_str(),
        }
    }
}

/// What kind of item a `Message` is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ItemKind {
    /// A message with text parts.
    #[default]
    Message,
    /// A tool call of the model (role assistant, no parts).
    FunctionCall {
        call_id: String,
        name: String,
        /// The arguments' JSON text.
        arguments: String,
    },
    /// The result of call `call_id` (role tool; the output is the one part).
    FunctionCallOutput { call_id: String },
}

/// One item of a dialog (a message unless `kind` says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub kind: ItemKind,
    pub role: Role,
    /// Text parts, in order (joined with newlines in the prompt).
    pub parts: Vec<String>,
    /// False for an answer cut short (`incomplete`).
    pub complete: bool,
    pub created_at: i64,
}

/// A new id with `prefix` (`msg`, `resp`, `conv`): 32 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

impl Message {
    pub fn new(role: Role, text: impl Into<String>, created_at: i64) -> Self {
        Self {
            id: new_id("msg"),
            kind: ItemKind::Message,
            role,
            parts: vec![text.into()],
            complete: true,
            created_at,
        }
    }

    /// The text the prompt gets.
    pub fn text(&self) -> String {
        self.parts.join("\n")
    }

    /// Bytes this message holds (for the hot cache's memory bound).
    pub fn size(&self) -> usize {
        self.id.len() + self.parts.iter().map(|p| p.len() + 24).sum::<usize>() + 64
    }

    /// A tool call of the model, as a `function_call` item.
    pub fn function_call(call_id: &str, name: &str, arguments: &str, created_at: i64) -> Self {
        Self {
            id: new_id("fc"),
            kind: ItemKind::FunctionCall {
                call_id: call_id.to_string(),
                name: name.to_string(),
                arguments: arguments.to_string(),
            },
            role: Role::Assistant,
            parts: Vec::new(),
            complete: true,
            created_at,
        }
    }

    /// The item as the API shows it.
    pub fn to_json(&self) -> Value {
        match &self.kind {
            ItemKind::Message => self.message_json(),
            ItemKind::FunctionCall {
                call_id,
                name,
                arguments,
            } => json!({
                "id": self.id, "type": "function_call", "call_id": call_id, "name": name,
                "arguments": arguments,
                "status": if self.complete { "completed" } else { "incomplete" },
            }),
            ItemKind::FunctionCallOutput { call_id } => json!({
                "id": self.id, "type": "function_call_output", "call_id": call_id,
                "output": self.text(), "status": "completed",
            }),
        }
    }

    fn message_json(&self) -> Value {
        let kind = match self.role {
            Role::Assistant => "output_text",
            _ => "input_text",
        };
        let content: Vec<Value> = self
            .parts
            .iter()
            .map(|text| match self.role {
                Role::Assistant => {
                    json!({"type": kind, "text": text, "annotations": [], "logprobs": []})
                }
                _ => json!({"type": kind, "text": text}),
            })
            .collect();
        json!({
            "id": self.id,
            "type": "message",
            "role": self.role.as_str(),
            "status": if self.complete { "completed" } else { "incomplete" },
            "content": content,
        })
    }

    pub fn to_record(&self) -> ItemRecord {
        ItemRecord {
            id: self.id.clone(),
            created_at: self.created_at,
            body: self.to_json().to_string(),
        }
    }

    /// A stored item back into a message.
    pub fn from_record(record: &ItemRecord) -> Result<Self, DialogError> {
        let corrupt = |what: &str| {
            DialogError::Internal(format!("stored item {} is malformed: {what}", record.id))
        };
        let value: Value =
            serde_json::from_str(&record.body).map_err(|e| corrupt(&e.to_string()))?;
        let text = |key: &str| {
            value[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| corrupt(key))
        };
        match value["type"].as_str() {
            Some("function_call") => {
                let mut call = Self::function_call(
                    &text("call_id")?,
                    &text("name")?,
                    &text("arguments")?,
                    record.created_at,
                );
                call.id = record.id.clone();
                call.complete = value["status"] != "incomplete";
                return Ok(call);
            }
            Some("function_call_output") => {
                return Ok(Self {
                    id: record.id.clone(),
                    kind: ItemKind::FunctionCallOutput {
                        call_id: text("call_id")?,
                    },
                    role: Role::Tool,
                    parts: vec![text("output")?],
                    complete: true,
                    created_at: record.created_at,
                })
            }
            _ => {}
        }
        let role = value["role"]
            .as_str()
            .and_then(Role::parse)
            .ok_or_else(|| corrupt("role"))?;
        let parts = value["content"]
            .as_array()
            .ok_or_else(|| corrupt("content"))?
            .iter()
            .map(|p| p["text"].as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| corrupt("content text"))?;
        Ok(Self {
            id: record.id.clone(),
            kind: ItemKind::Message,
            role,
            parts,
            complete: value["status"] != "incomplete",
            created_at: record.created_at,
        })
    }
}

fn unsupported(param: String, detail: String) -> DialogError {
    DialogError::Unsupported { param, detail }
}

/// Client input (`input` of a response: a string or a list of items; `items` of a
/// conversation: a list) into messages; `field` names the field in errors.
pub fn parse_input(value: &Value, field: &str, now: i64) -> Result<Vec<Message>, DialogError> {
    let list = match value {
        Value::String(text) => return Ok(vec![Message::new(Role::User, text.clone(), now)]),
        Value::Array(list) => list,
        _ => {
            return Err(DialogError::invalid(
                field,
                format!("`{field}` must be a string or a list of items"),
            ))
        }
    };
    if list.len() > MAX_INPUT_ITEMS {
        return Err(DialogError::invalid(
            field,
            format!(
                "`{field}` must hold at most {MAX_INPUT_ITEMS} items. Given: {}",
                list.len()
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| parse_item(item, &format!("{field}[{i}]"), now))
        .collect()
}

fn parse_item(item: &Value, at: &str, now: i64) -> Result<Message, DialogError> {
    if !item.is_object() {
        return Err(DialogError::invalid(
            at,
            format!("`{at}` must be an item object"),
        ));
    }
    match item.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "message" => {}
        Some(Value::String(kind)) if kind == "function_call" || kind == "function_call_output" => {
            return call_item(item, kind, at, now)
        }
        Some(Value::String(other)) => {
            return Err(unsupported(
                format!("{at}.type"),
                format!(
                    " for items of type `{other}` (`message`, `function_call` and \
                     `function_call_output` items are served)"
                ),
            ))
        }
        Some(_) => {
            return Err(DialogError::invalid(
                &format!("{at}.type"),
                format!("`{at}.type` must be a string"),
            ))
        }
    }
    let role = match item.get("role").and_then(Value::as_str) {
        Some(r) => Role::parse(r).ok_or_else(|| {
            DialogError::invalid(
                &format!("{at}.role"),
                format!(
                    "`{at}.role` must be one of user, assistant, system, developer. Given: {r:?}"
                ),
            )
        })?,
        None => {
            return Err(DialogError::invalid(
                &format!("{at}.role"),
                format!("`{at}.role` is required"),
            ))
        }
    };
    let parts = match item.get("content") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(parts)) if !parts.is_empty() => parts
            .iter()
            .enumerate()
            .map(|(j, p)| text_part(p, &format!("{at}.content[{j}]")))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(DialogError::invalid(
                &format!("{at}.content"),
                format!("`{at}.content` must be a string or a non-empty list of text parts"),
            ))
        }
    };
    Ok(Message {
        id: new_id("msg"),
        kind: ItemKind::Message,
        role,
        parts,
        complete: true,
        created_at: now,
    })
}

/// A `function_call` item (a call the model made, replayed by the client) or a
/// `function_call_output` item (the client's result of one).
fn call_item(item: &Value, kind: &str, at: &str, now: i64) -> Result<Message, DialogError> {
    let field = |key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() || key == "output" || key == "arguments")
            .ok_or_else(|| {
                DialogError::invalid(
                    &format!("{at}.{key}"),
                    format!("`{at}.{key}` is required (a string) on a `{kind}` item"),
                )
            })
    };
    let call_id = field("call_id")?;
    if kind == "function_call" {
        return Ok(Message::function_call(
            call_id,
            field("name")?,
            field("arguments")?,
            now,
        ));
    }
    Ok(Message {
        id: new_id("fco"),
        kind: ItemKind::FunctionCallOutput {
            call_id: call_id.to_string(),
        },
        role: Role::Tool,
        parts: vec![field("output")?.to_string()],
        complete: true,
        created_at: now,
    })
}

fn text_part(part: &Value, at: &str) -> Result<String, DialogError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => part
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                DialogError::invalid(&format!("{at}.text"), format!("`{at}.text` is required"))
            }),
        Some(other) => Err(unsupported(
            format!("{at}.type"),
            format!(" for `{other}` parts (only text is served)"),
        )),
        None => Err(DialogError::invalid(
            &format!("{at}.type"),
            format!("`{at}.type` is required"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_message_items_parse() {
        let msgs = parse_input(&json!("hi"), "input", 5).expect("string");
        assert_eq!(
            (msgs[0].role, msgs[0].text()),
            (Role::User, "hi".to_string())
        );
        let msgs = parse_input(
            &json!([
                {"role": "developer", "content": "be brief"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                {"id": "msg_old", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
            ]),
            "input",
            5,
        )
        .expect("items");
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1].text(), "a\nb");
        assert_ne!(msgs[2].id, "msg_old", "ids are always the server's");
        let back = Message::from_record(&msgs[2].to_record()).expect("round trip");
        assert_eq!(back, msgs[2]);
    }

    #[test]
    fn function_call_items_parse_and_round_trip() {
        let msgs = parse_input(
            &json!([
                {"role": "user", "content": "weather in Paris?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ]),
            "input",
            5,
        )
        .expect("items");
        assert_eq!(msgs[1].role, Role::Assistant);
        assert_eq!(msgs[2].role, Role::Tool);
        assert_eq!(msgs[2].text(), "sunny");
        let json = msgs[1].to_json();
        assert_eq!(json["type"], "function_call");
        assert_eq!(json["call_id"], "call_1");
        assert!(json["id"].as_str().is_some_and(|id| id.starts_with("fc_")));
        for m in &msgs[1..] {
            assert_eq!(
                &Message::from_record(&m.to_record()).expect("round trip"),
                m
            );
        }
    }

    #[test]
    fn bad_items_are_named() {
        let err = |v: Value| parse_input(&v, "input", 0).unwrap_err().to_string();
        assert!(
            err(json!([{"role": "user", "content": [{"type": "input_image"}]}]))
                .contains("input[0].content[0].type")
        );
        assert!(err(json!([{"type": "function_call_output"}])).contains("input[0].call_id"));
        assert!(err(json!([{"type": "web_search_call"}])).contains("input[0].type"));
        let not_a_string = json!([{"type": {}, "role": "user", "content": ""}]);
        assert!(err(not_a_string).contains("input[0].type"));
        assert!(err(json!([{"role": "tool", "content": "x"}])).contains("input[0].role"));
        assert!(err(json!([{"role": "user"}])).contains("input[0].content"));
        assert!(err(json!(7)).contains("`input`"));
        let many = Value::Array(vec![
            json!({"role": "user", "content": "x"});
            MAX_INPUT_ITEMS + 1
        ]);
        assert!(err(many).contains("at most 1000"));
    }
}
