//! What every request passes through before and after its handler: the request id
//! (`X-Request-Id`, accepted or made, always returned and logged), the answers to
//! requests the connection guard refused, the OpenAI body on every error response, the
//! body size limit, JSON parsing with field paths in errors, the mapping of `ApiError`
//! into responses (through `error::http_error`, the one mapping), and the HTTP metrics:
//! count and time to response head by route pattern and status, plus the failures of
//! generation requests refused before admission (admitted ones are counted by their
//! `observe::RequestRecord`).

use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::access::AccessChecked;
use super::conn_guard::refusal_of;
use super::observe::{is_admitted, GENERATION_ROUTES};
use super::request::{JsonBody, PathError};
use super::state::{AppState, Phase};
use crate::error::{http_error, ApiError};
use crate::metrics::{FailureReason, ROUTE_UNMATCHED};

/// The request id header (accepted from the client, else made; always returned).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// On every response: which replica answered (`--replica-id`), so affinity can be seen.
pub const REPLICA_HEADER: &str = "x-tessera-replica";

/// `true` on a refusal that came before any of the request's work began (nothing
/// generated, nothing stored: loading, draining, at capacity): a proxy may send the same
/// request to another replica (deploy/nginx/tessera.conf does).
pub const NOT_STARTED_HEADER: &str = "x-tessera-not-started";

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
        if mapped.not_started {
            res.insert_header((NOT_STARTED_HEADER, "true"));
        }
        if let ApiError::MethodNotAllowed { allowed, .. } = self {
            res.insert_header((header::ALLOW, allowed.as_str()));
        }
        res.json(mapped.body)
    }
}

/// Middleware: request id, the refusals of the connection guard, the response checks of
/// [`settle`], access log and HTTP metrics.
pub async fn gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (req.method().to_string(), req.path().to_string());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut res = answer(req, next, &id).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let status = res.status().as_u16();
    if let Some(state) = &state {
        mark_replica(state, res.response_mut());
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

/// The guard's refusal when the request is one, else the app's answer through
/// [`settle`]. An error out of a middleware below (handlers answer theirs) comes back as
/// an error whose response is the same OpenAI body (the request is gone with it).
async fn answer(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    id: &str,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(err) = refusal_of(req.headers()) {
        return Ok(req.into_response(err.error_response()));
    }
    match next.call(req).await {
        Ok(res) => Ok(settle(res)),
        Err(e) => {
            let mut answer = match e.as_error::<ApiError>() {
                Some(err) => err.error_response(),
                None => framework_error(e.as_response_error()),
            };
            if let Ok(value) = HeaderValue::from_str(id) {
                answer
                    .headers_mut()
                    .insert(header::HeaderName::from_static(REQUEST_ID_HEADER), value);
            }
            tracing::info!(request_id = %id, status = answer.status().as_u16(), "request failed in a middleware: {e}");
            Err(actix_web::error::InternalError::from_response(e, answer).into())
        }
    }
}

/// The response of a routed request, made safe to send: withheld (500) when the request
/// reached a handler without passing an access check (a route registered outside
/// `routes::configure`); an error status without a JSON body (one the framework made:
/// an extractor or payload error) gets the OpenAI error body.
fn settle(res: ServiceResponse<impl MessageBody + 'static>) -> ServiceResponse<BoxBody> {
    if !res.request().extensions().contains::<AccessChecked>() {
        let route = res.request().match_pattern().unwrap_or_default();
        tracing::error!(%route, "a route without an access check answered; response withheld");
        let err = ApiError::Internal(format!("the route `{route}` has no access check"));
        return res.into_response(err.error_response());
    }
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return res.map_into_boxed_body();
    }
    let answer = match res.response().error() {
        Some(err) => framework_error(err.as_response_error()),
        None => ApiError::Http {
            status: status.as_u16(),
            message: status.canonical_reason().unwrap_or("error").to_string(),
        }
        .error_response(),
    };
    res.into_response(answer)
}

/// The OpenAI-shaped answer to an error the framework made (its status and text).
fn framework_error(err: &dyn ResponseError) -> HttpResponse {
    ApiError::Http {
        status: err.status_code().as_u16(),
        message: err.to_string(),
    }
    .error_response()
}

/// Names the replica on the response; while draining, also ends the connection after it
/// (`Connection: close`), so a proxy keeps no idle connection to a replica about to
/// stop, whose close could race a request it sends.
fn mark_replica(state: &AppState, res: &mut HttpResponse<BoxBody>) {
    if let Some(value) = state.replica_header() {
        res.headers_mut()
            .insert(header::HeaderName::from_static(REPLICA_HEADER), value);
    }
    if state.phase() == Phase::Draining {
        res.head_mut().set_connection_type(ConnectionType::Close);
    }
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

/// The request's id (set by `gate`).
pub fn id_of(req: &HttpRequest) -> String {
    req.extensions().get::<RequestId>().map_or_else(
        || format!("{:032x}", rand::random::<u128>()),
        |r| r.0.clone(),
    )
}

/// Reads the body (at most `limit` bytes, else 413) and parses it as `T`; errors name
/// the JSON path of the offending field. Parsing runs on the calling thread: handlers
/// with big bodies read with [`read_body`] and parse on the CPU pool.
pub async fn read_json<T: JsonBody>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    parse_json(&read_body(req, payload, limit).await?)
}

/// Reads the body: at most `limit` bytes, else 413 (as soon as the declared or received
/// size shows it).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
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
    Ok(body.freeze())
}

/// Parses a JSON object body as `T`; errors name the JSON path of the offending field.
pub fn parse_json<T: JsonBody>(body: &[u8]) -> Result<T, ApiError> {
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
