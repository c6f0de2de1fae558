//! vLLM's run-time LoRA routes: `POST /v1/load_lora_adapter` `{lora_name, lora_path}`
//! and `POST /v1/unload_lora_adapter` `{lora_name}`, answering vLLM's plain-text
//! "Success: …" line. Behind the admin key when one is configured, else the API key
//! (`routes::ADMIN_WHEN_SET_ROUTES`). The adapter set lives in the model's
//! `LoraRegistry` (its invariants: `model::lora::registry`); loading reads the file on
//! the CPU pool, never on an async worker. Errors: 400 for a missing field, a name in use
//! (the base model's, an alias, a loaded adapter) or a file that is not a valid adapter
//! for this model; 404 for a path that does not exist or an unknown name to unload; 409
//! when `--max-loras` adapters are loaded.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::gate::{parse_json, read_body};
use super::request::JsonBody;
use super::state::AppState;
use crate::error::ApiError;

/// `POST /v1/load_lora_adapter` body.
#[derive(Debug, Deserialize)]
pub struct LoadLoraAdapterRequest {
    pub lora_name: Option<String>,
    pub lora_path: Option<String>,
}

impl JsonBody for LoadLoraAdapterRequest {}

/// `POST /v1/unload_lora_adapter` body.
#[derive(Debug, Deserialize)]
pub struct UnloadLoraAdapterRequest {
    pub lora_name: Option<String>,
}

impl JsonBody for UnloadLoraAdapterRequest {}

/// `field` of the body, present and not empty.
fn required(value: Option<String>, field: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::InvalidRequest {
            message: format!("`{field}` is required (a non-empty string)"),
            param: Some(field.to_string()),
        })
}

fn success(text: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text)
}

/// `POST /v1/load_lora_adapter`.
pub async fn load(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?.clone();
    let device = engine.info().device;
    if device != crate::backend::Device::Cpu {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "LoRA adapters are served on --device cpu only; this server runs on {device}"
            ),
            param: None,
        });
    }
    let body = read_body(&req, body, state.config.max_request_bytes).await?;
    let name = state
        .cpu
        .run(move || {
            let parsed: LoadLoraAdapterRequest = parse_json(&body)?;
            let name = required(parsed.lora_name, "lora_name")?;
            let path = required(parsed.lora_path, "lora_path")?;
            engine.model().adapters.add(&name, path.as_ref())?;
            Ok(name)
        })
        .await?;
    Ok(success(format!(
        "Success: LoRA adapter '{name}' added successfully."
    )))
}

/// `POST /v1/unload_lora_adapter`: the adapter stops being served at once; requests
/// running with it finish with its weights.
pub async fn unload(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let body = read_body(&req, body, state.config.max_request_bytes).await?;
    let parsed: UnloadLoraAdapterRequest = parse_json(&body)?;
    let name = required(parsed.lora_name, "lora_name")?;
    engine.model().adapters.remove(&name)?;
    Ok(success(format!(
        "Success: LoRA adapter '{name}' removed successfully."
    )))
}
