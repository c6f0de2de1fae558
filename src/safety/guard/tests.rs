use super::*;
use crate::safety::testing::{screen, Recorder};

fn guard() -> (OutputGuard, Arc<Recorder>) {
    let (screen, recorder) = screen();
    (screen.output_guard(3).expect("output rules"), recorder)
}

/// Runs `pieces` through a fresh guard: every released piece, and whether it blocked.
fn run(pieces: &[&str]) -> (Vec<String>, bool) {
    let (mut g, _) = guard();
    let mut out: Vec<String> = pieces.iter().map(|p| g.push(p).text).collect();
    let last = g.finish();
    out.push(last.text);
    (out, last.blocked)
}

/// Splits `text` into pieces of 1..=4 characters (deterministic per `seed`).
fn chunks(text: &str, seed: u64) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let (mut out, mut at, mut state) = (Vec::new(), 0, seed);
    while at < chars.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = ((state >> 33) % 4 + 1) as usize;
        let end = (at + len).min(chars.len());
        out.push(chars[at..end].iter().collect());
        at = end;
    }
    out
}

#[test]
fn a_term_split_across_three_pieces_is_cut_before_its_first_character() {
    let (out, blocked) = run(&["The capital of France is P", "ar", "is."]);
    assert!(blocked);
    assert_eq!(out.concat(), "The capital of France is ");
    assert!(out.iter().all(|piece| !piece.contains('P')), "{out:?}");
}

#[test]
fn no_prefix_of_a_blocked_term_is_ever_released_under_any_split() {
    let text = "The capital of France is Paris. It is big.";
    for seed in 0..200 {
        let pieces = chunks(text, seed);
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (out, blocked) = run(&refs);
        assert!(blocked, "seed {seed}");
        assert_eq!(
            out.concat(),
            "The capital of France is ",
            "seed {seed}: {pieces:?}"
        );
    }
    let (out, blocked) = run(&["他说", "炸", "弹很", "危险"]);
    assert!(blocked);
    assert_eq!(out.concat(), "他说");
}

#[test]
fn blocking_aborts_at_once_and_then_releases_nothing() {
    let (mut g, recorder) = guard();
    // Nothing here can begin a match: it passes at once.
    assert_eq!(g.push("Visit ").text, "Visit ");
    assert_eq!(g.held(), 0);
    // "P" could begin "Paris": held.
    assert_eq!(g.push("the P").text, "the ");
    assert_eq!(g.held(), 1);
    let step = g.push("aris now");
    assert!(step.blocked && g.is_blocked());
    assert_eq!(step.text, "");
    assert_eq!(step.upto, 10);
    let later = g.push(" and more");
    assert!(later.blocked && later.text.is_empty());
    assert!(g.finish().text.is_empty());
    let hits = recorder.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].text.as_str(), hits[0].index), ("Paris", 3));
    assert_eq!(hits[0].stage, Stage::Output);
}

#[test]
fn passing_output_is_byte_identical_under_any_split() {
    let text = "Parisian cafés serve 炸鸡. Call 12 or 911; a comparison: \u{200B}x, ÉCOLE — fin.\n";
    for seed in 0..100 {
        let pieces = chunks(text, seed);
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (out, blocked) = run(&refs);
        assert!(!blocked);
        assert_eq!(out.concat(), text, "seed {seed}");
    }
}

#[test]
fn masks_apply_across_pieces_and_report_their_spans() {
    let (mut g, recorder) = guard();
    let mut text = String::new();
    let mut spans = Vec::new();
    for piece in ["call 138", "1234", "5678 now ", "ok"] {
        let step = g.push(piece);
        text.push_str(&step.text);
        spans.extend(step.masked);
    }
    let last = g.finish();
    text.push_str(&last.text);
    assert_eq!(text, "call *********** now ok");
    assert_eq!(spans, vec![5..16]);
    assert_eq!(recorder.hits()[0].text, "13812345678");
    let (out, _) = run(&chunks("a 13812345678 b 13912345678", 7)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(out.concat(), "a *********** b ***********");
}

#[test]
fn flags_pass_and_are_recorded_once() {
    let (mut g, recorder) = guard();
    let mut text = String::new();
    for piece in chunks("about money  laundering rules", 3) {
        text.push_str(&g.push(&piece).text);
    }
    text.push_str(&g.finish().text);
    assert_eq!(text, "about money  laundering rules");
    let hits = recorder.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].action, Action::Flag);
}

#[test]
fn the_hold_back_is_bounded_by_the_longest_match() {
    let (mut g, _) = guard();
    let mut released = 0;
    for piece in chunks(
        "lorem ipsum dolor sit amet, consectetur adipiscing elit",
        11,
    ) {
        released += g.push(&piece).text.len();
        // Only text that could begin a match is held: here at most a word that could
        // begin "money laundering" (no digits, no "paris" prefix).
        assert!(g.held() <= 16, "held {}", g.held());
    }
    released += g.finish().text.len();
    assert_eq!(g.held(), 0);
    assert_eq!(
        released,
        "lorem ipsum dolor sit amet, consectetur adipiscing elit".len()
    );
}
