//! Who may call which route: the API-key check, made at the resource level after the
//! router has matched (so it sees the route the request will reach, however the path
//! was spelled: `/%76%31/models`, `/tokeniz%65`, …).
//!
//! Deny by default: `routes::configure` wraps every resource of its table with
//! [`check_access`], with `Access::Key` unless the path is in `routes::OPEN_ROUTES`
//! (`Access::Open`), `routes::ADMIN_ROUTES` (`Access::Admin`) or `routes::SOCKET_ROUTES`
//! (`Access::Socket`: the WebSocket authenticates its own messages).
//! The middleware marks each request it lets through ([`AccessChecked`]); `gate`
//! withholds (500) the response of any request that reached a handler without that mark,
//! so a route registered outside the table can never serve anything.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use super::state::AppState;
use crate::error::ApiError;

/// What a route asks of its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (liveness, readiness, metrics, version).
    Open,
    /// A key given to `--api-key`, when any is configured.
    Key,
    /// A key given to `--admin-api-key` (never an ordinary API key); without any admin
    /// key the route is closed (403).
    Admin,
    /// Like `Admin` when an admin key is configured, else like `Key` (vLLM's LoRA routes:
    /// open to API-key holders on a server without admin keys).
    AdminWhenSet,
    /// The chat WebSocket: the upgrade is open, and the socket itself refuses every
    /// message until a configured key is given (browsers cannot send `Authorization`
    /// on a WebSocket; see `ws`).
    Socket,
}

/// Set on a request by [`check_access`] (or by the not-found handler): it went through
/// the access check of the route it reached.
#[derive(Debug, Clone, Copy)]
pub struct AccessChecked;

/// Resource middleware: refuses with 401 when `access` asks for a key and the request
/// has none of the configured ones (403 for an admin route with no admin key
/// configured); marks the request as checked.
pub async fn check_access(
    access: Access,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    req.extensions_mut().insert(AccessChecked);
    let refused = match access {
        Access::Open | Access::Socket => None,
        Access::Key => req
            .app_data::<web::Data<AppState>>()
            .and_then(|state| authorize(&state.config.api_keys, req.headers()).err()),
        Access::Admin => match req.app_data::<web::Data<AppState>>() {
            Some(state) => authorize_admin(&state.config.admin_api_keys, req.headers()).err(),
            None => Some(ApiError::AdminDisabled),
        },
        Access::AdminWhenSet => req.app_data::<web::Data<AppState>>().and_then(|state| {
            let admin = &state.config.admin_api_keys;
            if admin.is_empty() {
                authorize(&state.config.api_keys, req.headers()).err()
            } else {
                authorize_admin(admin, req.headers()).err()
            }
        }),
    };
    match refused {
        Some(err) => Ok(req
            .into_response(err.error_response())
            .map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// `Authorization: Bearer <key>` (the scheme in any case, RFC 7235) must name one of
/// `keys`; none configured: open.
pub fn authorize(keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
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

/// `Authorization: Bearer <admin key>` must name one of `--admin-api-key`'s keys; with
/// none configured the admin API is closed.
pub fn authorize_admin(admin_keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if admin_keys.is_empty() {
        return Err(ApiError::AdminDisabled);
    }
    authorize(admin_keys, headers).map_err(|_| ApiError::AdminUnauthorized)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn with_auth(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn keys_are_checked_in_full() {
        let keys = vec!["sk-one".to_string(), "sk-two".to_string()];
        assert!(authorize(&keys, &HeaderMap::new()).is_err());
        assert!(authorize(&keys, &with_auth("Bearer sk-two")).is_ok());
        assert!(authorize(&keys, &with_auth("Bearer sk-tw")).is_err());
        assert!(authorize(&keys, &with_auth("Bearer sk-two-and-more")).is_err());
        assert!(authorize(&[], &HeaderMap::new()).is_ok());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let keys = vec!["k1".to_string()];
        for value in ["bearer k1", "BEARER k1", "BeArEr   k1", " Bearer k1 "] {
            assert!(authorize(&keys, &with_auth(value)).is_ok(), "{value:?}");
        }
        for value in ["Basic k1", "Bearerk1", "k1", "Bearer", "Bearer k2"] {
            assert!(authorize(&keys, &with_auth(value)).is_err(), "{value:?}");
        }
    }
}
