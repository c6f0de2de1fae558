//! Normalization of text for matching, with a map back to the original text.
//!
//! Two views of one text are built in a single pass:
//! - `folded`: NFKC (full-width → half-width, compatibility forms → plain), lower case,
//!   default-ignorable characters (zero-width space and joiners, soft hyphen, bidi
//!   controls, variation selectors, tag characters) removed. Patterns run on this view.
//! - the skeleton: only the letters and digits of `folded`. Literal terms run on this view,
//!   so separators inserted between the characters of a term (`炸 弹`, `b.o.m.b`) do not
//!   hide it; `gap_before` remembers where separators were, for the word-boundary rules of
//!   `matcher.rs`.
//!
//! Invariants: every folded character maps to the byte range of the original characters
//! it came from (a base character and its combining marks normalize together, so they
//! share one range); ranges never decrease and always lie on `char` boundaries of the
//! original; skeleton characters are folded characters, in order.

use std::ops::Range;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// One character of the folded view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldedChar {
    pub c: char,
    /// Byte offset in `Normalized::folded`.
    pub at: u32,
    /// Byte range in the original text.
    pub orig_start: u32,
    pub orig_end: u32,
}

/// One character of the skeleton view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkelChar {
    /// Index into `Normalized::chars`.
    pub folded: u32,
    /// Byte offset in `Normalized::skeleton`.
    pub at: u32,
    /// A separator (anything but a letter, digit or combining mark) stands between this
    /// character and the previous skeleton character (or the start of the text).
    pub gap_before: bool,
}

/// The folded and skeleton views of one text.
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    pub folded: String,
    pub chars: Vec<FoldedChar>,
    pub skeleton: String,
    pub skel: Vec<SkelChar>,
    /// A separator follows the last skeleton character.
    pub gap_after_last: bool,
}

impl Normalized {
    /// Both views of `text`.
    pub fn new(text: &str) -> Self {
        let count = text.chars().count();
        let mut out = Normalized {
            folded: String::with_capacity(text.len()),
            chars: Vec::with_capacity(count),
            skeleton: String::with_capacity(text.len()),
            skel: Vec::with_capacity(count),
            gap_after_last: false,
        };
        let mut gap = false;
        let mut rest = text.char_indices().peekable();
        while let Some((start, c)) = rest.next() {
            let mut end = start + c.len_utf8();
            while let Some(&(i, m)) = rest.peek() {
                if !is_combining_mark(m) {
                    break;
                }
                end = i + m.len_utf8();
                rest.next();
            }
            let orig = start as u32..end as u32;
            if end - start == 1 {
                out.push(c.to_ascii_lowercase(), &orig, &mut gap);
                continue;
            }
            // Most characters (all of CJK) are their own NFKC: skip the normalizer.
            if end - start == c.len_utf8() && is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes
            {
                for l in c.to_lowercase() {
                    out.push(l, &orig, &mut gap);
                }
                continue;
            }
            for n in text[start..end].nfkc() {
                for l in n.to_lowercase() {
                    out.push(l, &orig, &mut gap);
                }
            }
        }
        out.gap_after_last = gap && !out.skel.is_empty();
        out
    }

    fn push(&mut self, c: char, orig: &Range<u32>, gap: &mut bool) {
        if is_ignorable(c) {
            return;
        }
        let folded = self.chars.len() as u32;
        self.chars.push(FoldedChar {
            c,
            at: self.folded.len() as u32,
            orig_start: orig.start,
            orig_end: orig.end,
        });
        self.folded.push(c);
        if c.is_alphanumeric() {
            self.skel.push(SkelChar {
                folded,
                at: self.skeleton.len() as u32,
                gap_before: std::mem::take(gap),
            });
            self.skeleton.push(c);
        } else if !is_combining_mark(c) {
            *gap = true;
        }
    }

    /// Index of the folded character starting at byte `at` of `folded`.
    pub fn folded_index(&self, at: usize) -> usize {
        self.chars.partition_point(|ch| (ch.at as usize) < at)
    }

    /// Index of the skeleton character starting at byte `at` of `skeleton`.
    pub fn skel_index(&self, at: usize) -> usize {
        self.skel.partition_point(|ch| (ch.at as usize) < at)
    }

    /// Original byte range of folded characters `range` (non-empty).
    pub fn orig_range(&self, range: Range<usize>) -> Range<usize> {
        let first = self.chars[range.start];
        let last = self.chars[range.end - 1];
        first.orig_start as usize..last.orig_end as usize
    }

    /// Original byte offset where folded character `index` starts (the end of the text
    /// when `index` is past the last one).
    pub fn orig_start(&self, index: usize, text_len: usize) -> usize {
        self.chars
            .get(index)
            .map_or(text_len, |ch| ch.orig_start as usize)
    }

    /// The skeleton character `index` as a `char`.
    pub fn skel_char(&self, index: usize) -> char {
        self.chars[self.skel[index].folded as usize].c
    }
}

/// Default-ignorable code points a reader does not see: removed before matching.
pub fn is_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
        | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Letters of scripts written without spaces between words (Han, kana, Hangul, Thai,
/// Lao, Khmer, Myanmar): no word-boundary rule applies next to them.
pub fn is_unspaced(c: char) -> bool {
    matches!(c,
        '\u{0E00}'..='\u{0EFF}' | '\u{1000}'..='\u{109F}' | '\u{1100}'..='\u{11FF}'
        | '\u{1780}'..='\u{17FF}' | '\u{2E80}'..='\u{2FDF}' | '\u{3005}'..='\u{3007}'
        | '\u{3021}'..='\u{3029}' | '\u{3040}'..='\u{30FF}' | '\u{3130}'..='\u{318F}'
        | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{A960}'..='\u{A97F}'
        | '\u{AC00}'..='\u{D7FF}' | '\u{F900}'..='\u{FAFF}' | '\u{FF66}'..='\u{FFDC}'
        | '\u{20000}'..='\u{3FFFF}')
}

/// A letter or digit of a script that separates words with spaces (word boundaries
/// apply next to it).
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !is_unspaced(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skeleton(text: &str) -> String {
        Normalized::new(text).skeleton
    }

    #[test]
    fn folds_width_case_and_compatibility_forms() {
        let n = Normalized::new("ＢＯＭＢ Ａｂｃ");
        assert_eq!(n.folded, "bomb abc");
        assert_eq!(n.skeleton, "bombabc");
        // Full-width digits, ligatures, circled letters.
        assert_eq!(skeleton("１２３ ﬁne Ⓑ"), "123fineb");
        assert_eq!(skeleton("ＣＡＦÉ"), "café");
        // Decomposed é composes, and keeps its base's range.
        let n = Normalized::new("cafe\u{301}!");
        assert_eq!(n.folded, "café!");
        assert_eq!(n.orig_range(3..4), 3..6);
    }

    #[test]
    fn separators_and_invisible_characters_leave_the_skeleton() {
        assert_eq!(skeleton("b.o.m.b"), "bomb");
        assert_eq!(skeleton("炸 弹"), "炸弹");
        assert_eq!(skeleton("炸\u{200B}弹"), "炸弹");
        assert_eq!(skeleton("b\u{00AD}o\u{2060}m\u{FEFF}b"), "bomb");
        let n = Normalized::new("炸\u{200B}弹");
        assert_eq!(n.folded, "炸弹");
        assert!(!n.skel[1].gap_before, "zero-width is not a separator");
        let n = Normalized::new("b o");
        assert!(n.skel[1].gap_before);
        assert!(!n.gap_after_last);
        assert!(Normalized::new("bo ").gap_after_last);
    }

    #[test]
    fn every_folded_char_maps_back_to_its_original_bytes() {
        let text = "Ａ\u{200B}b 炸弹";
        let n = Normalized::new(text);
        assert_eq!(n.folded, "ab 炸弹");
        for ch in &n.chars {
            let orig = &text[ch.orig_start as usize..ch.orig_end as usize];
            assert!(!orig.is_empty());
        }
        assert_eq!(n.orig_range(0..1), 0..3);
        assert_eq!(n.orig_range(3..5), 8..14);
        assert_eq!(n.skel_index(n.skel[3].at as usize), 3);
        assert_eq!(n.folded_index(n.chars[4].at as usize), 4);
        assert_eq!(n.orig_start(5, text.len()), text.len());
    }

    #[test]
    fn scripts_without_spaces_have_no_word_chars() {
        assert!(is_word_char('a') && is_word_char('7') && is_word_char('é'));
        assert!(!is_word_char('炸') && !is_word_char('カ') && !is_word_char('폭'));
        assert!(!is_word_char(' ') && !is_word_char('.'));
    }
}
