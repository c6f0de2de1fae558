//! Stop strings on the output side: the detokenized text is pushed piece by piece and
//! the matcher says what may be sent to the client now.
//!
//! Invariants:
//! - Text is released exactly once, in order; concatenating every `StopCheck::emit` and
//!   the final `flush()` gives the full text when no stop matched, and the text up to
//!   (not including) the first stop string when one did.
//! - Held-back text is the shortest tail that could still begin a stop string; it always
//!   starts on a char boundary. With no (non-empty) stop strings nothing is held back.
//! - The first match is the one that ENDS first in the text (then the longest one), so
//!   the result does not depend on how the text was split into pushes.
//! - After a match every later push emits nothing. Empty stop strings are ignored.

/// What one push releases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopCheck {
    /// Text safe to send now.
    pub emit: String,
    /// Index (into the list given to `new`) of the stop string that matched, if any.
    /// Once set, generation should finish with reason `stop`.
    pub matched: Option<usize>,
}

/// Incremental stop-string matcher for one output stream.
#[derive(Debug, Clone)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted (could still begin a stop string).
    held: String,
    /// Longest stop string in bytes (0: no stop strings, nothing is held back).
    longest_stop_len: usize,
    matched: Option<usize>,
}

impl StopStringMatcher {
    /// A matcher for `stops` (empty strings never match).
    pub fn new(stops: Vec<String>) -> Self {
        let longest_stop_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            held: String::new(),
            longest_stop_len,
            matched: None,
        }
    }

    /// The stop strings as given to `new`.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Index of the stop string that matched, once one has.
    pub fn matched(&self) -> Option<usize> {
        self.matched
    }

    /// Feeds the next piece of output text.
    pub fn push(&mut self, new_text: &str) -> StopCheck {
        if self.matched.is_some() {
            return StopCheck {
                emit: String::new(),
                matched: self.matched,
            };
        }
        if self.longest_stop_len == 0 {
            return StopCheck {
                emit: new_text.to_owned(),
                matched: None,
            };
        }
        self.held.push_str(new_text);
        if let Some((stop_index, start)) = self.first_match() {
            self.matched = Some(stop_index);
            self.held.truncate(start);
            return StopCheck {
                emit: std::mem::take(&mut self.held),
                matched: Some(stop_index),
            };
        }
        let keep_from = self.partial_match_start();
        let held_tail = self.held.split_off(keep_from);
        StopCheck {
            emit: std::mem::replace(&mut self.held, held_tail),
            matched: None,
        }
    }

    /// End of stream: releases held-back text (nothing once a stop string matched).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// `(stop index, byte start)` of the match in `held` that ends first; among those
    /// ending at the same byte, the longest (earliest start); then the lowest index.
    fn first_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter(|(_, stop)| !stop.is_empty())
            .filter_map(|(index, stop)| {
                self.held
                    .find(stop.as_str())
                    .map(|at| (index, at, stop.len()))
            })
            .min_by_key(|&(index, start, len)| (start + len, start, index))
            .map(|(index, start, _)| (index, start))
    }

    /// Byte offset of the earliest char boundary from which the rest of `held` is a
    /// proper prefix of some stop string (`held.len()` when there is none).
    fn partial_match_start(&self) -> usize {
        let earliest = self.held.len().saturating_sub(self.longest_stop_len - 1);
        self.held
            .char_indices()
            .map(|(at, _)| at)
            .filter(|&at| at >= earliest)
            .find(|&at| {
                let tail = &self.held[at..];
                self.stops
                    .iter()
                    .any(|stop| stop.len() > tail.len() && stop.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopStringMatcher {
        StopStringMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    /// Pushes every piece; returns (all emitted text incl. flush, matched index).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for piece in pieces {
            out.push_str(&m.push(piece).emit);
        }
        out.push_str(&m.flush());
        (out, m.matched())
    }

    #[test]
    fn no_stops_emits_everything_immediately() {
        let mut m = matcher(&[]);
        assert_eq!(
            m.push("Hello, "),
            StopCheck {
                emit: "Hello, ".into(),
                matched: None
            }
        );
        assert_eq!(m.push("world").emit, "world");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_in_single_push_truncates_before_it() {
        let mut m = matcher(&["\n\n"]);
        let check = m.push("one\n\ntwo");
        assert_eq!(
            check,
            StopCheck {
                emit: "one".into(),
                matched: Some(0)
            }
        );
        assert_eq!(m.push("more").emit, "");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_spanning_pushes_is_held_then_dropped() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("abc S").emit, "abc ");
        assert_eq!(m.push("T").emit, "");
        let check = m.push("OP tail");
        assert_eq!(
            check,
            StopCheck {
                emit: String::new(),
                matched: Some(0)
            }
        );
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("ST").emit, "");
        assert_eq!(m.push("OX").emit, "STOX");
        assert_eq!(m.push("S").emit, "");
        assert_eq!(m.flush(), "S");
        assert_eq!(m.matched(), None);
    }

    #[test]
    fn holds_back_from_the_earliest_possible_start() {
        // "aab" could start at "aa" for stop "aab" while "a" alone could start "ab".
        let mut m = matcher(&["aab", "ab!"]);
        assert_eq!(m.push("xaa").emit, "x");
        assert_eq!(m.push("b").emit, "");
        assert_eq!(m.matched(), Some(0));
    }

    #[test]
    fn overlapping_candidates_pick_the_one_that_ends_first() {
        assert_eq!(run(&["abcd", "bc"], &["abcd"]), ("a".into(), Some(1)));
        assert_eq!(
            run(&["abcd", "bc"], &["a", "b", "c", "d"]),
            ("a".into(), Some(1))
        );
        // Same end: the longer one wins, so no part of a stop string is emitted.
        assert_eq!(run(&["c", "abc"], &["xabc"]), ("x".into(), Some(1)));
        // Partial of one stop, completed as another.
        assert_eq!(
            run(&["hello world", "hello"], &["say hel", "lo there"]),
            ("say ".into(), Some(1))
        );
    }

    #[test]
    fn result_does_not_depend_on_how_text_is_split() {
        let stops = ["</s>", "ENDING", "DINGO", "é!"];
        let text = "some text with ENDIN and DINg é and </ then é! rest";
        let (whole, whole_match) = run(&stops, &[text]);
        assert_eq!(whole, "some text with ENDIN and DINg é and </ then ");
        assert_eq!(whole_match, Some(3));
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&stops, &pieces), (whole.clone(), whole_match));
        for split in (0..text.len()).filter(|&at| text.is_char_boundary(at)) {
            assert_eq!(
                run(&stops, &[&text[..split], &text[split..]]),
                (whole.clone(), whole_match)
            );
        }
    }

    #[test]
    fn multibyte_text_is_held_on_char_boundaries() {
        let mut m = matcher(&["日本語"]);
        assert_eq!(m.push("こんにちは日").emit, "こんにちは");
        assert_eq!(m.push("本").emit, "");
        assert_eq!(m.push("人").emit, "日本人");
        assert_eq!(m.push("日本語です").emit, "");
        assert_eq!(m.matched(), Some(0));
        // A stop sharing a leading byte with the text but not its first char.
        let mut m = matcher(&["é"]);
        assert_eq!(m.push("è").emit, "è");
    }

    #[test]
    fn flush_returns_held_tail_without_match() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("answer <|en").emit, "answer ");
        assert_eq!(m.flush(), "<|en");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(run(&[""], &["abc"]), ("abc".into(), None));
        assert_eq!(run(&["", "b"], &["abc"]), ("a".into(), Some(1)));
    }
}
