//! The error of an HTTP request (`ApiError`, wrapping the errors of the layers below)
//! and THE mapping from it to an HTTP status and OpenAI error body (`http_error`); also
//! `ModelError` (loading a model, starting an engine). Messages already name the field,
//! the limit and the value given. Other layers' enums live with their layer
//! (`engine::error::EngineError`, `dialog::DialogError`, `safety::ModerationError`, …):
//! `ApiError` names them all, so a layer that this file names must not import it.

use crate::engine::error::EngineError;
use crate::model::config::ConfigError;
use crate::model::gguf::GgufError;
use crate::model::weights::WeightError;
use crate::request::InvalidParam;
use crate::scheduler::SchedulerError;

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
    #[error(transparent)]
    Hf(#[from] crate::model::hf::HfError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{0}")]
    Invalid(String),
}

/// Why an HTTP request failed. Every handler error is one of these, and
/// [`http_error`] is the one place that turns it into a status and an OpenAI error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or a field with a bad type or value (`param` names the field).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// A field OpenAI defines that tessera does not implement yet.
    #[error("`{param}` is not supported by tessera yet{detail}")]
    Unsupported { param: String, detail: String },
    #[error("missing or invalid API key: send `Authorization: Bearer <key>` with a key given to --api-key")]
    Unauthorized,
    #[error("the model `{given}` does not exist; this server serves {served}")]
    ModelNotFound { given: String, served: String },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{path} does not accept {method}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },
    #[error("the request body has {size} bytes; the limit (--max-request-bytes) is {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    /// Refused by the HTTP layer before any handler ran: the connection guard (a
    /// malformed or over-long request head, a slow client) or the framework; `status` is
    /// the HTTP status to answer.
    #[error("{message}")]
    Http { status: u16, message: String },
    /// A prompt's text is longer than any `max_model_len`-token prompt can be, known
    /// before tokenizing it: no token of this vocabulary covers more than
    /// `max_bytes_per_token` bytes.
    #[error(
        "this model's maximum context length is {max_model_len} tokens; the prompt has \
         {bytes} bytes of text, and no token of this model covers more than \
         {max_bytes_per_token} bytes, so it cannot fit (at most {max_bytes} bytes can)"
    )]
    PromptTooLong {
        param: &'static str,
        bytes: usize,
        max_bytes: usize,
        max_model_len: usize,
        max_bytes_per_token: usize,
    },
    /// The pool that tokenizes and renders prompts has a full queue.
    #[error(
        "the server is busy: {queued} requests already wait for tokenization (the limit); \
         retry later"
    )]
    Busy { queued: usize },
    #[error(
        "the server is at capacity: {in_flight} sequences in flight and this request needs \
         {needed} more; the limit is --max-num-seqs + --max-queued-requests = {capacity}. Retry later"
    )]
    QueueFull {
        in_flight: usize,
        needed: usize,
        capacity: usize,
    },
    #[error("the model is still loading")]
    Loading,
    #[error("the server is shutting down")]
    Draining,
    /// The engine stopped under a request that had started (a drain's shutdown timeout
    /// passed): it may have partly run, so it is never marked retry-safe, and its status
    /// is one that a proxy's replay rounds do not resend (500, not 503).
    #[error("the server is shutting down and stopped this request while it ran (it may have partly run); retry it")]
    Interrupted,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Template(#[from] crate::model::chat_template::TemplateError),
    #[error(transparent)]
    Tokenizer(#[from] crate::model::tokenizer::TokenizerError),
    /// Conversations, responses and their store.
    #[error(transparent)]
    Dialog(#[from] crate::dialog::DialogError),
    /// Refused by the moderation policy, or a moderation operation failed.
    #[error(transparent)]
    Moderation(#[from] crate::safety::ModerationError),
    /// The conversation log: it lags (new requests refused), or an admin API call failed.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// Loading or unloading a LoRA adapter at run time failed (boxed: it is large).
    #[error(transparent)]
    Lora(Box<crate::model::lora::LoraError>),
    #[error("the admin API is disabled; start the server with --admin-api-key")]
    AdminDisabled,
    #[error("missing or invalid admin API key: send `Authorization: Bearer <key>` with a key given to --admin-api-key")]
    AdminUnauthorized,
    /// A client sends faster than its limit (the chat socket's message rate, its
    /// generations at once).
    #[error("{0}")]
    RateLimited(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::model::lora::LoraError> for ApiError {
    fn from(e: crate::model::lora::LoraError) -> Self {
        ApiError::Lora(Box::new(e))
    }
}

impl From<InvalidParam> for ApiError {
    fn from(e: InvalidParam) -> Self {
        ApiError::Engine(e.into())
    }
}

/// An HTTP status and the OpenAI error body `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub status: u16,
    pub body: serde_json::Value,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u32>,
    /// The request was refused before any of its work began (nothing generated, nothing
    /// stored): a proxy may send it, unchanged, to another replica. Said in the
    /// `X-Tessera-Not-Started` header (see `server::gate`).
    pub not_started: bool,
}

/// THE mapping from every request error to its HTTP status and OpenAI error body.
pub fn http_error(err: &ApiError) -> HttpError {
    use crate::model::chat_template::TemplateError as T;
    use crate::safety::ModerationError as M;
    const BAD: (u16, &str, &str) = (400, "invalid_request_error", "invalid_value");
    let (status, kind, code) = match err {
        ApiError::InvalidRequest { .. } => BAD,
        ApiError::Unsupported { .. } => (400, "invalid_request_error", "unsupported_parameter"),
        ApiError::Unauthorized => (401, "authentication_error", "invalid_api_key"),
        ApiError::ModelNotFound { .. } => (404, "not_found_error", "model_not_found"),
        ApiError::RouteNotFound { .. } => (404, "not_found_error", "unknown_route"),
        ApiError::MethodNotAllowed { .. } => (405, "invalid_request_error", "method_not_allowed"),
        ApiError::PayloadTooLarge { .. } => (413, "invalid_request_error", "request_too_large"),
        ApiError::Http { status, .. } => http_refusal(*status),
        ApiError::PromptTooLong { .. } => (400, "invalid_request_error", "context_length_exceeded"),
        ApiError::Busy { .. } => (429, "rate_limit_error", "server_busy"),
        ApiError::QueueFull { .. } => (429, "rate_limit_error", "queue_full"),
        ApiError::Loading => (503, "service_unavailable_error", "model_loading"),
        ApiError::Draining => (503, "service_unavailable_error", "shutting_down"),
        ApiError::Interrupted => (500, "server_error", "shutting_down"),
        ApiError::Engine(e) => match e {
            EngineError::ContextLength { .. } => {
                (400, "invalid_request_error", "context_length_exceeded")
            }
            EngineError::EmptyPrompt
            | EngineError::InvalidToken { .. }
            | EngineError::InvalidParam { .. } => BAD,
            EngineError::Stopped => (500, "server_error", "shutting_down"),
            EngineError::Internal(_) => (500, "server_error", "internal_error"),
        },
        ApiError::Template(T::Raised { .. } | T::NoFreeMarker { .. } | T::Tokenizer(_)) => BAD,
        ApiError::Template(_) => (500, "server_error", "chat_template_error"),
        ApiError::Tokenizer(_) => BAD,
        ApiError::Dialog(e) => dialog_status(e),
        ApiError::Moderation(e) => match e {
            M::Blocked { .. } => (400, "invalid_request_error", "content_filter"),
            M::TooLong { .. } | M::ControlChar { .. } => BAD,
            M::NotConfigured => (400, "invalid_request_error", "moderation_not_configured"),
            M::Reload(_) => (400, "invalid_request_error", "invalid_policy"),
        },
        ApiError::Audit(e) => audit_status(e),
        ApiError::Lora(e) => lora_status(e),
        ApiError::AdminDisabled => (403, "permission_error", "admin_api_disabled"),
        ApiError::AdminUnauthorized => (401, "authentication_error", "invalid_admin_key"),
        ApiError::RateLimited(_) => (429, "rate_limit_error", "rate_limit_exceeded"),
        ApiError::Internal(_) => (500, "server_error", "internal_error"),
    };
    let param = match err {
        ApiError::InvalidRequest { param, .. } => param.clone(),
        ApiError::Unsupported { param, .. } => Some(param.clone()),
        ApiError::ModelNotFound { .. } => Some("model".to_string()),
        ApiError::Engine(EngineError::InvalidParam { field, .. }) => Some(field.to_string()),
        ApiError::Engine(EngineError::ContextLength { .. }) => Some("max_tokens".to_string()),
        ApiError::Engine(EngineError::EmptyPrompt | EngineError::InvalidToken { .. }) => {
            Some("prompt".to_string())
        }
        ApiError::Template(_) => Some("messages".to_string()),
        ApiError::PromptTooLong { param, .. } => Some(param.to_string()),
        ApiError::Dialog(e) => dialog_param(e),
        ApiError::Audit(crate::audit::AuditError::Invalid { param, .. }) => Some(param.clone()),
        ApiError::Lora(e) => Some(lora_param(e).to_string()),
        ApiError::Moderation(
            M::Blocked { param, .. } | M::TooLong { param, .. } | M::ControlChar { param, .. },
        ) => Some(param.clone()),
        _ => None,
    };
    let retry_after = match status {
        429 | 503 => Some(1),
        _ => None,
    };
    let not_started = matches!(
        err,
        ApiError::Loading | ApiError::Draining | ApiError::Busy { .. } | ApiError::QueueFull { .. }
    );
    let body = serde_json::json!({
        "error": {"message": err.to_string(), "type": kind, "param": param, "code": code}
    });
    HttpError {
        status,
        body,
        retry_after,
        not_started,
    }
}

/// Status, type and code of a failed LoRA load or unload (vLLM's: 400 for bad input,
/// 404 for a missing file or name; 409 when `--max-loras` adapters are loaded).
fn lora_status(e: &crate::model::lora::LoraError) -> (u16, &'static str, &'static str) {
    use crate::model::lora::LoraError as L;
    match e {
        L::NotFound { .. } | L::NotServed { .. } => {
            (404, "not_found_error", "lora_adapter_not_found")
        }
        L::Name { .. } => (400, "invalid_request_error", "invalid_value"),
        L::Full { .. } => (409, "invalid_request_error", "max_loras_reached"),
        L::Gguf { .. } | L::Invalid { .. } | L::Quant { .. } => {
            (400, "invalid_request_error", "invalid_lora_adapter")
        }
    }
}

/// The request field a LoRA error is about.
fn lora_param(e: &crate::model::lora::LoraError) -> &'static str {
    use crate::model::lora::LoraError as L;
    match e {
        L::NotFound { .. } | L::Gguf { .. } | L::Invalid { .. } | L::Quant { .. } => "lora_path",
        L::Name { .. } | L::Full { .. } | L::NotServed { .. } => "lora_name",
    }
}

/// Status, type and code of a refusal by the HTTP layer.
fn http_refusal(status: u16) -> (u16, &'static str, &'static str) {
    match status {
        404 => (404, "not_found_error", "unknown_route"),
        405 => (405, "invalid_request_error", "method_not_allowed"),
        408 => (408, "invalid_request_error", "request_timeout"),
        413 => (413, "invalid_request_error", "request_too_large"),
        414 => (414, "invalid_request_error", "uri_too_long"),
        431 => (
            431,
            "invalid_request_error",
            "request_header_fields_too_large",
        ),
        400..=499 => (status, "invalid_request_error", "invalid_request"),
        500..=599 => (status, "server_error", "internal_error"),
        _ => (500, "server_error", "internal_error"),
    }
}

/// Status, type and code of a dialog error (part of `http_error`).
fn dialog_status(err: &crate::dialog::DialogError) -> (u16, &'static str, &'static str) {
    use crate::dialog::DialogError as D;
    use crate::store::StoreError as S;
    match err {
        D::NotFound { .. } => (404, "invalid_request_error", "not_found"),
        D::Invalid { .. } => (400, "invalid_request_error", "invalid_value"),
        D::Unsupported { .. } => (400, "invalid_request_error", "unsupported_parameter"),
        D::Context(_) => (400, "invalid_request_error", "context_length_exceeded"),
        D::Template(crate::model::chat_template::TemplateError::Raised { .. }) => {
            (400, "invalid_request_error", "invalid_value")
        }
        D::Template(_) => (500, "server_error", "chat_template_error"),
        D::Store(S::Unavailable(_) | S::Busy(_)) => {
            (503, "service_unavailable_error", "store_unavailable")
        }
        D::Store(S::NotFound(_)) => (404, "invalid_request_error", "not_found"),
        D::Store(S::Conflict(_)) => (409, "invalid_request_error", "conflict"),
        D::Store(_) | D::Internal(_) => (500, "server_error", "internal_error"),
    }
}

/// Status, type and code of a conversation-log error (part of `http_error`).
fn audit_status(err: &crate::audit::AuditError) -> (u16, &'static str, &'static str) {
    use crate::audit::AuditError as A;
    use crate::store::StoreError as S;
    match err {
        A::Unavailable { .. } => (503, "service_unavailable_error", "audit_unavailable"),
        A::Disabled => (404, "not_found_error", "audit_log_disabled"),
        A::NotFound { .. } => (404, "not_found_error", "not_found"),
        A::Invalid { .. } => (400, "invalid_request_error", "invalid_value"),
        A::Store(S::Unavailable(_) | S::Busy(_)) => {
            (503, "service_unavailable_error", "store_unavailable")
        }
        A::Store(S::NotFound(_)) => (400, "invalid_request_error", "invalid_value"),
        A::Store(_) => (500, "server_error", "internal_error"),
    }
}

fn dialog_param(err: &crate::dialog::DialogError) -> Option<String> {
    use crate::dialog::DialogError as D;
    match err {
        D::NotFound { param, .. } => param.map(str::to_string),
        D::Invalid { param, .. } => param.clone(),
        D::Unsupported { param, .. } => Some(param.clone()),
        D::Context(_) => Some("input".to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_body() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::Unauthorized, 401, "invalid_api_key"),
            (
                ApiError::QueueFull {
                    in_flight: 8,
                    needed: 1,
                    capacity: 8,
                },
                429,
                "queue_full",
            ),
            (ApiError::Draining, 503, "shutting_down"),
            (ApiError::Interrupted, 500, "shutting_down"),
            (ApiError::Engine(EngineError::Stopped), 500, "shutting_down"),
            (ApiError::Loading, 503, "model_loading"),
            (
                ApiError::PayloadTooLarge { size: 9, limit: 4 },
                413,
                "request_too_large",
            ),
            (
                ApiError::Engine(EngineError::ContextLength {
                    max_model_len: 10,
                    prompt_tokens: 8,
                    max_tokens: 4,
                    total: 12,
                }),
                400,
                "context_length_exceeded",
            ),
            (
                ApiError::Engine(EngineError::Internal("x".into())),
                500,
                "internal_error",
            ),
            (
                ApiError::Http {
                    status: 431,
                    message: "x".into(),
                },
                431,
                "request_header_fields_too_large",
            ),
            (
                ApiError::Http {
                    status: 408,
                    message: "x".into(),
                },
                408,
                "request_timeout",
            ),
            (
                ApiError::Http {
                    status: 414,
                    message: "x".into(),
                },
                414,
                "uri_too_long",
            ),
            (
                ApiError::Http {
                    status: 418,
                    message: "x".into(),
                },
                418,
                "invalid_request",
            ),
            (
                ApiError::PromptTooLong {
                    param: "prompt",
                    bytes: 100,
                    max_bytes: 40,
                    max_model_len: 10,
                    max_bytes_per_token: 4,
                },
                400,
                "context_length_exceeded",
            ),
            (ApiError::Busy { queued: 3 }, 429, "server_busy"),
        ];
        for (err, status, code) in cases {
            let mapped = http_error(&err);
            assert_eq!(mapped.status, status, "{err}");
            assert_eq!(mapped.body["error"]["code"], code);
            assert_eq!(mapped.body["error"]["message"], err.to_string());
            assert_eq!(mapped.retry_after.is_some(), status == 429 || status == 503);
        }
    }

    #[test]
    fn only_refusals_before_any_work_are_marked_not_started() {
        let queue_full = ApiError::QueueFull {
            in_flight: 4,
            needed: 1,
            capacity: 4,
        };
        for err in [
            ApiError::Loading,
            ApiError::Draining,
            ApiError::Busy { queued: 3 },
            queue_full,
        ] {
            assert!(http_error(&err).not_started, "{err}");
        }
        // A stopped engine may have stopped after generation began: not retry-safe.
        for err in [
            ApiError::Interrupted,
            ApiError::Engine(EngineError::Stopped),
            ApiError::Internal("x".into()),
            ApiError::Unauthorized,
        ] {
            assert!(!http_error(&err).not_started, "{err}");
        }
    }

    #[test]
    fn field_errors_name_the_param() {
        let err = ApiError::Engine(EngineError::InvalidParam {
            field: "top_p",
            problem: "must be in (0, 1]".into(),
            given: "3".into(),
        });
        let mapped = http_error(&err);
        assert_eq!(mapped.status, 400);
        assert_eq!(mapped.body["error"]["param"], "top_p");
        assert_eq!(
            mapped.body["error"]["message"],
            "`top_p` must be in (0, 1]. Given: 3"
        );
    }
}
