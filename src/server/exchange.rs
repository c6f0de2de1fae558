//! The conversation log's HTTP side: what an HTTP request tells an `audit::Exchange`
//! (request id, route, API key hash, client address, `X-Forwarded-For` as sent) and
//! the input messages of each text route, as the model sees them (after masking).
//!
//! Where exchanges end: an admitted request's `RequestRecord` (`observe`) finishes its
//! exchange when it settles, whatever ended it (done, error, client gone); an input a
//! moderation rule blocked is logged as refused by `log_if_blocked`, where the route's
//! input check runs.

use actix_web::HttpRequest;

use super::dialog_http::owner_of;
use super::gate::id_of;
use super::request::{ChatMessageIn, MessageContent, PromptField};
use super::state::AppState;
use crate::audit::{Exchange, ExchangeMeta, InputMessage};
use crate::dialog::PreparedTurn;
use crate::error::ApiError;
use crate::safety::{ModerationError, Screen, Stage};
use crate::store::Owner;

/// Longest `X-Forwarded-For` value kept (longer ones are cut).
const MAX_FORWARDED_FOR: usize = 256;

/// Where a request came from, as the log keeps it: the client's address and its
/// `X-Forwarded-For` as sent (cut to `MAX_FORWARDED_FOR` bytes).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
}

impl Peer {
    pub fn of(req: &HttpRequest) -> Self {
        let forwarded_for = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let end = v.floor_char_boundary(MAX_FORWARDED_FOR);
                v[..end].to_string()
            });
        Self {
            client_addr: req.peer_addr().map(|a| a.to_string()),
            forwarded_for,
        }
    }
}

/// A new exchange of `req` on `route`; `None` when the log is off.
pub fn begin(state: &AppState, req: &HttpRequest, route: &str) -> Option<Exchange> {
    let owner = owner_of(req, &state.config.api_keys);
    begin_for(state, id_of(req), route, &owner, &Peer::of(req))
}

/// A new exchange of a request that is not an HTTP request of its own (a chat socket's
/// turn); `None` when the log is off.
pub fn begin_for(
    state: &AppState,
    request_id: String,
    route: &str,
    owner: &Owner,
    peer: &Peer,
) -> Option<Exchange> {
    let log = state.audit()?;
    let meta = ExchangeMeta {
        request_id,
        route: route.to_string(),
        api_key_id: owner.as_str().to_string(),
        client_addr: peer.client_addr.clone(),
        forwarded_for: peer.forwarded_for.clone(),
        ..ExchangeMeta::default()
    };
    Some(Exchange::begin(log, meta))
}

/// The exchange of a dialog turn, with the turn's ids (response, conversation, previous
/// response, thread).
pub fn with_turn(exchange: Option<Exchange>, turn: &PreparedTurn) -> Option<Exchange> {
    exchange.map(|mut e| {
        e.meta.response_id = Some(turn.response_id.clone());
        e.meta.conversation_id = turn.fields.conversation_id.clone();
        e.meta.previous_response_id = turn.fields.previous_response_id.clone();
        e.meta.thread_id = Some(turn.thread_id());
        e
    })
}

/// A chat request's messages (text parts of one message joined by newlines).
pub fn chat_input(messages: Option<&[ChatMessageIn]>) -> Vec<InputMessage> {
    messages
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let content = match &m.content {
                Some(MessageContent::Text(text)) => text.clone(),
                Some(MessageContent::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n"),
                None => String::new(),
            };
            InputMessage::new(m.role.as_deref().unwrap_or(""), content)
        })
        .collect()
}

/// A completion request's prompts (token-id prompts decoded), each as a `prompt` message.
pub fn completion_input(
    prompt: Option<&PromptField>,
    decode: impl Fn(&[u32]) -> String,
) -> Vec<InputMessage> {
    let texts: Vec<String> = match prompt {
        None => Vec::new(),
        Some(PromptField::Text(text)) => vec![text.clone()],
        Some(PromptField::Texts(texts)) => texts.clone(),
        Some(PromptField::Ids(ids)) => vec![decode(&super::request::int::plain(ids.clone()))],
        Some(PromptField::IdLists(lists)) => lists
            .iter()
            .map(|ids| decode(&super::request::int::plain(ids.clone())))
            .collect(),
    };
    texts
        .into_iter()
        .map(|t| InputMessage::new("prompt", t))
        .collect()
}

/// When `result` is a moderation block, logs the exchange as refused with `input()`
/// (the text as it was checked) and the screen's input hits; passes `result` on.
pub fn log_if_blocked<T>(
    result: Result<T, ApiError>,
    exchange: &mut Option<Exchange>,
    screen: &Screen,
    input: impl FnOnce() -> Vec<InputMessage>,
) -> Result<T, ApiError> {
    if let Err(ApiError::Moderation(ModerationError::Blocked { .. })) = &result {
        if let Some(mut exchange) = exchange.take() {
            exchange.meta.input = input();
            exchange.refused(&screen.hits(Stage::Input, None));
        }
    }
    result
}
