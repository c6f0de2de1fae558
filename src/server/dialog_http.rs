//! What the Responses and Conversations routes (and the WebSocket chat) share: the
//! caller's `Owner` (from the API key the gate accepted), the dialog service, a turn's
//! preparation (history, then the prompt on the CPU pool), query parameters and the
//! JSON body types of the conversation routes.
//!
//! Invariants: with API keys configured every caller is the hash of its key (the gate
//! has already refused unknown keys); without keys every caller is the one anonymous
//! owner, whatever it sends.

use actix_web::http::header;
use actix_web::HttpRequest;
use serde::Deserialize;
use serde_json::Value;

use super::request::JsonBody;
use super::state::AppState;
use crate::dialog::{Dialog, ListQuery, PreparedTurn, TurnRequest};
use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::store::Owner;

/// Whose data this request may see.
pub fn owner_of(req: &HttpRequest, api_keys: &[String]) -> Owner {
    if api_keys.is_empty() {
        return Owner::anonymous();
    }
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(key) => Owner::of_key(key),
        // Unreachable behind the gate; an owner no key hashes to sees nothing.
        None => Owner::of_key(""),
    }
}

/// The dialog service (set when the server starts).
pub fn dialog(state: &AppState) -> Result<&Dialog, ApiError> {
    state
        .dialog()
        .ok_or_else(|| ApiError::Internal("the dialog store is not open".into()))
}

/// `?after=&limit=&order=` of the list routes.
#[derive(Debug)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

impl ListParams {
    pub fn query(&self) -> Result<ListQuery, ApiError> {
        Ok(ListQuery::new(
            self.after.clone(),
            self.limit,
            self.order.as_deref(),
        )?)
    }
}

/// Parses the query string into `ListParams` (errors in the OpenAI shape).
pub fn list_params(req: &HttpRequest) -> Result<ListQuery, ApiError> {
    let params = parse_query(req.query_string()).map_err(|message| ApiError::InvalidRequest {
        message,
        param: None,
    })?;
    params.query()
}

/// A minimal `application/x-www-form-urlencoded` query parser for `ListParams`.
fn parse_query(query: &str) -> Result<ListParams, String> {
    let mut params = ListParams {
        after: None,
        limit: None,
        order: None,
    };
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "after" => params.after = Some(value),
            "limit" => {
                params.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("`limit` must be an integer. Given: {value:?}"))?,
                )
            }
            "order" => params.order = Some(value),
            _ => {} // `include[]` and other extras: nothing to include beyond text
        }
    }
    Ok(params)
}

/// The `key=value` pairs of a query string, values percent-decoded, in order.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((key.to_string(), percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in the query: {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("the query is not UTF-8: {s:?}"))
}

/// `POST /v1/conversations`.
#[derive(Debug, Deserialize)]
pub struct CreateConversation {
    pub items: Option<Value>,
    pub metadata: Option<Value>,
}

/// `POST /v1/conversations/{id}` (update).
#[derive(Debug, Deserialize)]
pub struct UpdateConversation {
    pub metadata: Option<Value>,
}

/// `POST /v1/conversations/{id}/items`.
#[derive(Debug, Deserialize)]
pub struct AddItems {
    pub items: Option<Value>,
}

impl JsonBody for CreateConversation {}
impl JsonBody for UpdateConversation {}
impl JsonBody for AddItems {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_parse_and_check_limits() {
        let p = parse_query("after=msg_a%2Bb&limit=5&order=asc&include%5B%5D=x").expect("parses");
        let q = p.query().expect("valid");
        assert_eq!(q.after.as_deref(), Some("msg_a+b"));
        assert_eq!((q.limit, q.descending), (5, false));
        let q = parse_query("").expect("empty").query().expect("defaults");
        assert_eq!((q.limit, q.descending, q.after), (20, true, None));
        assert!(parse_query("limit=x").is_err());
        assert!(parse_query("limit=101").expect("parses").query().is_err());
        assert!(parse_query("order=up").expect("parses").query().is_err());
        assert!(parse_query("after=%zz").is_err());
    }
}
