use std::path::Path;

use super::*;
use crate::error::http_error;
use crate::safety::testing::POLICY;

fn policy() -> Policy {
    Policy::from_bytes(Path::new("p.toml"), POLICY.as_bytes()).expect("valid")
}

fn parse_input(value: Value) -> Result<Vec<String>, ApiError> {
    let req: ModerationRequest = serde_json::from_value(value).expect("parses");
    texts(req.input)
}

#[test]
fn every_rule_counts_whatever_its_stage_and_action() {
    let p = policy();
    assert_eq!(
        moderate(&p, "炸 弹"),
        json!({
            "flagged": true,
            "categories": {"fraud": false, "geo": false, "pii": false, "violence": true},
            "category_scores": {"fraud": 0.0, "geo": 0.0, "pii": 0.0, "violence": 1.0},
        })
    );
    // An output-only rule, a mask and a flag count as well.
    assert_eq!(moderate(&p, "in PARIS")["categories"]["geo"], true);
    assert_eq!(moderate(&p, "call 13812345678")["categories"]["pii"], true);
    assert_eq!(moderate(&p, "洗钱")["flagged"], true);
    assert_eq!(moderate(&p, "Parisian bombastic")["flagged"], false);
}

#[test]
fn inputs_are_a_string_or_a_list_of_strings_or_text_parts() {
    let texts = |value| parse_input(value).map_err(|e| e.to_string());
    assert_eq!(texts(json!({"input": "a"})), Ok(vec!["a".to_string()]));
    assert_eq!(
        texts(json!({"input": ["a", {"type": "text", "text": "b"}]})),
        Ok(vec!["a".to_string(), "b".to_string()])
    );
    let err = parse_input(json!({})).unwrap_err();
    assert_eq!(http_error(&err).body["error"]["param"], "input");
    let err = parse_input(json!({"input": []})).unwrap_err();
    assert!(err.to_string().contains("1 to 2048"), "{err}");
    let err = parse_input(json!({"input": [{"type": "image_url", "image_url": {}}]})).unwrap_err();
    assert_eq!(http_error(&err).body["error"]["param"], "input[0].type");
    let err = parse_input(json!({"input": [{"type": "text"}]})).unwrap_err();
    assert_eq!(http_error(&err).body["error"]["param"], "input[0].text");
}

#[test]
fn moderation_and_admin_errors_have_their_codes() {
    let cases: Vec<(ApiError, u16, &str)> = vec![
        (
            ModerationError::Blocked {
                param: "messages[0].content".into(),
                message: "no".into(),
            }
            .into(),
            400,
            "content_filter",
        ),
        (
            ModerationError::NotConfigured.into(),
            400,
            "moderation_not_configured",
        ),
        (
            ModerationError::Reload(crate::safety::PolicyError::Parse {
                path: "p".into(),
                message: "bad".into(),
            })
            .into(),
            400,
            "invalid_policy",
        ),
        (ApiError::AdminDisabled, 403, "admin_api_disabled"),
        (ApiError::AdminUnauthorized, 401, "invalid_admin_key"),
    ];
    for (err, status, code) in cases {
        let mapped = http_error(&err);
        assert_eq!(
            (mapped.status, mapped.body["error"]["code"].as_str()),
            (status, Some(code))
        );
        assert_eq!(mapped.body["error"]["message"], err.to_string());
    }
}
