//! The one error type of the harness. Messages name what was being done and the value seen.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed HTTP response: {0}")]
    Http(String),
    #[error("server answered {status} on {path}: {body}")]
    Status {
        status: u16,
        path: String,
        body: String,
    },
    #[error("invalid JSON in {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid argument: {0}")]
    Arg(String),
    #[error("GGUF file `{path}`: {reason}")]
    Gguf { path: String, reason: String },
    #[error("/proc: {0}")]
    Proc(String),
    #[error("plot: {0}")]
    Plot(String),
}

impl BenchError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let context = context.into();
        move |source| BenchError::Io { context, source }
    }

    /// Wraps a JSON error with where the JSON came from.
    pub fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> BenchError {
        let context = context.into();
        move |source| BenchError::Json { context, source }
    }
}
