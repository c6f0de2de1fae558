//! tessera: an OpenAI-compatible LLM inference server.
//!
//! Layers, top to bottom (see DESIGN.md): `server` (HTTP) → `engine` (one thread that owns
//! all mutable serving state) → `scheduler` + `kvcache` (which tokens run this step, where
//! their K/V live) → `runner` (flat batch assembly) → `model` (forward pass) → `ops`
//! (CPU kernels). Nothing below `engine` knows about HTTP; nothing below `runner` knows
//! about requests. `safety` (moderation), `dialog` (conversations) and `audit` (the
//! conversation log and review queue) sit above `engine`, beside `server`; `store` below
//! them keeps their data.

pub mod audit;
pub mod cli;
pub mod config;
pub mod dialog;
pub mod engine;
pub mod error;
pub mod kvcache;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod runner;
pub mod safety;
pub mod scheduler;
pub mod server;
pub mod store;
