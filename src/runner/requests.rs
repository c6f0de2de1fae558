//! The runner's own copy of each request it computes: its tokens and its block table,
//! kept in step with the scheduler by nothing but each step's `SchedulerOutput` (vLLM
//! v1's `CachedRequestState`). Finished and preempted requests are dropped, admitted ones
//! inserted whole, running ones extended by their deltas.
//!
//! Invariant (after `update(so)`, asserted in debug builds): every request of
//! `so.scheduled` is held, with all the tokens its scheduled chunk reads and a block
//! table covering `start_pos + num_tokens` tokens.

use std::collections::HashMap;
use std::sync::Arc;

use crate::request::{self, LoraRef, RequestId, TokenId};
use crate::scheduler::output::{BlockId, SchedulerOutput};

/// One request as the runner holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestState {
    prompt_token_ids: Arc<[TokenId]>,
    output_token_ids: Vec<TokenId>,
    block_ids: Vec<BlockId>,
    /// `Some(k)`: its prompt rows get logits too, for prompt logprobs with the top `k`.
    prompt_logprobs: Option<usize>,
    /// The LoRA adapter its rows run with.
    lora: Option<LoraRef>,
}

impl RequestState {
    /// Prompt plus generated tokens held.
    pub fn num_tokens(&self) -> usize {
        self.prompt_token_ids.len() + self.output_token_ids.len()
    }

    /// The prompt's token ids.
    pub fn prompt_token_ids(&self) -> &[TokenId] {
        &self.prompt_token_ids
    }

    /// `Some(k)` when the request wants prompt logprobs with the top `k`.
    pub fn prompt_logprobs(&self) -> Option<usize> {
        self.prompt_logprobs
    }

    /// The LoRA adapter its rows run with (`None`: the base model).
    pub fn lora(&self) -> Option<&LoraRef> {
        self.lora.as_ref()
    }

    /// Token at absolute position `pos` (prompt first, then output); `pos < num_tokens()`.
    pub fn token_at(&self, pos: usize) -> TokenId {
        request::token_at(&self.prompt_token_ids, &self.output_token_ids, pos)
    }

    /// Token at position `p` lives in slot `p % block_size` of block `block_ids()[p /
    /// block_size]`.
    pub fn block_ids(&self) -> &[BlockId] {
        &self.block_ids
    }
}

/// Every request the runner holds, by id.
#[derive(Debug, Default)]
pub struct RequestStates {
    by_id: HashMap<RequestId, RequestState>,
}

impl RequestStates {
    /// Applies one step's output: drops finished and preempted requests, inserts the
    /// admitted ones, appends the running ones' new tokens and blocks.
    pub fn update(&mut self, so: &SchedulerOutput) {
        for id in so.finished_req_ids.iter().chain(&so.preempted) {
            self.by_id.remove(id);
        }
        for new in &so.scheduled_new_reqs {
            let state = RequestState {
                prompt_token_ids: Arc::clone(&new.prompt_token_ids),
                output_token_ids: new.output_token_ids.clone(),
                block_ids: new.block_ids.clone(),
                prompt_logprobs: new.prompt_logprobs,
                lora: new.lora.clone(),
            };
            let previous = self.by_id.insert(new.req_id, state);
            debug_assert!(previous.is_none(), "request {} admitted twice", new.req_id);
        }
        for cached in &so.scheduled_cached_reqs {
            let Some(state) = self.by_id.get_mut(&cached.req_id) else {
                debug_assert!(false, "running request {} is not held", cached.req_id);
                continue;
            };
            state
                .output_token_ids
                .extend_from_slice(&cached.new_token_ids);
            state.block_ids.extend_from_slice(&cached.new_block_ids);
        }
        #[cfg(debug_assertions)]
        self.check(so);
    }

    /// The request `id`, if held.
    pub fn get(&self, id: RequestId) -> Option<&RequestState> {
        self.by_id.get(&id)
    }

    /// Number of requests held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Forgets every request (after a failed step, when the engine aborts them all).
    pub fn clear(&mut self) {
        self.by_id.clear();
    }

    /// Panics unless every scheduled request of `so` can be computed from what is held.
    #[cfg(debug_assertions)]
    fn check(&self, so: &SchedulerOutput) {
        for sr in &so.scheduled {
            let state = self.by_id.get(&sr.req_id);
            // Draft tokens come with the step, not from the held tokens.
            let end = sr.start_pos + sr.num_tokens - so.draft(sr.req_id).len();
            assert!(
                state.is_some_and(|s| s.num_tokens() >= end),
                "request {}: the runner lacks tokens up to {end}",
                sr.req_id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::output::{CachedRequestData, NewRequestData, ScheduledRequest};

    fn scheduled(req_id: RequestId, start_pos: usize, num_tokens: usize) -> ScheduledRequest {
        ScheduledRequest {
            req_id,
            start_pos,
            num_tokens,
            sample: true,
        }
    }

    #[test]
    fn admitted_requests_grow_by_their_deltas_and_leave_when_dropped() {
        let mut states = RequestStates::default();
        let prompt: Arc<[TokenId]> = vec![5, 6, 7].into();
        states.update(&SchedulerOutput {
            scheduled: vec![scheduled(1, 0, 3)],
            scheduled_new_reqs: vec![NewRequestData {
                req_id: 1,
                prompt_token_ids: Arc::clone(&prompt),
                output_token_ids: vec![],
                block_ids: vec![4],
                prompt_logprobs: None,
                lora: None,
            }],
            total_num_tokens: 3,
            ..SchedulerOutput::default()
        });
        states.update(&SchedulerOutput {
            scheduled: vec![scheduled(1, 3, 1)],
            scheduled_cached_reqs: vec![CachedRequestData {
                req_id: 1,
                new_token_ids: vec![8],
                new_block_ids: vec![9],
            }],
            total_num_tokens: 1,
            ..SchedulerOutput::default()
        });
        let state = states.get(1).expect("held");
        let tokens: Vec<TokenId> = (0..state.num_tokens()).map(|p| state.token_at(p)).collect();
        assert_eq!(tokens, [5, 6, 7, 8]);
        assert_eq!(state.block_ids(), [4, 9]);
        states.update(&SchedulerOutput {
            preempted: vec![1],
            ..SchedulerOutput::default()
        });
        assert!(states.is_empty(), "a preempted request is dropped");
    }
}
