//! Applying a step's results: progress, sampled tokens, stop checks, aborts.
//!
//! Invariants kept: a finished or aborted request leaves `requests`, `waiting` and
//! `running` and frees its blocks in the same call, and is named in the next output's
//! `finished_req_ids` (so the runner drops its copy); blocks full of computed tokens are
//! registered in the prefix cache right after the step that computed them.

use std::collections::{HashMap, HashSet};

use super::output::{ModelRunnerOutput, RequestOutput, SchedulerOutput};
use super::schedule::Scheduler;
use crate::request::{
    FinishReason, Request, RequestId, RequestStatus, SampledToken, TokenLogprobs,
};

/// Why `req` stops after its last sampled token, if it does.
///
/// EOS (unless `ignore_eos`) and `stop_token_ids` count only once at least `min_tokens`
/// tokens exist. When the last token is both a stop token and the `max_tokens`-th
/// token, the reason is `Stop`: the model did stop (vLLM would say `Length`).
pub fn check_stop(req: &Request, max_model_len: usize) -> Option<FinishReason> {
    let &last = req.output_token_ids.last()?;
    let num_output = req.output_token_ids.len();
    let params = &req.sampling;
    if num_output >= params.min_tokens {
        let is_eos = !params.ignore_eos && req.eos_token_ids.contains(&last);
        if is_eos || params.stop_token_ids.contains(&last) {
            return Some(FinishReason::Stop);
        }
    }
    if num_output >= params.max_tokens || req.num_tokens() >= max_model_len {
        return Some(FinishReason::Length);
    }
    None
}

impl Scheduler {
    /// Applies one step: advances each scheduled request by its `num_tokens`, caches
    /// newly full blocks, appends sampled tokens, finishes stopped requests (freeing
    /// their blocks). Requests aborted since `schedule` are skipped. A request that
    /// should have sampled but got no token is finished with `Abort` (runner bug).
    pub fn update_from_output(
        &mut self,
        out: &SchedulerOutput,
        model_out: &ModelRunnerOutput,
    ) -> Vec<RequestOutput> {
        let sampled: HashMap<RequestId, &SampledToken> =
            model_out.sampled.iter().map(|(id, t)| (*id, t)).collect();
        let mut outputs = Vec::new();
        let mut finished = HashSet::new();
        for s in &out.scheduled {
            let Some(req) = self.requests.get_mut(&s.req_id) else {
                continue; // aborted after schedule()
            };
            if req.status != RequestStatus::Running || req.num_computed_tokens != s.start_pos {
                tracing::warn!(req_id = s.req_id, "stale scheduled entry ignored");
                continue;
            }
            req.num_computed_tokens += s.num_tokens;
            self.kv.cache_full_blocks(req);
            if !s.sample {
                continue;
            }
            let (new_logprobs, reason) = match sampled.get(&s.req_id) {
                Some(token) => {
                    req.output_token_ids.push(token.token_id);
                    let logprobs = req.sampling.logprobs.and(token.logprobs.clone());
                    (logprobs, check_stop(req, self.config.max_model_len))
                }
                None => {
                    tracing::error!(req_id = s.req_id, "no sampled token; aborting request");
                    (None, Some(FinishReason::Abort))
                }
            };
            let new_token_ids = match reason {
                Some(FinishReason::Abort) => Vec::new(),
                _ => req.output_token_ids.last().copied().into_iter().collect(),
            };
            outputs.push(RequestOutput {
                req_id: s.req_id,
                new_token_ids,
                logprobs: new_logprobs.map(|l: TokenLogprobs| vec![l]),
                prompt_logprobs: None,
                finish_reason: reason,
                num_prompt_tokens: req.prompt_token_ids.len(),
                num_cached_tokens: req.num_cached_tokens,
            });
            if let Some(reason) = reason {
                req.status = RequestStatus::Finished(reason);
                finished.insert(s.req_id);
                self.finished_req_ids.push(s.req_id);
            }
        }
        if !finished.is_empty() {
            self.running.retain(|id| !finished.contains(id));
            for id in finished {
                self.kv.free(id);
                self.requests.remove(&id);
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants(None);
        outputs
    }

    /// Removes `req_id` wherever it is (waiting, running, preempted; also between
    /// `schedule` and `update_from_output`) and frees its blocks at once. Returns the
    /// final output (no new tokens, `finish_reason` Abort), or `None` for an unknown id.
    pub fn abort_request(&mut self, req_id: RequestId) -> Option<RequestOutput> {
        let req = self.requests.remove(&req_id)?;
        match req.status {
            RequestStatus::Running => self.running.retain(|&id| id != req_id),
            _ => self.waiting.retain(|&id| id != req_id),
        }
        self.kv.free(req_id);
        self.finished_req_ids.push(req_id);
        #[cfg(debug_assertions)]
        self.check_invariants(None);
        Some(RequestOutput {
            req_id,
            new_token_ids: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
            finish_reason: Some(FinishReason::Abort),
            num_prompt_tokens: req.prompt_token_ids.len(),
            num_cached_tokens: req.num_cached_tokens,
        })
    }
}
