//! The `POST /v1/responses` body as it arrives, and its validation into a dialog
//! `TurnRequest` plus the sampling of the turn: `tools` / `tool_choice` (function tools
//! in the Responses API's flat form) and `text.format` (`text`, `json_object`,
//! `json_schema`) are read here and compiled by the caller (`input.rs`), which has the
//! engine. Fields OpenAI defines that tessera does not implement (built-in tools,
//! reasoning, background mode, …) are refused by name.

use serde::Deserialize;
use serde_json::Value;

use crate::dialog::items::parse_input;
use crate::dialog::{check_metadata, ResponseFields, Truncation, TurnRequest};
use crate::error::ApiError;
use crate::request::SamplingParams;
use crate::server::request::JsonBody;
use crate::server::validate::{check_model, check_temperature, invalid, unsupported};
use crate::structured::GrammarSpec;
use crate::tools::{parse_tools, WireForm};

/// `conversation`: an id or `{"id": ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConversationRef {
    Id(String),
    Object { id: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<ConversationRef>,
    pub store: Option<bool>,
    pub stream: Option<bool>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub truncation: Option<String>,
    pub metadata: Option<Value>,
    pub user: Option<String>,
    /// vLLM's extensions: a reproducible random stream; generating past EOS.
    pub seed: Option<u64>,
    pub ignore_eos: Option<bool>,
    // Refused when given with a value that asks for something tessera does not do.
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    pub reasoning: Option<Value>,
    pub background: Option<bool>,
    pub text: Option<Value>,
    pub include: Option<Value>,
    pub prompt: Option<Value>,
    pub top_logprobs: Option<u64>,
    pub max_tool_calls: Option<Value>,
}

impl JsonBody for ResponsesRequest {}

/// A validated turn: what the dialog needs, how to sample, whether to stream.
pub struct ValidTurn {
    pub request: TurnRequest,
    pub sampling: SamplingParams,
    pub stream: bool,
    /// The constraint `text.format` asks for (compiled by the caller).
    pub format: Option<GrammarSpec>,
}

impl ResponsesRequest {
    /// Checks every field; `served` are the model names this server answers to.
    pub fn validate(self, served: &[String]) -> Result<ValidTurn, ApiError> {
        let model = check_model(self.model.as_deref(), served)?;
        self.refuse_unsupported()?;
        let input = self
            .input
            .as_ref()
            .ok_or_else(|| invalid("input", "`input` is required".into()))?;
        let input = parse_input(input, "input", crate::store::unix_now())?;
        if input.is_empty() {
            return Err(invalid(
                "input",
                "`input` must hold at least one item".into(),
            ));
        }
        let truncation = match self.truncation.as_deref() {
            None | Some("disabled") => Truncation::Disabled,
            Some("auto") => Truncation::Auto,
            Some(other) => {
                return Err(invalid(
                    "truncation",
                    format!("`truncation` must be `auto` or `disabled`. Given: {other:?}"),
                ))
            }
        };
        let max_output_tokens = match self.max_output_tokens {
            Some(0) => {
                return Err(invalid(
                    "max_output_tokens",
                    "`max_output_tokens` must be >= 1. Given: 0".into(),
                ))
            }
            n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let conversation_id = self.conversation.map(|c| match c {
            ConversationRef::Id(id) | ConversationRef::Object { id } => id,
        });
        check_temperature(self.temperature)?;
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            max_tokens: 1, // set from the prompt's budget
            ..SamplingParams::default()
        };
        sampling.validate()?;
        let tools = parse_tools(
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls.as_ref(),
            WireForm::Responses,
        )
        .map_err(|e| invalid(&e.param, e.message))?;
        let format_given = self.text.as_ref().and_then(|t| t.get("format"));
        let format = format_given.map_or(Ok(None), text_format)?;
        let fields = ResponseFields {
            model,
            instructions: self.instructions,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            max_output_tokens,
            truncation,
            metadata: check_metadata(self.metadata.as_ref())?,
            user: self.user,
            store: self.store.unwrap_or(true),
            previous_response_id: self.previous_response_id,
            conversation_id,
            tools,
            text_format: format_given
                .filter(|f| !f.is_null())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "text"})),
        };
        Ok(ValidTurn {
            request: TurnRequest { input, fields },
            sampling,
            stream: self.stream.unwrap_or(false),
            format,
        })
    }

    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let given = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
        if self
            .text
            .as_ref()
            .is_some_and(|t| !t.is_null() && !t.is_object())
        {
            return Err(invalid("text", "`text` must be an object".into()));
        }
        if given(&self.reasoning) {
            return Err(unsupported("reasoning", ": this model does not reason"));
        }
        if self.background == Some(true) {
            return Err(unsupported(
                "background",
                ": responses run in the foreground",
            ));
        }
        if self
            .include
            .as_ref()
            .is_some_and(|i| i.as_array().is_none_or(|a| !a.is_empty()) && !i.is_null())
        {
            return Err(unsupported("include", ""));
        }
        if given(&self.prompt) {
            return Err(unsupported(
                "prompt",
                " (prompt templates are not implemented)",
            ));
        }
        if self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(unsupported("top_logprobs", ""));
        }
        if given(&self.max_tool_calls) {
            return Err(unsupported("max_tool_calls", ""));
        }
        Ok(())
    }
}

/// `text.format`: `text` (no constraint), `json_object`, or `json_schema` with `name`,
/// `schema` and `strict` beside `type`.
fn text_format(format: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "text.format";
    if format.is_null() {
        return Ok(None);
    }
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonSchema(
            serde_json::json!({"type": "object"}),
        ))),
        Some("json_schema") => {
            let name = format.get("name").and_then(Value::as_str).unwrap_or("");
            if !crate::tools::spec::is_function_name(name) {
                return Err(invalid(P, format!("`text.format.name` must be 1-64 characters of a-z, A-Z, 0-9, `_` and `-`. Given: {}", format.get("name").unwrap_or(&Value::Null))));
            }
            match format.get("schema") {
                Some(schema @ Value::Object(_)) => Ok(Some(GrammarSpec::JsonSchema(schema.clone()))),
                other => Err(invalid(P, format!("`text.format.schema` must be a JSON schema object. Given: {}", other.unwrap_or(&Value::Null)))),
            }
        }
        other => Err(invalid(P, format!("`text.format.type` must be one of `text`, `json_object`, `json_schema`. Given: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validate(body: Value) -> Result<ValidTurn, ApiError> {
        let req: ResponsesRequest = serde_json::from_value(body).expect("parses");
        req.validate(&["m".to_string()])
    }

    #[test]
    fn a_plain_request_becomes_a_turn() {
        let t = validate(json!({"model": "m", "input": "hi", "temperature": 0,
            "conversation": {"id": "conv_1"}, "max_output_tokens": 9}))
        .expect("valid");
        assert_eq!(t.request.input[0].text(), "hi");
        assert_eq!(t.request.fields.conversation_id.as_deref(), Some("conv_1"));
        assert_eq!(t.request.fields.max_output_tokens, Some(9));
        assert!(t.request.fields.store && !t.stream);
        assert_eq!(t.sampling.temperature, 0.0);
    }

    #[test]
    fn unsupported_and_bad_fields_are_named() {
        let param = |body: Value| match validate(body) {
            Err(ApiError::Unsupported { param, .. }) => param,
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            Err(other) => other.to_string(),
            Ok(_) => "ok".into(),
        };
        let base = |extra: Value| {
            let mut b = json!({"model": "m", "input": "hi"});
            b.as_object_mut()
                .expect("object")
                .extend(extra.as_object().cloned().unwrap_or_default());
            b
        };
        assert_eq!(
            param(base(json!({"tools": [{"type": "function"}]}))),
            "tools[0].name"
        );
        assert_eq!(
            param(base(json!({"tools": [{"type": "web_search"}]}))),
            "tools[0].type"
        );
        assert_eq!(
            param(base(json!({"tool_choice": "required"}))),
            "tool_choice"
        );
        let tool = json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}]);
        assert_eq!(
            param(base(
                json!({"tools": tool, "tool_choice": {"type": "function", "name": "g"}})
            )),
            "tool_choice"
        );
        assert_eq!(
            param(base(json!({"tools": tool, "tool_choice": "required"}))),
            "ok"
        );
        assert_eq!(
            param(base(json!({"reasoning": {"effort": "low"}}))),
            "reasoning"
        );
        assert_eq!(param(base(json!({"background": true}))), "background");
        assert_eq!(
            param(base(json!({"text": {"format": {"type": "json_object"}}}))),
            "ok"
        );
        assert_eq!(
            param(base(
                json!({"text": {"format": {"type": "json_schema", "name": "x"}}})
            )),
            "text.format"
        );
        assert_eq!(
            param(base(json!({"text": {"format": {"type": "xml"}}}))),
            "text.format"
        );
        assert_eq!(
            param(base(json!({"truncation": "sometimes"}))),
            "truncation"
        );
        assert_eq!(
            param(base(json!({"max_output_tokens": 0}))),
            "max_output_tokens"
        );
        assert_eq!(param(json!({"model": "m"})), "input");
        // OpenAI's temperature range, as on the other generation routes.
        assert_eq!(param(base(json!({"temperature": 2.5}))), "temperature");
        assert_eq!(param(base(json!({"temperature": -0.5}))), "temperature");
        assert_eq!(param(base(json!({"temperature": 2}))), "ok");
        assert_eq!(
            param(base(
                json!({"tools": [], "tool_choice": "auto", "include": []})
            )),
            "ok"
        );
    }
}
