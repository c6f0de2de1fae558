//! The route table and the handlers. Handlers are thin: read the body
//! (`gate::read_body`), then parse and validate it into a `Valid*` type on the CPU pool
//! (`cpu`: never on the async workers), submit, stream or collect.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, Route};
use serde_json::json;

use super::access::{check_access, Access, AccessChecked};
use super::content_filter::{screen_chat, screen_completion};
use super::cpu::PromptLimit;
use super::exchange::{self, chat_input, completion_input, log_if_blocked};
use super::gate::{id_of, parse_json, read_body};
use super::generate::{submit, Oversight};
use super::moderations;
use super::observe::mark_admitted;
use super::request::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest,
};
use super::response::{Endpoint, ResponseMeta};
use super::sse::sse_body;
use super::state::{unix_now, AppState};
use super::validate::{check_model, validate_chat, validate_completion, ValidRequest};
use crate::audit::Exchange;
use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::model::chat_template::encode_chat;
use crate::safety::Screen;
use crate::tools::ToolParser;

/// Every route the server answers (`openapi.yaml` describes exactly these). Register a
/// new route here and in `handler`: `configure` puts it behind the API key unless its
/// path is in `OPEN_ROUTES`.
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
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{id}"),
    ("DELETE", "/v1/responses/{id}"),
    ("GET", "/v1/responses/{id}/input_items"),
    ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations/{id}"),
    ("POST", "/v1/conversations/{id}"),
    ("DELETE", "/v1/conversations/{id}"),
    ("GET", "/v1/conversations/{id}/items"),
    ("POST", "/v1/conversations/{id}/items"),
    ("GET", "/v1/conversations/{id}/items/{item_id}"),
    ("DELETE", "/v1/conversations/{id}/items/{item_id}"),
    ("POST", "/v1/moderations"),
    ("POST", "/admin/v1/moderation/reload"),
    ("POST", "/v1/responses/{id}/feedback"),
    ("GET", "/v1/chat/ws"),
    ("GET", "/"),
    ("GET", "/web/{file}"),
    ("GET", "/server_info"),
    ("GET", "/get_server_info"),
    ("GET", "/model_info"),
    ("GET", "/get_model_info"),
    ("GET", "/get_load"),
    ("GET", "/admin/v1/review/queue"),
    ("GET", "/admin/v1/exchanges/{id}"),
    ("DELETE", "/admin/v1/exchanges/{id}"),
    ("POST", "/admin/v1/exchanges/{id}/review"),
    ("GET", "/admin/v1/threads/{id}"),
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
];

/// The routes anyone may call when API keys are configured; every other route needs one.
pub const OPEN_ROUTES: &[&str] = &[
    "/health",
    "/ready",
    "/metrics",
    "/version",
    "/get_load",
    "/",
    "/web/{file}",
];

/// The routes that authenticate their own messages (the chat WebSocket: browsers cannot
/// send `Authorization` with an upgrade); see `access::Access::Socket`.
pub const SOCKET_ROUTES: &[&str] = &["/v1/chat/ws"];

/// The routes only an admin key (`--admin-api-key`) opens; ordinary API keys never do.
pub const ADMIN_ROUTES: &[&str] = &[
    "/admin/v1/moderation/reload",
    "/admin/v1/review/queue",
    "/admin/v1/exchanges/{id}",
    "/admin/v1/exchanges/{id}/review",
    "/admin/v1/threads/{id}",
];

/// The routes that need an admin key when one is configured, else an API key (when any
/// is configured): vLLM's run-time LoRA routes.
pub const ADMIN_WHEN_SET_ROUTES: &[&str] = &["/v1/load_lora_adapter", "/v1/unload_lora_adapter"];

type Data = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

/// Registers `ROUTES`, one resource per path, each behind its access check (see
/// `access`); a known path with another method answers 405 with `Allow`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut paths: Vec<&'static str> = Vec::new();
    for &(_, path) in ROUTES {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    for path in paths {
        let methods: Vec<&'static str> = ROUTES
            .iter()
            .filter(|&&(_, p)| p == path)
            .map(|&(m, _)| m)
            .collect();
        let allowed = methods.join(", ");
        let access = if OPEN_ROUTES.contains(&path) {
            Access::Open
        } else if ADMIN_ROUTES.contains(&path) {
            Access::Admin
        } else if ADMIN_WHEN_SET_ROUTES.contains(&path) {
            Access::AdminWhenSet
        } else if SOCKET_ROUTES.contains(&path) {
            Access::Socket
        } else {
            Access::Key
        };
        let resource = methods
            .iter()
            .fold(web::resource(path), |r, &m| r.route(handler(m, path)))
            .default_service(web::to(move |req: HttpRequest| {
                let allowed = allowed.clone();
                async move {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                        method: req.method().to_string(),
                        path: req.path().to_string(),
                        allowed,
                    })
                }
            }))
            .wrap(from_fn(move |req, next| check_access(access, req, next)));
        cfg.service(resource);
    }
}

/// The handler of one entry of `ROUTES`.
fn handler(method: &str, path: &str) -> Route {
    use super::{admin, conversations as conv, responses as resp, router_compat as router};
    let route = match method {
        "POST" => web::post(),
        "DELETE" => web::delete(),
        _ => web::get(),
    };
    match (method, path) {
        (_, "/v1/chat/completions") => route.to(chat_completions),
        (_, "/v1/completions") => route.to(completions),
        (_, "/v1/models") => route.to(list_models),
        (_, "/v1/models/{model}") => route.to(get_model),
        (_, "/tokenize") => route.to(tokenize),
        (_, "/detokenize") => route.to(detokenize),
        (_, "/health") => route.to(health),
        (_, "/ready") => route.to(ready),
        (_, "/version") => route.to(version),
        (_, "/metrics") => route.to(metrics),
        (_, "/v1/moderations") => route.to(moderations::moderations),
        (_, "/admin/v1/moderation/reload") => route.to(moderations::reload),
        (_, "/server_info" | "/get_server_info") => route.to(router::server_info),
        (_, "/model_info" | "/get_model_info") => route.to(router::model_info),
        (_, "/get_load") => route.to(router::get_load),
        (_, "/admin/v1/review/queue") => route.to(admin::review_queue),
        ("GET", "/admin/v1/exchanges/{id}") => route.to(admin::exchange),
        ("DELETE", "/admin/v1/exchanges/{id}") => route.to(admin::delete_exchange),
        (_, "/admin/v1/exchanges/{id}/review") => route.to(admin::review),
        (_, "/admin/v1/threads/{id}") => route.to(admin::thread),
        ("POST", "/v1/responses") => route.to(resp::create),
        ("GET", "/v1/responses/{id}") => route.to(resp::retrieve),
        ("DELETE", "/v1/responses/{id}") => route.to(resp::delete),
        (_, "/v1/responses/{id}/input_items") => route.to(resp::input_items),
        ("POST", "/v1/conversations") => route.to(conv::create),
        ("GET", "/v1/conversations/{id}") => route.to(conv::retrieve),
        ("POST", "/v1/conversations/{id}") => route.to(conv::update),
        ("DELETE", "/v1/conversations/{id}") => route.to(conv::delete),
        ("GET", "/v1/conversations/{id}/items") => route.to(conv::list_items),
        ("POST", "/v1/conversations/{id}/items") => route.to(conv::add_items),
        ("GET", "/v1/conversations/{id}/items/{item_id}") => route.to(conv::get_item),
        ("DELETE", "/v1/conversations/{id}/items/{item_id}") => route.to(conv::delete_item),
        (_, "/v1/responses/{id}/feedback") => route.to(super::feedback::create),
        (_, "/v1/chat/ws") => route.to(super::ws::chat_ws),
        (_, "/") => route.to(super::web::index),
        (_, "/web/{file}") => route.to(super::web::asset),
        (_, "/v1/load_lora_adapter") => route.to(super::lora::load),
        (_, "/v1/unload_lora_adapter") => route.to(super::lora::unload),
        _ => route.to(|| async {
            Err::<HttpResponse, _>(ApiError::Internal("this route has no handler".into()))
        }),
    }
}

/// Any path not in `ROUTES` (open: it serves nothing but this error).
pub async fn not_found(req: HttpRequest) -> Reply {
    req.extensions_mut().insert(AccessChecked);
    Err(ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.path().to_string(),
    })
}

/// What a request's CPU job gets: its body and what validating it needs.
struct JobInput {
    body: web::Bytes,
    engine: EngineHandle,
    served: Vec<String>,
    limit: Option<PromptLimit>,
    tool_parser: ToolParser,
}

/// Reads the body here (async), then runs `job` on it on the CPU pool (503 while the
/// model loads or the server drains).
async fn on_cpu<T: Send + 'static>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    job: impl FnOnce(JobInput) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let body = read_body(req, payload, state.config.max_request_bytes).await?;
    let input = JobInput {
        body,
        engine: state.engine()?.clone(),
        served: state.served_names(),
        limit: state.prompt_limit(),
        tool_parser: state.config.tool_call_parser,
    };
    state.cpu.run(move || job(input)).await
}

/// The exchange of a text route in the conversation log, named after `model`.
fn named(mut exchange: Option<Exchange>, model: &str) -> Option<Exchange> {
    if let Some(e) = exchange.as_mut() {
        e.meta.model = model.to_string();
    }
    exchange
}

async fn chat_completions(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    state.audit_ready()?;
    let screen = state.moderation.screen(|| id_of(&req));
    let job_screen = screen.clone();
    let exchange = exchange::begin(&state, &req, "/v1/chat/completions");
    let (valid, exchange) = on_cpu(&state, &req, body, move |job| {
        let mut parsed: ChatCompletionRequest = parse_json(&job.body)?;
        let mut exchange = named(
            exchange,
            &check_model(parsed.model.as_deref(), &job.served)?,
        );
        job.limit
            .map_or(Ok(()), |l| l.check_messages(parsed.messages.as_deref()))?;
        if let Some(screen) = &job_screen {
            let checked = screen_chat(screen, &mut parsed);
            let input = || chat_input(parsed.messages.as_deref());
            log_if_blocked(checked, &mut exchange, screen, input)?;
        }
        if let Some(e) = exchange.as_mut() {
            e.meta.input = chat_input(parsed.messages.as_deref());
        }
        Ok((
            validate_chat(parsed, &job.engine, &job.served, job.tool_parser)?,
            exchange,
        ))
    })
    .await?;
    let oversight = oversee(&req, screen, exchange);
    generate(state, &req, valid, Endpoint::Chat, oversight).await
}

async fn completions(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    state.audit_ready()?;
    let screen = state.moderation.screen(|| id_of(&req));
    let job_screen = screen.clone();
    let exchange = exchange::begin(&state, &req, "/v1/completions");
    let (valid, exchange) = on_cpu(&state, &req, body, move |job| {
        let mut parsed: CompletionRequest = parse_json(&job.body)?;
        let mut exchange = named(
            exchange,
            &check_model(parsed.model.as_deref(), &job.served)?,
        );
        job.limit
            .map_or(Ok(()), |l| l.check_prompt(parsed.prompt.as_ref()))?;
        let tokenizer = &job.engine.model().tokenizer;
        let decode = |ids: &[u32]| tokenizer.decode(ids, false).unwrap_or_default();
        if let Some(screen) = &job_screen {
            let checked = screen_completion(screen, &mut parsed, tokenizer);
            let input = || completion_input(parsed.prompt.as_ref(), decode);
            log_if_blocked(checked, &mut exchange, screen, input)?;
        }
        if let Some(e) = exchange.as_mut() {
            e.meta.input = completion_input(parsed.prompt.as_ref(), decode);
        }
        Ok((
            validate_completion(parsed, &job.engine, &job.served)?,
            exchange,
        ))
    })
    .await?;
    let oversight = oversee(&req, screen, exchange);
    generate(state, &req, valid, Endpoint::Completion, oversight).await
}

/// The request's id, moderation and exchange, for `submit`.
fn oversee(
    req: &HttpRequest,
    screen: Option<Arc<Screen>>,
    exchange: Option<Exchange>,
) -> Oversight {
    Oversight {
        request_id: id_of(req),
        screen,
        exchange,
    }
}

/// Admits, submits, then streams (SSE) or collects the whole response.
async fn generate(
    state: Data,
    req: &HttpRequest,
    valid: ValidRequest,
    endpoint: Endpoint,
    oversight: Oversight,
) -> Reply {
    let engine = state.engine()?.clone();
    let permit = state.admit(valid.prompts.len() * valid.n)?;
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    let meta = ResponseMeta {
        id: format!("{prefix}-{}", oversight.request_id),
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
        oversight,
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

/// A served model as vLLM lists it: a LoRA adapter has its file as `root` and the base
/// model's first served name as `parent`; the base model its file and no parent.
fn model_card(state: &AppState, name: &str) -> serde_json::Value {
    let engine = state.loaded_engine();
    let max_model_len = engine.map(|e| e.info().max_model_len);
    let adapter = engine.and_then(|e| e.model().adapters.by_name(name));
    let (root, parent) = match (engine, adapter) {
        (_, Some(a)) => (
            a.path.display().to_string(),
            state.base_names().first().cloned(),
        ),
        (Some(e), None) => (e.model().path.display().to_string(), None),
        (None, None) => (name.to_string(), None),
    };
    json!({
        "id": name,
        "object": "model",
        "created": state.started_at,
        "owned_by": "tessera",
        "root": root,
        "parent": parent,
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
    let name = check_model(Some(name.as_str()), &state.served_names())?;
    Ok(HttpResponse::Ok().json(model_card(&state, &name)))
}

async fn tokenize(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let json = on_cpu(&state, &req, body, |job| {
        tokenize_body(&job.body, &job.engine, &job.served)
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json))
}

/// `/tokenize` from its body to its JSON answer (on the CPU pool).
fn tokenize_body(
    body: &[u8],
    engine: &EngineHandle,
    served: &[String],
) -> Result<Vec<u8>, ApiError> {
    let parsed: TokenizeRequest = parse_json(body)?;
    if let Some(model) = parsed.model.as_deref() {
        check_model(Some(model), served)?;
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
    Ok(json!({
        "count": tokens.len(),
        "max_model_len": engine.info().max_model_len,
        "tokens": tokens,
        "token_strs": token_strs,
    })
    .to_string()
    .into_bytes())
}

async fn detokenize(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let json = on_cpu(&state, &req, body, |job| {
        let parsed: DetokenizeRequest = parse_json(&job.body)?;
        if let Some(model) = parsed.model.as_deref() {
            check_model(Some(model), &job.served)?;
        }
        let tokens = parsed.tokens.ok_or_else(|| ApiError::InvalidRequest {
            message: "`tokens` is required".into(),
            param: Some("tokens".into()),
        })?;
        let prompt = job.engine.model().tokenizer.decode(&tokens, false)?;
        Ok(json!({ "prompt": prompt }).to_string().into_bytes())
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json))
}

/// Liveness: 503 once the engine thread has stopped on a failure (restart the process).
async fn health(state: Data) -> HttpResponse {
    if state.engine_failed() {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "engine_failed"}));
    }
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: 200 only when the model is loaded, the server is not draining and the
/// conversation log keeps up (503 `audit_unavailable` while it lags).
async fn ready(state: Data) -> Reply {
    state.engine()?;
    state.audit_ready()?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn metrics(state: Data) -> Reply {
    if let Some(audit) = state.audit() {
        audit.update_gauges();
    }
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

#[cfg(test)]
mod tests {
    use super::super::gate::{gate, REQUEST_ID_HEADER};
    use super::*;

    /// A route registered next to the table (not through `routes::configure`) has no
    /// access check: whatever it answers is withheld. Table routes and unknown paths are
    /// answered as usual, errors with the OpenAI body, also one a middleware returns.
    #[test]
    fn a_route_outside_the_table_never_answers() {
        use actix_web::body::BoxBody;
        use actix_web::dev::{ServiceRequest, ServiceResponse};
        use actix_web::middleware::{from_fn, Next};
        use actix_web::test::{
            call_service, init_service, read_body, try_call_service, TestRequest,
        };
        use actix_web::{App, HttpResponse};

        actix_web::rt::System::new().block_on(async {
            let app = init_service(
                App::new()
                    .wrap(from_fn(gate))
                    .configure(configure)
                    .service(
                        web::resource("/rogue").to(|| async { HttpResponse::Ok().body("secret") }),
                    )
                    .service(
                        web::resource("/failing")
                            .wrap(from_fn(|_: ServiceRequest, _: Next<BoxBody>| async {
                                Err::<ServiceResponse, _>(actix_web::error::ErrorForbidden("nope"))
                            }))
                            .to(HttpResponse::Ok),
                    )
                    .default_service(web::to(not_found)),
            )
            .await;
            let call = |path: &'static str| TestRequest::get().uri(path).to_request();
            let rogue = call_service(&app, call("/rogue")).await;
            assert_eq!(rogue.status(), 500);
            let body = read_body(rogue).await;
            let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(body["error"]["code"], "internal_error");
            assert!(!body.to_string().contains("secret"));
            assert_eq!(call_service(&app, call("/version")).await.status(), 200);
            let unknown = call_service(&app, call("/nowhere")).await;
            assert_eq!(unknown.status(), 404);
            // actix answers a service error with its `error_response()`.
            let failing = try_call_service(&app, call("/failing"))
                .await
                .expect_err("the middleware fails")
                .error_response();
            assert_eq!(failing.status(), 403);
            assert!(failing.headers().contains_key(REQUEST_ID_HEADER));
            let body = actix_web::body::to_bytes(failing.into_body())
                .await
                .expect("body");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(body["error"]["message"], "nope");
        });
    }
}
