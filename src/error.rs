//! Error enums, one per layer. The HTTP layer maps them to OpenAI error bodies in one
//! function (issue "HTTP API"); messages here already name the field, the limit and the
//! value given.

use crate::model::config::ConfigError;
use crate::model::gguf::GgufError;
use crate::model::weights::WeightError;

/// Loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Invalid(String),
}

/// A request could not be served by the engine.
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
    #[error("request rejected by the scheduler: {0}")]
    Rejected(String),
    #[error("the engine is not running")]
    Stopped,
    #[error("engine failure: {0}")]
    Internal(String),
}
