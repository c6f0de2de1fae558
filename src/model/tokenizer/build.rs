//! Building the `tokenizers` pipeline for one GGUF vocabulary.
//!
//! Owns the mapping from llama.cpp's two tokenizer kinds to `tokenizers` parts:
//! - `gpt2` (byte-level BPE): no normalizer; pre-tokenizer = llama.cpp's regex splits
//!   (see `pretok.rs`) then the GPT-2 byte-to-char mapping; BPE with the file's merges;
//!   ByteLevel decoder.
//! - `llama` (SentencePiece BPE): normalizer ' ' → '▁'; no pre-tokenizer (a fragment is
//!   one word); BPE whose merges are derived from the scores with byte fallback to
//!   `<0xXX>`; no decoder (`decode.rs` turns pieces into bytes itself, as llama.cpp does).
//! - `gemma4` (BPE over `▁`-escaped UTF-8): normalizer ' ' → '▁'; split at newline runs;
//!   BPE with the file's merges and byte fallback; decoded like SentencePiece.
//!
//! Invariant: the pipeline never matches special tokens itself (they are registered as
//! special added tokens only so decoding can skip them, and `encode_special_tokens` is
//! on); `Tokenizer::encode` partitions specials before calling it.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::pretok::PreTokenizerSpec;
use super::special::{SpecialTokens, TokenKind};
use super::vocab::GgufVocab;
use super::TokenizerError;

/// SentencePiece's word-boundary marker, which stands for a space inside tokens.
pub const SPM_SPACE: &str = "\u{2581}";

fn build_error(what: &str, err: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Build {
        what: what.to_owned(),
        detail: err.to_string(),
    }
}

fn token_ids(vocab: &GgufVocab) -> Vocab {
    vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(id, text)| (text.clone(), id as u32))
        .collect()
}

/// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
pub fn byte_level_bpe(
    vocab: &GgufVocab,
    spec: &PreTokenizerSpec,
    specials: &SpecialTokens,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    if vocab.merges.is_empty() {
        return Err(TokenizerError::InvalidVocab {
            key: "tokenizer.ggml.merges",
            detail: "is missing or empty, but a gpt2 (BPE) vocabulary needs merges".into(),
        });
    }
    let ids = token_ids(vocab);
    let merges = parse_merges(&vocab.merges, &ids, specials)?;
    let model = BPE::builder()
        .vocab_and_merges(ids, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| build_error("BPE model", e))?;
    let mut steps = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in &spec.regexes {
        let pattern = SplitPattern::Regex((*regex).to_owned());
        let split = Split::new(pattern, SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| build_error(&format!("pre-tokenizer regex {regex:?}"), e))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSequence::new(steps))));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    ))));
    register_specials(&mut tokenizer, vocab, specials)?;
    Ok(tokenizer)
}

/// `tokenizer.ggml.merges` entries are "left right", split at the first space after the
/// first character. Merges whose parts or result are not tokens can never fire in
/// llama.cpp either, and merges that would produce a special (control / unknown) token
/// are dropped so such tokens never come out of plain text (none of llama.cpp's vocab
/// files has one that its pre-tokenizer can reach, so results are unchanged). The
/// whole-piece lookup of `ignore_merges` vocabs (Llama 3) bypasses merges, but their
/// regex splits `<|`, letters and `|>` apart, so no control text is ever one piece
/// (tests/tokenizer_vocab.rs types every control token of llama-bpe to check).
fn parse_merges(
    merges: &[String],
    ids: &Vocab,
    specials: &SpecialTokens,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut pairs = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        let split = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at);
        let Some(at) = split else {
            return Err(TokenizerError::InvalidVocab {
                key: "tokenizer.ggml.merges",
                detail: format!("entry {index} ({merge:?}) is not two tokens separated by a space"),
            });
        };
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        let merged = ids.get(&format!("{left}{right}"));
        let usable = ids.contains_key(left)
            && ids.contains_key(right)
            && merged.is_some_and(|&id| !specials.kind(id).is_some_and(TokenKind::is_special));
        if usable {
            pairs.push((left.to_owned(), right.to_owned()));
        }
    }
    Ok(pairs)
}

/// SentencePiece BPE (`tokenizer.ggml.model = llama`).
pub fn sentencepiece_bpe(
    vocab: &GgufVocab,
    specials: &SpecialTokens,
    unk_id: Option<u32>,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let ids = token_ids(vocab);
    let merges = merges_from_scores(vocab, specials, &ids);
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true);
    if let Some(unk) = unk_id {
        builder = builder.unk_token(vocab.tokens[unk as usize].clone());
    }
    let model = builder
        .build()
        .map_err(|e| build_error("SentencePiece model", e))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let space = Replace::new(" ", SPM_SPACE).map_err(|e| build_error("normalizer", e))?;
    tokenizer
        .with_normalizer(Some(space))
        .map_err(|e| build_error("normalizer", e))?;
    register_specials(&mut tokenizer, vocab, specials)?;
    Ok(tokenizer)
}

/// Gemma-4 style BPE (`tokenizer.ggml.model = gemma4`): spaces become `▁`, the text is
/// split only at newline runs, then the file's merges run over raw UTF-8 characters with
/// byte fallback to `<0xXX>` (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GEMMA4`).
pub fn space_marker_bpe(
    vocab: &GgufVocab,
    specials: &SpecialTokens,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    if vocab.merges.is_empty() {
        return Err(TokenizerError::InvalidVocab {
            key: "tokenizer.ggml.merges",
            detail: "is missing or empty, but a gemma4 (BPE) vocabulary needs merges".into(),
        });
    }
    let ids = token_ids(vocab);
    let merges = parse_merges(&vocab.merges, &ids, specials)?;
    let model = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .build()
        .map_err(|e| build_error("BPE model", e))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let space = Replace::new(" ", SPM_SPACE).map_err(|e| build_error("normalizer", e))?;
    tokenizer
        .with_normalizer(Some(space))
        .map_err(|e| build_error("normalizer", e))?;
    let newlines = SplitPattern::Regex("[^\n]+|[\n]+".to_owned());
    let split = Split::new(newlines, SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| build_error("pre-tokenizer", e))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Split(split)));
    register_specials(&mut tokenizer, vocab, specials)?;
    Ok(tokenizer)
}

/// llama.cpp's SentencePiece tokenizer repeatedly merges the adjacent pair whose
/// concatenation is the highest-scoring token. The same result as BPE: one merge
/// (left, right) per way of splitting a token into two tokens, ranked by the merged
/// token's score (descending, ties by id). Only normal and user-defined tokens can be
/// produced by merging, so control / byte / unknown tokens never come out of text.
fn merges_from_scores(
    vocab: &GgufVocab,
    specials: &SpecialTokens,
    ids: &Vocab,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, u32, &str, &str)> = Vec::new();
    for (id, text) in vocab.tokens.iter().enumerate() {
        let mergeable = matches!(
            specials.kind(id as u32),
            Some(TokenKind::Normal | TokenKind::UserDefined)
        );
        if !mergeable {
            continue;
        }
        for (at, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                ranked.push((vocab.score(id), id as u32, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .map(|(_, _, left, right)| (left.to_owned(), right.to_owned()))
        .collect()
}

/// Register the tokens decoding may skip as special added tokens, and switch off their
/// matching inside `encode` (the partition in `Tokenizer::encode` owns that).
fn register_specials(
    tokenizer: &mut tokenizers::Tokenizer,
    vocab: &GgufVocab,
    specials: &SpecialTokens,
) -> Result<(), TokenizerError> {
    let added: Vec<AddedToken> = specials
        .special_ids()
        .map(|id| AddedToken::from(vocab.tokens[id as usize].clone(), true).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(added)
        .map_err(|e| build_error("special tokens", e))?;
    tokenizer.set_encode_special_tokens(true);
    Ok(())
}
