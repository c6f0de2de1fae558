//! Aborts at every point of a request's life, and stop conditions.

use super::*;
use crate::request::RequestStatus;
use crate::scheduler::check_stop;

fn scheduler(config: SchedulerConfig, reqs: Vec<Request>) -> Scheduler {
    let mut s = Scheduler::new(config).expect("valid");
    for r in reqs {
        s.add_request(r);
    }
    s
}

fn assert_aborted(s: &mut Scheduler, id: RequestId) {
    let out = s.abort_request(id).expect("known request");
    assert_eq!(out.finish_reason, Some(FinishReason::Abort));
    assert!(out.new_token_ids.is_empty());
    assert!(s.request(id).is_none());
    assert!(s.block_table(id).is_empty());
    assert!(s.abort_request(id).is_none(), "second abort is a no-op");
}

#[test]
fn abort_waiting_request() {
    let mut s = scheduler(
        cfg(4, 16, 64),
        vec![request(1, prompt(1, 8), 3), request(2, prompt(2, 8), 3)],
    );
    assert_aborted(&mut s, 1);
    assert_eq!(s.num_waiting(), 1);
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let run = drive(&mut s, &mut runner);
    assert_eq!(run.finish_order, [2]);
}

#[test]
fn abort_mid_prefill_and_while_decoding_frees_blocks() {
    let mut s = scheduler(
        cfg(4, 16, 8),
        vec![request(1, prompt(1, 30), 20), request(2, prompt(2, 4), 20)],
    );
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let mut run = Run::default();
    step(&mut s, &mut runner, &mut run); // 1: first 8-token chunk
    assert_eq!(s.request(1).map(|r| r.num_computed_tokens), Some(8));
    assert_eq!(s.block_table(1).len(), 2);
    assert_aborted(&mut s, 1);
    assert_eq!(s.num_free_blocks(), 16, "mid-prefill blocks freed");
    while s.request(2).is_some_and(|r| r.output_token_ids.len() < 3) {
        step(&mut s, &mut runner, &mut run);
    }
    assert!(!s.block_table(2).is_empty());
    assert_aborted(&mut s, 2);
    assert_eq!(s.num_free_blocks(), 16, "decoding blocks freed");
    assert!(!s.has_unfinished_requests());
    assert_eq!((s.num_running(), s.num_waiting()), (0, 0));
}

#[test]
fn abort_preempted_request() {
    let config = SchedulerConfig {
        enable_prefix_caching: false,
        ..cfg(4, 16, 64)
    };
    let reqs = (0..6u64).map(|i| request(i, prompt(i, 12), 30)).collect();
    let mut s = scheduler(config, reqs);
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let mut run = Run::default();
    while run.steps.last().is_none_or(|o| o.preempted.is_empty()) {
        step(&mut s, &mut runner, &mut run);
    }
    let victim = run.steps.last().expect("a step").preempted[0];
    assert_eq!(
        s.request(victim).map(|r| r.status),
        Some(RequestStatus::Preempted)
    );
    let waiting_before = s.num_waiting();
    assert_aborted(&mut s, victim);
    assert_eq!(s.num_waiting(), waiting_before - 1);
    while s.has_unfinished_requests() {
        step(&mut s, &mut runner, &mut run);
    }
    assert_eq!(s.num_free_blocks(), 16);
    assert_eq!(run.finish.len(), 5);
    assert!(!run.finish.contains_key(&victim));
}

#[test]
fn abort_between_schedule_and_update() {
    let mut s = scheduler(
        cfg(4, 16, 64),
        vec![request(1, prompt(1, 6), 3), request(2, prompt(2, 6), 3)],
    );
    let mut runner = FakeRunner::new(s.config(), default_sampler());
    let out = s.schedule();
    let model_out = runner.execute(&s, &out);
    assert_aborted(&mut s, 1);
    let outputs = s.update_from_output(&out, &model_out);
    assert_eq!(outputs.len(), 1, "aborted request's token dropped");
    assert_eq!(outputs[0].req_id, 2);
    let run = drive(&mut s, &mut runner);
    assert_eq!(run.tokens[&2].len(), 2);
}

#[test]
fn missing_sampled_token_aborts_the_request() {
    let mut s = scheduler(cfg(4, 16, 64), vec![request(1, prompt(1, 6), 3)]);
    let out = s.schedule();
    let outputs = s.update_from_output(&out, &ModelRunnerOutput::default());
    assert_eq!(outputs[0].finish_reason, Some(FinishReason::Abort));
    assert!(!s.has_unfinished_requests());
    assert_eq!(s.num_free_blocks(), 16);
}

/// Runs one request with `params` and a scripted sampler; returns (tokens, reason).
fn run_scripted(
    params: SamplingParams,
    script: Vec<TokenId>,
    max_model_len: usize,
    prompt_len: usize,
) -> (Vec<TokenId>, FinishReason) {
    let config = SchedulerConfig {
        max_model_len,
        ..cfg(4, 16, 64)
    };
    let req = Request::new(7, prompt(7, prompt_len), params, vec![EOS, EOS + 1]);
    let mut s = scheduler(config, vec![req]);
    let mut runner = FakeRunner::new(s.config(), scripted(script));
    let run = drive(&mut s, &mut runner);
    (run.tokens[&7].clone(), run.finish[&7])
}

#[test]
fn eos_stops_unless_ignored() {
    let script = vec![5, EOS + 1, 7, 8];
    let greedy = SamplingParams::greedy(6);
    let (tokens, reason) = run_scripted(greedy.clone(), script.clone(), 64, 4);
    assert_eq!((tokens, reason), (vec![5, EOS + 1], FinishReason::Stop));
    let ignore = SamplingParams {
        ignore_eos: true,
        ..greedy
    };
    let (tokens, reason) = run_scripted(ignore, script, 64, 4);
    assert_eq!(tokens, [5, EOS + 1, 7, 8, 4, 5]);
    assert_eq!(reason, FinishReason::Length);
}

#[test]
fn stop_token_ids_stop_even_with_ignore_eos() {
    let params = SamplingParams {
        ignore_eos: true,
        stop_token_ids: vec![8],
        ..SamplingParams::greedy(10)
    };
    let (tokens, reason) = run_scripted(params, vec![5, EOS, 7, 8, 9], 64, 4);
    assert_eq!((tokens, reason), (vec![5, EOS, 7, 8], FinishReason::Stop));
}

#[test]
fn min_tokens_defers_eos_and_stop_ids() {
    let params = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![6],
        ..SamplingParams::greedy(10)
    };
    // EOS as the 2nd output token is ignored; stop id 6 as the 3rd one stops.
    let (tokens, reason) = run_scripted(params.clone(), vec![5, EOS, 6, 9], 64, 4);
    assert_eq!((tokens, reason), (vec![5, EOS, 6], FinishReason::Stop));
    let (tokens, reason) = run_scripted(params, vec![6, 6, 9, EOS, 9], 64, 4);
    assert_eq!((tokens, reason), (vec![6, 6, 9, EOS], FinishReason::Stop));
}

#[test]
fn max_tokens_and_max_model_len_give_length() {
    let (tokens, reason) = run_scripted(SamplingParams::greedy(3), vec![], 64, 4);
    assert_eq!((tokens.len(), reason), (3, FinishReason::Length));
    // 10 prompt tokens, max_model_len 12: two tokens, then the context is full.
    let (tokens, reason) = run_scripted(SamplingParams::greedy(100), vec![], 12, 10);
    assert_eq!((tokens.len(), reason), (2, FinishReason::Length));
}

#[test]
fn check_stop_prefers_stop_over_length() {
    let mut req = request(1, vec![1, 2], 2);
    assert_eq!(check_stop(&req, 64), None, "no output yet");
    req.output_token_ids = vec![3];
    assert_eq!(check_stop(&req, 64), None);
    req.output_token_ids = vec![3, EOS];
    assert_eq!(check_stop(&req, 64), Some(FinishReason::Stop));
    req.output_token_ids = vec![3, 4];
    assert_eq!(check_stop(&req, 64), Some(FinishReason::Length));
    std::sync::Arc::make_mut(&mut req.sampling).max_tokens = 10;
    assert_eq!(
        check_stop(&req, 4),
        Some(FinishReason::Length),
        "context full"
    );
    assert_eq!(check_stop(&req, 5), None);
}
