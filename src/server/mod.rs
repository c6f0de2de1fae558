//! The OpenAI-compatible HTTP server (actix-web).
//!
//! Request path: `conn_guard` (every connection: request heads checked before actix sees
//! them, refused ones answered in the OpenAI shape) → `gate` (request id, access log,
//! metrics, the OpenAI body on every error) → the route's `access` check (API key
//! unless the route is open) → a handler in `routes` (body read with `gate::read_body`,
//! then on the `cpu` pool: parse → `validate` into a `ValidRequest`; admission `Permit`
//! from `state` → `generate::submit`) → `sse` (streamed) or `Generation::collect` (whole
//! response), both shaped by `response`. Every error is an `error::ApiError`, turned
//! into a response by `error::http_error` alone.
//! `serve` owns the process life: loading, readiness, signals and draining. `observe`
//! records what generation requests did (metrics, outcome, one log line each);
//! `logging` sets up the text or JSON log format. `responses` and `conversations` are
//! the OpenAI Responses and Conversations routes over the dialog layer (`crate::dialog`),
//! sharing `dialog_http`. `content_filter` runs the moderation policy (`crate::safety`)
//! on the generation routes; `moderations` serves `/v1/moderations` and the policy's
//! reload. `ws` is the chat page's WebSocket (`/v1/chat/ws`), `web` serves the page
//! itself, `feedback` takes ratings of responses over HTTP. `router_compat` answers what
//! LLM-aware routers (SGLang's Model Gateway, vllm-router) ask of a worker; `gate` names
//! the replica on every response (`X-Tessera-Replica`) and marks refusals that started
//! nothing (`X-Tessera-Not-Started`). `exchange` tells the conversation log (`crate::audit`) of each exchange;
//! `admin` is the log's admin API (review queue, verdicts, threads).

pub mod access;
pub mod admin;
pub mod conn_guard;
pub mod connections;
pub mod content_filter;
pub mod conversations;
pub mod cpu;
pub mod dialog_http;
pub mod exchange;
pub mod feedback;
pub mod gate;
pub mod generate;
pub mod guided;
pub mod logging;
pub mod lora;
pub mod moderations;
pub mod observe;
pub mod request;
pub mod response;
pub mod responses;
pub mod router_compat;
pub mod routes;
pub mod serve;
pub mod sse;
pub mod state;
pub mod tool_calls;
pub mod validate;
pub mod web;
pub mod ws;

pub use serve::{serve, spawn, SpawnedServer, HOLD_LOADING_ENV};
pub use state::{AppState, Phase, ServerConfig};
