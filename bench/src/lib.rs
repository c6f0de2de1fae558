//! tessera-bench: a load generator for any OpenAI-compatible HTTP server (SSE streaming).
//!
//! It never assumes it talks to tessera: every request is a plain `/v1/completions` or
//! `/v1/chat/completions` call, and every figure comes from what the client observes on the
//! wire (plus `/proc` for a local server's peak RSS).
//!
//! Layers, bottom up: `http` (minimal HTTP/1.1 over std::net) → `sse` (event parser) →
//! `stream` (one timed streaming request) → `scenario` (sweep, rate, dialog, prefill) →
//! `stats` / `report` / `plot` (figures, JSON, markdown, PNG). `machine` measures the host's
//! memory bandwidth and FMA peak; `gguf` reads a model file's weight bytes and parameters
//! (through tessera's own GGUF reader: the file is an input, not something measured, so
//! one parser serves both); `procfs` reads peak RSS and the client's own CPU time.

pub mod compare;
pub mod error;
pub mod gguf;
pub mod http;
pub mod machine;
pub mod plot;
pub mod procfs;
pub mod prompts;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sse;
pub mod stats;
pub mod stream;

pub use error::BenchError;
