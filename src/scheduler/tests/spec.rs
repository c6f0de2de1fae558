//! Speculative decoding in the scheduler: with the n-gram drafter on, every request's
//! tokens and finish reason equal those without it (under preemption, chunked prefill,
//! prefix caching, stops inside an accepted draft), drafts are really accepted, and no
//! rejected draft token leaves anything behind (the fake runner reads every context back
//! from its KV slots, and prefix-cache hits on blocks a speculating request cached).

use super::*;
use crate::spec_decode::SpecDecodeConfig;

fn spec(k: usize) -> Option<SpecDecodeConfig> {
    Some(SpecDecodeConfig {
        num_speculative_tokens: k,
        prompt_lookup_min: 1,
        prompt_lookup_max: 3,
    })
}

/// Output that repeats with period 5, except that every 7th position breaks the
/// pattern: drafts are accepted in part and rejected in part.
fn mostly_cyclic() -> SampleFn {
    Box::new(|c| {
        let base = [11, 12, 13, 14, 15][c.num_tokens % 5];
        if c.num_tokens % 7 == 0 {
            base + 100
        } else {
            base
        }
    })
}

/// Runs `reqs` with `config` and `sampler`, checking the scheduler's invariants each step.
fn run_with(config: SchedulerConfig, reqs: Vec<Request>, sampler: SampleFn) -> (Run, Scheduler) {
    let mut s = Scheduler::new(config.clone()).expect("valid config");
    for r in reqs {
        s.add_request(r);
    }
    let mut runner = FakeRunner::new(&config, sampler);
    let run = drive(&mut s, &mut runner);
    (run, s)
}

fn repetitive_prompt(id: RequestId, len: usize) -> Vec<TokenId> {
    (0..len)
        .map(|i| [11, 12, 13, 14, 15][(i + id as usize) % 5])
        .collect()
}

/// Same tokens and reasons with speculation (`k` draft tokens) as without; returns the
/// speculative run's scheduler (for its counters) and run.
fn assert_unchanged(
    config: SchedulerConfig,
    reqs: impl Fn() -> Vec<Request>,
    sampler: impl Fn() -> SampleFn,
    k: usize,
) -> (Run, Scheduler) {
    let (plain, _) = run_with(config.clone(), reqs(), sampler());
    let speculative = SchedulerConfig {
        speculative: spec(k),
        ..config
    };
    let (run, s) = run_with(speculative, reqs(), sampler());
    assert_eq!(run.tokens, plain.tokens, "tokens with speculation");
    assert_eq!(run.finish, plain.finish, "finish reasons with speculation");
    (run, s)
}

#[test]
fn outputs_are_unchanged_and_drafts_accepted() {
    let reqs = || {
        (1..=6)
            .map(|id| request(id, repetitive_prompt(id, 9 + id as usize), 30))
            .collect()
    };
    for k in [1, 3, 8] {
        let (run, s) = assert_unchanged(cfg(4, 128, 64), reqs, mostly_cyclic, k);
        let stats = s.stats().spec_decode;
        assert!(
            stats.num_accepted_tokens > 0,
            "k={k}: nothing accepted {stats:?}"
        );
        assert!(
            stats.num_accepted_tokens < stats.num_draft_tokens,
            "k={k}: nothing rejected {stats:?}"
        );
        assert!(run
            .steps
            .iter()
            .any(|o| !o.scheduled_spec_decode_tokens.is_empty()));
        // Fewer steps than tokens: several tokens per step for some request.
        let (plain, _) = run_with(cfg(4, 128, 64), reqs(), mostly_cyclic());
        assert!(run.steps.len() < plain.steps.len(), "k={k}: no step saved");
    }
}

#[test]
fn unchanged_with_an_unpredictable_sampler() {
    let reqs = || (1..=5).map(|id| request(id, prompt(id, 20), 12)).collect();
    assert_unchanged(cfg(4, 128, 64), reqs, default_sampler, 4);
}

#[test]
fn unchanged_under_preemption_and_a_tight_budget() {
    // 24 blocks of 4 tokens for 6 requests growing to ~45 tokens: preemptions.
    let reqs = || {
        (1..=6)
            .map(|id| request(id, repetitive_prompt(id, 13), 32))
            .collect()
    };
    let config = SchedulerConfig {
        max_model_len: 64,
        ..cfg(4, 24, 10)
    };
    let (_, s) = assert_unchanged(config, reqs, mostly_cyclic, 5);
    assert!(s.stats().num_preemptions > 0, "no preemption exercised");
    assert!(s.stats().spec_decode.num_accepted_tokens > 0);
}

#[test]
fn stops_inside_an_accepted_draft_finish_where_plain_decoding_does() {
    // The cycle holds EOS: drafts carry it, and a request must stop right at it (once
    // min_tokens allow), never emitting the draft tokens after it.
    let cycle = || cyclic(vec![21, 22, EOS, 23, 24, 25, 26]);
    for (min_tokens, max_tokens) in [(0, 40), (4, 40), (9, 40), (0, 1), (3, 5), (10, 12)] {
        let reqs = || {
            let params = SamplingParams {
                min_tokens,
                ..SamplingParams::greedy(max_tokens)
            };
            let prompt: Vec<TokenId> = (0..21)
                .map(|i| [21, 22, 30, 23, 24, 25, 26][i % 7])
                .collect();
            vec![Request::new(1, prompt, params, vec![EOS])]
        };
        let (run, _) = assert_unchanged(cfg(4, 64, 64), reqs, cycle, 6);
        let tokens = &run.tokens[&1];
        assert!(tokens.len() <= max_tokens);
        // The first EOS that min_tokens lets count ends the output.
        let eos_at = (0..tokens.len()).find(|&i| tokens[i] == EOS && i + 1 >= min_tokens);
        if let Some(at) = eos_at {
            assert_eq!(at + 1, tokens.len(), "tokens after EOS: {tokens:?}");
        }
    }
    // max_model_len inside a draft.
    let reqs = || vec![request(1, repetitive_prompt(1, 10), 100)];
    let config = SchedulerConfig {
        max_model_len: 23,
        ..cfg(4, 64, 64)
    };
    let (run, _) = assert_unchanged(config, reqs, mostly_cyclic, 8);
    assert_eq!(run.tokens[&1].len(), 13);
    assert_eq!(run.finish[&1], FinishReason::Length);
}

#[test]
fn blocks_cached_by_a_speculating_request_hold_only_accepted_tokens() {
    // Request 1 speculates (with rejections) and finishes; request 2's prompt is its
    // prompt + output, so it is served from the blocks request 1 cached. The fake runner
    // asserts every context token read back from those slots.
    let config = SchedulerConfig {
        speculative: spec(6),
        ..cfg(4, 64, 64)
    };
    let mut s = Scheduler::new(config.clone()).expect("valid");
    let p1 = repetitive_prompt(1, 10);
    s.add_request(request(1, p1.clone(), 40));
    let mut runner = FakeRunner::new(&config, mostly_cyclic());
    let run = drive(&mut s, &mut runner);
    let stats = s.stats().spec_decode;
    assert!(stats.num_accepted_tokens > 0 && stats.num_accepted_tokens < stats.num_draft_tokens);
    let p2: Vec<TokenId> = p1.iter().chain(&run.tokens[&1]).copied().collect();
    s.add_request(request(2, p2.clone(), 3));
    let run2 = drive(&mut s, &mut runner);
    assert_eq!(
        run2.cached[&2],
        (p2.len() - 1) / 4 * 4,
        "served from the cache"
    );
}

#[test]
fn drafts_stay_within_the_budget_and_the_logit_rows() {
    // max_num_seqs 3 with 3 running requests: one spare row per step from k = 2, and a
    // budget of 5 tokens: the invariant checks of every step would catch an overdraft.
    let config = SchedulerConfig {
        max_num_seqs: 3,
        ..cfg(4, 128, 5)
    };
    let reqs = || {
        (1..=3)
            .map(|id| request(id, repetitive_prompt(id, 6), 20))
            .collect()
    };
    let (run, _) = assert_unchanged(config, reqs, mostly_cyclic, 2);
    for out in &run.steps {
        let drafted: usize = out
            .scheduled_spec_decode_tokens
            .values()
            .map(Vec::len)
            .sum();
        let sampling = out.scheduled.iter().filter(|s| s.sample).count();
        assert!(sampling + drafted <= 3 + 2, "{out:?}");
        assert!(out.total_num_tokens <= 5);
    }
}
