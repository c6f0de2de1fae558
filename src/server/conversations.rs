//! OpenAI's Conversations API: `POST /v1/conversations` (optional `items`, `metadata`),
//! `GET` / `POST` (update metadata) / `DELETE /v1/conversations/{id}`, and its items:
//! `GET` (paginated) / `POST /v1/conversations/{id}/items`, `GET` / `DELETE
//! /v1/conversations/{id}/items/{item_id}`. Thin handlers over `crate::dialog`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::dialog_http::{
    dialog, list_params, owner_of, AddItems, CreateConversation, UpdateConversation,
};
use super::gate::read_json;
use super::state::AppState;
use crate::dialog::check_metadata;
use crate::dialog::items::parse_input;
use crate::error::ApiError;

type Data = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

/// `items` of a request body: a list of items (absent: none).
fn items(value: Option<&Value>) -> Result<Vec<crate::dialog::Message>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v @ Value::Array(_)) => Ok(parse_input(v, "items", crate::store::unix_now())?),
        Some(_) => Err(ApiError::InvalidRequest {
            message: "`items` must be a list of items".into(),
            param: Some("items".into()),
        }),
    }
}

/// `POST /v1/conversations`.
pub async fn create(state: Data, req: HttpRequest, body: web::Payload) -> Reply {
    let parsed: CreateConversation = read_json(&req, body, state.config.max_request_bytes).await?;
    let items = items(parsed.items.as_ref())?;
    let metadata = check_metadata(parsed.metadata.as_ref())?;
    let owner = owner_of(&req, &state.config.api_keys);
    let object = dialog(&state)?
        .create_conversation(&owner, items, metadata)
        .await?;
    Ok(HttpResponse::Ok().json(object))
}

/// `GET /v1/conversations/{id}`.
pub async fn retrieve(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    Ok(HttpResponse::Ok().json(dialog(&state)?.conversation(&owner, &id).await?))
}

/// `POST /v1/conversations/{id}`: replaces the metadata.
pub async fn update(
    state: Data,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Reply {
    let parsed: UpdateConversation = read_json(&req, body, state.config.max_request_bytes).await?;
    let metadata = parsed.metadata.ok_or_else(|| ApiError::InvalidRequest {
        message: "`metadata` is required".into(),
        param: Some("metadata".into()),
    })?;
    let metadata = check_metadata(Some(&metadata))?;
    let owner = owner_of(&req, &state.config.api_keys);
    let object = dialog(&state)?
        .update_conversation(&owner, &id, metadata)
        .await?;
    Ok(HttpResponse::Ok().json(object))
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    Ok(HttpResponse::Ok().json(dialog(&state)?.delete_conversation(&owner, &id).await?))
}

/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    let query = list_params(&req)?;
    let list = dialog(&state)?
        .conversation_items(&owner, &id, &query)
        .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// `POST /v1/conversations/{id}/items`.
pub async fn add_items(
    state: Data,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Reply {
    let parsed: AddItems = read_json(&req, body, state.config.max_request_bytes).await?;
    let items = items(parsed.items.as_ref())?;
    if items.is_empty() {
        return Err(ApiError::InvalidRequest {
            message: "`items` must hold at least one item".into(),
            param: Some("items".into()),
        });
    }
    let owner = owner_of(&req, &state.config.api_keys);
    let list = dialog(&state)?.add_items(&owner, &id, items).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(state: Data, req: HttpRequest, path: web::Path<(String, String)>) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    let (id, item_id) = path.into_inner();
    let item = dialog(&state)?
        .conversation_item(&owner, &id, &item_id)
        .await?;
    Ok(HttpResponse::Ok().json(item))
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`: the conversation after the removal.
pub async fn delete_item(
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Reply {
    let owner = owner_of(&req, &state.config.api_keys);
    let (id, item_id) = path.into_inner();
    let object = dialog(&state)?.delete_item(&owner, &id, &item_id).await?;
    Ok(HttpResponse::Ok().json(object))
}
