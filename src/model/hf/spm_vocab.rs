//! The text side of an InternLM2 folder: SentencePiece `tokenizer.model` +
//! `tokenizer_config.json` (+ optional `added_tokens.json`), turned into the same
//! `GgufVocab` llama.cpp's converter writes for it (`InternLM2Model.set_vocab`), then
//! built by the one SentencePiece constructor the GGUF path uses (`Tokenizer::from_vocab`).
//!
//! The converter's rules, in order:
//! - ids `0..vocab_size` (config.json) take the model's pieces; a piece `"\0"` becomes
//!   `"🐉"`; type UNKNOWN / CONTROL / UNUSED / BYTE as the piece says, else NORMAL (a
//!   user-defined piece too); a piece starting `[UNUSED` is UNUSED; score as stored;
//! - `added_tokens.json` entries are appended (score -1000, USER_DEFINED);
//! - each `added_tokens_decoder` entry of tokenizer_config.json replaces its id's text
//!   (score -1000, CONTROL when `special`, else USER_DEFINED); `<|im_end|>`'s id, when
//!   present, becomes EOS;
//! - BOS / EOS / UNK / PAD ids from config.json (EOS is required, as the converter
//!   requires it), the add-BOS/EOS flags and chat template from tokenizer_config.json,
//!   `add_space_prefix` = the model's `add_dummy_prefix`.
//!
//! Refused: a non-BPE model or one without byte fallback (llama.cpp's SentencePiece
//! tokenizer is BPE with byte fallback), a `tokenizer.json` beside it (its added tokens
//! would change the converter's special-token rules), ids out of range.

use std::path::Path;

use serde_json::Value;

use super::config::HfConfig;
use super::error::{read_limited, require_file, HfError};
use super::spm_proto::{parse_model, SpmModel, MODEL_TYPE_BPE};
use super::tokenizer::{chat_template_source, optional_json};
use crate::model::chat_template::ChatTemplate;
use crate::model::tokenizer::{token_type, GgufVocab, Tokenizer};

/// Largest tokenizer.model accepted (real ones are 1-5 MB).
const MAX_TOKENIZER_MODEL: u64 = 64 << 20;
/// Score the converter gives added and replaced tokens.
const ADDED_SCORE: f32 = -1000.0;
/// The chat EOS the converter looks for.
const CHAT_EOS: &str = "<|im_end|>";

fn error(file: &'static str, detail: impl std::fmt::Display) -> HfError {
    HfError::Tokenizer {
        file,
        detail: detail.to_string(),
    }
}

/// Builds the tokenizer and chat template of the InternLM2 folder `dir`.
pub fn load(dir: &Path, cfg: &HfConfig) -> Result<(Tokenizer, ChatTemplate), HfError> {
    let path = require_file(dir, "tokenizer.model")?;
    if dir.join("tokenizer.json").is_file() {
        return Err(error(
            "tokenizer.json",
            "an internlm2 folder is read through tokenizer.model (as llama.cpp's converter does); remove tokenizer.json",
        ));
    }
    let model = parse_model(&read_limited(&path, MAX_TOKENIZER_MODEL)?)
        .map_err(|e| error("tokenizer.model", e))?;
    check_model(&model)?;
    let tok_config = optional_json(dir, "tokenizer_config.json")?;
    let mut vocab = piece_vocab(&model, cfg.model.vocab)?;
    append_added_tokens(&mut vocab, &optional_json(dir, "added_tokens.json")?)?;
    let chat_eos = apply_added_decoder(&mut vocab, &tok_config)?;
    set_special_ids(&mut vocab, cfg, chat_eos)?;
    let flag = |key: &str| tok_config.get(key).and_then(Value::as_bool);
    vocab.add_bos = flag("add_bos_token");
    vocab.add_eos = flag("add_eos_token");
    vocab.add_space_prefix = Some(model.add_dummy_prefix);
    let tokenizer = Tokenizer::from_vocab(&vocab).map_err(|e| error("tokenizer.model", e))?;
    let text_of = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let source = chat_template_source(dir, &tok_config)?;
    let template = ChatTemplate::from_optional(
        source.as_deref(),
        &text_of(vocab.bos_id),
        &text_of(vocab.eos_id),
    )
    .map_err(|e| error("tokenizer_config.json", format!("chat_template: {e}")))?;
    Ok((tokenizer, template))
}

fn check_model(model: &SpmModel) -> Result<(), HfError> {
    if model.model_type != MODEL_TYPE_BPE {
        let detail = format!(
            "trainer_spec.model_type is {} (only BPE = 2 is supported)",
            model.model_type
        );
        return Err(error("tokenizer.model", detail));
    }
    if !model.byte_fallback {
        return Err(error(
            "tokenizer.model",
            "trainer_spec.byte_fallback is false (only byte-fallback models are supported)",
        ));
    }
    Ok(())
}

/// Ids `0..n_vocab` from the model's pieces (the converter's first loop).
fn piece_vocab(model: &SpmModel, n_vocab: usize) -> Result<GgufVocab, HfError> {
    if n_vocab > model.pieces.len() {
        let detail = format!(
            "has {} pieces but config.json vocab_size is {n_vocab}",
            model.pieces.len()
        );
        return Err(error("tokenizer.model", detail));
    }
    let mut vocab = GgufVocab {
        model: "llama".into(),
        pre: Some("default".into()),
        ..GgufVocab::default()
    };
    for piece in &model.pieces[..n_vocab] {
        let text = if piece.text == "\0" {
            "🐉"
        } else {
            &piece.text
        };
        // Piece types are GGUF token types (see `SpmPiece::kind`); user-defined → normal.
        let kind = match piece.kind {
            token_type::UNKNOWN | token_type::CONTROL | token_type::UNUSED | token_type::BYTE => {
                piece.kind
            }
            _ => token_type::NORMAL,
        };
        let kind = if text.starts_with("[UNUSED") {
            token_type::UNUSED
        } else {
            kind
        };
        vocab.tokens.push(text.to_owned());
        vocab.scores.push(piece.score);
        vocab.token_types.push(kind);
    }
    Ok(vocab)
}

/// `added_tokens.json` (text → id): appended in id order; the ids must continue the
/// vocabulary (`n, n+1, ...`), which is the file order the converter appends in.
fn append_added_tokens(vocab: &mut GgufVocab, added: &Value) -> Result<(), HfError> {
    let Some(map) = added.as_object() else {
        return Ok(());
    };
    let mut entries: Vec<(u64, &String)> = map
        .iter()
        .map(|(text, id)| (id.as_u64().unwrap_or(u64::MAX), text))
        .collect();
    entries.sort();
    for (id, text) in entries {
        if id != vocab.tokens.len() as u64 {
            let detail = format!(
                "{text:?} has id {id}; added tokens must continue the vocabulary at {}",
                vocab.tokens.len()
            );
            return Err(error("added_tokens.json", detail));
        }
        vocab.tokens.push(text.clone());
        vocab.scores.push(ADDED_SCORE);
        vocab.token_types.push(token_type::USER_DEFINED);
    }
    Ok(())
}

/// tokenizer_config.json `added_tokens_decoder`: replaces texts; returns `<|im_end|>`'s id.
fn apply_added_decoder(vocab: &mut GgufVocab, config: &Value) -> Result<Option<u32>, HfError> {
    let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let mut chat_eos = None;
    for (key, entry) in decoder {
        let bad = |what: &str| {
            error(
                "tokenizer_config.json",
                format!("added_tokens_decoder[{key:?}]: {what}"),
            )
        };
        let id = key
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab.tokens.len())
            .ok_or_else(|| bad(&format!("not an id below {}", vocab.tokens.len())))?;
        let text = entry
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no `content` text"))?;
        if text == CHAT_EOS {
            chat_eos = Some(id);
        }
        let special = entry.get("special").and_then(Value::as_bool) == Some(true);
        let slot = id as usize;
        vocab.tokens[slot] = text.to_owned();
        vocab.scores[slot] = ADDED_SCORE;
        vocab.token_types[slot] = if special {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
    }
    Ok(chat_eos)
}

/// BOS / EOS / UNK / PAD from config.json (ids out of range are skipped, as the
/// converter's `SpecialVocab` does), EOS replaced by the chat EOS.
fn set_special_ids(
    vocab: &mut GgufVocab,
    cfg: &HfConfig,
    chat_eos: Option<u32>,
) -> Result<(), HfError> {
    let n = vocab.tokens.len();
    let in_range = |id: Option<u32>| id.filter(|&id| (id as usize) < n);
    vocab.bos_id = in_range(cfg.bos_token_id);
    vocab.unk_id = in_range(cfg.unk_token_id);
    vocab.pad_id = in_range(cfg.pad_token_id);
    let eos = in_range(cfg.eos_token_id).ok_or_else(|| HfError::Unsupported {
        key: "eos_token_id",
        value: format!("{:?}", cfg.eos_token_id),
        detail: "an internlm2 config.json needs an eos_token_id below the vocabulary size",
    })?;
    vocab.eos_id = Some(chat_eos.unwrap_or(eos));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hf::spm_proto::SpmPiece;
    use serde_json::json;

    fn piece(text: &str, kind: i32) -> SpmPiece {
        SpmPiece {
            text: text.into(),
            score: -2.0,
            kind,
        }
    }

    #[test]
    fn converter_rules_for_pieces_and_added_tokens() {
        let model = SpmModel {
            pieces: vec![
                piece("<unk>", token_type::UNKNOWN),
                piece("\0", token_type::NORMAL),
                piece("<user>", token_type::USER_DEFINED),
                piece("[UNUSED_TOKEN_1]", token_type::NORMAL),
                piece("<0x41>", token_type::BYTE),
                piece("cut", token_type::NORMAL),
            ],
            model_type: MODEL_TYPE_BPE,
            byte_fallback: true,
            add_dummy_prefix: true,
        };
        let mut vocab = piece_vocab(&model, 5).expect("5 of 6 pieces");
        assert_eq!(vocab.tokens[1], "🐉");
        assert_eq!(
            vocab.token_types,
            [2, 1, 1, 5, 6],
            "unknown, normal, user-defined → normal, [UNUSED → unused, byte"
        );
        let config = json!({"added_tokens_decoder": {
            "3": {"content": "<|im_end|>", "special": true},
            "2": {"content": "<tool>", "special": false}}});
        assert_eq!(apply_added_decoder(&mut vocab, &config).unwrap(), Some(3));
        assert_eq!(vocab.tokens[3], "<|im_end|>");
        assert_eq!(
            (vocab.token_types[3], vocab.token_types[2]),
            (token_type::CONTROL, token_type::USER_DEFINED)
        );
        assert_eq!((vocab.scores[3], vocab.scores[0]), (ADDED_SCORE, -2.0));
        append_added_tokens(&mut vocab, &json!({"<b>": 6, "<a>": 5})).unwrap();
        assert_eq!(&vocab.tokens[5..], ["<a>", "<b>"]);
        let gap = append_added_tokens(&mut vocab, &json!({"<c>": 9})).unwrap_err();
        assert!(gap.to_string().contains("continue the vocabulary"), "{gap}");
        let err = piece_vocab(&model, 7).unwrap_err().to_string();
        assert!(
            err.contains("6 pieces") && err.contains("vocab_size is 7"),
            "{err}"
        );
    }
}
