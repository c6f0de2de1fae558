//! The engine: request state, sampling, detokenization and (later) the engine thread loop
//! `schedule → execute → sample → update → emit`.

pub mod detokenizer;
pub mod request;
pub mod sampler;
