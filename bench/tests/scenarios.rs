//! The load generator end to end against the mock server in `common`: every scenario,
//! both prompt modes, both body framings, injected failures. Loopback only.

mod common;

use std::time::Duration;

use common::{Mock, MockConfig};
use tessera_bench::prompts::PromptMode;
use tessera_bench::rng::poisson_arrivals;
use tessera_bench::scenario::{dialog, prefill, rate, sweep, wait_ready, Target};

fn target(mock: &Mock) -> Target {
    Target::connect(&mock.url, None, None, Duration::from_secs(20), (1000, 2000)).unwrap()
}

fn sweep_cfg(concurrency: Vec<usize>) -> sweep::SweepConfig {
    sweep::SweepConfig {
        concurrency,
        prompt_len: 16,
        max_tokens: 8,
        rounds: 2,
        min_requests: 3,
        seed: 5,
        keep_records: true,
    }
}

#[test]
fn sweep_counts_tokens_gaps_and_sends_openai_fields() {
    let mock = Mock::start(MockConfig::default());
    let t = target(&mock);
    assert_eq!(
        (t.model.as_str(), t.mode),
        ("mock-model", PromptMode::TokenIds)
    );
    let mut seen_levels = Vec::new();
    let result = sweep::run(&t, &sweep_cfg(vec![1, 4]), |l| {
        seen_levels.push(l.concurrency)
    })
    .unwrap();
    assert_eq!(seen_levels, vec![1, 4]);
    let (l1, l4) = (&result.levels[0], &result.levels[1]);
    assert_eq!((l1.summary.requests, l4.summary.requests), (3, 8));
    for level in &result.levels {
        let s = &level.summary;
        assert_eq!(s.succeeded, s.requests, "{:?}", s.first_error);
        assert_eq!(s.mean_output_tokens, 8.0);
        assert_eq!(s.prompt_tokens, 16 * s.requests);
        assert_eq!(s.itl_ms.unwrap().n, 7 * s.requests);
        assert!(s.ttft_ms.unwrap().p50 > 0.0 && s.output_tok_per_s > 0.0);
        for r in &level.records {
            assert_eq!(
                (r.content_chunks, r.output_tokens, r.itl_s.len()),
                (8, 8, 7)
            );
            assert!(r.usage_reported && r.e2e_s >= r.ttft_s.unwrap());
        }
    }
    // Every measured request: token ids, greedy, exact length, usage asked for.
    let posts = mock.posts("/v1/completions");
    let streamed: Vec<_> = posts.iter().filter(|b| b["stream"] == true).collect();
    assert_eq!(streamed.len(), 1 + 3 + 8); // warm-up + levels
    for b in &streamed[1..] {
        assert_eq!(b["prompt"].as_array().unwrap().len(), 16);
        assert_eq!(
            (b["ignore_eos"].as_bool(), b["temperature"].as_f64()),
            (Some(true), Some(0.0))
        );
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["max_tokens"], 8);
        assert_eq!(b["model"], "mock-model");
    }
    let firsts: std::collections::HashSet<String> = streamed
        .iter()
        .map(|b| format!("{:?}", &b["prompt"].as_array().unwrap()[..4]))
        .collect();
    assert_eq!(
        firsts.len(),
        streamed.len(),
        "prompts must not share prefixes"
    );
}

#[test]
fn close_delimited_bodies_and_injected_failures() {
    let mock = Mock::start(MockConfig {
        chunked: false,
        error_every: 3,
        ..MockConfig::default()
    });
    let t = target(&mock);
    // Warm-up is streamed request 1; the level's 6 requests are 2..=7, of which 3 and 6 fail.
    let result = sweep::run(
        &t,
        &sweep::SweepConfig {
            min_requests: 6,
            ..sweep_cfg(vec![2])
        },
        |_| {},
    )
    .unwrap();
    let s = &result.levels[0].summary;
    assert_eq!((s.requests, s.succeeded), (6, 4));
    assert!((s.success_rate - 4.0 / 6.0).abs() < 1e-12);
    assert!(s.first_error.as_deref().unwrap().contains("mock failure"));
    assert_eq!(
        s.output_tokens,
        4 * 8,
        "failed requests' tokens are not counted"
    );
}

#[test]
fn text_fallback_hits_exact_lengths_through_tokenize() {
    let mock = Mock::start(MockConfig {
        accept_token_ids: false,
        ..MockConfig::default()
    });
    let t = target(&mock);
    assert_eq!(t.mode, PromptMode::Text);
    let cfg = prefill::PrefillConfig {
        lengths: vec![10, 40],
        repeats: 2,
        max_tokens: 2,
        seed: 3,
    };
    let result = prefill::run(&t, &cfg, |_| {}).unwrap();
    for (point, len) in result.points.iter().zip([10, 40]) {
        assert_eq!(
            point.summary.succeeded, 2,
            "{:?}",
            point.summary.first_error
        );
        assert_eq!(point.summary.prompt_tokens, 2 * len);
        assert!(point.prefill_tok_per_s.unwrap() > 0.0);
    }
    assert!(!mock.posts("/tokenize").is_empty());
    assert!(mock
        .posts("/v1/completions")
        .iter()
        .filter(|b| b["stream"] == true)
        .all(|b| b["prompt"].is_string()));
}

#[test]
fn dialog_resends_the_conversation_with_the_servers_replies() {
    let mock = Mock::start(MockConfig::default());
    let t = target(&mock);
    let cfg = dialog::DialogConfig {
        users: 2,
        turns: 3,
        system_words: 20,
        user_words: 5,
        max_tokens: 4,
        think_ms: 0,
        seed: 1,
    };
    let result = dialog::run(&t, &cfg).unwrap();
    assert_eq!(result.per_turn.len(), 3);
    assert_eq!(
        result.overall.succeeded, 6,
        "{:?}",
        result.overall.first_error
    );
    let prompts: Vec<f64> = result
        .per_turn
        .iter()
        .map(|t| t.mean_prompt_tokens.unwrap())
        .collect();
    assert!(prompts.windows(2).all(|w| w[1] > w[0]), "{prompts:?}");
    let chats = mock.posts("/v1/chat/completions");
    let last = chats
        .iter()
        .map(|b| b["messages"].as_array().unwrap().len())
        .max()
        .unwrap();
    assert_eq!(last, 1 + 2 * 3 - 1); // system + 3 user + 2 assistant
    let third = chats
        .iter()
        .find(|b| b["messages"].as_array().unwrap().len() == 6)
        .unwrap();
    assert_eq!(third["messages"][2]["role"], "assistant");
    assert_eq!(third["messages"][2]["content"], " w0 w1 w2 w3");
    let systems: std::collections::HashSet<String> =
        chats.iter().map(|b| b["messages"][0].to_string()).collect();
    assert_eq!(systems.len(), 1, "one shared system prompt");
}

#[test]
fn rate_sends_the_seeded_schedule() {
    let mock = Mock::start(MockConfig::default());
    let t = target(&mock);
    let cfg = rate::RateConfig {
        rate: 40.0,
        duration_s: 0.5,
        prompt_len: 8,
        max_tokens: 3,
        max_in_flight: 64,
        seed: 11,
    };
    let result = rate::run(&t, &cfg).unwrap();
    let expected = poisson_arrivals(40.0, 0.5, 11).len();
    assert!(expected > 5);
    assert_eq!(
        (
            result.arrivals,
            result.summary.requests,
            result.summary.succeeded
        ),
        (expected, expected, expected)
    );
    assert!(result.max_in_flight_seen >= 1);
}

#[test]
fn bad_arguments_and_dead_servers_are_errors() {
    let mock = Mock::start(MockConfig::default());
    let t = target(&mock);
    assert!(sweep::run(&t, &sweep_cfg(vec![0]), |_| {}).is_err());
    let cfg = rate::RateConfig {
        rate: 0.0,
        duration_s: 1.0,
        prompt_len: 8,
        max_tokens: 3,
        max_in_flight: 4,
        seed: 1,
    };
    assert!(rate::run(&t, &cfg).is_err());
    assert!(Target::connect(&mock.url, None, None, Duration::from_secs(5), (10, 10)).is_err());
    let port = mock.url.rsplit(':').next().unwrap().to_string();
    drop(mock);
    std::thread::sleep(Duration::from_millis(50));
    let dead = format!("http://127.0.0.1:{port}");
    let ep = tessera_bench::http::Endpoint::parse(&dead).unwrap();
    assert!(wait_ready(&ep, Duration::from_millis(300)).is_err());
}
