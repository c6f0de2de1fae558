//! The tokenizer of a model: text ↔ token ids, matching llama.cpp token for token.
//!
//! Owns: building a `tokenizers` pipeline from `tokenizer.ggml.*` metadata
//! ([`GgufVocab`]), or wrapping one built from a Hugging Face `tokenizer.json`
//! (`from_pipeline`, used by `model::hf`); special-token handling, BOS/EOS insertion and
//! decoding.
//! `encode` first partitions the text into special tokens and plain fragments
//! (`special.rs`, llama.cpp's `tokenizer_st_partition`), then runs the `tokenizers`
//! pipeline on each plain fragment (`build.rs`).
//!
//! Invariants:
//! - with `parse_special = false` control-token texts (`<|im_start|>`, `<s>`, …) are
//!   never matched, and no merge produces a control token, so user content cannot
//!   inject one (USER_DEFINED tokens are still matched, as in llama.cpp);
//! - every id returned by `encode` is `< vocab_size()`; `decode` rejects ids that are not;
//! - SentencePiece vocabs prefix a space to each text fragment that starts the input or
//!   follows a special token when `add_space_prefix` is on (llama.cpp's rule), and
//!   decoding strips one leading space of the decoded text again (Hugging Face's rule).

mod bound;
mod build;
mod bytes;
mod decode;
mod from_gguf;
mod pretok;
mod special;
mod vocab;

pub use bytes::SPECIAL_TOKEN_MARKER;
pub use pretok::{pre_tokenizer_spec, PreTokenizerSpec};
pub use special::TokenKind;
pub use vocab::{token_type, GgufVocab};

use std::ops::Range;

use special::{Fragment, SpecialTokens};

/// Everything that can go wrong building or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading tokenizer metadata from GGUF: {source}")]
    Gguf {
        #[source]
        source: crate::model::gguf::GgufError,
    },
    #[error("GGUF tokenizer metadata `{key}` {detail}")]
    InvalidVocab { key: &'static str, detail: String },
    #[error("tokenizer model `{model}` (tokenizer.ggml.model) is not supported; tessera supports `gpt2` (byte-level BPE), `llama` (SentencePiece) and `gemma4`")]
    UnsupportedModel { model: String },
    #[error("pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not supported")]
    UnsupportedPreTokenizer { pre: String },
    #[error("building the tokenizer's {what}: {detail}")]
    Build { what: String, detail: String },
    #[error("the vocabulary asks for a {which} token (tokenizer.ggml.add_{which}_token) but has no {which} token id")]
    MissingSpecialToken { which: &'static str },
    #[error("token id {id} is out of range: the vocabulary has {vocab_size} tokens")]
    IdOutOfRange { id: u32, vocab_size: usize },
    #[error("tokenizing failed: {0}")]
    Encode(String),
    #[error("detokenizing failed: {0}")]
    Decode(String),
}

/// Which llama.cpp tokenizer algorithm the vocabulary uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with regex pre-tokenization.
    ByteLevelBpe,
    /// `llama`: SentencePiece-style BPE over scores, `▁` for spaces, byte fallback.
    SentencePiece,
    /// `gemma4`: BPE merges over `▁`-escaped UTF-8, `<0xXX>` byte fallback.
    SpaceMarkerBpe,
}

/// A GGUF model's tokenizer. Cheap to share: `&self` methods only, `Send + Sync`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: VocabKind,
    specials: SpecialTokens,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece only: prefix a space to fragments that start text (see header).
    add_space_prefix: bool,
}

impl Tokenizer {
    /// Build the tokenizer a GGUF vocabulary describes, with llama.cpp's defaults for
    /// whatever the file leaves out.
    pub fn from_vocab(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        vocab.validate()?;
        match vocab.model.as_str() {
            "gpt2" => Self::byte_level(vocab),
            "llama" => Self::sentencepiece(vocab),
            "gemma4" => Self::space_marker(vocab),
            other => Err(TokenizerError::UnsupportedModel {
                model: other.to_owned(),
            }),
        }
    }

    fn byte_level(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        let spec = pre_tokenizer_spec(vocab.pre.as_deref())?;
        let specials = SpecialTokens::new(vocab, vocab.eos_id);
        let inner = build::byte_level_bpe(vocab, &spec, &specials)?;
        Ok(Self {
            inner,
            kind: VocabKind::ByteLevelBpe,
            specials,
            vocab_size: vocab.tokens.len(),
            bos_id: vocab.bos_id,
            eos_id: vocab.eos_id,
            add_bos: vocab.add_bos.unwrap_or(spec.default_add_bos),
            add_eos: vocab.add_eos.unwrap_or(false),
            add_space_prefix: false,
        })
    }

    fn sentencepiece(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        // llama.cpp's SentencePiece defaults: <unk>=0, <s>=1, </s>=2 when the file is silent.
        let n_tokens = vocab.tokens.len() as u32;
        let default_id = |id: u32| Some(id).filter(|&id| id < n_tokens);
        let bos_id = vocab.bos_id.or_else(|| default_id(1));
        let eos_id = vocab.eos_id.or_else(|| default_id(2));
        let unk_id = vocab.unk_id.or_else(|| default_id(0));
        let add_space_prefix = vocab.add_space_prefix.unwrap_or(true);
        let specials = SpecialTokens::new(vocab, eos_id);
        let inner = build::sentencepiece_bpe(vocab, &specials, unk_id)?;
        Ok(Self {
            inner,
            kind: VocabKind::SentencePiece,
            specials,
            vocab_size: vocab.tokens.len(),
            bos_id,
            eos_id,
            add_bos: vocab.add_bos.unwrap_or(true),
            add_eos: vocab.add_eos.unwrap_or(false),
            add_space_prefix,
        })
    }

    fn space_marker(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        let specials = SpecialTokens::new(vocab, vocab.eos_id);
        let inner = build::space_marker_bpe(vocab, &specials)?;
        Ok(Self {
            inner,
            kind: VocabKind::SpaceMarkerBpe,
            specials,
            vocab_size: vocab.tokens.len(),
            bos_id: vocab.bos_id,
            eos_id: vocab.eos_id,
            // llama.cpp forces BOS on for Gemma 4 whatever the file says.
            add_bos: true,
            add_eos: vocab.add_eos.unwrap_or(false),
            add_space_prefix: false,
        })
    }

    /// Wraps a `tokenizers` pipeline built elsewhere (a Hugging Face `tokenizer.json`).
    /// `vocab` describes the same tokens (text by id, which must agree with `inner`, and
    /// kind), BOS/EOS and the add-BOS/EOS/space-prefix flags (absent = off); `extra_eog`
    /// are further end-of-generation ids. The pipeline's own special-token matching is
    /// switched off: `encode` partitions special tokens itself, as for GGUF vocabularies.
    pub fn from_pipeline(
        mut inner: tokenizers::Tokenizer,
        vocab: &GgufVocab,
        kind: VocabKind,
        extra_eog: &[u32],
    ) -> Result<Self, TokenizerError> {
        vocab.validate()?;
        for (id, text) in vocab.tokens.iter().enumerate() {
            let piece = inner.id_to_token(id as u32);
            if piece.as_deref() != Some(text.as_str()) {
                return Err(TokenizerError::Build {
                    what: "pipeline".into(),
                    detail: format!(
                        "token {id} is {text:?} in the vocabulary but {piece:?} in the pipeline"
                    ),
                });
            }
        }
        let n_tokens = vocab.tokens.len();
        if let Some(id) = extra_eog.iter().find(|&&id| id as usize >= n_tokens) {
            let detail = format!("is {id}, but the vocabulary has only {n_tokens} tokens");
            return Err(TokenizerError::InvalidVocab {
                key: "eos_token_id",
                detail,
            });
        }
        let mut specials = SpecialTokens::new(vocab, vocab.eos_id);
        specials.extend_eog(extra_eog);
        inner.set_encode_special_tokens(true);
        Ok(Self {
            inner,
            kind,
            specials,
            vocab_size: n_tokens,
            bos_id: vocab.bos_id,
            eos_id: vocab.eos_id,
            add_bos: vocab.add_bos.unwrap_or(false),
            add_eos: vocab.add_eos.unwrap_or(false),
            add_space_prefix: vocab.add_space_prefix.unwrap_or(false),
        })
    }

    /// Tokenize `text`. `add_special_tokens` adds BOS / EOS where the vocabulary asks
    /// for them; `parse_special` lets special-token texts in `text` become their ids
    /// (never pass `true` for user-supplied content).
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let fragments = self.specials.partition(text, parse_special, &[]);
        self.encode_fragments(text, &fragments, add_special_tokens)
    }

    /// Tokenize `text` parsing special tokens, except inside the `literal` byte ranges:
    /// a special-token text overlapping one of them stays plain text. This is how a
    /// rendered chat prompt keeps the template's control tokens while message contents
    /// cannot produce any (see `encode_chat`).
    pub fn encode_with_literals(
        &self,
        text: &str,
        add_special_tokens: bool,
        literal: &[Range<usize>],
    ) -> Result<Vec<u32>, TokenizerError> {
        let fragments = self.specials.partition(text, true, literal);
        self.encode_fragments(text, &fragments, add_special_tokens)
    }

    /// Texts that only `parse_special = true` turns into ids (control tokens such as
    /// `<|im_start|>`), longest first.
    pub fn control_token_texts(&self) -> Vec<&str> {
        self.specials.parse_only_texts().collect()
    }

    fn encode_fragments(
        &self,
        text: &str,
        fragments: &[Fragment],
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special_tokens && self.add_bos {
            ids.push(
                self.bos_id
                    .ok_or(TokenizerError::MissingSpecialToken { which: "bos" })?,
            );
        }
        let mut after_special = true;
        for fragment in fragments {
            match *fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Fragment::Text { start, end } => {
                    let piece = &text[start..end];
                    if self.add_space_prefix && after_special {
                        self.encode_plain(&format!(" {piece}"), &mut ids)?;
                    } else {
                        self.encode_plain(piece, &mut ids)?;
                    }
                    after_special = false;
                }
            }
        }
        if add_special_tokens && self.add_eos {
            ids.push(
                self.eos_id
                    .ok_or(TokenizerError::MissingSpecialToken { which: "eos" })?,
            );
        }
        Ok(ids)
    }

    /// Run the `tokenizers` pipeline on text that holds no special tokens.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// The token's text as stored in the vocabulary (`Ġhello`, `▁hello`, `<0x0A>`, …).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(.., add_special_tokens = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Every id that ends generation: eos, eot (`<|im_end|>`, `<|eot_id|>`, …), eom and
    /// the other end-of-turn tokens llama.cpp recognises, ascending.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.specials.eog_ids().collect()
    }

    /// The end-of-turn token (`tokenizer.ggml.eot_token_id`, else found by its text).
    pub fn eot_id(&self) -> Option<u32> {
        self.specials.eot()
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.specials.is_eog(id)
    }

    /// Whether `decode(.., skip_special = true)` drops this id.
    pub fn is_special(&self, id: u32) -> bool {
        self.specials.kind(id).is_some_and(TokenKind::is_special)
    }

    /// The token's kind after llama.cpp's overrides; `None` when out of range.
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.specials.kind(id)
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids())
            .field("add_bos", &self.add_bos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny SentencePiece vocab: `▁ab` outranks `ab`, `c` only exists as a byte token.
    fn spm_vocab() -> GgufVocab {
        let tokens = [
            "<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "<0x63>", "<|user|>",
        ];
        GgufVocab {
            model: "llama".into(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            token_types: vec![2, 3, 3, 1, 1, 1, 1, 1, 6, 3],
            scores: vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -5.0, -4.0, 0.0, 0.0],
            ..GgufVocab::default()
        }
    }

    fn bpe_vocab() -> GgufVocab {
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens: ["a", "b", "ab", "Ġ", "Ġab", "<|end|>"]
                .map(String::from)
                .to_vec(),
            token_types: vec![1, 1, 1, 1, 1, 3],
            merges: vec!["a b".into(), "Ġ ab".into()],
            eos_id: Some(5),
            ..GgufVocab::default()
        }
    }

    #[test]
    fn sentencepiece_merges_by_score_prefixes_space_and_falls_back_to_bytes() {
        let tokenizer = Tokenizer::from_vocab(&spm_vocab()).expect("spm");
        assert_eq!(tokenizer.encode("ab", true, false).expect("encode"), [1, 7]);
        assert_eq!(
            tokenizer.encode("ab c", false, false).expect("encode"),
            [7, 3, 8]
        );
        // After a special token the next fragment gets the space prefix again.
        let ids = tokenizer.encode("<|user|>ab", false, true).expect("encode");
        assert_eq!(ids, [9, 7]);
        assert_eq!(
            tokenizer.decode(&[1, 7, 3, 8], true).expect("decode"),
            "ab c"
        );
        assert_eq!(
            tokenizer.decode(&ids, false).expect("decode"),
            "<|user|> ab"
        );
        assert_eq!(tokenizer.eos_ids(), [2]);
    }

    #[test]
    fn tokenizer_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn byte_level_bpe_uses_file_merges() {
        let tokenizer = Tokenizer::from_vocab(&bpe_vocab()).expect("bpe");
        assert_eq!(
            tokenizer.encode("ab ab", true, false).expect("encode"),
            [2, 4]
        );
        assert_eq!(
            tokenizer.encode("ab<|end|>", false, true).expect("encode"),
            [2, 5]
        );
        assert_eq!(tokenizer.decode(&[2, 4, 5], true).expect("decode"), "ab ab");
        assert_eq!(tokenizer.eos_ids(), [5]);
    }

    #[test]
    fn bad_metadata_is_a_clear_error() {
        let mut vocab = bpe_vocab();
        vocab.model = "bert".into();
        let err = Tokenizer::from_vocab(&vocab).expect_err("bert is unsupported");
        assert!(err.to_string().contains("`bert`"), "{err}");

        let mut vocab = bpe_vocab();
        vocab.pre = Some("mystery".into());
        let err = Tokenizer::from_vocab(&vocab).expect_err("unknown pre");
        assert!(err.to_string().contains("`mystery`"), "{err}");

        let mut vocab = bpe_vocab();
        vocab.merges.clear();
        let err = Tokenizer::from_vocab(&vocab).expect_err("no merges");
        assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

        let mut vocab = bpe_vocab();
        vocab.merges.push("nospace".into());
        let err = Tokenizer::from_vocab(&vocab).expect_err("malformed merge");
        assert!(err.to_string().contains("entry 2"), "{err}");

        let mut vocab = bpe_vocab();
        vocab.tokens[1] = "a".into();
        let err = Tokenizer::from_vocab(&vocab).expect_err("duplicate token");
        assert!(err.to_string().contains("entry 1"), "{err}");

        let mut vocab = spm_vocab();
        vocab.scores.truncate(3);
        let err = Tokenizer::from_vocab(&vocab).expect_err("short scores");
        assert!(err.to_string().contains("tokenizer.ggml.scores"), "{err}");

        let mut vocab = bpe_vocab();
        vocab.eos_id = Some(6);
        let err = Tokenizer::from_vocab(&vocab).expect_err("eos out of range");
        assert!(err.to_string().contains("eos_token_id"), "{err}");
    }

    #[test]
    fn requested_bos_without_an_id_is_an_error_not_a_panic() {
        let mut vocab = bpe_vocab();
        vocab.add_bos = Some(true);
        let tokenizer = Tokenizer::from_vocab(&vocab).expect("bpe");
        let err = tokenizer.encode("ab", true, false).expect_err("no bos id");
        assert!(
            matches!(err, TokenizerError::MissingSpecialToken { which: "bos" }),
            "{err}"
        );
        assert_eq!(tokenizer.encode("ab", false, false).expect("encode"), [2]);
        let err = tokenizer.decode(&[7], false).expect_err("out of range");
        assert!(err.to_string().contains("token id 7"), "{err}");
    }
}
