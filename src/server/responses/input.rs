//! A turn's input before the dialog sees it, on the CPU pool: the body parsed and
//! validated, the prompt byte bound (the new input and `instructions` must fit the
//! context even with no history), moderation level 1 (every input text and the
//! instructions checked, masks applied, a block refused with 400 `content_filter` and
//! logged as refused), the turn's constraint compiled (its forced tool call or
//! `text.format`), and the input messages of the turn's exchange in the log.

use serde_json::Value;

use super::wire::{ResponsesRequest, ValidTurn};
use crate::audit::{Exchange, InputMessage};
use crate::dialog::TurnRequest;
use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::safety::{InputText, Screen};
use crate::server::cpu::PromptLimit;
use crate::server::exchange::log_if_blocked;
use crate::server::gate::parse_json;
use crate::server::tool_calls::compile_tools;
use crate::server::validate::{check_model, select_adapter};
use crate::structured::Guide;
use crate::tools::{ToolParser, WireForm};

/// How the client wrote `input`, so errors name the field it sent.
enum Shape {
    /// One string.
    Text,
    /// Items; per item whether its `content` was one string.
    Items(Vec<bool>),
}

impl Shape {
    fn of(input: Option<&Value>) -> Self {
        match input {
            Some(Value::Array(items)) => {
                Shape::Items(items.iter().map(|i| i["content"].is_string()).collect())
            }
            _ => Shape::Text,
        }
    }

    /// The field of part `part` of message `item`.
    fn param(&self, item: usize, part: usize) -> String {
        match self {
            Shape::Text => "input".into(),
            Shape::Items(plain) if plain.get(item) == Some(&true) => {
                format!("input[{item}].content")
            }
            Shape::Items(_) => format!("input[{item}].content[{part}].text"),
        }
    }
}

/// The turn's input messages for the log: `instructions` as the system message, then
/// the new input.
fn turn_input(request: &TurnRequest) -> Vec<InputMessage> {
    let instructions = request.fields.instructions.as_deref();
    instructions
        .map(|text| InputMessage::new("system", text))
        .into_iter()
        .chain(
            request
                .input
                .iter()
                .map(|m| InputMessage::new(m.role.as_str(), m.text())),
        )
        .collect()
}

/// Level 1 on a turn: checks (and masks) the instructions and every input text.
fn screen_turn(screen: &Screen, request: &mut TurnRequest, shape: &Shape) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    if let Some(text) = request.fields.instructions.as_mut() {
        fields.push(InputText {
            param: "instructions".into(),
            prompt: 0,
            limited: false,
            text,
        });
    }
    for (i, message) in request.input.iter_mut().enumerate() {
        let limited = message.role == crate::dialog::Role::User;
        for (j, text) in message.parts.iter_mut().enumerate() {
            fields.push(InputText {
                param: shape.param(i, j),
                prompt: 0,
                limited,
                text,
            });
        }
    }
    Ok(screen.check_input(&mut fields)?)
}

/// The turn's constraint: its forced tool call or its `text.format` (not both).
fn guide(
    valid: &ValidTurn,
    engine: &EngineHandle,
    parser: ToolParser,
) -> Result<Option<Guide>, ApiError> {
    let forced = match &valid.request.fields.tools {
        Some(set) => compile_tools(set, WireForm::Responses, parser, engine)?,
        None => None,
    };
    let Some(spec) = &valid.format else {
        return Ok(forced);
    };
    let invalid = |message: String| ApiError::InvalidRequest {
        message,
        param: Some("text.format".into()),
    };
    if forced.is_some() {
        return Err(invalid("`text.format` cannot be combined with `tool_choice` `required` or a named function: both constrain the answer".into()));
    }
    let compiler = engine.grammar_compiler().map_err(|e| {
        invalid(format!(
            "`text.format`: structured output is unavailable: {e}"
        ))
    })?;
    let guide = compiler
        .compile(spec)
        .map_err(|e| invalid(format!("`text.format`: {e}")))?;
    Ok(Some(guide))
}

/// Parses and checks a `POST /v1/responses` body (see the module header); returns the
/// turn and its exchange, named after the model and holding the input.
pub fn check_turn(
    body: &[u8],
    served: &[String],
    limit: Option<PromptLimit>,
    screen: Option<&Screen>,
    mut exchange: Option<Exchange>,
    engine: &EngineHandle,
    parser: ToolParser,
) -> Result<(ValidTurn, Option<Exchange>), ApiError> {
    let parsed: ResponsesRequest = parse_json(body)?;
    let shape = Shape::of(parsed.input.as_ref());
    if let Some(e) = exchange.as_mut() {
        e.meta.model = check_model(parsed.model.as_deref(), served)?;
    }
    let mut valid = parsed.validate(served)?;
    valid.sampling.guide = guide(&valid, engine, parser)?;
    valid.sampling.lora = select_adapter(engine, &valid.request.fields.model)?;
    if let Some(limit) = limit {
        let request = &valid.request;
        let bytes = request.fields.instructions.as_deref().map_or(0, str::len)
            + request
                .input
                .iter()
                .flat_map(|m| &m.parts)
                .map(|p| p.trim().len())
                .sum::<usize>();
        limit.check("input", bytes)?;
    }
    if let Some(screen) = screen {
        let checked = screen_turn(screen, &mut valid.request, &shape);
        let input = || turn_input(&valid.request);
        log_if_blocked(checked, &mut exchange, screen, input)?;
    }
    if let Some(e) = exchange.as_mut() {
        e.meta.input = turn_input(&valid.request);
    }
    Ok((valid, exchange))
}
