//! A request's tools as the client gave them, checked: function definitions, the tool
//! choice and whether calls may come in parallel. Both wire forms are read: chat's
//! `{"type": "function", "function": {name, description, parameters, strict}}` and the
//! Responses API's flat `{"type": "function", name, description, parameters, strict}`.
//!
//! Invariants of a `ToolSet`: 1..=`MAX_TOOLS` functions with distinct names of 1-64
//! characters `[a-zA-Z0-9_-]`, each `parameters` a JSON object (an absent one is the
//! empty-object schema); a named choice names one of them. Whether a schema compiles is
//! checked where the grammar compiler is (server validation).

use serde_json::{json, Value};

use crate::structured::kind_of;

/// Most tools one request may define (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// A bad `tools` / `tool_choice` field: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    pub param: String,
    pub message: String,
}

fn bad(param: impl Into<String>, message: String) -> ToolError {
    ToolError {
        param: param.into(),
        message,
    }
}

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    /// Its arguments' JSON schema (an object).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No calls: the tools are left out of the prompt and the output is plain content.
    None,
    /// The model decides: the output is parsed for calls.
    Auto,
    /// At least one call, constrained to the tools' schemas.
    Required,
    /// Exactly this function, constrained to its schema.
    Named(String),
}

/// The tools of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSet {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): more than one call per answer.
    pub parallel: bool,
    /// The tools in chat form, as the chat template's `tools` variable gets them.
    pub template_tools: Value,
}

impl ToolSet {
    /// Whether the answer is constrained to calls.
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    /// Whether the answer is parsed for calls (and the tools are in the prompt).
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The functions a constrained answer may call.
    pub fn callable(&self) -> Vec<&Function> {
        match &self.choice {
            ToolChoice::Named(name) => self.functions.iter().filter(|f| &f.name == name).collect(),
            _ => self.functions.iter().collect(),
        }
    }
}

/// The form tools are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireForm {
    /// Chat completions: `{"type": "function", "function": {...}}`.
    Chat,
    /// Responses: `{"type": "function", "name": ..., ...}`.
    Responses,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls` (`None`: no tools given and a
/// choice of `none` or `auto`, or none at all).
pub fn parse_tools(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<&Value>,
    form: WireForm,
) -> Result<Option<ToolSet>, ToolError> {
    let functions = match tools.filter(|t| !t.is_null()) {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, t)| function(i, t, form))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(
                "tools",
                format!(
                    "`tools` must be an array of tools. Given: {}",
                    kind_of(other)
                ),
            ))
        }
    };
    if functions.len() > MAX_TOOLS {
        return Err(bad(
            "tools",
            format!(
                "`tools` must hold at most {MAX_TOOLS} tools. Given: {}",
                functions.len()
            ),
        ));
    }
    for (i, f) in functions.iter().enumerate() {
        if functions[..i].iter().any(|g| g.name == f.name) {
            return Err(bad(
                format!("tools[{i}]"),
                format!("tool names must be unique. Given twice: {:?}", f.name),
            ));
        }
    }
    let choice = tool_choice(choice, &functions, form)?;
    let parallel = match parallel.filter(|p| !p.is_null()) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(
                "parallel_tool_calls",
                format!("`parallel_tool_calls` must be a boolean. Given: {other}"),
            ))
        }
    };
    if functions.is_empty() {
        return Ok(None);
    }
    // Chat tools go to the template as the client wrote them (as transformers and vLLM
    // pass them); flat Responses tools in the chat form templates expect.
    let template_tools = match (form, tools) {
        (WireForm::Chat, Some(list)) => list.clone(),
        _ => functions.iter().map(chat_form).collect(),
    };
    Ok(Some(ToolSet {
        functions,
        choice,
        parallel,
        template_tools,
    }))
}

/// The tool in chat form (what Hugging Face templates expect).
fn chat_form(f: &Function) -> Value {
    let mut function = serde_json::Map::new();
    function.insert("name".into(), json!(f.name));
    if let Some(d) = &f.description {
        function.insert("description".into(), json!(d));
    }
    function.insert("parameters".into(), f.parameters.clone());
    json!({"type": "function", "function": function})
}

fn function(i: usize, tool: &Value, form: WireForm) -> Result<Function, ToolError> {
    let param = format!("tools[{i}]");
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad(
            format!("{param}.type"),
            format!(
                "`{param}.type` must be `function` (the only tool type served). Given: {}",
                tool.get("type").unwrap_or(&Value::Null)
            ),
        ));
    }
    let (body, at) = match form {
        WireForm::Chat => (tool.get("function"), format!("{param}.function")),
        WireForm::Responses => (Some(tool), param.clone()),
    };
    let Some(body) = body.filter(|b| b.is_object()) else {
        return Err(bad(at.clone(), format!("`{at}` must be an object")));
    };
    let name = body.get("name").and_then(Value::as_str).unwrap_or("");
    if !is_function_name(name) {
        return Err(bad(
            format!("{at}.name"),
            format!(
                "`{at}.name` must be 1-64 characters of a-z, A-Z, 0-9, `_` and `-`. Given: {}",
                body.get("name").unwrap_or(&Value::Null)
            ),
        ));
    }
    let description = match body.get("description").filter(|d| !d.is_null()) {
        None => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(other) => {
            return Err(bad(
                format!("{at}.description"),
                format!(
                    "`{at}.description` must be a string. Given: {}",
                    kind_of(other)
                ),
            ))
        }
    };
    let parameters = match body.get("parameters").filter(|p| !p.is_null()) {
        None => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(other) => {
            return Err(bad(
                format!("{at}.parameters"),
                format!(
                    "`{at}.parameters` must be a JSON schema object. Given: {}",
                    kind_of(other)
                ),
            ))
        }
    };
    Ok(Function {
        name: name.to_string(),
        description,
        parameters,
    })
}

fn tool_choice(
    choice: Option<&Value>,
    functions: &[Function],
    form: WireForm,
) -> Result<ToolChoice, ToolError> {
    const P: &str = "tool_choice";
    let choice = match choice.filter(|c| !c.is_null()) {
        None => {
            return Ok(if functions.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            })
        }
        Some(c) => c,
    };
    let parsed = match choice {
        Value::String(s) if s == "none" => ToolChoice::None,
        Value::String(s) if s == "auto" => ToolChoice::Auto,
        Value::String(s) if s == "required" => ToolChoice::Required,
        Value::Object(_) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = match form {
                WireForm::Chat => choice.get("function").and_then(|f| f.get("name")),
                WireForm::Responses => choice.get("name"),
            };
            match name.and_then(Value::as_str) {
                Some(name) => ToolChoice::Named(name.to_string()),
                None => {
                    return Err(bad(
                        P,
                        format!("`tool_choice` of type `function` must name the function. Given: {choice}"),
                    ))
                }
            }
        }
        other => {
            return Err(bad(
                P,
                format!("`tool_choice` must be `none`, `auto`, `required` or {{\"type\": \"function\", …}}. Given: {other}"),
            ))
        }
    };
    match &parsed {
        ToolChoice::Required if functions.is_empty() => Err(bad(
            P,
            "`tool_choice` is `required` but `tools` holds no tool".into(),
        )),
        ToolChoice::Named(name) if !functions.iter().any(|f| &f.name == name) => {
            let known: Vec<String> = functions.iter().map(|f| format!("`{}`", f.name)).collect();
            Err(bad(
                P,
                format!(
                    "`tool_choice` names the function {name:?}, which `tools` does not define (defined: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ))
        }
        _ => Ok(parsed),
    }
}

/// OpenAI's rule for a function's (and a response format's) name: 1-64 characters of
/// a-z, A-Z, 0-9, `_` and `-`.
pub fn is_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
