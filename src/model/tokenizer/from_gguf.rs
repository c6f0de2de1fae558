//! Reading a [`GgufVocab`] out of an opened GGUF file (`tokenizer.*` and `general.name`).
//!
//! Owns only the key names and value conversions; consistency checks live in
//! `GgufVocab::validate`, which `from_gguf` runs before returning.

use super::vocab::{invalid, GgufVocab};
use super::TokenizerError;
use crate::model::gguf::{GgufFile, GgufValue};

impl GgufVocab {
    /// Read every `tokenizer.*` key this crate uses from an opened GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let gguf = |source| TokenizerError::Gguf { source };
        let tokens = file
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(gguf)?
            .into_iter()
            .enumerate()
            .map(|(id, text)| match text {
                "" => format!("[EMPTY_{id}]"),
                _ => text.to_owned(),
            })
            .collect();
        let merges = match file.get("tokenizer.ggml.merges") {
            Some(_) => file.get_str_array("tokenizer.ggml.merges").map_err(gguf)?,
            None => Vec::new(),
        };
        let token_types = match file.get("tokenizer.ggml.token_type") {
            Some(_) => file
                .get_i32_array("tokenizer.ggml.token_type")
                .map_err(gguf)?,
            None => Vec::new(),
        };
        let vocab = Self {
            model: file
                .get_str("tokenizer.ggml.model")
                .map_err(gguf)?
                .to_owned(),
            pre: owned(file.opt_str("tokenizer.ggml.pre").map_err(gguf)?),
            tokens,
            token_types,
            scores: read_scores(file)?,
            merges: merges.into_iter().map(str::to_owned).collect(),
            bos_id: file.opt_u32("tokenizer.ggml.bos_token_id").map_err(gguf)?,
            eos_id: file.opt_u32("tokenizer.ggml.eos_token_id").map_err(gguf)?,
            eot_id: file.opt_u32("tokenizer.ggml.eot_token_id").map_err(gguf)?,
            eom_id: file.opt_u32("tokenizer.ggml.eom_token_id").map_err(gguf)?,
            unk_id: file
                .opt_u32("tokenizer.ggml.unknown_token_id")
                .map_err(gguf)?,
            pad_id: file
                .opt_u32("tokenizer.ggml.padding_token_id")
                .map_err(gguf)?,
            add_bos: file
                .opt_bool("tokenizer.ggml.add_bos_token")
                .map_err(gguf)?,
            add_eos: file
                .opt_bool("tokenizer.ggml.add_eos_token")
                .map_err(gguf)?,
            add_space_prefix: file
                .opt_bool("tokenizer.ggml.add_space_prefix")
                .map_err(gguf)?,
            chat_template: owned(file.opt_str("tokenizer.chat_template").map_err(gguf)?),
            model_name: owned(file.opt_str("general.name").map_err(gguf)?),
        };
        vocab.validate()?;
        Ok(vocab)
    }
}

fn owned(value: Option<&str>) -> Option<String> {
    value.map(str::to_owned)
}

/// `tokenizer.ggml.scores` is f32 in most files, i32 in some; llama.cpp accepts both.
fn read_scores(file: &GgufFile) -> Result<Vec<f32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.scores";
    match file.get(KEY) {
        None => Ok(Vec::new()),
        Some(GgufValue::Array(items)) if matches!(items.first(), Some(GgufValue::I32(_))) => items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                GgufValue::I32(score) => Ok(*score as f32),
                other => Err(invalid(
                    KEY,
                    format!("entry {index} is {}, expected i32", other.type_name()),
                )),
            })
            .collect(),
        Some(_) => file
            .get_f32_array(KEY)
            .map_err(|source| TokenizerError::Gguf { source }),
    }
}
