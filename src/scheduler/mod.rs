//! Continuous-batching scheduler (vLLM v1 contract).

pub mod output;
