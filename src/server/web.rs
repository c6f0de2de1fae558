//! The chat page: `GET /` and its assets under `/web/`, plain HTML, CSS and JavaScript
//! from `web/`, embedded in the binary (no build step, no CDN: it works offline).
//!
//! The page is static and holds no secret, so its routes are open; the WebSocket it
//! talks to (`/v1/chat/ws`) enforces the API key. Every page response carries a
//! Content-Security-Policy that allows scripts, styles and connections only from the
//! server itself (no inline script or style, no `eval`), plus `nosniff`, no framing and
//! no referrer. `--no-web-ui` turns the page off (its routes answer 404).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::state::AppState;
use crate::error::ApiError;

/// The page's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The embedded files: name under `/web/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "markdown.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/markdown.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../web/icon.svg"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../web/index.html");

fn page(content_type: &str, body: &'static [u8]) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

fn not_found(req: &HttpRequest) -> ApiError {
    ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.path().to_string(),
    }
}

/// `GET /`: the chat page.
pub async fn index(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if !state.config.chat.web_ui {
        return Err(not_found(&req));
    }
    Ok(page("text/html; charset=utf-8", INDEX))
}

/// `GET /web/{file}`: one of the page's files.
pub async fn asset(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.chat.web_ui {
        return Err(not_found(&req));
    }
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file.as_str())
        .map(|(_, content_type, body)| page(content_type, body))
        .ok_or_else(|| not_found(&req))
}
