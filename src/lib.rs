//! tessera: an OpenAI-compatible LLM inference server.
//!
//! Layers, top to bottom (docs/architecture.md): `server` (HTTP), `cli` and `perplexity`
//! (front ends: validation) → `dialog` (conversations, the history window, prompt assembly),
//! `tools` (tool definitions, their prompt, forced-call grammars, the Hermes call parser),
//! `safety` (moderation policy, input check, output guard) and `audit` (the
//! conversation log, retention, the review queue), over `store` (persistence)
//! → `engine` (one thread that owns all mutable serving state) → `scheduler` and
//! `kvcache` (which tokens run this step, which blocks hold their K/V; `spec_decode` the
//! n-gram drafter and draft verification they and the engine use) → `runner` (its
//! own copy of the scheduled requests, flat batch assembly) → `model` (forward pass, K/V
//! memory) → `ops` (CPU kernels). `request` is the vocabulary they share, below all of
//! them. Nothing below `engine` knows about HTTP or the product layer; the runner knows
//! requests only through the `SchedulerOutput`; nothing below `runner` knows about
//! requests. No two files import each other, directly or in a circle
//! (`tests/module_graph.rs`).

pub mod audit;
pub mod backend;
pub mod cli;
pub mod config;
pub mod dialog;
pub mod engine;
pub mod error;
pub mod kvcache;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod request;
pub mod runner;
pub mod safety;
pub mod scheduler;
pub mod server;
pub mod spec_decode;
pub mod store;
pub mod structured;
pub mod tools;
