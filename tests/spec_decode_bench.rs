//! Benchmark (report only, no asserts on time): single-stream decode tok/s with and
//! without `--speculative-ngram` on workloads where prompt lookup helps (code editing,
//! summarisation: the answer repeats text of the prompt) and on plain chat, where it
//! does not. Ignored by default; run it alone on a quiet machine:
//!
//! ```text
//! cargo test --release --test spec_decode_bench -- --ignored --nocapture
//! ```
//!
//! Each workload is one greedy request of `MAX_TOKENS` tokens through the chat template
//! (EOS ignored, so every run decodes the same number of tokens), timed from its first
//! token to its last; the median of `REPEATS` runs is reported, with the acceptance rate.

mod common;

use std::time::Instant;

use common::*;
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::model::chat_template::ChatMessage;
use tessera::request::SamplingParams;
use tessera::spec_decode::SpecDecodeConfig;

const MAX_TOKENS: usize = 160;
const REPEATS: usize = 3;

const CODE: &str = "Rename the function `total` to `sum_prices` everywhere in this code and \
show the whole file:\n\n```python\ndef total(items):\n    result = 0\n    for item in items:\n        \
result += item.price * item.quantity\n    return result\n\n\ndef report(items):\n    \
print(\"Items:\", len(items))\n    print(\"Total:\", total(items))\n    for item in items:\n        \
print(item.name, item.price, item.quantity)\n\n\nif __name__ == \"__main__\":\n    \
report(load_items(\"items.csv\"))\n```";

const SUMMARY: &str = "Summarize this text, keeping its key sentences:\n\nThe city council met on \
Tuesday to discuss the new public library. The library will be built next to the central park \
and will open in the spring of next year. It will have a children's section, a quiet reading \
room and a small cafe. The council agreed to fund the project with money from the city budget \
and from private donations. Construction will start in two weeks.";

const CHAT: &str = "Write a short story about a cat who learns to play the piano.";

fn engine(speculative: Option<SpecDecodeConfig>) -> EngineHandle {
    let cfg = EngineConfig {
        kv_cache_memory: 256 << 20,
        speculative,
        ..EngineConfig::default()
    };
    start(&default_model(), cfg)
}

fn chat_prompt(engine: &EngineHandle, text: &str) -> Vec<u32> {
    let messages = [ChatMessage::new("user", text)];
    tessera::cli::prompt_ids(engine, &messages, None).expect("chat prompt")
}

/// Decode tok/s of one request: tokens after the first over the time they took.
fn decode_rate(engine: &EngineHandle, prompt: &[u32]) -> f64 {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(MAX_TOKENS)
    };
    let mut stream = engine.submit(prompt.to_vec(), params).expect("submit");
    let (mut first, mut n) = (None, 0usize);
    while let Some(ev) = stream.blocking_next() {
        let ev = ev.expect("no error");
        n += ev.token_ids.len();
        if !ev.token_ids.is_empty() {
            first.get_or_insert_with(|| (Instant::now(), n));
        }
    }
    let (t0, n0) = first.expect("tokens");
    (n - n0) as f64 / t0.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn single_stream_decode_with_and_without_prompt_lookup() {
    // The engines live at once and their runs alternate, so a change in the machine's
    // load hits all alike (they share the compute pool; only one runs at a time).
    let eager = SpecDecodeConfig {
        prompt_lookup_min: 2,
        prompt_lookup_max: 4,
        ..SpecDecodeConfig::default()
    };
    let engines = [
        ("off", engine(None)),
        ("k=4 n=2..4", engine(Some(eager))),
        (
            "k=4 n=3..5 (default)",
            engine(Some(SpecDecodeConfig::default())),
        ),
    ];
    println!("| workload | speculation | decode tok/s (median of {REPEATS}) | vs off | accepted / draft tokens |");
    println!("|---|---|---|---|---|");
    for (workload, text) in [("code edit", CODE), ("summary", SUMMARY), ("chat", CHAT)] {
        let prompt = chat_prompt(&engines[0].1, text);
        let mut rates = vec![Vec::new(); engines.len()];
        let before: Vec<_> = engines.iter().map(|(_, e)| e.gauges().snapshot()).collect();
        for round in 0..=REPEATS {
            for ((_, e), rates) in engines.iter().zip(&mut rates) {
                let rate = decode_rate(e, &prompt);
                if round > 0 {
                    rates.push(rate); // round 0 warms up (and fills the prefix cache)
                }
            }
        }
        let off = median(rates[0].clone());
        for (((name, e), rates), before) in engines.iter().zip(rates).zip(&before) {
            let after = e.gauges().snapshot();
            let draft = after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens;
            let acc =
                after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens;
            let rate = median(rates);
            println!(
                "| {workload} | {name} | {rate:.1} | {:.3} | {acc} / {draft} |",
                rate / off
            );
        }
    }
    for (_, e) in engines {
        e.shutdown();
    }
}
