//! Tool calling: a request's tools checked (`spec`), put into the prompt through the
//! model's chat template or tessera's generic format (`render`), the grammar that forces
//! a valid call (`grammar`, for `tool_choice` `required` or a named function), and the
//! model's Hermes-style calls parsed out of its text, whole or streamed (`hermes`).
//!
//! Who uses what: `server` validates `tools` / `tool_choice` into a `ToolSet`, compiles
//! each parameters schema (and the forced grammar) through the structured-output
//! compiler, renders the prompt, and splits each choice's text into content and calls
//! (`message.tool_calls`, streamed `delta.tool_calls`). The engine never sees tools: a
//! forced answer is an ordinary constrained sequence.
//!
//! The parser is the Hermes one for every template (`--tool-call-parser`): templates that
//! render tools natively in another syntax are given the generic format instead.

pub mod grammar;
pub mod hermes;
pub mod render;
pub mod spec;

pub use spec::{parse_tools, Function, ToolChoice, ToolError, ToolSet, WireForm};

/// One parsed call of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` and 24 random alphanumerics.
    pub id: String,
    pub name: String,
    /// The arguments' JSON text, as the model wrote it.
    pub arguments: String,
}

/// A new call id: `call_` and 24 random letters and digits.
pub fn new_call_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// The content (`None` when empty) and calls of a whole answer.
pub fn split_answer(text: &str) -> (Option<String>, Vec<ToolCall>) {
    let (content, calls) = hermes::parse_all(text);
    let calls = calls
        .into_iter()
        .map(|(name, arguments)| ToolCall {
            id: new_call_id(),
            name,
            arguments,
        })
        .collect();
    (Some(content).filter(|c| !c.is_empty()), calls)
}

/// `--tool-call-parser`: how calls are read out of the model's text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ToolParser {
    /// From the chat template: Hermes for every template tessera knows (the generic
    /// format is Hermes too).
    #[default]
    Auto,
    /// `<tool_call>{json}</tool_call>`.
    Hermes,
    /// Tool calling off: requests with tools are refused.
    None,
}

impl std::str::FromStr for ToolParser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "hermes" => Ok(Self::Hermes),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown tool-call parser `{other}` (expected auto, hermes or none)"
            )),
        }
    }
}
