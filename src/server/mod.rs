//! The OpenAI-compatible HTTP server (actix-web).
//!
//! Request path: `gate` (request id, API key, access log) → a handler in `routes`
//! (parse with `gate::read_json` → `validate` into a `ValidRequest` → admission
//! `Permit` from `state` → `generate::submit`) → `sse` (streamed) or
//! `Generation::collect` (whole response), both shaped by `response`. Every error is an
//! `error::ApiError`, turned into a response by `error::http_error` alone.
//! `serve` owns the process life: loading, readiness, signals and draining. `observe`
//! records what generation requests did (metrics, outcome, one log line each);
//! `logging` sets up the text or JSON log format. `content_filter` runs the moderation
//! policy (`crate::safety`) on the generation routes; `moderations` serves
//! `/v1/moderations` and the policy's reload.

pub mod content_filter;
pub mod gate;
pub mod generate;
pub mod logging;
pub mod moderations;
pub mod observe;
pub mod request;
pub mod response;
pub mod routes;
pub mod serve;
pub mod sse;
pub mod state;
pub mod validate;

pub use serve::{serve, spawn, SpawnedServer};
pub use state::{AppState, Phase, ServerConfig};
