//! Tools on a request (chat completions and the Responses API): `tools`, `tool_choice`
//! and `parallel_tool_calls` checked into a `ToolSet`, every parameters schema compiled
//! (an invalid or unsupported schema, a `$ref` cycle, an oversized schema is a 400 that
//! names the tool), the guide of a forced answer compiled; history messages with
//! `tool_calls` / `tool_call_id` read; and the prompt rendered with the tools, by the
//! model's template when it renders Hermes tools, else in the generic format.
//!
//! Invariant: a request with tools is either refused here or its forced answer (if any)
//! is constrained to a call that parses and validates against one of its schemas.

use serde_json::Value;

use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::model::chat_template::ChatMessage;
use crate::structured::{GrammarSpec, Guide};
use crate::tools::grammar::forced_call_grammar;
use crate::tools::render::encode_prompt;
use crate::tools::{parse_tools, ToolParser, ToolSet, WireForm};

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: Some(param.to_string()),
    }
}

/// A request's tools, checked and compiled.
#[derive(Debug, Clone)]
pub struct ValidTools {
    pub set: ToolSet,
    /// The constraint of a forced answer (`required` or a named function).
    pub guide: Option<Guide>,
}

/// The raw fields of a request's tools.
pub struct ToolFields<'a> {
    pub tools: Option<&'a Value>,
    pub choice: Option<&'a Value>,
    pub parallel: Option<&'a Value>,
    pub form: WireForm,
}

/// The request's active tools (`None`: none given, or `tool_choice: none`).
pub fn check_tools(
    fields: ToolFields<'_>,
    parser: ToolParser,
    engine: &EngineHandle,
) -> Result<Option<ValidTools>, ApiError> {
    let set = parse_tools(fields.tools, fields.choice, fields.parallel, fields.form)
        .map_err(|e| invalid(&e.param, e.message))?;
    let Some(set) = set else {
        return Ok(None);
    };
    let guide = compile_tools(&set, fields.form, parser, engine)?;
    Ok(set.active().then_some(ValidTools { set, guide }))
}

/// Compiles every parameters schema of `set` (each a 400 naming its tool when it does
/// not compile) and returns the guide of its forced answer, if any.
pub fn compile_tools(
    set: &ToolSet,
    form: WireForm,
    parser: ToolParser,
    engine: &EngineHandle,
) -> Result<Option<Guide>, ApiError> {
    if parser == ToolParser::None {
        return Err(ApiError::Unsupported {
            param: "tools".into(),
            detail: ": tool calling is off on this server (--tool-call-parser none)".into(),
        });
    }
    let compiler = engine
        .grammar_compiler()
        .map_err(|e| invalid("tools", format!("`tools`: schemas cannot be checked: {e}")))?;
    for (i, f) in set.functions.iter().enumerate() {
        let param = match form {
            WireForm::Chat => format!("tools[{i}].function.parameters"),
            WireForm::Responses => format!("tools[{i}].parameters"),
        };
        compiler
            .compile(&GrammarSpec::JsonSchema(f.parameters.clone()))
            .map_err(|e| invalid(&param, format!("`{param}` (tool {:?}): {e}", f.name)))?;
    }
    if !set.forced() {
        return Ok(None);
    }
    let grammar = GrammarSpec::Lark(forced_call_grammar(set));
    compiler.compile(&grammar).map(Some).map_err(|e| {
        invalid(
            "tools",
            format!("`tools`: the grammar of a call to these tools: {e}"),
        )
    })
}

/// The prompt of `messages` with `tools` (see the module header).
pub fn encode_messages(
    engine: &EngineHandle,
    messages: Vec<ChatMessage>,
    tools: Option<&ToolSet>,
) -> Result<Vec<u32>, ApiError> {
    let assets = engine.model();
    let template_tools = tools.map(|t| &t.template_tools);
    Ok(encode_prompt(
        &assets.tokenizer,
        &assets.chat_template,
        messages,
        template_tools,
    )?)
}

/// An assistant message's `tool_calls` (OpenAI form) in the template's form: each call's
/// `arguments` JSON text parsed into a value (kept as text when it is not JSON).
pub fn history_calls(param: &str, calls: &Value) -> Result<Value, ApiError> {
    let Some(list) = calls.as_array() else {
        return Err(invalid(param, format!("`{param}` must be an array")));
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, call) in list.iter().enumerate() {
        let at = format!("{param}[{j}]");
        let function = call.get("function").filter(|f| f.is_object());
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let (Some(function), Some(name)) = (function, name) else {
            return Err(invalid(
                &at,
                format!("`{at}` must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}"),
            ));
        };
        let arguments = match function.get("arguments") {
            Some(Value::String(text)) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
            Some(other) => {
                return Err(invalid(
                    &format!("{at}.function.arguments"),
                    format!(
                        "`{at}.function.arguments` must be a string (JSON text). Given: {other}"
                    ),
                ))
            }
        };
        for key in ["id", "type"] {
            if call
                .get(key)
                .is_some_and(|v| !v.is_null() && !v.is_string())
            {
                return Err(invalid(
                    &format!("{at}.{key}"),
                    format!("`{at}.{key}` must be a string"),
                ));
            }
        }
        let mut entry = serde_json::Map::new();
        if let Some(id) = call.get("id").filter(|i| i.is_string()) {
            entry.insert("id".into(), id.clone());
        }
        entry.insert("type".into(), Value::String("function".into()));
        entry.insert(
            "function".into(),
            serde_json::json!({"name": name, "arguments": arguments}),
        );
        out.push(Value::Object(entry));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
#[path = "tool_calls_tests.rs"]
mod tests;
