//! The physical K/V memory of every layer, owned by the model runner. Which block holds
//! which request's tokens is bookkeeping done elsewhere (`crate::kvcache`: block pool,
//! block tables, prefix cache); this type only holds the numbers.
//!
//! Two storage types (`--kv-cache-dtype`, vLLM's flag name):
//! - `auto`: f16 `[num_blocks, block_size, n_kv_heads, head_dim]` per layer for K and V
//!   (llama.cpp's default `-ctk f16 -ctv f16`);
//! - `q8_0`: llama.cpp's `-ctk q8_0 -ctv q8_0`: each token's head row is ggml Q8_0 blocks
//!   of 32 values along head_dim, `[num_blocks, block_size, n_kv_heads, head_dim / 32]`
//!   blocks of 34 bytes (written by `act_quant::quantize_q8_0`, ggml's
//!   `quantize_row_q8_0`), so a KV block costs 34/64 of the f16 one and ~1.9× as many fit
//!   in the same `--kv-cache-memory`. Where head_dim is a multiple of 64, the rows are
//!   stored Hadamard-rotated, as llama.cpp stores them (`LayerKv::rotation`).
//!
//! Invariant: every layer holds the same type, and a `q8_0` cache only exists for a
//! head_dim that is a multiple of 32 (`KvCacheDtype::check`).

use std::fmt;
use std::str::FromStr;

use half::f16;

use crate::ops::act_quant::Q8_0;
use crate::ops::attention::{KvGeometry, KvRotation};

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;

/// The K/V cache's storage type (`--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// f16 (llama.cpp's default cache type).
    #[default]
    Auto,
    /// ggml Q8_0 blocks along head_dim (llama.cpp's `-ctk q8_0 -ctv q8_0 -fa on`).
    Q8_0,
}

/// The values `--kv-cache-dtype` takes.
pub const CHOICES: &str = "auto, q8_0";

impl FromStr for KvCacheDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(KvCacheDtype::Auto),
            "q8_0" => Ok(KvCacheDtype::Q8_0),
            other => Err(format!(
                "--kv-cache-dtype must be one of: {CHOICES}. Given: `{other}`"
            )),
        }
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Q8_0 => "q8_0",
        })
    }
}

impl KvCacheDtype {
    /// Refuses a model this type cannot store: Q8_0 blocks run along head_dim, so it must
    /// be a multiple of 32 (llama.cpp refuses the same).
    pub fn check(self, geo: KvGeometry) -> Result<(), String> {
        if self == KvCacheDtype::Q8_0 && !geo.head_dim.is_multiple_of(QK8_0) {
            return Err(format!(
                "--kv-cache-dtype q8_0 stores K/V as blocks of {QK8_0} values along head_dim, \
                 but this model's head_dim is {}; serve it with --kv-cache-dtype auto",
                geo.head_dim
            ));
        }
        Ok(())
    }

    /// Bytes of one token's K (or V) row of one layer: `n_kv_heads * head_dim` values.
    pub fn token_row_bytes(self, geo: KvGeometry) -> usize {
        match self {
            KvCacheDtype::Auto => geo.token_stride() * std::mem::size_of::<f16>(),
            KvCacheDtype::Q8_0 => geo.token_stride() / QK8_0 * std::mem::size_of::<Q8_0>(),
        }
    }
}

/// One layer's K and V memory.
pub enum LayerKv {
    /// `[num_blocks, block_size, n_kv_heads, head_dim]` each.
    F16 { k: Vec<f16>, v: Vec<f16> },
    /// `[num_blocks, block_size, n_kv_heads, head_dim / 32]` blocks each.
    Q8_0 { k: Vec<Q8_0>, v: Vec<Q8_0> },
}

impl LayerKv {
    /// The Hadamard rotation llama.cpp applies to Q/K/V rows and the attention output
    /// around a quantized cache (`ops::attention::KvRotation`); none for f16.
    pub fn rotation(&self, head_dim: usize) -> Option<KvRotation> {
        match self {
            LayerKv::F16 { .. } => None,
            LayerKv::Q8_0 { .. } => KvRotation::for_head_dim(head_dim),
        }
    }
}

/// All layers' K/V memory.
pub struct KvStorage {
    pub geo: KvGeometry,
    pub dtype: KvCacheDtype,
    pub num_blocks: usize,
    pub layers: Vec<LayerKv>,
}

impl KvStorage {
    /// Zeroed memory for `num_blocks` blocks of every layer (`dtype.check(geo)` passed).
    pub fn new(n_layers: usize, num_blocks: usize, geo: KvGeometry, dtype: KvCacheDtype) -> Self {
        let len = num_blocks * geo.block_size * geo.token_stride();
        let layers = (0..n_layers)
            .map(|_| match dtype {
                KvCacheDtype::Auto => LayerKv::F16 {
                    k: vec![f16::ZERO; len],
                    v: vec![f16::ZERO; len],
                },
                KvCacheDtype::Q8_0 => LayerKv::Q8_0 {
                    k: vec![Q8_0::ZERO; len / QK8_0],
                    v: vec![Q8_0::ZERO; len / QK8_0],
                },
            })
            .collect();
        Self {
            geo,
            dtype,
            num_blocks,
            layers,
        }
    }

    /// Bytes one block takes over all layers (K and V).
    pub fn bytes_per_block(n_layers: usize, geo: KvGeometry, dtype: KvCacheDtype) -> usize {
        2 * n_layers * geo.block_size * dtype.token_row_bytes(geo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: KvGeometry = KvGeometry {
        block_size: 16,
        n_kv_heads: 3,
        head_dim: 64,
    };

    #[test]
    fn dtype_parses_the_two_choices_and_names_a_wrong_value() {
        assert_eq!("auto".parse(), Ok(KvCacheDtype::Auto));
        assert_eq!("q8_0".parse(), Ok(KvCacheDtype::Q8_0));
        let err = "fp8".parse::<KvCacheDtype>().unwrap_err();
        assert_eq!(
            err,
            "--kv-cache-dtype must be one of: auto, q8_0. Given: `fp8`"
        );
    }

    #[test]
    fn q8_0_blocks_cost_34_of_64_bytes() {
        // SmolLM2-135M: 30 layers, 3 kv heads of 64.
        let f16 = KvStorage::bytes_per_block(30, SMOLLM2, KvCacheDtype::Auto);
        let q8 = KvStorage::bytes_per_block(30, SMOLLM2, KvCacheDtype::Q8_0);
        assert_eq!(f16, 2 * 30 * 16 * 192 * 2);
        assert_eq!(q8, 2 * 30 * 16 * 6 * 34);
        assert_eq!(f16 * 34, q8 * 64);
    }

    #[test]
    fn q8_0_needs_head_dim_a_multiple_of_32() {
        let odd = KvGeometry {
            head_dim: 48,
            ..SMOLLM2
        };
        assert!(KvCacheDtype::Auto.check(odd).is_ok());
        assert!(KvCacheDtype::Q8_0.check(SMOLLM2).is_ok());
        let err = KvCacheDtype::Q8_0.check(odd).unwrap_err();
        assert!(err.contains("head_dim is 48"), "{err}");
    }

    #[test]
    fn storage_holds_the_chosen_type() {
        let kv = KvStorage::new(2, 3, SMOLLM2, KvCacheDtype::Q8_0);
        assert_eq!(kv.layers.len(), 2);
        match &kv.layers[0] {
            LayerKv::Q8_0 { k, v } => {
                assert_eq!(k.len(), 3 * 16 * 6);
                assert_eq!(v.len(), k.len());
            }
            LayerKv::F16 { .. } => panic!("q8_0 storage holds f16"),
        }
    }
}
