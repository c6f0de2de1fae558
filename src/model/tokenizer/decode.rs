//! Token ids → text, llama.cpp's `token_to_piece` + `detokenize` rules.
//!
//! Owns the decoding of one id sequence:
//! - CONTROL / UNKNOWN (and unused) tokens render as their raw text, or as nothing with
//!   `skip_special`; USER_DEFINED tokens always render as their raw text;
//! - runs of ordinary tokens between them become bytes (byte-level BPE: the `tokenizers`
//!   ByteLevel decoder; SentencePiece and Gemma 4: `▁` → space, `<0xXX>` byte tokens →
//!   that byte) and
//!   each run is turned into text with `from_utf8_lossy`;
//! - SentencePiece vocabs with `add_space_prefix` drop one leading space of the result.
//!
//! Invariant the incremental detokenizer relies on: if `decode(a)` does not end inside an
//! incomplete UTF-8 sequence, `decode(a)` is a prefix of `decode(a ++ b)`.

use super::special::TokenKind;
use super::{Tokenizer, TokenizerError, VocabKind};

/// SentencePiece's word-boundary marker, which stands for a space inside tokens.
const SPM_SPACE: char = '\u{2581}';

impl Tokenizer {
    /// Turn ids back into text. `skip_special` drops control / unknown tokens
    /// (`<|im_end|>`, `<s>`, …). Bytes that do not form valid UTF-8 decode to U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut text = String::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            let kind = self.specials.kind(id).ok_or(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.vocab_size,
            })?;
            if kind == TokenKind::UserDefined || kind.is_special() {
                self.decode_run(&mut run, &mut text)?;
                if !(skip_special && kind.is_special()) {
                    text.push_str(&self.token_text(id)?);
                }
            } else {
                run.push(id);
            }
        }
        self.decode_run(&mut run, &mut text)?;
        if self.add_space_prefix && text.starts_with(' ') {
            text.remove(0);
        }
        Ok(text)
    }

    fn token_text(&self, id: u32) -> Result<String, TokenizerError> {
        self.inner
            .id_to_token(id)
            .ok_or(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.vocab_size,
            })
    }

    /// Decode a run of ordinary tokens, append it to `text` and clear the run.
    fn decode_run(&self, run: &mut Vec<u32>, text: &mut String) -> Result<(), TokenizerError> {
        if run.is_empty() {
            return Ok(());
        }
        match self.kind {
            VocabKind::ByteLevelBpe => {
                let piece = self
                    .inner
                    .decode(run, false)
                    .map_err(|e| TokenizerError::Decode(e.to_string()))?;
                text.push_str(&piece);
            }
            VocabKind::SentencePiece | VocabKind::SpaceMarkerBpe => {
                let mut bytes = Vec::with_capacity(run.len() * 4);
                for &id in run.iter() {
                    self.push_spm_bytes(id, &mut bytes)?;
                }
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        run.clear();
        Ok(())
    }

    /// One SentencePiece piece as bytes: a `<0xXX>` byte token is that byte, any other
    /// token its text with `▁` turned back into spaces.
    fn push_spm_bytes(&self, id: u32, bytes: &mut Vec<u8>) -> Result<(), TokenizerError> {
        let piece = self.token_text(id)?;
        if self.specials.kind(id) == Some(TokenKind::Byte) {
            let hex = piece
                .strip_prefix("<0x")
                .and_then(|rest| rest.strip_suffix('>'))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            if let Some(byte) = hex {
                bytes.push(byte);
                return Ok(());
            }
        }
        for c in piece.chars() {
            let c = if c == SPM_SPACE { ' ' } else { c };
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::tokenizer::{GgufVocab, Tokenizer};

    fn spm() -> Tokenizer {
        let tokens = [
            "<unk>", "<s>", "</s>", "▁a", "b", "<0xE4>", "<0xBD>", "<0xA0>", "<0xFF>",
        ];
        let vocab = GgufVocab {
            model: "llama".into(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            token_types: vec![2, 3, 3, 1, 1, 6, 6, 6, 6],
            ..GgufVocab::default()
        };
        Tokenizer::from_vocab(&vocab).expect("spm")
    }

    #[test]
    fn byte_tokens_join_into_characters_and_invalid_bytes_become_replacement() {
        let tok = spm();
        assert_eq!(tok.decode(&[3, 5, 6, 7, 4], true).expect("decode"), "a你b");
        assert_eq!(tok.decode(&[3, 8, 4], true).expect("decode"), "a\u{FFFD}b");
        // An incomplete character at the end is one replacement character.
        assert_eq!(tok.decode(&[3, 5, 6], true).expect("decode"), "a\u{FFFD}");
    }

    #[test]
    fn decode_of_a_complete_prefix_is_a_prefix_of_the_longer_decode() {
        let tok = spm();
        // `a` then an invalid byte: the valid part must not change once more bytes come.
        let short = tok.decode(&[1, 3], true).expect("decode");
        let long = tok.decode(&[1, 3, 8, 5, 6, 7], true).expect("decode");
        assert_eq!(short, "a");
        assert!(long.starts_with(&short), "{long:?}");
        assert_eq!(tok.decode(&[1, 3, 2], false).expect("decode"), "<s> a</s>");
    }
}
