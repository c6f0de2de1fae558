//! The compiled matchers of one policy stage: one Aho-Corasick automaton over every
//! literal term (on the skeleton view) and one `RegexSet` over every pattern (on the
//! folded view), plus each pattern alone to find its spans, and one lazy DFA over every
//! pattern to tell whether text could still begin a pattern match (the stream guard's
//! hold-back; the term automaton answers the same for terms, run anchored).
//!
//! A term match counts only when it respects word boundaries where words are separated
//! by spaces: the characters just before and after it must not be letters or digits of
//! such a script (`bomb` is not in `bombastic` nor `a bomb` in `abomb`), and inside each
//! word of the term the separators must be regular — between every pair of letters or
//! between none (`b o m b` and `b.o.m.b` match `bomb`; `a pe` does not match `ape`).
//! Next to Chinese, Japanese, Korean or Thai letters no boundary is needed.
//!
//! Invariants: every returned match is non-empty and lies within the text; a term whose
//! end boundary depends on text not seen yet (`final_text == false`) is not returned,
//! nor is a pattern match starting at or after `undecided_from`; the caller holds that
//! text back and looks again when more has arrived. `term_pending` / `pattern_pending`
//! never name a position later than one where a match could still begin.

use std::ops::Range;

use aho_corasick::automaton::{Automaton, OverlappingState};
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, MatchKind};
use regex::{Regex, RegexSet, RegexSetBuilder};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_syntax::hir::{Hir, HirKind};

use super::normalize::{is_word_char, Normalized};

/// Longest term, in letters and digits.
pub const MAX_TERM_CHARS: usize = 64;
/// Longest text an output-stage pattern may match, in characters.
pub const MAX_PATTERN_CHARS: usize = 256;
/// Compiled size limit of one pattern (and of the set), bytes.
const REGEX_SIZE_LIMIT: usize = 8 << 20;

/// One term of the automaton.
#[derive(Debug, Clone)]
struct TermInfo {
    rule: u32,
    /// Skeleton characters.
    len: u32,
    /// Bit `i`: the term has a separator between its characters `i` and `i + 1`.
    word_breaks: u64,
    /// Bit `i`: characters `i` and `i + 1` are in one word of a spaced script, so the
    /// text's separators there must follow the word's rule (all or none).
    regular_pairs: u64,
    start_boundary: bool,
    end_boundary: bool,
}

/// A term as the policy gives it, normalized.
#[derive(Debug, Clone)]
pub struct Term {
    pub rule: u32,
    pub norm: Normalized,
}

/// Where the text being matched sits in a longer stream.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The character before this text is a letter or digit of a spaced script.
    pub prev_word: bool,
    /// No more text follows.
    pub final_text: bool,
    /// Pattern matches starting at or after this folded index are not decided yet.
    pub undecided_from: usize,
}

impl Context {
    /// A whole text on its own.
    pub const WHOLE: Context = Context {
        prev_word: false,
        final_text: true,
        undecided_from: usize::MAX,
    };
}

/// One rule matched the folded characters `folded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rule: u32,
    pub folded: Range<usize>,
}

/// The matchers of one stage.
#[derive(Debug)]
pub struct Matcher {
    terms: Option<NFA>,
    term_info: Vec<TermInfo>,
    patterns: Option<RegexSet>,
    regexes: Vec<(u32, Regex)>,
    /// Every pattern, anchored, to test whether a match could still begin somewhere
    /// (`None` without patterns, or when a pattern needs what a lazy DFA lacks, e.g.
    /// Unicode `\b`: then the whole `pattern_hold` window is held).
    prefix_dfa: Option<DFA>,
    /// Skeleton characters of text that may still begin a term match.
    pub term_hold: usize,
    /// Folded characters of text that may still begin a pattern match.
    pub pattern_hold: usize,
}

/// A pattern as the policy gives it, compiled.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub rule: u32,
    pub regex: Regex,
    /// Longest match in characters; `None`: unbounded.
    pub max_chars: Option<usize>,
}

impl Pattern {
    /// Compiles `source` (case-insensitive: it runs on lower-cased text).
    pub fn compile(rule: u32, source: &str) -> Result<Self, String> {
        let hir = regex_syntax::ParserBuilder::new()
            .case_insensitive(true)
            .build()
            .parse(source)
            .map_err(|e| e.to_string())?;
        if hir.properties().minimum_len() == Some(0) {
            return Err(
                "matches the empty text; a pattern must match at least one character".into(),
            );
        }
        let regex = regex::RegexBuilder::new(source)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            rule,
            regex,
            max_chars: max_chars(&hir),
        })
    }
}

/// Most characters `hir` can match; `None` when unbounded.
fn max_chars(hir: &Hir) -> Option<usize> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(0),
        HirKind::Literal(lit) => Some(String::from_utf8_lossy(&lit.0).chars().count()),
        HirKind::Class(_) => Some(1),
        HirKind::Repetition(rep) => max_chars(&rep.sub)?.checked_mul(rep.max? as usize),
        HirKind::Capture(cap) => max_chars(&cap.sub),
        HirKind::Concat(subs) => subs
            .iter()
            .try_fold(0usize, |acc, h| acc.checked_add(max_chars(h)?)),
        HirKind::Alternation(subs) => subs
            .iter()
            .try_fold(0usize, |acc, h| Some(acc.max(max_chars(h)?))),
    }
}

impl TermInfo {
    fn new(term: &Term) -> Self {
        let n = &term.norm;
        let len = n.skel.len();
        let (mut word_breaks, mut regular_pairs) = (0u64, 0u64);
        for i in 0..len.saturating_sub(1) {
            if n.skel[i + 1].gap_before {
                word_breaks |= 1 << i;
            } else if is_word_char(n.skel_char(i)) && is_word_char(n.skel_char(i + 1)) {
                regular_pairs |= 1 << i;
            }
        }
        Self {
            rule: term.rule,
            len: len as u32,
            word_breaks,
            regular_pairs,
            start_boundary: len > 0 && is_word_char(n.skel_char(0)),
            end_boundary: len > 0 && is_word_char(n.skel_char(len - 1)),
        }
    }

    /// Whether this term at skeleton characters `s..e` of `n` is a match.
    fn accepts(&self, n: &Normalized, s: usize, e: usize, ctx: &Context) -> bool {
        let starts_word = if s == 0 {
            !ctx.prev_word || n.skel[0].gap_before
        } else {
            n.skel[s].gap_before || !is_word_char(n.skel_char(s - 1))
        };
        if self.start_boundary && !starts_word {
            return false;
        }
        let ends_word = if e == n.skel.len() {
            ctx.final_text || n.gap_after_last
        } else {
            n.skel[e].gap_before || !is_word_char(n.skel_char(e))
        };
        if self.end_boundary && !ends_word {
            return false;
        }
        let mut spaced: Option<bool> = None;
        for i in 0..self.len as usize - 1 {
            if self.word_breaks & (1 << i) != 0 {
                spaced = None;
            } else if self.regular_pairs & (1 << i) != 0 {
                let gap = n.skel[s + i + 1].gap_before;
                if *spaced.get_or_insert(gap) != gap {
                    return false;
                }
            }
        }
        true
    }
}

impl Matcher {
    /// The matcher of `terms` and `patterns` (either may be empty).
    pub fn new(terms: &[Term], patterns: Vec<Pattern>) -> Result<Self, String> {
        let term_info: Vec<TermInfo> = terms.iter().map(TermInfo::new).collect();
        let automaton = if terms.is_empty() {
            None
        } else {
            let keys = terms.iter().map(|t| t.norm.skeleton.as_str());
            let nfa = NFA::builder()
                .match_kind(MatchKind::Standard)
                .build(keys)
                .map_err(|e| format!("building the term automaton: {e}"))?;
            Some(nfa)
        };
        let max_term = term_info.iter().map(|t| t.len as usize).max().unwrap_or(0);
        let needs_lookahead = term_info.iter().any(|t| t.end_boundary);
        let term_hold = max_term.saturating_sub(1) + usize::from(needs_lookahead);
        // One character more than the longest match: `$` and `\b` look one ahead.
        let pattern_hold = patterns
            .iter()
            .map(|p| p.max_chars.unwrap_or(MAX_PATTERN_CHARS) + 1)
            .max()
            .unwrap_or(0);
        let prefix_dfa = if patterns.is_empty() {
            None
        } else {
            DFA::builder()
                .syntax(syntax::Config::new().case_insensitive(true))
                .build_many(
                    &patterns
                        .iter()
                        .map(|p| p.regex.as_str())
                        .collect::<Vec<_>>(),
                )
                .ok()
        };
        let set = if patterns.is_empty() {
            None
        } else {
            let set = RegexSetBuilder::new(patterns.iter().map(|p| p.regex.as_str()))
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT * 4)
                .build()
                .map_err(|e| format!("building the pattern set: {e}"))?;
            Some(set)
        };
        Ok(Self {
            terms: automaton,
            term_info,
            patterns: set,
            regexes: patterns.into_iter().map(|p| (p.rule, p.regex)).collect(),
            prefix_dfa,
            term_hold,
            pattern_hold,
        })
    }

    /// Every match in `n`, ordered by start.
    pub fn find(&self, n: &Normalized, ctx: &Context) -> Vec<Match> {
        let mut out = Vec::new();
        if let Some(nfa) = &self.terms {
            let input = Input::new(&n.skeleton);
            let mut state = OverlappingState::start();
            while let Some(m) = nfa
                .try_find_overlapping(&input, &mut state)
                .ok()
                .and_then(|()| state.get_match())
            {
                let info = &self.term_info[m.pattern().as_usize()];
                let s = n.skel_index(m.start());
                let e = s + info.len as usize;
                if info.accepts(n, s, e, ctx) {
                    let folded = n.skel[s].folded as usize..n.skel[e - 1].folded as usize + 1;
                    out.push(Match {
                        rule: info.rule,
                        folded,
                    });
                }
            }
        }
        if let Some(set) = &self.patterns {
            for index in set.matches(&n.folded).iter() {
                let (rule, regex) = &self.regexes[index];
                for m in regex.find_iter(&n.folded) {
                    let folded = n.folded_index(m.start())..n.folded_index(m.end());
                    let decided = ctx.final_text || folded.start < ctx.undecided_from;
                    if !folded.is_empty() && decided {
                        out.push(Match {
                            rule: *rule,
                            folded,
                        });
                    }
                }
            }
        }
        out.sort_by_key(|m| (m.folded.start, m.folded.end, m.rule));
        // A term listed twice in one rule matches once.
        out.dedup();
        out
    }
}

impl Matcher {
    /// The first skeleton character at which a term match could still begin (the text
    /// from it is the beginning of a term, or holds a term whose end is undecided).
    /// Inside a word of a spaced script no term can begin (it would need a word start),
    /// so only word starts and unspaced letters are tried. `prev_word` is as `Context`'s.
    pub fn term_pending(&self, n: &Normalized, prev_word: bool) -> Option<usize> {
        let nfa = self.terms.as_ref()?;
        let bytes = n.skeleton.as_bytes();
        let from = n.skel.len().saturating_sub(self.term_hold);
        let inside_word = |p: usize| {
            let before_is_word = match p {
                0 => prev_word,
                _ => is_word_char(n.skel_char(p - 1)),
            };
            is_word_char(n.skel_char(p)) && !n.skel[p].gap_before && before_is_word
        };
        (from..n.skel.len()).find(|&p| {
            if inside_word(p) {
                return false;
            }
            let Ok(mut sid) = nfa.start_state(Anchored::Yes) else {
                return true;
            };
            for &b in &bytes[n.skel[p].at as usize..] {
                sid = nfa.next_state(Anchored::Yes, sid, b);
                if nfa.is_dead(sid) {
                    return false;
                }
            }
            true
        })
    }

    /// A cache for `pattern_pending` (one per stream).
    pub fn pattern_cache(&self) -> Option<Cache> {
        self.prefix_dfa.as_ref().map(Cache::new)
    }

    /// The first folded character at which a pattern match could still begin or grow.
    pub fn pattern_pending(&self, n: &Normalized, cache: &mut Option<Cache>) -> Option<usize> {
        self.patterns.as_ref()?;
        let from = n.chars.len().saturating_sub(self.pattern_hold);
        let (Some(dfa), Some(cache)) = (&self.prefix_dfa, cache.as_mut()) else {
            return (from < n.chars.len()).then_some(from);
        };
        (from..n.chars.len())
            .find(|&p| may_match_from(dfa, cache, &n.folded, n.chars[p].at as usize))
    }
}

/// Whether a match of `dfa` anchored at byte `at` of `hay` is still possible when more
/// text follows (unknown answers count as yes).
fn may_match_from(dfa: &DFA, cache: &mut Cache, hay: &str, at: usize) -> bool {
    let input = regex_automata::Input::new(hay)
        .range(at..)
        .anchored(regex_automata::Anchored::Yes);
    let Ok(mut sid) = dfa.start_state_forward(cache, &input) else {
        return true;
    };
    for &b in &hay.as_bytes()[at..] {
        sid = match dfa.next_state(cache, sid, b) {
            Ok(sid) => sid,
            Err(_) => return true,
        };
        if sid.is_dead() {
            return false;
        }
        if sid.is_quit() {
            return true;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(terms: &[&str], patterns: &[&str]) -> Matcher {
        let terms: Vec<Term> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| Term {
                rule: i as u32,
                norm: Normalized::new(t),
            })
            .collect();
        let patterns = patterns
            .iter()
            .map(|p| Pattern::compile(100, p).expect("compiles"))
            .collect();
        Matcher::new(&terms, patterns).expect("builds")
    }

    fn hits(m: &Matcher, text: &str) -> Vec<String> {
        let n = Normalized::new(text);
        m.find(&n, &Context::WHOLE)
            .into_iter()
            .map(|h| text[n.orig_range(h.folded)].to_string())
            .collect()
    }

    #[test]
    fn terms_survive_the_common_evasions() {
        let m = matcher(&["炸弹", "bomb", "make a bomb"], &[]);
        for text in [
            "炸弹",
            "炸 弹",
            "炸\u{200B}弹",
            "炸．弹",
            "ＢＯＭＢ",
            "BoMb",
            "b.o.m.b",
            "b o m b",
            "b\u{200D}omb",
            "b-o-m-b!",
            "b̸o̸m̸b̸",
        ] {
            assert!(!hits(&m, text).is_empty(), "{text:?} should hit");
        }
        assert_eq!(hits(&m, "how to make a bomb"), ["make a bomb", "bomb"]);
        assert_eq!(hits(&m, "MAKE  A  BOMB"), ["MAKE  A  BOMB", "BOMB"]);
        assert_eq!(hits(&m, "他在炸弹旁边"), ["炸弹"]);
        assert_eq!(hits(&m, "a bomb."), ["bomb"]);
    }

    #[test]
    fn no_false_hit_across_english_word_boundaries() {
        let m = matcher(&["bomb", "ape", "sex", "rapist"], &[]);
        for text in [
            "bombastic",
            "a bombardier",
            "the abomb",
            "grape eater",
            "a pe",
            "his exam",
            "Essex",
            "therapist",
            "bom bastic",
            "bo mb",
        ] {
            assert!(hits(&m, text).is_empty(), "{text:?} should not hit");
        }
        assert_eq!(hits(&m, "an ape!"), ["ape"]);
        assert_eq!(hits(&m, "bomb2").len(), 0);
        assert_eq!(hits(&m, "炸bomb炸"), ["bomb"]);
    }

    #[test]
    fn end_boundary_waits_for_more_text_unless_final() {
        let m = matcher(&["paris"], &[]);
        let n = Normalized::new("in Paris");
        let open = Context {
            prev_word: false,
            final_text: false,
            undecided_from: usize::MAX,
        };
        assert!(m.find(&n, &open).is_empty(), "Parisian is still possible");
        assert_eq!(m.find(&n, &Context::WHOLE).len(), 1);
        assert_eq!(m.find(&Normalized::new("in Paris "), &open).len(), 1);
        let after_word = Context {
            prev_word: true,
            ..Context::WHOLE
        };
        assert!(m.find(&Normalized::new("paris"), &after_word).is_empty());
        assert_eq!(m.term_hold, 5);
        assert_eq!(matcher(&["炸弹"], &[]).term_hold, 1);
    }

    #[test]
    fn terms_can_begin_only_at_word_starts_in_spaced_scripts() {
        let m = matcher(&["bomb"], &[]);
        let pending = |text: &str, prev_word| m.term_pending(&Normalized::new(text), prev_word);
        assert_eq!(pending("a bo", false), Some(1), "\"bo\" may begin \"bomb\"");
        assert_eq!(pending("abo", false), None, "inside a word");
        assert_eq!(pending("bo", true), None, "continues the previous word");
        assert_eq!(pending("bo", false), Some(0));
        assert_eq!(pending("a b.o", false), Some(1), "letter-spaced");
        let zh = matcher(&["炸弹"], &[]);
        assert_eq!(zh.term_pending(&Normalized::new("他炸"), false), Some(1));
        assert_eq!(zh.term_pending(&Normalized::new("他说"), false), None);
    }

    #[test]
    fn patterns_run_on_folded_text_case_insensitively() {
        let m = matcher(&[], &[r"1[3-9]\d{9}", r"\d{17}[\dX]"]);
        assert_eq!(hits(&m, "call 13812345678 now"), ["13812345678"]);
        assert_eq!(
            hits(&m, "电话１３８１２３４５６７８"),
            ["１３８１２３４５６７８"]
        );
        // Both patterns match inside an ID-card number; a mask covers their union.
        assert_eq!(
            hits(&m, "id 11010119900307123x"),
            ["11010119900307123x", "19900307123"]
        );
        assert_eq!(m.pattern_hold, 19);
        assert!(hits(&m, "no numbers").is_empty());
    }

    #[test]
    fn pattern_lengths_are_bounded_or_refused() {
        let len = |p: &str| Pattern::compile(0, p).expect("compiles").max_chars;
        assert_eq!(len(r"1[3-9]\d{9}"), Some(11));
        assert_eq!(len(r"(?:ab|炸弹了)c?"), Some(4));
        assert_eq!(len(r"\bfoo\b"), Some(3));
        assert_eq!(len(r"\d+"), None);
        assert!(Pattern::compile(0, "a*").is_err());
        assert!(Pattern::compile(0, "(").is_err());
    }
}
