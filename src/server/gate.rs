//! What every request passes through before and after its handler: the request id
//! (`X-Request-Id`, accepted or made, always returned and logged), API-key checks, the
//! body size limit, JSON parsing with field paths in errors, the mapping of `ApiError`
//! into responses (through `error::http_error`, the one mapping), and the HTTP metrics:
//! count and time to response head by route pattern and status, plus the failures of
//! generation requests refused before admission (admitted ones are counted by their
//! `observe::RequestRecord`).

use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::observe::{is_admitted, GENERATION_ROUTES};
use super::request::{JsonBody, PathError};
use super::state::AppState;
use crate::error::{http_error, ApiError};
use crate::metrics::{FailureReason, ROUTE_UNMATCHED};

/// The request id header (accepted from the client, else made; always returned).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client-supplied request id kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of the request being served (in the request's extensions).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(http_error(self).status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mapped = http_error(self);
        let mut res = HttpResponse::build(self.status_code());
        if let Some(seconds) = mapped.retry_after {
            res.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        res.json(mapped.body)
    }
}

/// Routes that need the API key (when keys are configured); `/health`, `/ready`,
/// `/metrics` and `/version` stay open.
fn needs_key(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/tokenize" || path == "/detokenize"
}

/// Middleware: request id, authentication, access log.
pub async fn gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (req.method().to_string(), req.path().to_string());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let refused = state
        .as_ref()
        .filter(|_| needs_key(&path))
        .and_then(|s| authorize(&s.config.api_keys, req.headers()).err());
    let mut res = match refused {
        Some(err) => req
            .into_response(err.error_response())
            .map_into_right_body(),
        None => next.call(req).await?.map_into_left_body(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let status = res.status().as_u16();
    if let Some(state) = &state {
        record_http(state, res.request(), status, started.elapsed());
    }
    tracing::info!(
        request_id = %id,
        %method,
        %path,
        status,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(res)
}

/// HTTP metrics of one answered request; a generation request refused before admission
/// also counts as a failure.
fn record_http(state: &AppState, req: &HttpRequest, status: u16, elapsed: Duration) {
    let route = req
        .match_pattern()
        .unwrap_or_else(|| ROUTE_UNMATCHED.to_string());
    state.metrics.record_http(&route, status, elapsed);
    let generation = GENERATION_ROUTES.contains(&route.as_str());
    if generation && status >= 400 && !is_admitted(req) {
        state
            .metrics
            .record_failure(FailureReason::from_status(status));
    }
}

/// The client's `X-Request-Id` when it is 1..=128 visible ASCII characters, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(
            || format!("{:032x}", rand::random::<u128>()),
            str::to_string,
        )
}

/// `Authorization: Bearer <key>` must name one of `keys` (none configured: open).
pub(crate) fn authorize(keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    // Compare every key in full so timing does not reveal how much of a key matched.
    let matched = keys.iter().fold(false, |acc, key| {
        acc | constant_time_eq(key.as_bytes(), given.as_bytes())
    });
    if matched {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's id (set by `gate`).
pub fn id_of(req: &HttpRequest) -> String {
    req.extensions().get::<RequestId>().map_or_else(
        || format!("{:032x}", rand::random::<u128>()),
        |r| r.0.clone(),
    )
}

/// Reads the body (at most `limit` bytes, else 413) and parses it as `T`; errors name
/// the JSON path of the offending field.
pub async fn read_json<T: JsonBody>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(ApiError::PayloadTooLarge { size, limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidRequest {
            message: format!("reading the request body failed: {e}"),
            param: None,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge {
                size: body.len() + chunk.len(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    parse_json(&body)
}

fn parse_json<T: JsonBody>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest {
            message: format!("the request body is not valid JSON: {e}"),
            param: None,
        })?;
    if !value.is_object() {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "the request body must be a JSON object. Given: {}",
                json_kind(&value)
            ),
            param: None,
        });
    }
    let mut parsed: T = serde_path_to_error::deserialize(&value).map_err(field_error)?;
    parsed.complete(&value).map_err(field_error)?;
    Ok(parsed)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn field_error(e: PathError) -> ApiError {
    let path = e.path().to_string();
    ApiError::InvalidRequest {
        message: format!("`{path}`: {}", e.into_inner()),
        param: Some(path),
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::ChatCompletionRequest;
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<ChatCompletionRequest>(br#"{"model":"m","temperature":"hot"}"#)
            .unwrap_err();
        let ApiError::InvalidRequest { message, param } = err else {
            panic!("wrong error")
        };
        assert_eq!(param.as_deref(), Some("temperature"), "{message}");
        assert!(message.contains("hot"), "{message}");
        assert!(matches!(
            parse_json::<ChatCompletionRequest>(b"{not json"),
            Err(ApiError::InvalidRequest { param: None, .. })
        ));
    }

    #[test]
    fn keys_are_checked_in_full() {
        let keys = vec!["sk-one".to_string(), "sk-two".to_string()];
        let mut headers = HeaderMap::new();
        assert!(authorize(&keys, &headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-two"),
        );
        assert!(authorize(&keys, &headers).is_ok());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-tw"),
        );
        assert!(authorize(&keys, &headers).is_err());
        assert!(authorize(&[], &HeaderMap::new()).is_ok());
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers).len(), 32);
        headers.insert(
            header::HeaderName::from_static(REQUEST_ID_HEADER),
            HeaderValue::from_static("abc-123"),
        );
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(
            header::HeaderName::from_static(REQUEST_ID_HEADER),
            HeaderValue::from_static("has space"),
        );
        assert_ne!(request_id(&headers), "has space");
    }
}
