//! How much text one token can stand for: the bound that lets the server refuse a
//! prompt that cannot fit the context before spending any CPU on tokenizing it.
//!
//! Why it holds: every token's stored text (`Ġhello`, `▁hello`, `<0x0A>`, `<|im_end|>`)
//! is at least as long, in bytes, as the piece of input it covers (byte-level characters
//! and `▁` take 2-3 bytes for one input byte, a byte-fallback token 6), and the pieces
//! cover the whole input when nothing before the model drops text. So a text of `B`
//! bytes takes at least `B / max_bytes_per_token` tokens. The bound is withheld
//! (`None`) when the pipeline has a normalizer or pre-tokenizer step that may shrink or
//! drop text (lowercasing, Unicode normalization, whitespace removal, …).

use serde_json::Value;

use super::Tokenizer;

impl Tokenizer {
    /// The most input bytes one token can cover (see the module header); `None` when no
    /// such bound holds for this pipeline.
    pub fn max_bytes_per_token(&self) -> Option<usize> {
        let keeps_text = |step: Option<Value>| step.is_none_or(|s| keeps_every_byte(&s));
        let normalizer = self.inner.get_normalizer().map(serde_json::to_value);
        let pre_tokenizer = self.inner.get_pre_tokenizer().map(serde_json::to_value);
        if !keeps_text(normalizer.transpose().ok()?) || !keeps_text(pre_tokenizer.transpose().ok()?)
        {
            return None;
        }
        (0..self.inner.get_vocab_size(true) as u32)
            .filter_map(|id| self.inner.id_to_token(id))
            .map(|text| text.len())
            .max()
    }
}

/// Whether a normalizer or pre-tokenizer step (as `tokenizers` serializes it) keeps every
/// input byte, possibly expanded: only steps known to, anything else is assumed to drop.
fn keeps_every_byte(step: &Value) -> bool {
    match step["type"].as_str() {
        Some("Sequence") => ["normalizers", "pretokenizers"]
            .iter()
            .filter_map(|key| step[*key].as_array())
            .flatten()
            .all(keeps_every_byte),
        Some("Prepend" | "ByteLevel" | "Metaspace" | "Digits" | "Punctuation") => true,
        Some("Replace") => step["pattern"]["String"]
            .as_str()
            .zip(step["content"].as_str())
            .is_some_and(|(from, to)| !from.is_empty() && to.len() >= from.len()),
        Some("Split") => step["behavior"].as_str() != Some("Removed"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_steps_that_keep_every_byte_allow_the_bound() {
        let space_marker =
            json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        assert!(keeps_every_byte(&space_marker));
        assert!(keeps_every_byte(
            &json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, space_marker]})
        ));
        assert!(keeps_every_byte(
            &json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Isolated"}, {"type": "ByteLevel"}]})
        ));
        for drops in [
            json!({"type": "Lowercase"}),
            json!({"type": "NFKC"}),
            json!({"type": "Replace", "pattern": {"String": "  "}, "content": " "}),
            json!({"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}),
            json!({"type": "Split", "behavior": "Removed"}),
            json!({"type": "Whitespace"}),
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend"}, {"type": "Strip"}]}),
        ] {
            assert!(!keeps_every_byte(&drops), "{drops}");
        }
    }
}
