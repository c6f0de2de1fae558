//! `GET /v1/chat/ws`: the chat page's WebSocket (protocol: docs/websocket.md and
//! `protocol.rs`). One socket carries a person's chat: conversations (create, list,
//! open, rename, delete), turns streamed as `delta`s with several generations at once
//! (different conversations), stop and regenerate, ratings, moderation and the product
//! defaults of a chat turn (`config.rs`).
//!
//! Authentication: browsers cannot set `Authorization` on a WebSocket, so the key comes
//! as the subprotocol `bearer.<key>` (offered next to `tessera.chat.v1`, which the server
//! selects) or in a first `auth` message. The route's access level is `Access::Socket`:
//! the upgrade itself is open, and the socket refuses everything but `auth` until a
//! configured key was given (close `4401` on a bad key or none in time). Without
//! configured keys every socket is the anonymous owner, as on the HTTP routes.
//!
//! Pieces: `socket.rs` runs one socket (its messages, limits, heartbeats, close);
//! `turns.rs` runs one generation and `requests.rs` answers the other messages;
//! `frames.rs` reads client frames and `outbound.rs` bounds what waits for a slow reader
//! (both over actix-http's WebSocket codec); `hub.rs` counts sockets per key.
//!
//! Invariants: a socket's generations never outlive it (closing it aborts them, freeing
//! their KV blocks); every socket is counted in `WsHub` from authentication to its end.

pub mod config;
mod frames;
pub mod hub;
mod outbound;
mod protocol;
mod requests;
mod socket;
mod turns;

use std::sync::Arc;

use actix_http::body::{BodyStream, MessageBody};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub use config::{ChatConfig, ChatDefaults, WsLimits};
pub use hub::{SocketSlot, WsHub};
pub use protocol::close;

use super::access::constant_time_eq;
use super::conn_guard::KillSwitch;
use super::exchange::Peer;
use super::gate::id_of;
use super::state::AppState;
use crate::error::ApiError;
use crate::store::Owner;

/// The subprotocol the server speaks (selected whenever the client offers it).
pub const SUBPROTOCOL: &str = "tessera.chat.v1";
/// Prefix of the subprotocol that carries an API key (`bearer.<key>`).
pub const KEY_PROTOCOL_PREFIX: &str = "bearer.";

/// Who may use a socket, from a key given at the upgrade or in `auth`.
pub(crate) fn owner_for_key(api_keys: &[String], given: Option<&str>) -> Result<Owner, ApiError> {
    if api_keys.is_empty() {
        return Ok(Owner::anonymous());
    }
    let given = given.ok_or(ApiError::Unauthorized)?;
    let matched = api_keys.iter().fold(false, |acc, key| {
        acc | constant_time_eq(key.as_bytes(), given.as_bytes())
    });
    if matched {
        Ok(Owner::of_key(given))
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The offered subprotocols: whether `tessera.chat.v1` is among them, and the key of a
/// `bearer.<key>` one.
fn offered(req: &HttpRequest) -> (bool, Option<String>) {
    let mut speaks = false;
    let mut key = None;
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for proto in value.to_str().unwrap_or("").split(',').map(str::trim) {
            if proto == SUBPROTOCOL {
                speaks = true;
            } else if let Some(k) = proto.strip_prefix(KEY_PROTOCOL_PREFIX) {
                key = Some(k.to_string());
            }
        }
    }
    (speaks, key)
}

/// `GET /v1/chat/ws`.
pub async fn chat_ws(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.engine()?;
    let mut response = actix_http::ws::handshake(req.head()).map_err(|e| ApiError::Http {
        status: 400,
        message: format!(
            "`/v1/chat/ws` takes a WebSocket upgrade (GET with `Upgrade: websocket`): {e}"
        ),
    })?;
    let (speaks, key) = offered(&req);
    if speaks {
        response.insert_header((header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL));
    }
    let limits = state.config.chat.limits;
    let (outbox, frames) = outbound::Outbox::new(limits.send_buffer);
    let response = response
        .message_body(BodyStream::new(frames).boxed())
        .map_err(|e| ApiError::Internal(format!("WebSocket response: {e}")))?;
    let start = socket::Start {
        preauth: key.map(|k| owner_for_key(&state.config.api_keys, Some(&k))),
        state: state.into_inner(),
        outbox,
        reader: frames::Reader::new(body, limits.max_message_bytes),
        kill: req.conn_data::<Arc<KillSwitch>>().cloned(),
        request_id: id_of(&req),
        peer: Peer::of(&req),
    };
    actix_web::rt::spawn(socket::run(start));
    Ok(response.into())
}
