//! The bytes each token stands for, as constrained decoding (`crate::structured`) needs
//! them: the grammar is matched against bytes, and a token is allowed when its bytes can
//! continue the text.
//!
//! Rules by vocabulary kind: byte-level BPE maps each character of the stored token back
//! through GPT-2's byte↔unicode table; SentencePiece and space-marker vocabularies write
//! `▁` for a space and `<0xNN>` for a fallback byte. Special tokens (what
//! `decode(.., skip_special = true)` drops: `<|im_end|>`, `<s>`, …) become
//! `0xFF` + their text, llguidance's marker for a token that is not text, so no grammar
//! can spell them out of plain characters.
//!
//! Invariant: for tokens that are not special, the concatenated bytes of a sequence
//! decode (lossy UTF-8) to what `Tokenizer::decode(ids, skip_special)` gives, apart from
//! SentencePiece's one leading space that decoding strips.

use super::{Tokenizer, VocabKind};

/// llguidance's marker byte in front of a special token's text (`TokTrie::SPECIAL_TOKEN_MARKER`).
pub const SPECIAL_TOKEN_MARKER: u8 = 0xFF;

impl Tokenizer {
    /// The bytes of every token, by id (`vocab_size()` entries).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let byte_of_char = gpt2_char_to_byte();
        (0..self.vocab_size as u32)
            .map(|id| {
                let text = self.inner.id_to_token(id).unwrap_or_default();
                if self.is_special(id) {
                    let mut bytes = vec![SPECIAL_TOKEN_MARKER];
                    bytes.extend_from_slice(text.as_bytes());
                    return bytes;
                }
                match self.kind {
                    VocabKind::ByteLevelBpe => text
                        .chars()
                        .map(|c| byte_of_char.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        // A token outside the byte map (a user-defined token stored as
                        // plain text) stands for its own text.
                        .unwrap_or_else(|| text.into_bytes()),
                    VocabKind::SentencePiece | VocabKind::SpaceMarkerBpe => {
                        sentencepiece_bytes(&text)
                    }
                }
            })
            .collect()
    }
}

/// `<0xNN>` → that byte; otherwise the text with `▁` as a space.
fn sentencepiece_bytes(text: &str) -> Vec<u8> {
    let hex = text
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        .and_then(|h| u8::from_str_radix(h, 16).ok());
    match hex {
        Some(byte) => vec![byte],
        None => text.replace('\u{2581}', " ").into_bytes(),
    }
}

/// GPT-2's table, inverted: printable bytes map to themselves, the others to U+0100 + n
/// in byte order.
fn gpt2_char_to_byte() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                next += 1;
                (char::from_u32(0x100 + next - 1).unwrap_or('\u{FFFD}'), b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_table_is_a_bijection_with_the_known_space_and_newline() {
        let table = gpt2_char_to_byte();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }

    #[test]
    fn sentencepiece_spaces_and_fallback_bytes() {
        assert_eq!(sentencepiece_bytes("▁hello"), b" hello");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("<0x0A"), b"<0x0A");
    }
}
