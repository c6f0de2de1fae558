//! The history window: which earlier turns of a dialog go into the prompt.
//!
//! A *turn* is a user message and every message after it up to the next user message
//! (the answer, plus any system/developer notes in between). Messages before the first
//! user message are the *preamble* and are always kept, like `instructions`.
//!
//! The rule (`--history-turns N`, `--history-step G`): at least the last `N` completed
//! turns are kept (`N = 0`: all). The first kept turn moves in jumps of `G` turns: with
//! `T` completed turns, the window starts at `((T - N) / G) * G` (0 while `T < N`), so
//! it keeps between `N` and `N + G - 1` turns. Between two jumps every prompt is the
//! previous prompt plus its answer plus the new input — a prefix-cache hit for all of
//! it — and only one turn in `G` re-computes the history (`G = 1` is the plain sliding
//! window that misses every turn).
//!
//! The context limit comes second: with truncation `auto` the start moves on, again in
//! jumps of `G` turns (then to the last turn), until the prompt leaves room for the
//! output; with `disabled` a prompt that does not fit is an error.

use std::ops::Range;

use super::items::{Message, Role};

/// `--history-turns` and `--history-step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRule {
    /// Fewest completed turns kept (0: no limit).
    pub min_turns: usize,
    /// How many turns the window start jumps at once (≥ 1).
    pub step: usize,
}

impl Default for WindowRule {
    fn default() -> Self {
        Self {
            min_turns: 3,
            step: DEFAULT_STEP,
        }
    }
}

/// Default `--history-step`: measured with `tessera-bench conversation` (README).
pub const DEFAULT_STEP: usize = 4;

/// A history split into its preamble and its turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turns {
    /// `history[..preamble]` comes before the first user message.
    pub preamble: usize,
    /// Message ranges of the turns, oldest first.
    pub turns: Vec<Range<usize>>,
}

/// Splits `history` into preamble and turns (see the module header).
pub fn split_turns(history: &[Message]) -> Turns {
    let starts: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::User)
        .map(|(i, _)| i)
        .collect();
    let preamble = starts.first().copied().unwrap_or(history.len());
    let turns = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| start..starts.get(k + 1).copied().unwrap_or(history.len()))
        .collect();
    Turns { preamble, turns }
}

impl WindowRule {
    /// Index of the first kept turn when `completed` turns came before.
    pub fn first_kept(&self, completed: usize) -> usize {
        if self.min_turns == 0 || completed < self.min_turns {
            return 0;
        }
        let step = self.step.max(1);
        (completed - self.min_turns) / step * step
    }

    /// The candidate window starts, in the order truncation tries them: the rule's own
    /// start, then later ones `step` turns apart, and last `completed` (no turn kept).
    pub fn starts(&self, completed: usize) -> Vec<usize> {
        let step = self.step.max(1);
        let mut out: Vec<usize> = (self.first_kept(completed)..completed)
            .step_by(step)
            .collect();
        out.push(completed);
        out
    }
}

/// The first start in `starts` (ordered, fitting is monotone along it) for which `fits`
/// holds, by binary search; `None` when even the last does not fit. `fits` may fail.
pub fn first_fitting<E>(
    starts: &[usize],
    mut fits: impl FnMut(usize) -> Result<bool, E>,
) -> Result<Option<usize>, E> {
    let (mut lo, mut hi) = (0, starts.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fits(starts[mid])? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(starts.get(lo).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role) -> Message {
        Message::new(role, "x", 0)
    }

    #[test]
    fn turns_start_at_user_messages() {
        let h = [
            msg(Role::System),
            msg(Role::User),
            msg(Role::Assistant),
            msg(Role::User),
            msg(Role::Developer),
            msg(Role::Assistant),
            msg(Role::User),
        ];
        let t = split_turns(&h);
        assert_eq!(t.preamble, 1);
        assert_eq!(t.turns, vec![1..3, 3..6, 6..7]);
        assert_eq!(
            split_turns(&[msg(Role::System)]).turns,
            Vec::<Range<usize>>::new()
        );
    }

    #[test]
    fn the_start_jumps_in_steps_keeping_n_to_n_plus_g_minus_1() {
        let rule = WindowRule {
            min_turns: 3,
            step: 4,
        };
        let kept: Vec<usize> = (0..=12).map(|t| t - rule.first_kept(t)).collect();
        assert_eq!(kept, vec![0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 3, 4]);
        let starts: Vec<usize> = (0..=12).map(|t| rule.first_kept(t)).collect();
        assert_eq!(starts, vec![0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8]);
        let sliding = WindowRule {
            min_turns: 3,
            step: 1,
        };
        assert_eq!(sliding.first_kept(10), 7);
        let all = WindowRule {
            min_turns: 0,
            step: 4,
        };
        assert_eq!(all.first_kept(50), 0);
        assert_eq!(rule.starts(9), vec![4, 8, 9]);
        assert_eq!(rule.starts(0), vec![0]);
    }

    #[test]
    fn the_first_fitting_start_is_found() {
        let starts = [0, 4, 8, 9];
        let found = first_fitting::<()>(&starts, |s| Ok(s >= 5)).expect("ok");
        assert_eq!(found, Some(8));
        assert_eq!(first_fitting::<()>(&starts, |_| Ok(true)), Ok(Some(0)));
        assert_eq!(first_fitting::<()>(&starts, |_| Ok(false)), Ok(None));
    }
}
