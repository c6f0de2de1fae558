//! Level 2: the output stream guard of one choice.
//!
//! Generated text arrives in pieces (`push`), and a term can be split across them. The
//! guard keeps the text not yet released (`pending`) and after each piece releases only
//! what can no longer be part of an undecided match: text before the first position at
//! which a term or pattern match could still begin (the term automaton and the pattern
//! DFA run anchored from each of the last `term_hold` letters/digits — the longest term
//! less one, plus one for the end-of-word check — and the last `pattern_hold`
//! characters). Text that cannot begin a match passes at once, so the hold-back is at
//! most those many characters and usually none. No character of a blocked or masked
//! match is ever sent, not even a prefix. `finish` releases the rest at the end.
//!
//! A `block` hit releases the text before the match and stops: the caller aborts the
//! sequence and ends the choice with `content_filter`. A `mask` hit is released with its
//! characters as `*` (never half: when a mask match reaches past the release point, the
//! release point moves back to the match's start). A `flag` hit is recorded and passes.
//!
//! Invariants: released text is a prefix of the pushed text with masks applied, in the
//! order pushed; after a block nothing more is released; each hit is recorded once.

use std::ops::Range;
use std::sync::Arc;

use super::input::masked;
use regex_automata::hybrid::dfa::Cache;

use super::matcher::{Context, Match};
use super::normalize::{is_word_char, Normalized};
use super::{Action, Hit, Screen, Stage};

/// What one step of the guard lets through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Released {
    /// Text to send now (masks applied).
    pub text: String,
    /// Bytes of the pushed stream released or cut so far (end of what `text` covers).
    pub upto: usize,
    /// Stream byte ranges masked in `text`.
    pub masked: Vec<Range<usize>>,
    /// A block hit: the stream ends here.
    pub blocked: bool,
}

/// The guard of one choice's output.
pub struct OutputGuard {
    screen: Arc<Screen>,
    choice: usize,
    /// Pushed and not released.
    pending: String,
    /// Stream bytes before `pending`.
    offset: usize,
    /// The last released character is a letter or digit of a spaced script.
    prev_word: bool,
    blocked: bool,
    /// The pattern DFA's cache.
    cache: Option<Cache>,
}

impl OutputGuard {
    pub(super) fn new(screen: Arc<Screen>, choice: usize) -> Self {
        let cache = screen
            .policy()
            .output
            .as_ref()
            .and_then(|m| m.pattern_cache());
        Self {
            cache,
            screen,
            choice,
            pending: String::new(),
            offset: 0,
            prev_word: false,
            blocked: false,
        }
    }

    /// Takes the next piece of generated text.
    pub fn push(&mut self, text: &str) -> Released {
        if !self.blocked {
            self.pending.push_str(text);
        }
        self.step(false)
    }

    /// The sequence ended: decides and releases everything held.
    pub fn finish(&mut self) -> Released {
        self.step(true)
    }

    /// Whether a block hit ended this output.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    fn step(&mut self, final_text: bool) -> Released {
        let policy = self.screen.policy().clone();
        let Some(matcher) = policy.output.as_ref().filter(|_| !self.blocked) else {
            return Released {
                upto: self.offset,
                blocked: self.blocked,
                ..Released::default()
            };
        };
        let n = Normalized::new(&self.pending);
        let len = self.pending.len();
        let (term_from, pattern_from) = if final_text {
            (None, None)
        } else {
            let patterns = matcher.pattern_pending(&n, &mut self.cache);
            (matcher.term_pending(&n, self.prev_word), patterns)
        };
        let ctx = Context {
            prev_word: self.prev_word,
            final_text,
            undecided_from: pattern_from.unwrap_or(n.chars.len()),
        };
        let matches: Vec<(Match, Range<usize>)> = matcher
            .find(&n, &ctx)
            .into_iter()
            .map(|m| {
                let span = n.orig_range(m.folded.clone());
                (m, span)
            })
            .collect();
        let action = |m: &Match| policy.rules[m.rule as usize].action;
        let cut = matches
            .iter()
            .filter(|(m, _)| action(m) == Action::Block)
            .min_by_key(|(_, span)| span.start);
        let release = match cut {
            Some((_, span)) => span.start,
            None => {
                let terms = term_from.map_or(len, |p| n.orig_start(n.skel[p].folded as usize, len));
                let patterns = pattern_from.map_or(len, |p| n.orig_start(p, len));
                outside_masks(terms.min(patterns), &matches, &action)
            }
        };
        for (m, span) in &matches {
            let cutting = cut.is_some_and(|(c, s)| c == m && s == span);
            if span.start < release || cutting {
                self.record(m, span);
            }
        }
        let spans: Vec<Range<usize>> = matches
            .iter()
            .filter(|(m, span)| action(m) == Action::Mask && span.start < release)
            .map(|(_, span)| span.start..span.end.min(release))
            .collect();
        self.blocked = cut.is_some();
        self.release(&n, release, spans)
    }

    fn record(&self, m: &Match, span: &Range<usize>) {
        let rule = &self.screen.policy().rules[m.rule as usize];
        self.screen.record(Hit {
            stage: Stage::Output,
            rule: m.rule as usize,
            category: rule.category.clone(),
            action: rule.action,
            index: self.choice,
            param: None,
            text: self.pending[span.clone()].to_string(),
        });
    }

    /// Sends `pending[..release]` with `spans` masked; after a block drops the rest.
    fn release(&mut self, n: &Normalized, release: usize, spans: Vec<Range<usize>>) -> Released {
        let head = &self.pending[..release];
        let text = if spans.is_empty() {
            head.to_string()
        } else {
            masked(head, &spans)
        };
        if release > 0 {
            let last = n
                .chars
                .partition_point(|c| (c.orig_start as usize) < release);
            if let Some(c) = last.checked_sub(1).map(|i| n.chars[i].c) {
                self.prev_word = is_word_char(c);
            }
        }
        let masked_spans = spans
            .iter()
            .map(|s| s.start + self.offset..s.end + self.offset)
            .collect();
        self.offset += release;
        if self.blocked {
            self.pending.clear();
        } else {
            self.pending.drain(..release);
        }
        Released {
            text,
            upto: self.offset,
            masked: masked_spans,
            blocked: self.blocked,
        }
    }
}

/// `release` moved back before any mask match it would cut in two.
fn outside_masks(
    mut release: usize,
    matches: &[(Match, Range<usize>)],
    action: &impl Fn(&Match) -> Action,
) -> usize {
    loop {
        let crossing = matches.iter().find(|(m, span)| {
            action(m) == Action::Mask && span.start < release && span.end > release
        });
        match crossing {
            Some((_, span)) => release = span.start,
            None => return release,
        }
    }
}

#[cfg(test)]
mod tests;
