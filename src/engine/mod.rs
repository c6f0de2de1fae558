//! The engine: request state, sampling, detokenization and (later) the engine thread loop
//! `schedule → execute → sample → update → emit`.

pub mod core;
pub mod detokenizer;
pub mod handle;
pub mod sampler;
pub mod stream;
