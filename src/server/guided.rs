//! Structured-output request fields → one compiled `Guide`: OpenAI's `response_format`
//! (`text`, `json_object`, `json_schema`) and vLLM's `guided_json`, `guided_regex`,
//! `guided_choice`, `guided_grammar` and `structured_outputs`.
//!
//! Invariants: at most one constraint per request (two → 400 naming both); a spec that
//! does not compile, or uses a schema feature llguidance does not support, is a 400 that
//! names the field and the problem — never a silent unconstrained run. Compiling happens
//! here, inside validation, which runs on the CPU pool; the compiler caches by spec.

use serde_json::Value;

use super::request::UnsupportedFields;
use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::structured::{GrammarSpec, Guide};

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: Some(param.to_string()),
    }
}

/// The guide the request asks for (`None`: unconstrained).
pub(crate) fn guide(
    u: &UnsupportedFields,
    engine: &EngineHandle,
) -> Result<Option<Guide>, ApiError> {
    let Some((param, spec)) = spec(u)? else {
        return Ok(None);
    };
    let compiler = engine.grammar_compiler().map_err(|e| {
        invalid(
            param,
            format!("`{param}`: structured output is unavailable: {e}"),
        )
    })?;
    compiler
        .compile(&spec)
        .map(Some)
        .map_err(|e| invalid(param, format!("`{param}`: {e}")))
}

/// The one spec given, with the field that gave it.
fn spec(u: &UnsupportedFields) -> Result<Option<(&'static str, GrammarSpec)>, ApiError> {
    let given = |v: &Option<Value>| v.as_ref().filter(|v| !v.is_null()).cloned();
    let mut found: Vec<(&'static str, GrammarSpec)> = Vec::new();
    if let Some(format) = given(&u.response_format) {
        found.extend(response_format(&format)?.map(|s| ("response_format", s)));
    }
    if let Some(schema) = given(&u.guided_json) {
        found.push(("guided_json", json_schema("guided_json", schema)?));
    }
    if let Some(rx) = given(&u.guided_regex) {
        found.push((
            "guided_regex",
            GrammarSpec::Regex(string("guided_regex", rx)?),
        ));
    }
    if let Some(choices) = given(&u.guided_choice) {
        found.push(("guided_choice", choice("guided_choice", choices)?));
    }
    if let Some(grammar) = given(&u.guided_grammar) {
        found.push((
            "guided_grammar",
            GrammarSpec::Lark(string("guided_grammar", grammar)?),
        ));
    }
    if let Some(so) = given(&u.structured_outputs) {
        found.extend(structured_outputs(&so)?.map(|s| ("structured_outputs", s)));
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(invalid(
            found[1].0,
            format!(
                "only one structured-output constraint may be given. Given: `{}` and `{}`",
                found[0].0, found[1].0
            ),
        )),
    }
}

/// OpenAI's `response_format`.
fn response_format(format: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "response_format";
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonSchema(serde_json::json!({"type": "object"})))),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").filter(|v| v.is_object()) else {
                return Err(invalid(P, "`response_format.json_schema` must be an object with `name` and `schema`".into()));
            };
            let name = spec.get("name").and_then(Value::as_str).unwrap_or("");
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(invalid(P, format!("`response_format.json_schema.name` must be 1-64 characters of a-z, A-Z, 0-9, `_` and `-`. Given: {:?}", spec.get("name"))));
            }
            if spec.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(invalid(P, "`response_format.json_schema.strict` must be a boolean".into()));
            }
            // Without a schema any JSON value is allowed (OpenAI's default).
            let schema = spec.get("schema").cloned().unwrap_or(Value::Bool(true));
            Ok(Some(json_schema(P, schema)?))
        }
        other => Err(invalid(P, format!("`response_format.type` must be one of `text`, `json_object`, `json_schema`. Given: {other:?}"))),
    }
}

/// vLLM's `structured_outputs`: exactly one of `json`, `regex`, `choice`, `grammar`,
/// `json_object`.
fn structured_outputs(so: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "structured_outputs";
    let Some(map) = so.as_object() else {
        return Err(invalid(P, "`structured_outputs` must be an object".into()));
    };
    let mut specs = Vec::new();
    for (key, value) in map.iter().filter(|(_, v)| !v.is_null()) {
        let spec = match key.as_str() {
            "json" => json_schema(P, value.clone())?,
            "regex" => GrammarSpec::Regex(string(P, value.clone())?),
            "choice" => choice(P, value.clone())?,
            "grammar" => GrammarSpec::Lark(string(P, value.clone())?),
            "json_object" if value.as_bool() == Some(true) => {
                GrammarSpec::JsonSchema(serde_json::json!({"type": "object"}))
            }
            "json_object" => continue,
            other => {
                return Err(ApiError::Unsupported {
                    param: format!("{P}.{other}"),
                    detail: String::new(),
                })
            }
        };
        specs.push(spec);
    }
    if specs.len() > 1 {
        return Err(invalid(P, "`structured_outputs` must hold only one of `json`, `regex`, `choice`, `grammar`, `json_object`".into()));
    }
    Ok(specs.pop())
}

/// A schema given as an object, or as JSON text (vLLM accepts both).
fn json_schema(param: &str, schema: Value) -> Result<GrammarSpec, ApiError> {
    let schema = match schema {
        Value::String(text) => serde_json::from_str(&text)
            .map_err(|e| invalid(param, format!("`{param}` is not valid JSON: {e}")))?,
        other => other,
    };
    if !(schema.is_object() || schema == Value::Bool(true)) {
        return Err(invalid(
            param,
            format!("`{param}`: a JSON schema must be an object. Given: {schema}"),
        ));
    }
    Ok(GrammarSpec::JsonSchema(schema))
}

fn string(param: &str, value: Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(invalid(
            param,
            format!("`{param}` must be a string. Given: {other}"),
        )),
    }
}

fn choice(param: &str, value: Value) -> Result<GrammarSpec, ApiError> {
    let choices: Option<Vec<String>> = value
        .as_array()
        .map(|a| a.iter().map(|c| c.as_str().map(str::to_string)).collect())
        .and_then(|c: Option<Vec<String>>| c.filter(|c| !c.is_empty()));
    choices.map(GrammarSpec::Choice).ok_or_else(|| {
        invalid(
            param,
            format!("`{param}` must be a non-empty array of strings. Given: {value}"),
        )
    })
}
