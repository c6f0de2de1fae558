//! The engine: one thread that owns all mutable serving state and runs the loop
//! `schedule → execute → sample → update → emit` (`core`), over the scheduler
//! (`crate::scheduler`) and the model runner (`crate::runner`).
//!
//! `handle` is its public face (start the thread, `submit` a validated request, abort,
//! shut down; the HTTP side and the CLI talk to the thread only through channels),
//! `stream` the consumer side of one request (incremental detokenization, stop strings,
//! latencies), `error` why a request could not be served, `sampler` the per-request
//! token choice, `detokenizer` the UTF-8-safe incremental decoding, and `launch` the one
//! way to load a model and start an engine.

pub mod core;
pub mod detokenizer;
pub mod error;
pub mod handle;
pub mod launch;
pub mod sampler;
pub mod stream;
