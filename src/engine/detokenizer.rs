//! Incremental detokenization of a generated token stream (vLLM / TGI prefix-offset,
//! read-offset method).
//!
//! Owns the text state of one output sequence. Each `push` decodes two short windows
//! of the ids seen so far — `ids[prefix_offset..read_offset]` (text already emitted) and
//! `ids[prefix_offset..]` — and emits the difference, unless the longer window ends in
//! U+FFFD: then the last tokens hold an incomplete UTF-8 sequence (half of a CJK
//! character or emoji) and are held back until a later token completes it.
//!
//! Invariants:
//! - every emitted piece is valid, complete text: never half a character;
//! - after `finish`, the concatenation of everything emitted equals
//!   `tokenizer.decode(all pushed ids, skip_special)` (before `finish`, it is a prefix of
//!   it, short by at most the held-back tail);
//! - `prefix_offset <= read_offset <= ids.len()`, and `ids[..prefix_offset]` decodes to
//!   complete characters, so a window never starts inside one.

use crate::model::tokenizer::{Tokenizer, TokenizerError};

/// Decoding of U+FFFD, the replacement character that marks incomplete UTF-8.
const REPLACEMENT: char = '\u{FFFD}';

/// Turns one sequence's generated token ids into text, piece by piece.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    /// Every id pushed so far.
    ids: Vec<u32>,
    /// Start of the decode window (see module header).
    prefix_offset: usize,
    /// End of the already-emitted part of the window.
    read_offset: usize,
    /// Drop control tokens (`<|im_end|>`, …) from the text.
    skip_special: bool,
}

impl Default for IncrementalDetokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalDetokenizer {
    /// A detokenizer that leaves special tokens out of the text.
    pub fn new() -> Self {
        Self::with_skip_special(true)
    }

    pub fn with_skip_special(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Add one generated token; returns the text it completes (often empty: a special
    /// token, or a token ending inside a multi-byte character).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        if id as usize >= tokenizer.vocab_size() {
            return Err(TokenizerError::IdOutOfRange {
                id,
                vocab_size: tokenizer.vocab_size(),
            });
        }
        self.ids.push(id);
        let (prefix_text, new_text) = self.windows(tokenizer)?;
        if new_text.len() <= prefix_text.len() || new_text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let piece = Self::suffix_after(&new_text, &prefix_text)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(piece)
    }

    /// End of stream: emit whatever is still held back (an incomplete character comes
    /// out as U+FFFD, exactly as `decode` renders it).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        let (prefix_text, new_text) = self.windows(tokenizer)?;
        let piece = Self::suffix_after(&new_text, &prefix_text)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(piece)
    }

    /// (decode of the emitted part of the window, decode of the whole window).
    fn windows(&self, tokenizer: &Tokenizer) -> Result<(String, String), TokenizerError> {
        let prefix_ids = &self.ids[self.prefix_offset..self.read_offset];
        let prefix_text = tokenizer.decode(prefix_ids, self.skip_special)?;
        let new_text = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        Ok((prefix_text, new_text))
    }

    /// `new_text` minus its leading `prefix_text`. The decode invariant (a complete
    /// prefix decodes to a prefix) makes this total; a violation is reported, not hidden.
    fn suffix_after(new_text: &str, prefix_text: &str) -> Result<String, TokenizerError> {
        new_text
            .strip_prefix(prefix_text)
            .map(str::to_owned)
            .ok_or_else(|| {
                TokenizerError::Decode(format!(
                    "incremental decode diverged: {new_text:?} does not start with the already emitted {prefix_text:?}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::GgufVocab;

    /// Byte-level vocab where "你" (E4 BD A0) and "😀" (F0 9F 98 80) only exist as
    /// single-byte tokens, so every character spans several tokens.
    fn tokenizer() -> Tokenizer {
        let mut tokens: Vec<String> = ["a", "Ġ", "<|end|>"].map(String::from).to_vec();
        // GPT-2 byte-to-char mapping for the non-printable bytes used below.
        for byte in [0xE4u32, 0xBD, 0xA0, 0xF0, 0x9F, 0x98, 0x80] {
            let c = if byte >= 0xA1 && byte != 0xAD {
                byte
            } else {
                256 + byte - 0x80 + 34
            };
            tokens.push(char::from_u32(c).expect("char").to_string());
        }
        let vocab = GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            token_types: (0..tokens.len())
                .map(|id| if id == 2 { 3 } else { 1 })
                .collect(),
            tokens,
            merges: vec!["Ġ a".into()],
            ..GgufVocab::default()
        };
        Tokenizer::from_vocab(&vocab).expect("tokenizer")
    }

    #[test]
    fn holds_back_split_characters_until_complete() {
        let tok = tokenizer();
        let ids = tok.encode("a你😀a", false, false).expect("encode");
        assert_eq!(ids.len(), 9, "{ids:?}");
        let mut detok = IncrementalDetokenizer::new();
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| detok.push(&tok, id).expect("push"))
            .collect();
        assert_eq!(pieces, ["a", "", "", "你", "", "", "", "😀", "a"]);
        assert_eq!(detok.finish(&tok).expect("finish"), "");
    }

    #[test]
    fn skips_special_tokens_and_flushes_an_incomplete_tail() {
        let tok = tokenizer();
        let mut detok = IncrementalDetokenizer::new();
        let mut text = String::new();
        for id in [0, 2, 3, 4] {
            text += &detok.push(&tok, id).expect("push");
        }
        assert_eq!(text, "a");
        let tail = detok.finish(&tok).expect("finish");
        assert_eq!(text + &tail, tok.decode(detok.ids(), true).expect("decode"));
        assert_eq!(tail, "\u{FFFD}");
        let mut raw = IncrementalDetokenizer::with_skip_special(false);
        assert_eq!(raw.push(&tok, 2).expect("push"), "<|end|>");
        assert!(raw.push(&tok, 99).is_err(), "out-of-range id is an error");
    }
}
