//! `EngineError`: why the engine could not serve a request. The refusals
//! (`EmptyPrompt`, `ContextLength`, `InvalidToken`, `InvalidParam`) are found by the front
//! end's validation (`server::validate`) before the engine sees the request, or by the
//! dialog layer when it assembles a prompt; `Stopped` and `Internal` happen in the
//! engine. `error::http_error` maps them to HTTP.

use crate::request::InvalidParam;

/// A request could not be served: refused by validation (`EmptyPrompt`, `ContextLength`,
/// `InvalidToken`, `InvalidParam`: found by `server::validate` before the engine sees the
/// request), or failed in the engine (`Stopped`, `Internal`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "this model's maximum context length is {max_model_len} tokens; the prompt has \
         {prompt_tokens} tokens and max_tokens is {max_tokens} ({total} in total)"
    )]
    ContextLength {
        max_model_len: usize,
        prompt_tokens: usize,
        max_tokens: usize,
        total: usize,
    },
    #[error("token id {token_id} at prompt position {position} is outside the vocabulary (size {vocab})")]
    InvalidToken {
        token_id: u32,
        position: usize,
        vocab: usize,
    },
    #[error("`{field}` {problem}. Given: {given}")]
    InvalidParam {
        field: &'static str,
        problem: String,
        given: String,
    },
    #[error("the engine is not running")]
    Stopped,
    #[error("engine failure: {0}")]
    Internal(String),
}

impl From<InvalidParam> for EngineError {
    fn from(e: InvalidParam) -> Self {
        EngineError::InvalidParam {
            field: e.field,
            problem: e.problem,
            given: e.given,
        }
    }
}
