//! Special tokens: per-token kinds, end-of-generation ids, and llama.cpp's partition of a
//! text into special-token matches and plain-text fragments.
//!
//! Owns the rules llama.cpp (`llama_vocab::impl::load`, `tokenizer_st_partition`)
//! applies on top of the GGUF token types:
//! - tokens whose text marks end of turn / fill-in-the-middle (`<|im_end|>`, `<|eot_id|>`,
//!   `<|fim_prefix|>`, …) are treated as CONTROL even when the file says otherwise;
//! - end-of-generation (EOG) ids = eos, eot, eom and every token with an EOG text;
//! - Phi-3 models strip whitespace after their special tokens (RSTRIP).
//!
//! Invariants: `partition_order` holds every CONTROL / USER_DEFINED / UNKNOWN token,
//! longest text first (ties by id); `partition` covers the input exactly once, in order,
//! except whitespace removed by RSTRIP. With `parse_special = false` only USER_DEFINED
//! tokens are matched, so CONTROL tokens can never come out of plain text; a match that
//! overlaps a caller's `literal` byte range (message content in a chat prompt) is never
//! cut either.

use std::collections::BTreeSet;
use std::ops::Range;

use super::vocab::{token_type, GgufVocab};

/// What a token is, from the GGUF token type after llama.cpp's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    Undefined,
}

impl TokenKind {
    fn from_gguf(token_type: i32) -> Self {
        match token_type {
            token_type::NORMAL => Self::Normal,
            token_type::UNKNOWN => Self::Unknown,
            token_type::CONTROL => Self::Control,
            token_type::USER_DEFINED => Self::UserDefined,
            token_type::UNUSED => Self::Unused,
            token_type::BYTE => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Rendered as nothing when decoding with `skip_special` (llama.cpp prints neither
    /// CONTROL nor UNKNOWN tokens unless asked, and suppresses unsupported types).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Self::Control | Self::Unknown | Self::Unused | Self::Undefined
        )
    }
}

/// Texts llama.cpp treats as end of turn (first found becomes `eot` if the file has none).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// Fill-in-the-middle markers llama.cpp forces to CONTROL (prefix/suffix/middle).
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
/// Fill-in-the-middle markers that also end generation (pad / repo / file separator).
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];
/// Texts llama.cpp treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// One piece of a partitioned text: a special token, or a byte range of plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    Token(u32),
    Text { start: usize, end: usize },
}

/// Token kinds and special-token bookkeeping for one vocabulary.
#[derive(Debug, Clone)]
pub struct SpecialTokens {
    /// Kind by token id.
    kinds: Vec<TokenKind>,
    /// Special token (id, text) in partition order (see the module header).
    partition_order: Vec<(u32, String)>,
    /// Whether whitespace after the token is dropped (RSTRIP), by token id.
    rstrip: Vec<bool>,
    /// End-of-generation ids, ascending.
    eog: BTreeSet<u32>,
    eot: Option<u32>,
}

impl SpecialTokens {
    /// Apply llama.cpp's token-kind overrides and collect the special-token tables.
    /// `eos_id` is the effective eos (file value or model-type default).
    pub fn new(vocab: &GgufVocab, eos_id: Option<u32>) -> Self {
        let mut kinds: Vec<TokenKind> = (0..vocab.tokens.len())
            .map(|id| TokenKind::from_gguf(vocab.token_type(id)))
            .collect();
        let find = |texts: &[&str]| -> Vec<u32> {
            let mut ids: Vec<u32> = (0..vocab.tokens.len() as u32)
                .filter(|&id| texts.contains(&vocab.tokens[id as usize].as_str()))
                .collect();
            ids.sort_by_key(|&id| texts.iter().position(|t| *t == vocab.tokens[id as usize]));
            ids
        };
        let eot = vocab.eot_id.or_else(|| find(EOT_TEXTS).first().copied());
        let mut eog: BTreeSet<u32> = find(EOG_TEXTS).into_iter().collect();
        eog.extend(find(FIM_EOG_TEXTS));
        // Only tokens recognised by their text are forced to CONTROL, as in llama.cpp.
        for id in find(FIM_TEXTS).into_iter().chain(eog.iter().copied()) {
            kinds[id as usize] = TokenKind::Control;
        }
        eog.extend([eos_id, eot, vocab.eom_id].into_iter().flatten());
        drop_harmony_end(vocab, &mut eog, &mut kinds);
        keep_plain_eos_text(vocab, &mut eog, &mut kinds);
        let partition_order = partition_order(vocab, &kinds);
        let rstrip = phi3_rstrip(vocab, &partition_order);
        Self {
            kinds,
            partition_order,
            rstrip,
            eog,
            eot,
        }
    }

    /// Adds end-of-generation ids (a Hugging Face `generation_config.json` may list
    /// several); ids must be in range (the caller checks).
    pub fn extend_eog(&mut self, ids: &[u32]) {
        self.eog.extend(ids.iter().copied());
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Texts that become token ids only with `parse_special = true` (CONTROL and
    /// UNKNOWN tokens), longest first.
    pub fn parse_only_texts(&self) -> impl Iterator<Item = &str> + '_ {
        self.partition_order
            .iter()
            .filter(|(id, _)| {
                matches!(
                    self.kinds[*id as usize],
                    TokenKind::Control | TokenKind::Unknown
                )
            })
            .map(|(_, text)| text.as_str())
    }

    /// Ids that decoding with `skip_special` renders as nothing.
    pub fn special_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.kinds.len() as u32).filter(|&id| self.kinds[id as usize].is_special())
    }

    /// Split `text` into special tokens and plain-text fragments the way llama.cpp's
    /// `tokenizer_st_partition` does: for each special token, longest first, every
    /// occurrence inside a still-plain fragment is cut out.
    ///
    /// A match that overlaps one of the `literal` byte ranges is left as text.
    pub fn partition(
        &self,
        text: &str,
        parse_special: bool,
        literal: &[Range<usize>],
    ) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if !text.is_empty() {
            fragments.push(Fragment::Text {
                start: 0,
                end: text.len(),
            });
        }
        for (id, token_text) in &self.partition_order {
            let kind = self.kinds[*id as usize];
            if !parse_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
                continue;
            }
            if !text.contains(token_text.as_str()) {
                continue;
            }
            let rstrip = self.rstrip[*id as usize];
            fragments = fragments
                .into_iter()
                .flat_map(|fragment| match fragment {
                    Fragment::Text { start, end } => {
                        let token = (*id, token_text.as_str(), rstrip);
                        cut_occurrences(text, start..end, token, literal)
                    }
                    token => vec![token],
                })
                .collect();
        }
        fragments
    }
}

/// Cut every occurrence of the token `(id, text, rstrip)` out of `text[range]`, except
/// occurrences overlapping a `literal` range.
fn cut_occurrences(
    text: &str,
    range: Range<usize>,
    (id, token_text, rstrip): (u32, &str, bool),
    literal: &[Range<usize>],
) -> Vec<Fragment> {
    let end = range.end;
    let mut out = Vec::new();
    let mut pos = range.start;
    let mut search = pos;
    while let Some(offset) = text[search..end].find(token_text) {
        let found = search + offset;
        let found_end = found + token_text.len();
        if literal.iter().any(|r| r.start < found_end && found < r.end) {
            // Skip one character and look again; the text stays in the fragment.
            search = found + text[found..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        if found > pos {
            out.push(Fragment::Text {
                start: pos,
                end: found,
            });
        }
        out.push(Fragment::Token(id));
        pos = found_end;
        if rstrip {
            // C `isspace`: only ASCII whitespace, so `pos` stays on a char boundary.
            while pos < end
                && matches!(
                    text.as_bytes()[pos],
                    b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'
                )
            {
                pos += 1;
            }
        }
        search = pos;
    }
    if pos < end {
        out.push(Fragment::Text { start: pos, end });
    }
    out
}

fn partition_order(vocab: &GgufVocab, kinds: &[TokenKind]) -> Vec<(u32, String)> {
    let mut order: Vec<(u32, String)> = kinds
        .iter()
        .enumerate()
        .filter(|(_, kind)| {
            matches!(
                kind,
                TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
            )
        })
        .map(|(id, _)| (id as u32, vocab.tokens[id].clone()))
        .collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    order
}

/// llama.cpp: for models named Phi-3, every special token except `<unk>`, `<s>` and
/// `<|endoftext|>` eats the whitespace that follows it (`</s>` included).
fn phi3_rstrip(vocab: &GgufVocab, order: &[(u32, String)]) -> Vec<bool> {
    let mut rstrip = vec![false; vocab.tokens.len()];
    let name = vocab.model_name.as_deref().unwrap_or("").to_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return rstrip;
    }
    for (id, _) in order {
        rstrip[*id as usize] = true;
    }
    for (id, text) in vocab.tokens.iter().enumerate() {
        match text.as_str() {
            "</s>" => rstrip[id] = true,
            "<unk>" | "<s>" | "<|endoftext|>" => rstrip[id] = false,
            _ => {}
        }
    }
    rstrip
}

/// llama.cpp: in o200k-harmony / solar-open vocabs `<|end|>` separates messages and does
/// not end generation; there it becomes USER_DEFINED.
fn drop_harmony_end(vocab: &GgufVocab, eog: &mut BTreeSet<u32>, kinds: &mut [TokenKind]) {
    let has = |text: &str| eog.iter().any(|&id| vocab.tokens[id as usize] == text);
    let harmony = has("<|return|>") && has("<|call|>");
    let solar = (has("<|call|>") || has("<|calls|>")) && has("<|flush|>");
    if !(harmony || solar) {
        return;
    }
    if let Some(end) = eog
        .iter()
        .copied()
        .find(|&id| vocab.tokens[id as usize] == "<|end|>")
    {
        eog.remove(&end);
        kinds[end as usize] = TokenKind::UserDefined;
    }
}

/// llama.cpp: Gemma 4 and PLaMo have an ordinary `</s>` token; when their end marker is
/// present, `</s>` is neither end-of-generation nor control.
fn keep_plain_eos_text(vocab: &GgufVocab, eog: &mut BTreeSet<u32>, kinds: &mut [TokenKind]) {
    let text = |id: u32| vocab.tokens[id as usize].as_str();
    let has_marker = eog
        .iter()
        .any(|&id| matches!(text(id), "<|tool_response>" | "<|plamo:eos|>"));
    if let Some(s) = eog.iter().copied().find(|&id| text(id) == "</s>") {
        if has_marker {
            eog.remove(&s);
            kinds[s as usize] = TokenKind::Normal;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[(&str, i32)]) -> GgufVocab {
        GgufVocab {
            model: "gpt2".into(),
            tokens: tokens.iter().map(|(t, _)| t.to_string()).collect(),
            token_types: tokens.iter().map(|(_, k)| *k).collect(),
            ..GgufVocab::default()
        }
    }

    fn texts<'a>(text: &'a str, fragments: &[Fragment], vocab: &'a GgufVocab) -> Vec<&'a str> {
        fragments
            .iter()
            .map(|f| match *f {
                Fragment::Token(id) => vocab.tokens[id as usize].as_str(),
                Fragment::Text { start, end } => &text[start..end],
            })
            .collect()
    }

    #[test]
    fn control_tokens_are_cut_only_when_parsing_special() {
        let v = vocab(&[
            ("a", 1),
            ("<|im_start|>", 3),
            ("<|im_end|>", 3),
            ("[PAD7]", 4),
        ]);
        let specials = SpecialTokens::new(&v, Some(2));
        let text = "x<|im_start|>user[PAD7]y<|im_end|>";
        let parsed = specials.partition(text, true, &[]);
        assert_eq!(
            texts(text, &parsed, &v),
            ["x", "<|im_start|>", "user", "[PAD7]", "y", "<|im_end|>"]
        );
        assert_eq!(parsed[1], Fragment::Token(1));
        let plain = specials.partition(text, false, &[]);
        assert_eq!(
            texts(text, &plain, &v),
            ["x<|im_start|>user", "[PAD7]", "y<|im_end|>"]
        );
        assert!(plain
            .iter()
            .all(|f| !matches!(f, Fragment::Token(1) | Fragment::Token(2))));
    }

    #[test]
    fn matches_overlapping_literal_ranges_stay_text() {
        let v = vocab(&[("a", 1), ("<|im_start|>", 3)]);
        let specials = SpecialTokens::new(&v, None);
        let text = "<|im_start|>x<|im_start|>y<|im_start|>";
        // The middle occurrence (bytes 13..25) is literal; the partial overlap 24..26 too.
        for literal in [13..25, 24..26] {
            let parts = specials.partition(text, true, &[literal]);
            assert_eq!(
                texts(text, &parts, &v),
                ["<|im_start|>", "x<|im_start|>y", "<|im_start|>"]
            );
        }
        assert_eq!(
            specials.parse_only_texts().collect::<Vec<_>>(),
            ["<|im_start|>"]
        );
    }

    #[test]
    fn end_of_turn_texts_become_control_and_end_generation() {
        let v = vocab(&[("<|endoftext|>", 3), ("<|im_end|>", 4), ("hi", 1)]);
        let specials = SpecialTokens::new(&v, Some(0));
        assert_eq!(specials.kind(1), Some(TokenKind::Control));
        assert_eq!(specials.eog_ids().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            specials.eot(),
            Some(1),
            "<|im_end|> ranks before <|endoftext|>"
        );
        assert!(!specials.is_eog(2));
    }

    #[test]
    fn phi3_special_tokens_strip_following_whitespace() {
        let mut v = vocab(&[("<s>", 3), ("<|end|>", 3), ("x", 1)]);
        v.model_name = Some("Phi3".into());
        let specials = SpecialTokens::new(&v, None);
        let text = "<|end|> \n x";
        let parts = specials.partition(text, true, &[]);
        assert_eq!(texts(text, &parts, &v), ["<|end|>", "x"]);
        let text = "<s> x";
        assert_eq!(
            texts(text, &specials.partition(text, true, &[]), &v),
            ["<s>", " x"]
        );
    }

    #[test]
    fn longest_special_token_wins_and_empty_text_has_no_fragments() {
        let v = vocab(&[("<a>", 4), ("<a><b>", 4), ("x", 1)]);
        let specials = SpecialTokens::new(&v, None);
        let text = "<a><b><a>";
        let parts = specials.partition(text, false, &[]);
        assert_eq!(parts, [Fragment::Token(1), Fragment::Token(0)]);
        assert!(specials.partition("", true, &[]).is_empty());
    }
}
