//! `POST /v1/responses/{id}/feedback`: an API user's rating of a stored response (the
//! chat page rates over its WebSocket with `feedback`); both go to
//! `Dialog::rate`, which keeps the rated dialog for `tessera feedback export`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::dialog_http::{dialog, owner_of};
use super::gate::read_json;
use super::request::JsonBody;
use super::state::AppState;
use crate::dialog::feedback::Rating;
use crate::error::ApiError;

/// The body: `rating` (`up` | `down`) and an optional `comment`.
#[derive(Debug, Deserialize)]
pub struct FeedbackBody {
    pub rating: Option<String>,
    pub comment: Option<String>,
}

impl JsonBody for FeedbackBody {}

/// `POST /v1/responses/{id}/feedback`.
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let parsed: FeedbackBody = read_json(&req, body, state.config.max_request_bytes).await?;
    let rating = parsed.rating.ok_or_else(|| ApiError::InvalidRequest {
        message: "`rating` is required (`up` or `down`)".into(),
        param: Some("rating".into()),
    })?;
    let rating = Rating::parse(&rating)?;
    let owner = owner_of(&req, &state.config.api_keys);
    let feedback = dialog(&state)?
        .rate(&owner, &id, rating, parsed.comment)
        .await?;
    Ok(HttpResponse::Ok().json(feedback))
}
