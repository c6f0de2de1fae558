//! Budget, chunked prefill, FCFS admission, max_num_seqs, preemption, prefix caching.

use super::*;
use crate::scheduler::output::ScheduledRequest;
use crate::scheduler::SchedulerError;

fn chunks(run: &Run, id: RequestId) -> Vec<(usize, usize, bool)> {
    run.steps
        .iter()
        .flat_map(|o| o.scheduled.iter().filter(|s| s.req_id == id))
        .map(|s| (s.start_pos, s.num_tokens, s.sample))
        .collect()
}

#[test]
fn budget_and_max_num_seqs_respected_outputs_match_reference() {
    let reqs: Vec<_> = (0..10u64)
        .map(|i| (i, prompt(i, 3 + (7 * i as usize) % 40), 5 + i as usize))
        .collect();
    let config = SchedulerConfig {
        max_num_seqs: 3,
        ..cfg(4, 64, 24)
    };
    let run = run_all(config, to_requests(&reqs));
    assert!(
        run.steps.iter().any(|o| o.total_num_tokens == 24),
        "budget used"
    );
    assert!(
        run.steps.iter().any(|o| o.scheduled.len() == 3),
        "3 seqs batched"
    );
    let expected = reference(&reqs);
    assert_eq!(run.tokens, expected.tokens);
    for (id, _, max_tokens) in &reqs {
        assert_eq!(run.tokens[id].len(), *max_tokens);
        assert_eq!(run.finish[id], FinishReason::Length);
    }
}

#[test]
fn chunked_prefill_samples_only_on_last_chunk() {
    let config = SchedulerConfig {
        max_model_len: 128,
        ..cfg(16, 16, 32)
    };
    let run = run_all(config, vec![request(1, prompt(1, 100), 3)]);
    let expected = [
        (0, 32, false),
        (32, 32, false),
        (64, 32, false),
        (96, 4, true),
        (100, 1, true),
        (101, 1, true),
    ];
    assert_eq!(chunks(&run, 1), expected);
    assert_eq!(run.tokens[&1].len(), 3);
}

#[test]
fn waiting_request_is_chunked_into_leftover_budget() {
    let run = run_all(
        cfg(4, 32, 32),
        vec![request(1, prompt(1, 30), 2), request(2, prompt(2, 20), 2)],
    );
    let first = &run.steps[0].scheduled;
    assert_eq!(first[0], sched(1, 0, 30, true));
    assert_eq!(first[1], sched(2, 0, 2, false));
    // Step 2: the decode of 1 comes first, then the rest of 2's prompt.
    let second = &run.steps[1].scheduled;
    assert_eq!(second[0], sched(1, 30, 1, true));
    assert_eq!(second[1], sched(2, 2, 18, true));
}

fn sched(req_id: RequestId, start_pos: usize, num_tokens: usize, sample: bool) -> ScheduledRequest {
    ScheduledRequest {
        req_id,
        start_pos,
        num_tokens,
        sample,
    }
}

#[test]
fn long_prefill_threshold_caps_each_chunk() {
    let config = SchedulerConfig {
        long_prefill_token_threshold: 10,
        ..cfg(4, 32, 64)
    };
    let run = run_all(
        config,
        vec![request(1, prompt(1, 25), 2), request(2, prompt(2, 5), 2)],
    );
    assert_eq!(
        chunks(&run, 1),
        [
            (0, 10, false),
            (10, 10, false),
            (20, 5, true),
            (25, 1, true)
        ]
    );
    assert_eq!(chunks(&run, 2), [(0, 5, true), (5, 1, true)]);
}

#[test]
fn max_num_seqs_one_serves_in_arrival_order() {
    let config = SchedulerConfig {
        max_num_seqs: 1,
        ..cfg(4, 32, 64)
    };
    let reqs: Vec<_> = [5u64, 3, 9, 1]
        .iter()
        .map(|&i| request(i, prompt(i, 6), 3))
        .collect();
    let run = run_all(config, reqs);
    assert_eq!(run.finish_order, [5, 3, 9, 1]);
    assert!(run.steps.iter().all(|o| o.scheduled.len() == 1));
}

#[test]
fn blocked_waiting_head_is_not_skipped() {
    // 16 blocks of 4: A (40 tokens, 10 blocks) runs; B (40 tokens) cannot fit beside
    // it; C (4 tokens) could, but must wait behind B.
    let mut s = Scheduler::new(cfg(4, 16, 256)).expect("valid");
    for (id, len) in [(1, 40), (2, 40), (3, 4)] {
        s.add_request(request(id, prompt(id, len), 8));
    }
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let mut run = Run::default();
    step(&mut s, &mut runner, &mut run);
    assert_eq!(run.steps[0].scheduled, [sched(1, 0, 40, true)]);
    assert_eq!(s.num_waiting(), 2);
    while s.has_unfinished_requests() {
        step(&mut s, &mut runner, &mut run);
    }
    assert!(run.first_step(2) <= run.first_step(3), "C overtook B");
    assert!(run.first_step(2) > run.first_step(1));
    assert_eq!(s.num_free_blocks(), 16);
}

fn preemption_case(enable_prefix_caching: bool) {
    let reqs: Vec<_> = (0..16u64)
        .map(|i| (i, prompt(i, 8 + i as usize), 20))
        .collect();
    let config = SchedulerConfig {
        enable_prefix_caching,
        ..cfg(4, 16, 64)
    };
    let mut s = Scheduler::new(config.clone()).expect("valid");
    for r in to_requests(&reqs) {
        s.add_request(r);
    }
    let mut runner = FakeRunner::new(&config, default_sampler());
    let run = drive(&mut s, &mut runner);
    let preempted: usize = run.steps.iter().map(|o| o.preempted.len()).sum();
    assert!(preempted > 0, "the tiny pool must force preemption");
    assert_eq!(s.stats().num_preemptions, preempted as u64);
    // Preempted requests are the newest: never one that was scheduled earlier in
    // the same step.
    for o in &run.steps {
        for p in &o.preempted {
            assert!(!o.scheduled.iter().any(|sr| sr.req_id == *p));
        }
    }
    let expected = reference(&reqs);
    assert_eq!(run.tokens, expected.tokens, "recompute changed outputs");
    assert_eq!(run.finish.len(), 16);
}

#[test]
fn preemption_with_tiny_pool_keeps_outputs() {
    preemption_case(false);
}

#[test]
fn preemption_with_prefix_caching_keeps_outputs() {
    preemption_case(true);
}

#[test]
fn preempted_request_goes_to_front_of_waiting() {
    // 16 blocks of 4. Two requests of 28 prompt tokens (7 blocks each) that grow.
    let mut s = Scheduler::new(SchedulerConfig {
        enable_prefix_caching: false,
        ..cfg(4, 16, 256)
    })
    .expect("valid");
    s.add_request(request(1, prompt(1, 28), 30));
    s.add_request(request(2, prompt(2, 28), 30));
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let mut run = Run::default();
    step(&mut s, &mut runner, &mut run);
    s.add_request(request(3, prompt(3, 4), 2)); // arrives later
    while run.steps.last().is_some_and(|o| o.preempted.is_empty()) {
        step(&mut s, &mut runner, &mut run);
    }
    let last = run.steps.last().expect("a step");
    assert_eq!(last.preempted, [2], "newest running request preempted");
    assert!(
        last.scheduled.iter().all(|sr| sr.req_id == 1),
        "no admission"
    );
    let req2 = s.request(2).expect("kept");
    assert_eq!(req2.status, crate::request::RequestStatus::Preempted);
    assert!(!req2.output_token_ids.is_empty(), "outputs kept");
    step(&mut s, &mut runner, &mut run);
    // 2 is first in line again: 3 (which would fit) does not overtake it.
    assert!(s.request(3).is_some_and(|r| r.num_computed_tokens == 0));
}

#[test]
fn shared_prefix_hits_and_matches_cold_run() {
    let mut common = prompt(1, 24);
    let mut a = common.clone();
    a.extend([901, 902, 903, 904, 905, 906]);
    common.extend([1, 2, 3, 4, 5]);
    let b = common;

    let mut s = Scheduler::new(cfg(4, 32, 64)).expect("valid");
    s.add_request(request(1, a, 4));
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let warm_a = drive(&mut s, &mut runner);
    assert_eq!(warm_a.cached[&1], 0);
    s.add_request(request(2, b.clone(), 6));
    let warm = drive(&mut s, &mut runner);
    assert_eq!(warm.cached[&2], 24, "six full shared blocks hit");
    assert_eq!(chunks(&warm, 2)[0], (24, 5, true));
    let stats = s.stats().prefix_cache;
    assert_eq!((stats.queries, stats.hits), (30 + 29, 24));

    let cold = run_all(cfg(4, 32, 64), vec![request(2, b, 6)]);
    assert_eq!(cold.cached[&2], 0);
    assert_eq!(warm.tokens[&2], cold.tokens[&2]);
}

#[test]
fn running_request_shares_its_computed_prefix() {
    let a = prompt(1, 20);
    let mut b = a[..16].to_vec();
    b.extend([7, 7, 7]);
    let mut s = Scheduler::new(cfg(4, 32, 64)).expect("valid");
    s.add_request(request(1, a, 10));
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let mut run = Run::default();
    step(&mut s, &mut runner, &mut run);
    s.add_request(request(2, b.clone(), 5));
    step(&mut s, &mut runner, &mut run);
    assert_eq!(
        s.block_table(1)[..4],
        s.block_table(2)[..4],
        "blocks shared"
    );
    while s.has_unfinished_requests() {
        step(&mut s, &mut runner, &mut run);
    }
    assert_eq!(run.cached[&2], 16);
    let cold = run_all(cfg(4, 32, 64), vec![request(2, b, 5)]);
    assert_eq!(run.tokens[&2], cold.tokens[&2]);
    assert_eq!(s.num_free_blocks(), 32);
}

#[test]
fn prefix_caching_off_never_hits() {
    let config = SchedulerConfig {
        enable_prefix_caching: false,
        ..cfg(4, 32, 64)
    };
    let p = prompt(1, 20);
    let run = run_all(config, vec![request(1, p.clone(), 2), request(2, p, 2)]);
    assert_eq!((run.cached[&1], run.cached[&2]), (0, 0));
}

#[test]
fn a_prompt_of_exactly_max_model_len_runs_one_token() {
    let mut s = Scheduler::new(cfg(4, 16, 64)).expect("valid");
    s.add_request(request(2, prompt(2, 64), 1));
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let run = drive(&mut s, &mut runner);
    assert_eq!(run.tokens[&2].len(), 1);
    assert_eq!(run.finish[&2], FinishReason::Length);
}

// Requests that could never run are refused by validation (`server::validate`) before
// they reach the scheduler, which only asserts that in debug builds.

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "> max_model_len 64")]
fn a_prompt_longer_than_max_model_len_is_a_bug() {
    let mut s = Scheduler::new(cfg(4, 16, 64)).expect("valid");
    s.add_request(request(1, prompt(1, 65), 1));
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "empty prompt")]
fn an_empty_prompt_is_a_bug() {
    let mut s = Scheduler::new(cfg(4, 16, 64)).expect("valid");
    s.add_request(request(3, vec![], 1));
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "already queued or running")]
fn a_reused_request_id_is_a_bug() {
    let mut s = Scheduler::new(cfg(4, 16, 64)).expect("valid");
    s.add_request(request(2, prompt(2, 3), 1));
    s.add_request(request(2, prompt(2, 3), 1));
}

#[test]
fn new_rejects_a_pool_smaller_than_max_model_len() {
    let err = Scheduler::new(cfg(4, 15, 64)).expect_err("60 < 64 tokens");
    assert!(matches!(
        err,
        SchedulerError::InvalidConfig {
            field: "num_blocks",
            ..
        }
    ));
}
