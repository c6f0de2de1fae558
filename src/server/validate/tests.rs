//! Unit tests of the validators (`server::validate`).

use super::*;
use crate::model::chat_template::ChatMessage;
use crate::server::request::ChatMessageIn;

#[test]
fn budget_defaults_to_what_the_context_leaves_and_checks_fit() {
    let p = resolve_budget(vec![1; 10], None, None, 64).expect("fits");
    assert_eq!(p.max_tokens, 54);
    let err = resolve_budget(vec![1; 10], Some(("max_tokens", 60)), None, 64).unwrap_err();
    assert!(err.to_string().contains("64"), "{err}");
    assert!(err.to_string().contains("70"), "{err}");
    let zero = resolve_budget(vec![1; 10], Some(("max_tokens", 0)), None, 64).unwrap_err();
    assert_eq!(zero.to_string(), "`max_tokens` must be >= 1. Given: 0");
}

#[test]
fn prompts_must_be_non_empty_and_in_the_vocabulary() {
    assert!(check_prompt(&[0, 9], 10).is_ok());
    let empty = check_prompt(&[], 10).unwrap_err();
    assert!(matches!(empty, ApiError::Engine(EngineError::EmptyPrompt)));
    let outside = check_prompt(&[1, 2, 10], 10).unwrap_err();
    assert!(matches!(
        outside,
        ApiError::Engine(EngineError::InvalidToken {
            token_id: 10,
            position: 2,
            vocab: 10
        })
    ));
}

#[test]
fn unknown_model_is_named() {
    let served = vec!["a".to_string()];
    assert_eq!(check_model(Some("a"), &served).expect("served"), "a");
    let err = check_model(Some("b"), &served).unwrap_err();
    assert!(matches!(err, ApiError::ModelNotFound { .. }));
    assert!(matches!(
        check_model(None, &served),
        Err(ApiError::InvalidRequest { .. })
    ));
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let refuse = |json: serde_json::Value| {
        let u: UnsupportedFields = serde_json::from_value(json).expect("parses");
        refuse_unsupported(&u, None).err().map(|e| e.to_string())
    };
    // Tools are read by `tool_calls`; the legacy `functions` field is refused.
    assert!(refuse(serde_json::json!({"tools": [{"type": "function"}]})).is_none());
    assert!(refuse(serde_json::json!({"functions": [{"name": "f"}]}))
        .is_some_and(|m| m.starts_with("`functions`")));
    // Structured output is read by `guided`, not refused here.
    assert!(refuse(serde_json::json!({"response_format": {"type": "json_schema"}})).is_none());
    assert!(refuse(serde_json::json!({"best_of": 3})).is_some());
    assert!(refuse(
        serde_json::json!({"response_format": {"type": "text"}, "tools": [], "tool_choice": "none"})
    )
    .is_none());
}

#[test]
fn messages_map_roles_and_text_parts() {
    let msgs: Vec<ChatMessageIn> = serde_json::from_value(serde_json::json!([
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]))
    .expect("parses");
    let out = chat_messages(msgs).expect("valid");
    assert_eq!(
        out,
        vec![
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "a\nb")
        ]
    );
    let image: Vec<ChatMessageIn> = serde_json::from_value(serde_json::json!([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    ]))
    .expect("parses");
    let err = chat_messages(image).unwrap_err().to_string();
    assert!(err.contains("messages[0].content[0].type"), "{err}");
    // A tool message needs the id of the call it answers; the legacy role is refused.
    let tool: Vec<ChatMessageIn> =
        serde_json::from_value(serde_json::json!([{"role": "tool", "content": "x"}]))
            .expect("parses");
    assert!(matches!(
        chat_messages(tool),
        Err(ApiError::InvalidRequest { param: Some(p), .. }) if p == "messages[0].tool_call_id"
    ));
    let answered: Vec<ChatMessageIn> = serde_json::from_value(serde_json::json!([
        {"role": "tool", "content": "x", "tool_call_id": "call_1"},
    ]))
    .expect("parses");
    let out = chat_messages(answered).expect("valid");
    assert_eq!(out[0].tool_call_id.as_deref(), Some("call_1"));
    let function: Vec<ChatMessageIn> =
        serde_json::from_value(serde_json::json!([{"role": "function", "content": "x"}]))
            .expect("parses");
    assert!(matches!(
        chat_messages(function),
        Err(ApiError::Unsupported { .. })
    ));
}
