//! Recognising a `tokenizer.json` layout from its JSON, and the one edit made to it
//! before the `tokenizers` crate builds it: taking the SentencePiece leading-space rule
//! out of the pipeline (our `Tokenizer` applies it per special-token-free fragment).
//!
//! Byte-level BPE: the pre-tokenizer (or one step of a `Sequence`) is `ByteLevel`.
//! SentencePiece-style: a BPE model with `byte_fallback`, and either a `Prepend("▁")` in
//! the normalizer or a `Metaspace` pre-tokenizer with `split: false`.
//! Anything else (WordPiece, Unigram, a splitting Metaspace) is refused by name.

use serde_json::{json, Value};

use super::error::HfError;
use crate::model::tokenizer::VocabKind;

/// SentencePiece's space marker.
const SPM_SPACE: &str = "\u{2581}";

/// What kind of tokenizer a tokenizer.json holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineShape {
    pub kind: VocabKind,
    /// Prefix a space to the text and after each special token (SentencePiece).
    pub add_space_prefix: bool,
}

fn refuse(detail: String) -> HfError {
    HfError::Tokenizer {
        file: "tokenizer.json",
        detail,
    }
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// The steps of a component: its `list_key` entries for a `Sequence`, else itself.
fn steps<'a>(component: &'a Value, list_key: &str) -> Vec<&'a Value> {
    match component.get(list_key).and_then(Value::as_array) {
        Some(list) if type_of(component) == Some("Sequence") => list.iter().collect(),
        _ if component.is_null() => Vec::new(),
        _ => vec![component],
    }
}

/// Recognises the layout and edits a SentencePiece pipeline (see the module header).
pub fn prepare_pipeline(json: &mut Value) -> Result<PipelineShape, HfError> {
    let model_type = json
        .pointer("/model/type")
        .and_then(Value::as_str)
        .unwrap_or("BPE");
    if model_type != "BPE" {
        return Err(refuse(format!(
            "tokenizer model `{model_type}` is not supported (supported: BPE)"
        )));
    }
    let null = Value::Null;
    let pre = json.get("pre_tokenizer").unwrap_or(&null);
    if steps(pre, "pretokenizers")
        .iter()
        .any(|s| type_of(s) == Some("ByteLevel"))
    {
        return Ok(PipelineShape {
            kind: VocabKind::ByteLevelBpe,
            add_space_prefix: false,
        });
    }
    let byte_fallback = json
        .pointer("/model/byte_fallback")
        .and_then(Value::as_bool)
        == Some(true);
    if !byte_fallback {
        return Err(refuse(
            "a BPE tokenizer needs a ByteLevel pre-tokenizer or byte_fallback (SentencePiece style)".into(),
        ));
    }
    let add_space_prefix = take_metaspace(json)? | take_prepend(json);
    Ok(PipelineShape {
        kind: VocabKind::SentencePiece,
        add_space_prefix,
    })
}

/// Removes a `Prepend("▁")` normalizer step; true when there was one.
fn take_prepend(json: &mut Value) -> bool {
    let is_prepend = |s: &Value| {
        type_of(s) == Some("Prepend") && s.get("prepend").and_then(Value::as_str) == Some(SPM_SPACE)
    };
    let Some(normalizer) = json.get_mut("normalizer") else {
        return false;
    };
    if is_prepend(normalizer) {
        *normalizer = Value::Null;
        return true;
    }
    if let Some(list) = normalizer
        .get_mut("normalizers")
        .and_then(Value::as_array_mut)
    {
        let before = list.len();
        list.retain(|s| !is_prepend(s));
        return list.len() != before;
    }
    false
}

/// Replaces a non-splitting `Metaspace` pre-tokenizer by a `" " → "▁"` normalizer;
/// returns whether it prepended a space (`prepend_scheme` other than `never`).
fn take_metaspace(json: &mut Value) -> Result<bool, HfError> {
    let Some(pre) = json
        .get("pre_tokenizer")
        .filter(|p| type_of(p) == Some("Metaspace"))
    else {
        let pre = json.get("pre_tokenizer").cloned().unwrap_or(Value::Null);
        if !pre.is_null() {
            return Err(refuse(format!(
                "pre-tokenizer {} is not supported for a SentencePiece-style tokenizer",
                type_of(&pre).unwrap_or("?")
            )));
        }
        return Ok(false);
    };
    if pre.get("split").and_then(Value::as_bool) != Some(false) {
        return Err(refuse(
            "a Metaspace pre-tokenizer that splits at spaces is not supported".into(),
        ));
    }
    let prepends = pre
        .get("prepend_scheme")
        .and_then(Value::as_str)
        .unwrap_or("always")
        != "never";
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE});
    json["pre_tokenizer"] = Value::Null;
    json["normalizer"] = match json.get("normalizer").cloned().unwrap_or(Value::Null) {
        Value::Null => replace,
        other => json!({"type": "Sequence", "normalizers": [other, replace]}),
    };
    Ok(prepends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_is_found_inside_a_sequence() {
        let mut json = json!({
            "model": {"type": "BPE"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split"}, {"type": "ByteLevel"}]}
        });
        let shape = prepare_pipeline(&mut json).expect("byte level");
        assert_eq!(shape.kind, VocabKind::ByteLevelBpe);
        assert!(!shape.add_space_prefix);
    }

    #[test]
    fn sentencepiece_prepend_is_taken_out_of_the_normalizer() {
        let mut json = json!({
            "model": {"type": "BPE", "byte_fallback": true},
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null
        });
        let shape = prepare_pipeline(&mut json).expect("spm");
        assert_eq!(shape.kind, VocabKind::SentencePiece);
        assert!(shape.add_space_prefix);
        assert_eq!(
            json["normalizer"]["normalizers"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn metaspace_without_split_becomes_a_replace_normalizer() {
        let mut json = json!({
            "model": {"type": "BPE", "byte_fallback": true},
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}
        });
        let shape = prepare_pipeline(&mut json).expect("metaspace");
        assert!(shape.add_space_prefix);
        assert!(json["pre_tokenizer"].is_null());
        assert_eq!(json["normalizer"]["type"], "Replace");
    }

    #[test]
    fn other_layouts_are_refused_by_name() {
        for (json, needle) in [
            (json!({"model": {"type": "WordPiece"}}), "WordPiece"),
            (json!({"model": {"type": "BPE"}}), "byte_fallback"),
            (
                json!({"model": {"type": "BPE", "byte_fallback": true},
                       "pre_tokenizer": {"type": "Metaspace", "split": true}}),
                "splits",
            ),
            (
                json!({"model": {"type": "BPE", "byte_fallback": true},
                       "pre_tokenizer": {"type": "Whitespace"}}),
                "Whitespace",
            ),
        ] {
            let mut json = json;
            let err = prepare_pipeline(&mut json).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
