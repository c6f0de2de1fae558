//! Bench (report only, no timing asserts; CPU time of this thread, so other processes
//! on the machine count less): the cost of moderation with a 10,000-term policy (5,000 Chinese terms that block, 5,000 English phrases that flag, the example's
//! two PII patterns that mask): loading it, checking a 512-character input, and guarding
//! an output stream token by token (time per token, characters held back).
//!
//! `cargo test --release --test moderation_bench -- --ignored --nocapture`
//! The policy is left in `$CARGO_TARGET_TMPDIR/moderation-bench/policy.toml` for
//! server-level runs (`tessera serve --moderation-policy …` + `tessera-bench`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::safety::matcher::Context;
use tessera::safety::normalize::Normalized;
use tessera::safety::{InputText, Moderation, NoSink, Screen};

/// A deterministic stream of numbers (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }

    fn han(&mut self) -> char {
        char::from_u32(0x4E00 + self.below(0x9FA5 - 0x4E00)).unwrap_or('中')
    }

    fn word(&mut self) -> String {
        let len = 4 + self.below(5);
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

/// Writes the 10,000-term policy and returns its path.
fn write_policy() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moderation-bench");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut rng = Lcg(42);
    let chinese: Vec<String> = (0..5000)
        .map(|_| (0..2 + rng.below(3)).map(|_| rng.han()).collect())
        .collect();
    let english: Vec<String> = (0..5000)
        .map(|_| format!("{} {}", rng.word(), rng.word()))
        .collect();
    std::fs::write(dir.join("zh.txt"), chinese.join("\n")).expect("write");
    std::fs::write(dir.join("en.txt"), english.join("\n")).expect("write");
    // No `[input]` length limit: server-level runs send long prompts.
    let policy = r#"
[[rule]]
category = "violence"
action = "block"
terms_file = "zh.txt"

[[rule]]
category = "fraud"
action = "flag"
terms_file = "en.txt"

[[rule]]
category = "pii"
action = "mask"
patterns = [
  '1[3-9]\d{9}',
  '[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dx]',
]
"#;
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).expect("write");
    path
}

/// 512 characters: mixed Chinese and English prose-like text that no term matches.
fn input_text(rng: &mut Lcg) -> String {
    let mut text = String::new();
    while text.chars().count() < 512 {
        if rng.below(2) == 0 {
            text.push_str(&rng.word());
            text.push(' ');
        } else {
            text.extend((0..3).map(|_| rng.han()));
            text.push('，');
        }
    }
    text.chars().take(512).collect()
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`): on a busy
/// machine wall time also counts the time other processes had the core.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time per call of `f` (after one warm-up call).
fn per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    f();
    let start = cpu_ns();
    for _ in 0..iterations {
        f();
    }
    Duration::from_nanos((cpu_ns() - start) / u64::from(iterations))
}

fn check(screen: &Screen, text: &str) -> bool {
    let mut text = text.to_string();
    let mut fields = [InputText {
        param: "messages[0].content".into(),
        prompt: 0,
        limited: true,
        text: &mut text,
    }];
    screen.check_input(&mut fields).is_ok()
}

#[test]
#[ignore = "bench: run with --ignored --nocapture"]
fn moderation_cost_with_10000_terms() {
    let path = write_policy();
    let started = Instant::now();
    let moderation = Moderation::new(Some(&path), Arc::new(NoSink)).expect("policy loads");
    let load = started.elapsed();
    let (terms, patterns) = moderation.policy().expect("on").counts();
    println!("policy: {terms} terms, {patterns} patterns, loaded and compiled in {load:.1?}");
    println!("written to {}", path.display());

    let mut rng = Lcg(7);
    let texts: Vec<String> = (0..64).map(|_| input_text(&mut rng)).collect();
    let mut i = 0;
    let clean = per_call(2000, || {
        let screen = moderation.screen(|| "bench".into()).expect("on");
        assert!(check(&screen, &texts[i % texts.len()]));
        i += 1;
    });
    let mut hit = texts[0].chars().take(480).collect::<String>();
    hit.push_str(" 13812345678 ok");
    let masked = per_call(2000, || {
        let screen = moderation.screen(|| "bench".into()).expect("on");
        assert!(check(&screen, &hit));
    });
    println!("input check, 512 characters: {clean:.1?} (no hit), {masked:.1?} (one mask)");
    let policy = moderation.policy().expect("on");
    let matcher = policy.input.as_ref().expect("input rules");
    let normalize = per_call(2000, || {
        std::hint::black_box(Normalized::new(&texts[1]));
    });
    let n = Normalized::new(&texts[1]);
    let find = per_call(2000, || {
        std::hint::black_box(matcher.find(&n, &Context::WHOLE));
    });
    println!("  of which normalization {normalize:.1?}, matching (terms + patterns) {find:.1?}");

    // Output: ~1,000 tokens of 1-4 characters through one stream guard.
    let output: String = (0..200)
        .map(|_| input_text(&mut rng))
        .collect::<Vec<_>>()
        .join(" ");
    let pieces: Vec<String> = {
        let chars: Vec<char> = output.chars().collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < chars.len() && pieces.len() < 20_000 {
            let len = 1 + rng.below(4) as usize;
            pieces.push(chars[at..(at + len).min(chars.len())].iter().collect());
            at += len;
        }
        pieces
    };
    let screen = moderation.screen(|| "bench".into()).expect("on");
    let mut guard = screen.output_guard(0).expect("output rules");
    let (mut held_total, mut held_max, mut released) = (0usize, 0usize, 0usize);
    let started = cpu_ns();
    for piece in &pieces {
        released += guard.push(piece).text.len();
        held_total += guard.held();
        held_max = held_max.max(guard.held());
    }
    released += guard.finish().text.len();
    let elapsed = Duration::from_nanos(cpu_ns() - started);
    println!(
        "output guard: {} tokens in {elapsed:.1?} = {:.2?} per token; held back {:.1} bytes on average, {held_max} at most; {released} bytes released",
        pieces.len(),
        elapsed / pieces.len() as u32,
        held_total as f64 / pieces.len() as f64
    );
}
