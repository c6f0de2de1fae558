//! One WebSocket from upgrade to close: authentication, the message loop (limits, rate,
//! heartbeats), the requests that answer at once (conversations, ratings, ping), the
//! generations it runs (`turns.rs`), and the close.
//!
//! Invariants: before authentication only `auth` is accepted; every client message is
//! counted against the socket's token bucket before it is parsed; the loop's end aborts
//! every generation of the socket (its tasks are dropped with their engine streams) and
//! queues one close frame; a client that has not taken the close within `CLOSE_GRACE`
//! loses its connection (`KillSwitch`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::rt::task::JoinHandle;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::frames::{Incoming, ReadError, Reader};
use super::outbound::{Outbox, CLOSE_GRACE};
use super::protocol::{self, close, message, ClientMessage};
use super::requests;
use super::turns::{self, Job, TurnKind};
use super::{owner_for_key, SocketSlot, SUBPROTOCOL};
use crate::error::ApiError;
use crate::server::conn_guard::KillSwitch;
use crate::server::exchange::Peer;
use crate::server::state::{AppState, Phase};
use crate::store::Owner;

/// What `chat_ws` hands the socket task.
pub struct Start {
    pub state: Arc<AppState>,
    pub outbox: Outbox,
    pub reader: Reader,
    pub kill: Option<Arc<KillSwitch>>,
    /// The result of a key offered as a subprotocol, if one was.
    pub preauth: Option<Result<Owner, ApiError>>,
    pub request_id: String,
    pub peer: Peer,
}

/// Why the loop ended: the close frame to send (none: the client is gone).
type Ending = Option<(u16, String)>;

/// A generation of this socket.
struct Running {
    conversation_id: String,
    /// Sending (or dropping) it stops the generation.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Messages a client may send far above its rate before the socket is closed.
const STRIKE_LIMIT: u32 = 100;

/// A token bucket of client messages.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    /// Messages refused since the last one let through.
    strikes: u32,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

struct Socket {
    state: Arc<AppState>,
    outbox: Outbox,
    owner: Option<Owner>,
    slot: Option<SocketSlot>,
    generations: HashMap<String, Running>,
    finished: mpsc::UnboundedSender<String>,
    bucket: Bucket,
    last_seen: Instant,
    next_generation: u64,
    request_id: String,
    peer: Peer,
}

/// Runs one socket to its end.
pub async fn run(start: Start) {
    let Start {
        state,
        outbox,
        mut reader,
        kill,
        preauth,
        request_id,
        peer,
    } = start;
    let limits = state.config.chat.limits;
    let (finished, mut done) = mpsc::unbounded_channel();
    let mut socket = Socket {
        state,
        outbox,
        owner: None,
        slot: None,
        generations: HashMap::new(),
        finished,
        bucket: Bucket {
            tokens: f64::from(limits.burst),
            rate: limits.messages_per_second,
            burst: f64::from(limits.burst),
            last: Instant::now(),
            strikes: 0,
        },
        last_seen: Instant::now(),
        next_generation: 0,
        request_id,
        peer,
    };
    let mut ending = match preauth {
        Some(result) => socket.authenticate(result, None),
        None if socket.state.config.api_keys.is_empty() => {
            socket.authenticate(Ok(Owner::anonymous()), None)
        }
        None => None,
    };
    if ending.is_none() {
        ending = socket.serve(&mut reader, &mut done).await;
    }
    socket.finish(ending, reader, kill).await;
}

impl Socket {
    fn limits(&self) -> super::WsLimits {
        self.state.config.chat.limits
    }

    /// The message loop; returns how the socket ends.
    async fn serve(
        &mut self,
        reader: &mut Reader,
        done: &mut mpsc::UnboundedReceiver<String>,
    ) -> Ending {
        let limits = self.limits();
        let mut heartbeat = actix_web::rt::time::interval(limits.heartbeat);
        heartbeat.tick().await;
        let auth_deadline = actix_web::rt::time::sleep(limits.auth);
        tokio::pin!(auth_deadline);
        let outbox = self.outbox.clone();
        loop {
            let end = tokio::select! {
                frame = reader.recv() => self.on_frame(frame).await,
                Some(id) = done.recv() => {
                    self.generations.remove(&id);
                    None
                }
                _ = heartbeat.tick() => self.on_heartbeat(),
                () = &mut auth_deadline, if self.owner.is_none() => Some(Some((
                    close::UNAUTHORIZED,
                    format!("no `auth` message within {} s", limits.auth.as_secs_f64()),
                ))),
                () = outbox.overflowed() => Some(Some((
                    close::SLOW_READER,
                    format!("the client reads too slowly: the send buffer ({} bytes) is full", limits.send_buffer),
                ))),
            };
            if let Some(ending) = end {
                return ending;
            }
        }
    }

    /// Pings the client, or ends a socket that went silent or a server that drains.
    fn on_heartbeat(&mut self) -> Option<Ending> {
        let limits = self.limits();
        if self.state.phase() == Phase::Draining && self.generations.is_empty() {
            return Some(Some((
                close::GOING_AWAY,
                "the server is shutting down".into(),
            )));
        }
        if self.last_seen.elapsed() > limits.idle {
            let secs = limits.idle.as_secs_f64();
            return Some(Some((
                close::TIMEOUT,
                format!("nothing heard from the client in {secs} s"),
            )));
        }
        self.outbox.ping();
        None
    }

    /// One client message (or the end of the stream); `Some` ends the loop.
    async fn on_frame(&mut self, frame: Option<Result<Incoming, ReadError>>) -> Option<Ending> {
        self.last_seen = Instant::now();
        let max = self.limits().max_message_bytes;
        match frame {
            None => Some(None),
            Some(Err(ReadError::TooBig)) => Some(Some((
                close::MESSAGE_TOO_BIG,
                format!("a message was larger than the limit of {max} bytes"),
            ))),
            Some(Err(ReadError::Protocol(e))) => Some(Some((
                close::PROTOCOL_ERROR,
                format!("WebSocket protocol error: {e}"),
            ))),
            Some(Ok(Incoming::Ping(payload))) => {
                self.outbox.pong(payload);
                None
            }
            Some(Ok(Incoming::Pong)) => None,
            // The client closes: answer with a normal close.
            Some(Ok(Incoming::Close)) => Some(Some((1000, String::new()))),
            Some(Ok(Incoming::Binary)) => Some(Some((
                close::UNSUPPORTED_DATA,
                "the protocol takes JSON text messages, not binary ones".into(),
            ))),
            Some(Ok(Incoming::Text(text))) => self.on_text(&text).await,
        }
    }

    /// One text message: rate, parse, authenticate, answer.
    async fn on_text(&mut self, text: &str) -> Option<Ending> {
        if !self.bucket.take() {
            if self.bucket.strikes > STRIKE_LIMIT {
                return Some(Some((
                    close::TOO_MANY,
                    "far too many messages per second".into(),
                )));
            }
            let limit = self.limits().messages_per_second;
            let err = ApiError::RateLimited(format!(
                "more than {limit} messages per second on this socket; this one was dropped"
            ));
            self.outbox.send(&protocol::error(None, &err, json!({})));
            return None;
        }
        let (id, parsed) = match protocol::parse(text) {
            Ok(ok) => ok,
            Err(bad) => {
                if self.owner.is_none() {
                    return Some(Some((close::UNAUTHORIZED, bad.error.to_string())));
                }
                self.outbox
                    .send(&protocol::error(bad.id.as_deref(), &bad.error, json!({})));
                return None;
            }
        };
        let id = id.as_deref();
        match (parsed, self.owner.clone()) {
            (ClientMessage::Auth(auth), None) => {
                let result = owner_for_key(&self.state.config.api_keys, Some(&auth.api_key));
                self.authenticate(result, id).map(Some)
            }
            (_, None) => Some(Some((
                close::UNAUTHORIZED,
                format!(
                    "authenticate first: send {{\"type\": \"auth\", \"api_key\": KEY}} or offer the subprotocols `{SUBPROTOCOL}` and `bearer.KEY`"
                ),
            ))),
            (ClientMessage::Auth(_), Some(_)) => {
                self.outbox.send(&self.ready(id));
                None
            }
            (message, Some(owner)) => {
                self.dispatch(message, &owner, id).await;
                None
            }
        }
    }

    /// Admits the socket as `result`'s owner (counted per key) and says `ready`; the
    /// close on a bad key or too many sockets.
    fn authenticate(&mut self, result: Result<Owner, ApiError>, id: Option<&str>) -> Ending {
        let owner = match result {
            Ok(owner) => owner,
            Err(_) => {
                let reason = "missing or invalid API key: offer the subprotocol `bearer.KEY` \
                     or send an `auth` message with a key given to --api-key";
                return Some((close::UNAUTHORIZED, reason.into()));
            }
        };
        let limit = self.limits().sockets_per_key;
        let Some(slot) = self.state.ws.enter(&owner, limit) else {
            return Some((
                close::TOO_MANY,
                format!("this API key has {limit} sockets open (the limit)"),
            ));
        };
        self.slot = Some(slot);
        self.owner = Some(owner);
        self.outbox.send(&self.ready(id));
        None
    }

    /// `ready`: the model, the input limit of the moderation policy, the defaults.
    fn ready(&self, id: Option<&str>) -> Value {
        let defaults = self.state.config.chat.defaults;
        let limits = self.limits();
        let max_input_chars = self
            .state
            .moderation
            .policy()
            .and_then(|p| p.input_rules.max_input_chars);
        message(
            "ready",
            id,
            json!({
                "model": self.state.base_names().first(),
                "max_input_chars": max_input_chars,
                "defaults": {
                    "temperature": defaults.temperature,
                    "top_p": defaults.top_p,
                    "repetition_penalty": defaults.repetition_penalty,
                    "max_tokens": defaults.max_tokens,
                    "history_turns": defaults.history_turns,
                },
                "limits": {
                    "max_message_bytes": limits.max_message_bytes,
                    "messages_per_second": limits.messages_per_second,
                    "generations_per_socket": limits.generations_per_socket,
                    "max_tokens": limits.max_tokens,
                },
            }),
        )
    }

    /// An authenticated client's message.
    async fn dispatch(&mut self, msg: ClientMessage, owner: &Owner, id: Option<&str>) {
        let answer = match msg {
            ClientMessage::Send(send) => {
                let kind = TurnKind::Send { text: send.text };
                self.start_turn(owner, id, send.conversation_id, kind, send.overrides)
            }
            ClientMessage::Regenerate(r) => self.start_turn(
                owner,
                id,
                r.conversation_id,
                TurnKind::Regenerate,
                r.overrides,
            ),
            ClientMessage::Stop(stop) => self.stop(stop),
            ClientMessage::Ping => Ok(message("pong", id, json!({}))),
            other => requests::answer(&self.state, owner, id, other).await,
        };
        let reply = answer.unwrap_or_else(|e| protocol::error(id, &e, json!({})));
        if !reply.is_null() {
            self.outbox.send(&reply);
        }
    }

    /// Starts a generation task (`Value::Null`: it answers for itself).
    fn start_turn(
        &mut self,
        owner: &Owner,
        id: Option<&str>,
        conversation_id: String,
        kind: TurnKind,
        overrides: protocol::Overrides,
    ) -> Result<Value, ApiError> {
        let limit = self.limits().generations_per_socket;
        if self.generations.len() >= limit {
            return Err(ApiError::RateLimited(format!(
                "this socket already runs {limit} generations (the limit); stop one or wait"
            )));
        }
        if self
            .generations
            .values()
            .any(|g| g.conversation_id == conversation_id)
        {
            return Err(ApiError::InvalidRequest {
                message: format!("conversation `{conversation_id}` already has a generation running; stop it first"),
                param: Some("conversation_id".into()),
            });
        }
        self.next_generation += 1;
        let generation_id = format!("gen_{}", self.next_generation);
        let (stop, stopped) = oneshot::channel();
        let job = Job {
            state: self.state.clone(),
            owner: owner.clone(),
            outbox: self.outbox.clone(),
            reply_to: id.map(str::to_string),
            generation_id: generation_id.clone(),
            conversation_id: conversation_id.clone(),
            kind,
            overrides,
            request_id: format!("{}-{}", self.request_id, generation_id),
            peer: self.peer.clone(),
        };
        let finished = self.finished.clone();
        let gen_id = generation_id.clone();
        let task = actix_web::rt::spawn(async move {
            turns::run(job, stopped).await;
            let _ = finished.send(gen_id);
        });
        let running = Running {
            conversation_id,
            stop: Some(stop),
            task,
        };
        self.generations.insert(generation_id, running);
        Ok(Value::Null)
    }

    /// `generation.stop` by generation or conversation id.
    fn stop(&mut self, stop: protocol::Stop) -> Result<Value, ApiError> {
        let found = self.generations.iter_mut().find(|(gen, running)| {
            stop.generation_id.as_deref() == Some(gen.as_str())
                || stop.conversation_id.as_deref() == Some(running.conversation_id.as_str())
        });
        let Some((_, running)) = found else {
            return Err(ApiError::InvalidRequest {
                message: "no running generation matches `generation_id` / `conversation_id`".into(),
                param: Some("generation_id".into()),
            });
        };
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
        Ok(Value::Null)
    }

    /// Aborts the generations, sends the close frame, and drops a connection whose
    /// client does not answer it in time.
    async fn finish(mut self, ending: Ending, mut reader: Reader, kill: Option<Arc<KillSwitch>>) {
        for (_, running) in self.generations.drain() {
            running.task.abort();
        }
        let Some((code, reason)) = ending else {
            self.outbox.close(1000, "");
            return;
        };
        tracing::info!(request_id = %self.request_id, code, %reason, "closing the chat socket");
        self.state.ws.record_close(code);
        self.outbox.close(code, &reason);
        let answered = async {
            while let Some(Ok(frame)) = reader.recv().await {
                if matches!(frame, Incoming::Close) {
                    break;
                }
            }
        };
        if actix_web::rt::time::timeout(CLOSE_GRACE, answered)
            .await
            .is_err()
        {
            if let Some(kill) = kill {
                tracing::info!(request_id = %self.request_id, "the client did not answer the close frame; dropping the connection");
                kill.pull();
            }
        }
        drop(self.slot.take());
    }
}
