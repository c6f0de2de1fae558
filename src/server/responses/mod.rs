//! OpenAI's Responses API: `POST /v1/responses` (a turn: on the CPU pool parse,
//! validate and moderate the input (`input.rs`) → dialog history → prompt on the
//! blocking pool → admission → engine (its output through the moderation stream guard) →
//! commit, streamed or whole; a blocked answer ends `incomplete` with reason
//! `content_filter`), `GET`/`DELETE /v1/responses/{id}` and
//! `GET /v1/responses/{id}/input_items`. Every turn is an exchange of the conversation
//! log. Handlers are thin; the dialog layer (`crate::dialog`) does the work.

mod events;
mod input;
mod wire;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::dialog_http::{dialog, list_params, owner_of};
use super::exchange;
use super::gate::{id_of, read_body};
use super::generate::{submit_turn, Oversight};
use super::observe::mark_admitted;
use super::state::AppState;
use crate::dialog::DialogError;
use crate::error::ApiError;
use events::{event_stream, TurnRun};
pub use wire::ResponsesRequest;

type Data = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

/// `POST /v1/responses`.
pub async fn create(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    state.audit_ready()?;
    let body = read_body(&req, body, state.config.max_request_bytes).await?;
    let engine = state.engine()?.clone();
    let screen = state.moderation.screen(|| id_of(&req));
    let (served, limit) = (state.served_names(), state.prompt_limit());
    let (job_screen, exchange) = (
        screen.clone(),
        exchange::begin(&state, &req, "/v1/responses"),
    );
    let (job_engine, parser) = (engine.clone(), state.config.tool_call_parser);
    let (valid, exchange) = state
        .cpu
        .run(move || {
            let screen = job_screen.as_deref();
            input::check_turn(&body, &served, limit, screen, exchange, &job_engine, parser)
        })
        .await?;
    let owner = owner_of(&req, &state.config.api_keys);
    let dialog = dialog(&state)?.clone();
    let turn = dialog.prepare_turn(&owner, valid.request, &engine).await?;
    let permit = state.admit(1)?;
    let oversight = Oversight {
        request_id: id_of(&req),
        screen,
        exchange: exchange::with_turn(exchange, &turn),
    };
    let gen = submit_turn(
        &engine,
        state.clone().into_inner(),
        &turn,
        valid.sampling,
        permit,
        oversight,
    )?;
    mark_admitted(&req);
    let run = TurnRun { gen, turn, dialog };
    if valid.stream {
        Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .streaming(event_stream(run, state.config.sse_keepalive)))
    } else {
        Ok(HttpResponse::Ok().json(run.complete().await?))
    }
}

/// `GET /v1/responses/{id}`.
pub async fn retrieve(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    let body = dialog(&state)?.response(&owner, &id).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    if !dialog(&state)?.delete_response(&owner, &id).await? {
        return Err(DialogError::NotFound {
            what: "response",
            id: id.into_inner(),
            param: None,
        }
        .into());
    }
    Ok(HttpResponse::Ok().json(json!({"id": *id, "object": "response", "deleted": true})))
}

/// `GET /v1/responses/{id}/input_items`.
pub async fn input_items(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    let query = list_params(&req)?;
    let list = dialog(&state)?.input_items(&owner, &id, &query).await?;
    Ok(HttpResponse::Ok().json(list))
}
