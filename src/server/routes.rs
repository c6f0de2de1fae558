//! The route table and the handlers. Handlers are thin: parse (`gate::read_json`),
//! validate into a `Valid*` type, submit, stream or collect.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::content_filter::{screen_chat, screen_completion};
use super::gate::{id_of, read_json};
use super::generate::submit;
use super::moderations;
use super::observe::mark_admitted;
use super::request::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest,
};
use super::response::{Endpoint, ResponseMeta};
use super::sse::sse_body;
use super::state::{unix_now, AppState};
use super::validate::{check_model, validate_chat, validate_completion, ValidRequest};
use crate::error::ApiError;
use crate::model::chat_template::encode_chat;
use crate::safety::Screen;

/// Every route the server answers (`openapi.yaml` describes exactly these).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/version"),
    ("GET", "/metrics"),
    ("POST", "/v1/moderations"),
    ("POST", "/admin/v1/moderation/reload"),
];

type Data = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

/// Registers `ROUTES`; a known path with another method answers 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for &(method, path) in ROUTES {
        let route = match method {
            "POST" => web::post(),
            _ => web::get(),
        };
        let route = match path {
            "/v1/chat/completions" => route.to(chat_completions),
            "/v1/completions" => route.to(completions),
            "/v1/models" => route.to(list_models),
            "/v1/models/{model}" => route.to(get_model),
            "/tokenize" => route.to(tokenize),
            "/detokenize" => route.to(detokenize),
            "/health" => route.to(health),
            "/ready" => route.to(ready),
            "/version" => route.to(version),
            "/v1/moderations" => route.to(moderations::moderations),
            "/admin/v1/moderation/reload" => route.to(moderations::reload),
            _ => route.to(metrics),
        };
        cfg.service(web::resource(path).route(route).default_service(web::to(
            move |req: HttpRequest| async move {
                Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                    method: req.method().to_string(),
                    path: req.path().to_string(),
                    allowed: method,
                })
            },
        )));
    }
}

/// Any path not in `ROUTES`.
pub async fn not_found(req: HttpRequest) -> Reply {
    Err(ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.path().to_string(),
    })
}

async fn chat_completions(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let mut parsed: ChatCompletionRequest =
        read_json(&req, body, state.config.max_request_bytes).await?;
    let engine = state.engine()?;
    let screen = state.moderation.screen(|| id_of(&req));
    if let Some(screen) = &screen {
        screen_chat(screen, &mut parsed)?;
    }
    let valid = validate_chat(parsed, engine, state.served_names())?;
    generate(state, &req, valid, Endpoint::Chat, screen).await
}

async fn completions(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let mut parsed: CompletionRequest =
        read_json(&req, body, state.config.max_request_bytes).await?;
    let engine = state.engine()?;
    let screen = state.moderation.screen(|| id_of(&req));
    if let Some(screen) = &screen {
        screen_completion(screen, &mut parsed, &engine.model().tokenizer)?;
    }
    let valid = validate_completion(parsed, engine, state.served_names())?;
    generate(state, &req, valid, Endpoint::Completion, screen).await
}

/// Admits, submits, then streams (SSE) or collects the whole response.
async fn generate(
    state: Data,
    req: &HttpRequest,
    valid: ValidRequest,
    endpoint: Endpoint,
    screen: Option<Arc<Screen>>,
) -> Reply {
    let engine = state.engine()?.clone();
    let permit = state.admit(valid.prompts.len() * valid.n)?;
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    let request_id = id_of(req);
    let meta = ResponseMeta {
        id: format!("{prefix}-{request_id}"),
        created: unix_now(),
        model: valid.model.clone(),
        endpoint,
        include_usage: valid.stream && valid.include_usage,
    };
    let stream = valid.stream;
    let gen = submit(
        &engine,
        state.clone().into_inner(),
        valid,
        meta,
        permit,
        request_id,
        screen,
    )?;
    mark_admitted(req);
    if stream {
        Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .streaming(sse_body(gen, state.config.sse_keepalive)))
    } else {
        Ok(HttpResponse::Ok().json(gen.collect().await?))
    }
}

fn model_card(state: &AppState, name: &str) -> serde_json::Value {
    let max_model_len = state.loaded_engine().map(|e| e.info().max_model_len);
    json!({
        "id": name,
        "object": "model",
        "created": state.started_at,
        "owned_by": "tessera",
        "max_model_len": max_model_len,
    })
}

async fn list_models(state: Data) -> Reply {
    state.engine()?;
    let data: Vec<_> = state
        .served_names()
        .iter()
        .map(|n| model_card(&state, n))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

async fn get_model(state: Data, name: web::Path<String>) -> Reply {
    state.engine()?;
    let name = check_model(Some(name.as_str()), state.served_names())?;
    Ok(HttpResponse::Ok().json(model_card(&state, &name)))
}

async fn tokenize(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let parsed: TokenizeRequest = read_json(&req, body, state.config.max_request_bytes).await?;
    let engine = state.engine()?;
    if let Some(model) = parsed.model.as_deref() {
        check_model(Some(model), state.served_names())?;
    }
    let assets = engine.model();
    let tokens = match (parsed.prompt, parsed.messages) {
        (Some(prompt), None) => {
            assets
                .tokenizer
                .encode(&prompt, parsed.add_special_tokens.unwrap_or(true), true)?
        }
        (None, Some(messages)) => {
            let messages = super::validate::chat_messages(messages)?;
            let generation_prompt = parsed.add_generation_prompt.unwrap_or(true);
            encode_chat(
                &assets.tokenizer,
                &assets.chat_template,
                &messages,
                generation_prompt,
            )?
        }
        _ => {
            return Err(ApiError::InvalidRequest {
                message: "give exactly one of `prompt` or `messages`".into(),
                param: Some("prompt".into()),
            })
        }
    };
    let token_strs = parsed.return_token_strs.unwrap_or(false).then(|| {
        tokens
            .iter()
            .map(|&t| assets.tokenizer.id_to_token(t).unwrap_or_default())
            .collect::<Vec<_>>()
    });
    Ok(HttpResponse::Ok().json(json!({
        "count": tokens.len(),
        "max_model_len": engine.info().max_model_len,
        "tokens": tokens,
        "token_strs": token_strs,
    })))
}

async fn detokenize(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let parsed: DetokenizeRequest = read_json(&req, body, state.config.max_request_bytes).await?;
    let engine = state.engine()?;
    if let Some(model) = parsed.model.as_deref() {
        check_model(Some(model), state.served_names())?;
    }
    let tokens = parsed.tokens.ok_or_else(|| ApiError::InvalidRequest {
        message: "`tokens` is required".into(),
        param: Some("tokens".into()),
    })?;
    let prompt = engine.model().tokenizer.decode(&tokens, false)?;
    Ok(HttpResponse::Ok().json(json!({ "prompt": prompt })))
}

/// Liveness: the process answers.
/// Liveness: 503 once the engine thread has stopped on a failure (restart the process).
async fn health(state: Data) -> HttpResponse {
    if state.engine_failed() {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "engine_failed"}));
    }
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: 200 only when the model is loaded and the server is not draining.
async fn ready(state: Data) -> Reply {
    state.engine()?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn metrics(state: Data) -> Reply {
    let stats = state
        .loaded_engine()
        .map(|e| e.gauges().snapshot())
        .unwrap_or_default();
    let experts = state
        .loaded_engine()
        .and_then(|e| e.model().expert_tokens.as_ref());
    let text = state
        .metrics
        .render(&stats, experts)
        .map_err(|e| ApiError::Internal(format!("rendering metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text))
}
