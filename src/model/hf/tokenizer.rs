//! The text side of a Hugging Face folder: `tokenizer.json` (through the `tokenizers`
//! crate), `tokenizer_config.json` (BOS/EOS texts, add-BOS flag, chat template),
//! `generation_config.json` (the EOS ids generation stops at).
//!
//! Supported tokenizer.json layouts, read from its JSON before building:
//! - byte-level BPE (a `ByteLevel` pre-tokenizer: GPT-2, Llama 3, Qwen2, SmolLM): the
//!   pipeline runs as the file describes it (normalizer, regex splits, merges);
//! - SentencePiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama): the file's
//!   leading-space rule (`Prepend("▁")` normalizer, or a non-splitting `Metaspace`) is
//!   taken out of the pipeline and applied by our `Tokenizer` (`add_space_prefix`), which
//!   adds it at the start of the text and after each special token, as HF does.
//!
//! Special tokens: `added_tokens` with `special: true` are CONTROL, the others
//! USER_DEFINED; our `Tokenizer` partitions them out of the text itself (so user text
//! never produces a control token). Ids must be dense (`0..n`); a model whose embedding
//! has more rows than the tokenizer has tokens gets `[PAD{id}]` tokens (UNUSED) for the
//! rest, as llama.cpp's converter writes them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::AddedToken;

use super::config::{all_ids, HfConfig};
use super::error::{read_json, read_limited, require_file, HfError};
use super::pipeline::prepare_pipeline;
use crate::model::chat_template::ChatTemplate;
use crate::model::tokenizer::{token_type, GgufVocab, Tokenizer, VocabKind};

/// Largest tokenizer.json accepted (real ones are up to ~35 MB).
const MAX_TOKENIZER_JSON: u64 = 512 << 20;
/// Largest tokenizer_config.json / generation_config.json / chat template accepted.
const MAX_SMALL_JSON: u64 = 64 << 20;

fn tok_error(file: &'static str, detail: impl std::fmt::Display) -> HfError {
    HfError::Tokenizer {
        file,
        detail: detail.to_string(),
    }
}

/// Reads `dir/name` when it exists (`Value::Null` when it does not).
pub(super) fn optional_json(dir: &Path, name: &str) -> Result<Value, HfError> {
    let path = dir.join(name);
    if path.is_file() {
        read_json(&path, MAX_SMALL_JSON)
    } else {
        Ok(Value::Null)
    }
}

/// Builds the tokenizer and chat template of the folder `dir`.
pub fn load(dir: &Path, cfg: &HfConfig) -> Result<(Tokenizer, ChatTemplate), HfError> {
    let path = require_file(dir, "tokenizer.json")?;
    let mut json = read_json(&path, MAX_TOKENIZER_JSON)?;
    let tok_config = optional_json(dir, "tokenizer_config.json")?;
    let gen_config = optional_json(dir, "generation_config.json")?;
    let shape = prepare_pipeline(&mut json)?;
    let add_flags = post_processor_flags(&json);
    let added = added_token_flags(&json);
    let unk = json
        .pointer("/model/unk_token")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut inner: tokenizers::Tokenizer =
        serde_json::from_value(json).map_err(|e| tok_error("tokenizer.json", e))?;
    let mut vocab = token_table(&mut inner, &added, shape.kind, cfg.model.vocab)?;
    vocab.unk_id = unk.and_then(|u| inner.token_to_id(&u));
    let token_id = |key: &str| special_text(&tok_config, key).and_then(|t| inner.token_to_id(&t));
    let gen_eos = all_ids(gen_config.get("eos_token_id"));
    vocab.bos_id = token_id("bos_token").or(cfg.bos_token_id);
    vocab.eos_id = token_id("eos_token")
        .or(cfg.eos_token_id)
        .or(gen_eos.first().copied());
    let config_flag = |key: &str| tok_config.get(key).and_then(Value::as_bool);
    let default_bos = shape.kind == VocabKind::SentencePiece;
    vocab.add_bos = Some(
        add_flags
            .0
            .or(config_flag("add_bos_token"))
            .unwrap_or(default_bos),
    );
    vocab.add_eos = Some(
        add_flags
            .1
            .or(config_flag("add_eos_token"))
            .unwrap_or(false),
    );
    vocab.add_space_prefix = Some(shape.add_space_prefix);
    let text_of = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
    let (bos_text, eos_text) = (text_of(vocab.bos_id), text_of(vocab.eos_id));
    let tokenizer = Tokenizer::from_pipeline(inner, &vocab, shape.kind, &gen_eos)
        .map_err(|e| tok_error("tokenizer.json", e))?;
    let source = chat_template_source(dir, &tok_config)?;
    let template = ChatTemplate::from_optional(source.as_deref(), &bos_text, &eos_text)
        .map_err(|e| tok_error("tokenizer_config.json", format!("chat_template: {e}")))?;
    Ok((tokenizer, template))
}

/// text → `special` of every entry of `added_tokens`.
fn added_token_flags(json: &Value) -> HashMap<String, bool> {
    let Some(Value::Array(items)) = json.get("added_tokens") else {
        return HashMap::new();
    };
    items
        .iter()
        .filter_map(|t| {
            let text = t.get("content")?.as_str()?.to_owned();
            Some((
                text,
                t.get("special").and_then(Value::as_bool).unwrap_or(false),
            ))
        })
        .collect()
}

/// Token text and kind by id, checking the ids are dense, and padding to `rows` (the
/// embedding's row count) with `[PAD{id}]` tokens added to `inner`.
fn token_table(
    inner: &mut tokenizers::Tokenizer,
    added: &HashMap<String, bool>,
    kind: VocabKind,
    rows: usize,
) -> Result<GgufVocab, HfError> {
    let map = inner.get_vocab(true);
    let n = map.len();
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (text, id) in map {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            let detail = format!(
                "token id {id} of {text:?} is not below the token count {n} (ids must be 0..{n})"
            );
            tok_error("tokenizer.json", detail)
        })?;
        if let Some(other) = slot.replace(text.clone()) {
            let detail = format!("tokens {other:?} and {text:?} share id {id}");
            return Err(tok_error("tokenizer.json", detail));
        }
    }
    // n distinct ids below n: every slot is filled.
    let mut tokens: Vec<String> = tokens.into_iter().flatten().collect();
    let mut token_types: Vec<i32> = tokens
        .iter()
        .map(|text| match added.get(text) {
            Some(true) => token_type::CONTROL,
            Some(false) => token_type::USER_DEFINED,
            None if kind == VocabKind::SentencePiece && is_byte_token(text) => token_type::BYTE,
            None => token_type::NORMAL,
        })
        .collect();
    if rows > n {
        let pads: Vec<AddedToken> = (n..rows)
            .map(|id| AddedToken::from(format!("[PAD{id}]"), true))
            .collect();
        inner
            .add_special_tokens(pads)
            .map_err(|e| tok_error("tokenizer.json", format!("adding [PAD] tokens: {e}")))?;
        for id in n..rows {
            tokens.push(format!("[PAD{id}]"));
            token_types.push(token_type::UNUSED);
        }
    }
    Ok(GgufVocab {
        model: if kind == VocabKind::SentencePiece {
            "llama"
        } else {
            "gpt2"
        }
        .into(),
        tokens,
        token_types,
        ..GgufVocab::default()
    })
}

/// `<0xXX>`: a SentencePiece byte-fallback token.
fn is_byte_token(text: &str) -> bool {
    text.len() == 6
        && text.starts_with("<0x")
        && text.ends_with('>')
        && text[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether the post-processor adds BOS / EOS (`None` = it does not say), following the
/// rule of llama.cpp's converter: a `TemplateProcessing` whose single-sequence template
/// starts (ends) with a special token adds BOS (EOS); a `ByteLevel` one adds neither.
fn post_processor_flags(json: &Value) -> (Option<bool>, Option<bool>) {
    let Some(post) = json.get("post_processor").filter(|v| !v.is_null()) else {
        return (None, None);
    };
    let processors = match post.get("processors").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![post],
    };
    let (mut bos, mut eos) = (None, None);
    for processor in processors {
        match processor.get("type").and_then(Value::as_str) {
            Some("ByteLevel") => {
                bos = bos.or(Some(false));
                eos = eos.or(Some(false));
            }
            Some("TemplateProcessing") => {
                let single = processor.get("single").and_then(Value::as_array);
                let is_special =
                    |item: Option<&Value>| item.is_some_and(|v| v.get("SpecialToken").is_some());
                if let Some(single) = single.filter(|s| s.len() > 1) {
                    bos = Some(is_special(single.first()));
                    eos = Some(is_special(single.last()));
                }
            }
            _ => {}
        }
    }
    (bos, eos)
}

/// The text of `bos_token` / `eos_token` in tokenizer_config.json: a string, or an
/// object with `content`.
fn special_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Object(obj) => obj.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The chat template: tokenizer_config.json `chat_template` (a string, or a list of
/// `{name, template}` from which `default` is taken), else `chat_template.jinja`, else
/// `chat_template.json`. `None` when the folder has none (ChatML is used then).
pub(super) fn chat_template_source(dir: &Path, config: &Value) -> Result<Option<String>, HfError> {
    let from_value = |value: &Value| -> Result<Option<String>, HfError> {
        match value {
            Value::Null => Ok(None),
            Value::String(text) => Ok(Some(text.clone())),
            Value::Array(list) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(|t| Some(t.to_owned()))
                .ok_or_else(|| {
                    tok_error(
                        "tokenizer_config.json",
                        "`chat_template` is a list without a `default` entry",
                    )
                }),
            other => Err(tok_error(
                "tokenizer_config.json",
                format!("`chat_template` must be a string or a list, found {other}"),
            )),
        }
    };
    if let Some(template) = from_value(config.get("chat_template").unwrap_or(&Value::Null))? {
        return Ok(Some(template));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read_text(&jinja, MAX_SMALL_JSON).map(Some);
    }
    let json = optional_json(dir, "chat_template.json")?;
    from_value(json.get("chat_template").unwrap_or(&Value::Null))
}

/// A UTF-8 text file of at most `limit` bytes.
fn read_text(path: &Path, limit: u64) -> Result<String, HfError> {
    String::from_utf8(read_limited(path, limit)?).map_err(|e| HfError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}
