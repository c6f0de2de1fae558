//! What a request constrains its output to, before compiling: the forms of OpenAI's
//! `response_format` and vLLM's `guided_*` fields, each turned into an llguidance
//! grammar. JSON is generated compact (no free whitespace: a small model cannot then run
//! out its budget on blanks), and a client's own `x-guidance` options are replaced by
//! ours, so none can switch on lenient (silently unconstrained) handling.

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

use super::{StructuredError, MAX_SPEC_BYTES};

/// One constraint, as the request gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON schema (`json_object` is the schema `{"type": "object"}`).
    JsonSchema(Value),
    /// The whole output matches this regex.
    Regex(String),
    /// The output is exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

impl GrammarSpec {
    /// Text that identifies the spec (the cache key); refuses an oversized spec.
    pub(super) fn cache_key(&self) -> Result<String, StructuredError> {
        let key = match self {
            Self::JsonSchema(schema) => format!("json:{schema}"),
            Self::Regex(rx) => format!("regex:{rx}"),
            Self::Choice(choices) => format!("choice:{}", json!(choices)),
            Self::Lark(grammar) => format!("lark:{grammar}"),
        };
        if key.len() > MAX_SPEC_BYTES {
            return Err(StructuredError::TooLarge { given: key.len() });
        }
        Ok(key)
    }

    /// The llguidance grammar of this spec.
    pub(super) fn to_grammar(&self) -> Result<TopLevelGrammar, StructuredError> {
        Ok(match self {
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_options(schema)?),
            Self::Regex(rx) => {
                // llguidance would accept some malformed patterns as literals; a regex
                // the standard parser refuses is refused here, with its message.
                regex_syntax::Parser::new()
                    .parse(rx)
                    .map_err(|e| StructuredError::Invalid(format!("invalid regex: {e}")))?;
                TopLevelGrammar::from_regex(rx)
            }
            Self::Choice(choices) => {
                if choices.is_empty() {
                    return Err(StructuredError::Invalid("the choice list is empty".into()));
                }
                let alternatives: Vec<String> =
                    choices.iter().map(|c| regex_syntax::escape(c)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alternatives.join("|")))
            }
            Self::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
        })
    }

    /// A short description for logs.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::JsonSchema(_) => "json schema".into(),
            Self::Regex(_) => "regex".into(),
            Self::Choice(c) => format!("choice of {}", c.len()),
            Self::Lark(_) => "lark grammar".into(),
        }
    }
}

/// The schema with our compile options in `x-guidance`.
fn with_options(schema: &Value) -> Result<Value, StructuredError> {
    let mut schema = match schema {
        Value::Object(map) => map.clone(),
        Value::Bool(true) => serde_json::Map::new(),
        other => {
            return Err(StructuredError::Invalid(format!(
                "a JSON schema must be an object. Given: {}",
                kind_of(other)
            )))
        }
    };
    schema.insert(
        "x-guidance".into(),
        json!({
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": false,
        }),
    );
    Ok(Value::Object(schema))
}

/// What a JSON value is, for error messages ("a string", "an object", …).
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
