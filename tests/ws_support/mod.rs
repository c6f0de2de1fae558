//! Helpers for the WebSocket chat tests: a client over `tokio-tungstenite` (JSON
//! messages, waiting for a message type, reading the close frame), servers over the
//! default model with chat settings, and waits for the engine to go idle. Loopback only.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::server::ws::{ChatConfig, ChatDefaults, WsLimits};
use tessera::server::{ServerConfig, SpawnedServer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http_support::{serve, start_engine, wait_for, HANG_GUARD};

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An engine for the chat tests (room for 100 sockets' sequences).
pub fn engine() -> EngineHandle {
    start_engine(&EngineConfig {
        kv_cache_memory: 256 << 20,
        max_model_len: Some(2048),
        max_num_seqs: 64,
        ..EngineConfig::default()
    })
}

/// Greedy (plain argmax: no repetition penalty, which would end a count early), short
/// answers unless a test asks otherwise.
pub fn greedy(max_tokens: usize) -> ChatDefaults {
    ChatDefaults {
        temperature: 0.0,
        repetition_penalty: 1.0,
        max_tokens,
        ..ChatDefaults::default()
    }
}

/// A server over `engine` with `chat` settings, API keys and a moderation policy.
pub fn server(
    engine: &EngineHandle,
    chat: ChatConfig,
    keys: &[&str],
    policy: Option<std::path::PathBuf>,
) -> SpawnedServer {
    let cfg = ServerConfig {
        chat,
        api_keys: keys.iter().map(|k| k.to_string()).collect(),
        moderation_policy: policy,
        ..ServerConfig::default()
    };
    serve(engine.clone(), 64, cfg)
}

pub fn chat(defaults: ChatDefaults, limits: WsLimits) -> ChatConfig {
    ChatConfig {
        defaults,
        limits,
        web_ui: true,
    }
}

/// Waits (up to the hang guard) until the engine runs nothing and holds no KV block.
pub fn wait_idle(engine: &EngineHandle) -> bool {
    wait_for(HANG_GUARD, || {
        let s = engine.gauges().snapshot();
        s.num_running == 0 && s.num_waiting == 0 && s.kv_blocks_used == 0
    })
}

/// A chat client.
pub struct Client {
    pub ws: Stream,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16, String),
    /// The connection ended without a close frame.
    Dropped,
}

impl Client {
    /// Connects to `/v1/chat/ws`, offering `protocols`.
    pub async fn connect(addr: SocketAddr, protocols: &[&str]) -> Client {
        let mut request = format!("ws://{addr}/v1/chat/ws")
            .into_client_request()
            .expect("request");
        if !protocols.is_empty() {
            let value = protocols.join(", ").parse().expect("header value");
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", value);
        }
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket handshake");
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Client { ws, protocol }
    }

    /// Connects and authenticates with an `auth` message (`key`: none when the server
    /// has no keys); returns the client and its `ready` message.
    pub async fn ready(addr: SocketAddr, key: Option<&str>) -> (Client, Value) {
        let mut client = Client::connect(addr, &["tessera.chat.v1"]).await;
        if let Some(key) = key {
            client.send(json!({"type": "auth", "api_key": key})).await;
        }
        let ready = client.until("ready").await;
        (client, ready)
    }

    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send");
    }

    /// The next JSON message (control frames skipped); `Err` with how it ended.
    pub async fn next(&mut self) -> Result<Value, Ended> {
        loop {
            let frame = tokio::time::timeout(HANG_GUARD, self.ws.next())
                .await
                .expect("no message within the hang guard");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(text.as_str()).expect("JSON message"))
                }
                Some(Ok(Message::Close(frame))) => return Err(ended(frame)),
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    return Err(Ended::Dropped)
                }
                Some(Err(_)) => return Err(Ended::Dropped),
            }
        }
    }

    /// Messages up to and including the first of type `kind`.
    pub async fn collect_until(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ok(m) => {
                    let done = m["type"] == kind;
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                Err(end) => panic!("socket ended ({end:?}) before `{kind}`; saw {seen:?}"),
            }
        }
    }

    /// The first message of type `kind` (others skipped).
    pub async fn until(&mut self, kind: &str) -> Value {
        self.collect_until(kind).await.pop().expect("message")
    }

    /// Reads until the socket ends; how it ended.
    pub async fn ended(&mut self) -> Ended {
        loop {
            if let Err(end) = self.next().await {
                return end;
            }
        }
    }

    /// Creates a conversation; its id.
    pub async fn conversation(&mut self) -> String {
        self.send(json!({"type": "conversation.create", "title": "test"}))
            .await;
        let created = self.until("conversation.created").await;
        created["conversation"]["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// Sends `text` in `conversation` (with `extra` fields) and reads the turn to its
    /// `generation.done`; (all messages of the turn, the joined delta text).
    pub async fn turn(
        &mut self,
        conversation: &str,
        text: &str,
        extra: Value,
    ) -> (Vec<Value>, String) {
        let mut message =
            json!({"type": "message.send", "conversation_id": conversation, "text": text});
        super::http_support::merge(&mut message, extra);
        self.send(message).await;
        let messages = self.collect_until("generation.done").await;
        (messages.clone(), joined(&messages))
    }
}

/// The text of the `delta`s among `messages`.
pub fn joined(messages: &[Value]) -> String {
    messages
        .iter()
        .filter(|m| m["type"] == "delta")
        .map(|m| m["text"].as_str().unwrap_or(""))
        .collect()
}

fn ended(frame: Option<CloseFrame>) -> Ended {
    match frame {
        Some(f) => Ended::Closed(u16::from(f.code), f.reason.to_string()),
        None => Ended::Closed(1005, String::new()),
    }
}

/// A current-thread runtime for a test body.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Polls `cond` asynchronously (up to the hang guard).
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
