//! The chat's WebSocket protocol (docs/websocket.md): JSON text messages with a `type`.
//! Client messages are parsed here into `ClientMessage` (errors name the field, in the
//! OpenAI error shape through `error::http_error`); server messages are built by the
//! functions below, so every message type and field name is written once.
//!
//! Every client message may carry a `request_id` (a string of at most `MAX_ID_CHARS`);
//! the server's answers to it (and an `error` about it) echo it as `request_id`. (Not
//! `id`: that field names the conversation in `conversation.open` / `rename` / `delete`.)

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{http_error, ApiError};

/// Close codes the server uses (RFC 6455 ones, and 4xxx application codes that mirror
/// HTTP statuses).
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Binary frames are not part of the protocol.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message over `max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Frames that break the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Missing or invalid API key, or no `auth` in time.
    pub const UNAUTHORIZED: u16 = 4401;
    /// No message or pong within the idle limit (a dead peer).
    pub const TIMEOUT: u16 = 4408;
    /// The client reads too slowly: the send buffer is full.
    pub const SLOW_READER: u16 = 4409;
    /// Too many sockets for this key, or messages far above the rate limit.
    pub const TOO_MANY: u16 = 4429;
}

/// Longest client `request_id` echoed back.
pub const MAX_ID_CHARS: usize = 64;

/// The field that carries a client's request id, echoed in the answers.
pub const REQUEST_ID: &str = "request_id";

/// The message types a client may send.
pub const CLIENT_TYPES: &[&str] = &[
    "auth",
    "conversation.create",
    "conversation.list",
    "conversation.open",
    "conversation.rename",
    "conversation.delete",
    "message.send",
    "message.regenerate",
    "generation.stop",
    "feedback",
    "ping",
];

/// Sampling a message may ask for (within the server's limits).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Overrides {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_tokens: Option<u64>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Send {
    pub conversation_id: String,
    pub text: String,
    #[serde(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Regenerate {
    pub conversation_id: String,
    #[serde(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    pub api_key: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Create {
    pub title: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rename {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stop {
    pub generation_id: Option<String>,
    pub conversation_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Feedback {
    pub response_id: String,
    pub rating: String,
    pub comment: Option<String>,
}

/// One parsed client message.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    Auth(Auth),
    Create(Create),
    List,
    Open(Target),
    Rename(Rename),
    Delete(Target),
    Send(Send),
    Regenerate(Regenerate),
    Stop(Stop),
    Feedback(Feedback),
    Ping,
}

/// A client message that could not be parsed: the error and the `id` it carried.
#[derive(Debug)]
pub struct BadMessage {
    pub id: Option<String>,
    pub error: ApiError,
}

fn invalid(message: String, param: &str) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: Some(param.to_string()),
    }
}

fn fields<T: DeserializeOwned>(value: Value, kind: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::InvalidRequest {
            message: format!("`{kind}` message: {}", e.inner()),
            param: (path != ".").then_some(path),
        }
    })
}

/// Parses one text message: its `request_id` and what it asks.
pub fn parse(text: &str) -> Result<(Option<String>, ClientMessage), BadMessage> {
    let value: Value = serde_json::from_str(text).map_err(|e| BadMessage {
        id: None,
        error: invalid(format!("a message must be a JSON object: {e}"), "type"),
    })?;
    let id = match value.get(REQUEST_ID) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_CHARS => Some(s.clone()),
        Some(_) => {
            return Err(BadMessage {
                id: None,
                error: invalid(
                    format!("`{REQUEST_ID}` must be a string of at most {MAX_ID_CHARS} characters"),
                    REQUEST_ID,
                ),
            })
        }
    };
    let fail = |error| BadMessage {
        id: id.clone(),
        error,
    };
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(invalid("a message needs a string `type`".into(), "type")))?
        .to_string();
    let message = match kind.as_str() {
        "auth" => fields(value, &kind).map(ClientMessage::Auth),
        "conversation.create" => fields(value, &kind).map(ClientMessage::Create),
        "conversation.list" => Ok(ClientMessage::List),
        "conversation.open" => fields(value, &kind).map(ClientMessage::Open),
        "conversation.rename" => fields(value, &kind).map(ClientMessage::Rename),
        "conversation.delete" => fields(value, &kind).map(ClientMessage::Delete),
        "message.send" => fields(value, &kind).map(ClientMessage::Send),
        "message.regenerate" => fields(value, &kind).map(ClientMessage::Regenerate),
        "generation.stop" => fields(value, &kind).map(ClientMessage::Stop),
        "feedback" => fields(value, &kind).map(ClientMessage::Feedback),
        "ping" => Ok(ClientMessage::Ping),
        other => Err(ApiError::InvalidRequest {
            message: format!(
                "unknown message type {other:?}; the types are {}",
                CLIENT_TYPES.join(", ")
            ),
            param: Some("type".into()),
        }),
    };
    match message {
        Ok(m) => Ok((id, m)),
        Err(error) => Err(fail(error)),
    }
}

/// A server message of `kind` with `fields` (an object) and the `request_id` it answers.
pub fn message(kind: &str, id: Option<&str>, fields: Value) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    if let Some(id) = id {
        out.insert(REQUEST_ID.into(), json!(id));
    }
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    Value::Object(out)
}

/// `error` with the OpenAI error object of `err` (the one mapping of `error.rs`) and
/// `extra` fields (e.g. the generation it ended).
pub fn error(id: Option<&str>, err: &ApiError, extra: Value) -> Value {
    let mut body = http_error(err).body;
    let mut fields = extra.as_object().cloned().unwrap_or_default();
    fields.insert("error".into(), body["error"].take());
    message("error", id, Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_param(text: &str) -> (Option<String>, String, String) {
        let bad = parse(text).expect_err(text);
        let v = error(bad.id.as_deref(), &bad.error, json!({}));
        (
            v[REQUEST_ID].as_str().map(str::to_string),
            v["error"]["code"].as_str().unwrap_or("").to_string(),
            v["error"]["param"].as_str().unwrap_or("").to_string(),
        )
    }

    #[test]
    fn messages_parse_with_their_fields() {
        let (id, m) = parse(r#"{"type":"message.send","request_id":"7","conversation_id":"conv_1","text":"hi","temperature":0}"#)
            .expect("parses");
        assert_eq!(id.as_deref(), Some("7"));
        let ClientMessage::Send(send) = m else {
            panic!("not a send: {m:?}")
        };
        assert_eq!(
            (send.conversation_id.as_str(), send.text.as_str()),
            ("conv_1", "hi")
        );
        assert_eq!(send.overrides.temperature, Some(0.0));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok((None, ClientMessage::Ping))
        ));
    }

    #[test]
    fn bad_messages_name_the_problem() {
        let (id, code, param) = code_and_param(r#"{"type":"nope","request_id":"x"}"#);
        assert_eq!(
            (id.as_deref(), code.as_str(), param.as_str()),
            (Some("x"), "invalid_value", "type")
        );
        let (_, _, param) = code_and_param(r#"{"type":"message.send","conversation_id":"c"}"#);
        assert_eq!(param, "");
        let (_, _, param) =
            code_and_param(r#"{"type":"message.send","conversation_id":"c","text":5}"#);
        assert_eq!(param, "text");
        let (_, _, param) = code_and_param("[1]");
        assert_eq!(param, "type");
        let (_, _, param) = code_and_param(&format!(
            r#"{{"type":"ping","request_id":"{}"}}"#,
            "x".repeat(65)
        ));
        assert_eq!(param, "request_id");
        // `id` is a field of the message, not the request id.
        let (id, m) = parse(r#"{"type":"conversation.open","id":"conv_1"}"#).expect("parses");
        assert!(id.is_none());
        assert!(matches!(m, ClientMessage::Open(Target { id }) if id == "conv_1"));
    }
}
