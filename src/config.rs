//! Engine configuration (flag names follow vLLM's: `--max-num-seqs`,
//! `--max-num-batched-tokens`, `--max-model-len`, `--block-size`, …) and the KV cache
//! sizing rule.

use std::path::PathBuf;

use crate::backend::Device;
use crate::model::kv_storage::KvCacheDtype;
pub use crate::model::lora::registry::LoraOptions;
use crate::model::quantize::Quantization;
use crate::spec_decode::SpecDecodeConfig;

/// How the engine is sized. Defaults suit a small model on a few CPU cores.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Maximum sequences in one step.
    pub max_num_seqs: usize,
    /// Token budget of one step (chunked prefill splits longer prompts).
    pub max_num_batched_tokens: usize,
    /// Maximum prompt + output tokens; `None` = the model's trained context length.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV cache (ignored when `num_kv_blocks` is set).
    pub kv_cache_memory: u64,
    /// Exact number of KV blocks.
    pub num_kv_blocks: Option<usize>,
    pub enable_prefix_caching: bool,
    /// Cap on one request's prefill chunk per step (0 = no cap beyond the budget).
    pub long_prefill_token_threshold: usize,
    /// Compute threads (0 = available cores).
    pub num_threads: usize,
    /// Quantize the model's float weights at load (`--quantization`); `None` = as stored.
    pub quantization: Option<Quantization>,
    /// LoRA adapters served on the model (`--lora-modules`, `--max-loras`,
    /// `--max-lora-rank`).
    pub lora: LoraOptions,
    /// Speculative decoding with the n-gram drafter (`--speculative-ngram`); `None` = off.
    pub speculative: Option<SpecDecodeConfig>,
    /// K/V cache storage (`--kv-cache-dtype`): f16 (`auto`) or Q8_0 blocks.
    pub kv_cache_dtype: KvCacheDtype,
    /// Where the forward pass runs (`--device`): the CPU, or a CUDA GPU (feature `cuda`).
    pub device: Device,
    /// Share of the GPU's memory this engine may use for weights, activations and the KV
    /// cache (`--gpu-memory-utilization`, vLLM's meaning); `--device cuda` only.
    pub gpu_memory_utilization: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_num_batched_tokens: 1024,
            max_model_len: None,
            block_size: 16,
            kv_cache_memory: 1 << 30,
            num_kv_blocks: None,
            enable_prefix_caching: true,
            long_prefill_token_threshold: 0,
            num_threads: 0,
            quantization: None,
            lora: LoraOptions::default(),
            speculative: None,
            kv_cache_dtype: KvCacheDtype::Auto,
            device: Device::Cpu,
            gpu_memory_utilization: 0.9,
        }
    }
}

impl EngineConfig {
    /// Number of KV blocks given the bytes one block costs over all layers.
    pub fn num_blocks(&self, bytes_per_block: usize) -> usize {
        self.num_kv_blocks
            .unwrap_or((self.kv_cache_memory / bytes_per_block.max(1) as u64) as usize)
    }
}

/// Parses sizes like `1GiB`, `512MiB`, `2G`, `1.5GB`, `4096` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 1GiB, 512MiB, 4096)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    Ok((value * scale) as u64)
}

/// One `--lora-modules` value, `name=path` (vLLM's form).
pub fn parse_lora_module(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.trim().is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(path.trim())))
        }
        _ => Err(format!(
            "`{text}` is not `name=path` (e.g. --lora-modules sql=/adapters/sql.gguf)"
        )),
    }
}

/// Where the default model lives after `scripts/fetch-model.sh`.
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("TESSERA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    cache.join("models").join(DEFAULT_MODEL_FILE)
}

/// File name of the default model (SmolLM2-135M-Instruct, GGUF Q4_1).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn lora_modules_are_name_equals_path() {
        assert_eq!(
            parse_lora_module("sql=/a/b.gguf").unwrap(),
            ("sql".to_string(), PathBuf::from("/a/b.gguf"))
        );
        for bad in ["sql", "=x.gguf", "sql=", ""] {
            assert!(parse_lora_module(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocks_from_memory_or_explicit_count() {
        let mut cfg = EngineConfig {
            kv_cache_memory: 1000,
            ..EngineConfig::default()
        };
        assert_eq!(cfg.num_blocks(100), 10);
        cfg.num_kv_blocks = Some(7);
        assert_eq!(cfg.num_blocks(100), 7);
    }
}
