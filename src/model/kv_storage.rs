//! The physical K/V memory of every layer: `[num_blocks, block_size, n_kv_heads,
//! head_dim]` f16 per layer for K and for V, owned by the model runner. Which block
//! holds which request's tokens is bookkeeping done elsewhere (`crate::kvcache`: block
//! pool, block tables, prefix cache); this type only holds the numbers. Allocated
//! zeroed, so pages are only resident once a block is first written.

use half::f16;

use crate::ops::attention::KvGeometry;

/// One layer's K and V memory.
pub struct LayerKv {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

/// All layers' K/V memory.
pub struct KvStorage {
    pub geo: KvGeometry,
    pub num_blocks: usize,
    pub layers: Vec<LayerKv>,
}

impl KvStorage {
    pub fn new(n_layers: usize, num_blocks: usize, geo: KvGeometry) -> Self {
        let len = num_blocks * geo.block_size * geo.token_stride();
        let layers = (0..n_layers)
            .map(|_| LayerKv {
                k: vec![f16::ZERO; len],
                v: vec![f16::ZERO; len],
            })
            .collect();
        Self {
            geo,
            num_blocks,
            layers,
        }
    }

    /// Bytes one block takes over all layers (K and V).
    pub fn bytes_per_block(n_layers: usize, geo: KvGeometry) -> usize {
        2 * n_layers * geo.block_size * geo.token_stride() * std::mem::size_of::<f16>()
    }
}
