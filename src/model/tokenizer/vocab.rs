//! `GgufVocab`: the tokenizer description stored in a GGUF file's `tokenizer.*` (and
//! `general.name`) metadata, as plain owned data.
//!
//! Owns: reading those keys (`from_gguf`) and checking their mutual consistency
//! (`validate`). Invariants after `validate` succeeds: `tokens` is non-empty, has no
//! duplicate texts; `token_types` and `scores` are empty or at least as long as `tokens`
//! (llama.cpp's rule); every special id set here is `< tokens.len()`.
//! Empty token texts are renamed `[EMPTY_i]` on load, as llama.cpp does, so every id has
//! a distinct, non-empty text.

use std::collections::HashSet;

use super::TokenizerError;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of one model, as stored in its GGUF file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer regexes a BPE vocab uses.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token text by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` by id (see [`token_type`]); empty = all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` by id (SentencePiece merge priority); empty = all 0.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`: BPE merges "left right", highest priority first.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; `None` = the model type's default.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; `None` = the model type's default.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`; `None` = the model type's default.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`: the model's Jinja chat template.
    pub chat_template: Option<String>,
    /// `general.name`: llama.cpp keys a few per-model token attributes off it (Phi-3).
    pub model_name: Option<String>,
}

impl GgufVocab {
    /// Check the invariants listed in the module header.
    pub fn validate(&self) -> Result<(), TokenizerError> {
        let n_tokens = self.tokens.len();
        if n_tokens == 0 {
            return Err(invalid("tokenizer.ggml.tokens", "is empty".into()));
        }
        if u32::try_from(n_tokens).is_err() {
            return Err(invalid(
                "tokenizer.ggml.tokens",
                format!("has {n_tokens} entries, above u32::MAX"),
            ));
        }
        for (key, len) in [
            ("tokenizer.ggml.token_type", self.token_types.len()),
            ("tokenizer.ggml.scores", self.scores.len()),
        ] {
            if len != 0 && len < n_tokens {
                let detail = format!("has {len} entries but tokenizer.ggml.tokens has {n_tokens}");
                return Err(invalid(key, detail));
            }
        }
        let mut seen = HashSet::with_capacity(n_tokens);
        for (id, text) in self.tokens.iter().enumerate() {
            if text.is_empty() {
                return Err(invalid(
                    "tokenizer.ggml.tokens",
                    format!("entry {id} is empty"),
                ));
            }
            if !seen.insert(text.as_str()) {
                let detail = format!("entry {id} ({text:?}) repeats an earlier token's text");
                return Err(invalid("tokenizer.ggml.tokens", detail));
            }
        }
        self.validate_special_ids()
    }

    fn validate_special_ids(&self) -> Result<(), TokenizerError> {
        let n_tokens = self.tokens.len();
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos_id),
            ("tokenizer.ggml.eos_token_id", self.eos_id),
            ("tokenizer.ggml.eot_token_id", self.eot_id),
            ("tokenizer.ggml.eom_token_id", self.eom_id),
            ("tokenizer.ggml.unknown_token_id", self.unk_id),
            ("tokenizer.ggml.padding_token_id", self.pad_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n_tokens) {
                let detail = format!("is {id}, but the vocabulary has only {n_tokens} tokens");
                return Err(invalid(key, detail));
            }
        }
        Ok(())
    }

    /// The GGUF token type of `id` ([`token_type::NORMAL`] when the file has none).
    pub fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .get(id)
            .copied()
            .unwrap_or(token_type::NORMAL)
    }

    /// The SentencePiece score of `id` (0 when the file has none).
    pub fn score(&self, id: usize) -> f32 {
        self.scores.get(id).copied().unwrap_or(0.0)
    }
}

pub(super) fn invalid(key: &'static str, detail: String) -> TokenizerError {
    TokenizerError::InvalidVocab { key, detail }
}
