//! Prompts of an exact length that no two requests share (so no server can serve one from
//! another's prefix cache unless the scenario wants it).
//!
//! Preferred: token-id prompts (`"prompt": [ids…]`), seeded ids in a range every vocabulary
//! of interest has, so two servers see the very same tokens. Fallback for servers that
//! refuse token ids: seeded English words, measured through the server's own `/tokenize`
//! and trimmed to the length asked for.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::BenchError;
use crate::http::{self, Endpoint};
use crate::rng::SplitMix64;

/// Common words, mostly one token each in BPE vocabularies.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "world",
    "house", "river", "light", "water", "stone", "green", "small", "great", "city", "music",
    "paper", "garden", "winter", "summer", "morning", "night", "road", "window", "table", "story",
    "friend", "market", "bridge", "mountain", "forest", "letter", "number", "color", "school",
    "family", "animal", "ocean", "island", "machine", "engine", "signal", "voice",
];

/// Token ids for one prompt: `len` ids drawn from `[lo, hi)` by a generator seeded with `seed`.
pub fn token_ids(seed: u64, len: usize, lo: u32, hi: u32) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| rng.range(u64::from(lo), u64::from(hi)) as u32)
        .collect()
}

/// `n` seeded words separated by spaces, ending with a period.
pub fn words(seed: u64, n: usize) -> String {
    let mut rng = SplitMix64::new(seed ^ 0x5EED_F57A);
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.range(0, WORDS.len() as u64) as usize]);
    }
    s.push('.');
    s
}

/// Token count of `text` by the server's `/tokenize` (no special tokens added).
/// Sends llama.cpp's field (`content`) and, if refused, vLLM's (`prompt`).
pub fn count_tokens(ep: &Endpoint, text: &str, timeout: Duration) -> Result<usize, BenchError> {
    let mut last_err = None;
    for body in [
        json!({"content": text, "add_special": false}),
        json!({"prompt": text, "add_special_tokens": false}),
    ] {
        match http::post_json(ep, "/tokenize", &body, timeout)?.into_json("/tokenize") {
            Ok(v) => {
                return v
                    .get("tokens")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .or_else(|| v.get("count").and_then(Value::as_u64).map(|n| n as usize))
                    .ok_or_else(|| {
                        BenchError::Http(format!("/tokenize answered without `tokens`: {v}"))
                    });
            }
            Err(e @ BenchError::Status { .. }) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| BenchError::Http("/tokenize failed".into())))
}

/// Seeded text of exactly `len` tokens by the server's tokenizer (or the longest text of
/// at most `len` tokens when words cannot hit it exactly). Returns the text and its count.
pub fn text_of_tokens(
    ep: &Endpoint,
    seed: u64,
    len: usize,
    timeout: Duration,
) -> Result<(String, usize), BenchError> {
    let mut n_words = len.max(1);
    let mut best: Option<(usize, usize)> = None; // (words, tokens) with tokens <= len
    for _ in 0..8 {
        let tokens = count_tokens(ep, &words(seed, n_words), timeout)?;
        if tokens == len {
            return Ok((words(seed, n_words), tokens));
        }
        if tokens < len && best.is_none_or(|(_, t)| tokens > t) {
            best = Some((n_words, tokens));
        }
        let scaled = (n_words as f64 * len as f64 / tokens.max(1) as f64).round() as usize;
        let next = if scaled == n_words {
            if tokens > len {
                n_words - 1
            } else {
                n_words + 1
            }
        } else {
            scaled
        };
        if next == 0 {
            break;
        }
        n_words = next;
    }
    let (n, tokens) =
        best.ok_or_else(|| BenchError::Arg(format!("cannot build a text prompt of {len} tokens")))?;
    Ok((words(seed, n), tokens))
}

/// How prompts are sent to this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    TokenIds,
    Text,
}

/// Asks the server for a 1-token completion of a token-id prompt: accepted → token ids;
/// refused with a 4xx → text. Anything else (server down) is an error.
pub fn detect_mode(
    ep: &Endpoint,
    model: &str,
    timeout: Duration,
) -> Result<PromptMode, BenchError> {
    let body = json!({
        "model": model, "prompt": token_ids(1, 8, 1000, 2000), "max_tokens": 1,
        "temperature": 0.0, "stream": false,
    });
    let resp = http::post_json(ep, "/v1/completions", &body, timeout)?;
    let status = resp.status;
    let text = resp.into_string()?;
    match status {
        200 => Ok(PromptMode::TokenIds),
        400..=499 => Ok(PromptMode::Text),
        _ => Err(BenchError::Status {
            status,
            path: "/v1/completions".into(),
            body: http::snippet(&text),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_prompts_are_seeded_in_range_and_distinct() {
        let a = token_ids(3, 128, 1000, 20000);
        assert_eq!(a.len(), 128);
        assert_eq!(a, token_ids(3, 128, 1000, 20000));
        assert_ne!(a[..8], token_ids(4, 128, 1000, 20000)[..8]);
        assert!(a.iter().all(|&t| (1000..20000).contains(&t)));
    }

    #[test]
    fn words_are_seeded() {
        let w = words(9, 50);
        assert_eq!(w.split(' ').count(), 50);
        assert_eq!(w, words(9, 50));
        assert_ne!(w, words(10, 50));
        assert!(w.ends_with('.'));
    }
}
