//! Paged KV cache bookkeeping: the block pool, prefix hashing and the per-request
//! block tables. Physical K/V storage lives with the runner; this module only hands out
//! block ids.

pub mod block_pool;
pub mod hash;
pub mod manager;
