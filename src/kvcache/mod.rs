//! Paged KV cache bookkeeping: the block pool, prefix hashing and the per-request
//! block tables, owned by the scheduler. The memory those block ids index is
//! `model::kv_storage`, owned by the runner; this module only hands out block ids.

pub mod block_pool;
pub mod hash;
pub mod manager;
