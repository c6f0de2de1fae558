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
    FinishReason, Request, RequestId, RequestStatus, SampledToken, TokenId, TokenLogprobs,
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
    /// Applies one step: advances each scheduled request by the tokens it computed (for
    /// a draft: its last token and the accepted draft tokens only), appends its sampled
    /// tokens one by one with a stop check after each (tokens past a stop are dropped),
    /// caches newly full blocks, finishes stopped requests (freeing their blocks).
    /// Requests aborted since `schedule` are skipped. A request that should have sampled
    /// but got no token is finished with `Abort` (runner bug).
    pub fn update_from_output(
        &mut self,
        out: &SchedulerOutput,
        model_out: &ModelRunnerOutput,
    ) -> Vec<RequestOutput> {
        let sampled: HashMap<RequestId, &[SampledToken]> = model_out
            .sampled
            .iter()
            .map(|(id, t)| (*id, t.as_slice()))
            .collect();
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
            let draft = out.draft(s.req_id);
            let tokens = sampled.get(&s.req_id).copied().unwrap_or_default();
            let num_accepted = accepted_prefix(draft, tokens);
            if !draft.is_empty() {
                self.spec_stats.record(draft.len(), num_accepted);
            }
            // Rejected draft positions do not count: their slots are rewritten later.
            req.num_computed_tokens += s.num_tokens - draft.len() + num_accepted;
            if !s.sample {
                self.kv.cache_full_blocks(req);
                continue;
            }
            let output = append_sampled(
                req,
                &tokens[..tokens.len().min(num_accepted + 1)],
                self.config.max_model_len,
            );
            // A stop inside the accepted draft drops the tokens after it: the last kept
            // token is, as always, not computed.
            req.num_computed_tokens = req.num_computed_tokens.min(req.num_tokens() - 1);
            // After the tokens are appended: the accepted ones are hashed with the block.
            self.kv.cache_full_blocks(req);
            if let Some(reason) = output.finish_reason {
                req.status = RequestStatus::Finished(reason);
                finished.insert(s.req_id);
                self.finished_req_ids.push(s.req_id);
            }
            outputs.push(output);
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

/// How many of `draft` the sampled `tokens` accepted: all tokens but the last, which
/// must repeat the draft (the runner emits accepted draft tokens, then one more).
fn accepted_prefix(draft: &[TokenId], tokens: &[SampledToken]) -> usize {
    let claimed = tokens.len().saturating_sub(1).min(draft.len());
    let agreed = draft
        .iter()
        .zip(tokens)
        .take(claimed)
        .take_while(|(d, t)| **d == t.token_id)
        .count();
    debug_assert_eq!(
        agreed,
        tokens.len().saturating_sub(1),
        "emitted tokens past a rejection"
    );
    agreed
}

/// Appends `tokens` to `req`'s output one by one, stopping at the first that finishes
/// it (`check_stop`), exactly where decoding them one per step would have stopped. No
/// tokens: the runner sampled nothing for a request that should have (a bug), so it is
/// finished with `Abort`.
fn append_sampled(
    req: &mut Request,
    tokens: &[SampledToken],
    max_model_len: usize,
) -> RequestOutput {
    let mut reason = None;
    let mut new_token_ids = Vec::with_capacity(tokens.len());
    let mut logprobs = req
        .sampling
        .logprobs
        .map(|_| Vec::with_capacity(tokens.len()));
    for token in tokens {
        req.output_token_ids.push(token.token_id);
        new_token_ids.push(token.token_id);
        if let (Some(all), Some(l)) = (logprobs.as_mut(), token.logprobs.clone()) {
            all.push(l);
        }
        reason = check_stop(req, max_model_len);
        if reason.is_some() {
            break;
        }
    }
    if tokens.is_empty() {
        tracing::error!(req_id = req.id, "no sampled token; aborting request");
        reason = Some(FinishReason::Abort);
        logprobs = None;
    }
    RequestOutput {
        req_id: req.id,
        new_token_ids,
        logprobs: logprobs.filter(|l: &Vec<TokenLogprobs>| !l.is_empty()),
        prompt_logprobs: None,
        finish_reason: reason,
        num_prompt_tokens: req.prompt_token_ids.len(),
        num_cached_tokens: req.num_cached_tokens,
    }
}
