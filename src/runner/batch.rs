//! Flattens a `SchedulerOutput` into the model's batch: token ids, positions, cache slots,
//! per-sequence attention descriptors and block tables, which rows need logits for
//! sampling (for a request with draft tokens, `SchedulerOutput::scheduled_spec_decode_tokens`,
//! every position from its last token on), and which prompt rows need them for prompt logprobs (only for requests that
//! ask). Tokens and block tables come from the runner's own `RequestStates`. Buffers are
//! kept between steps (cleared, not reallocated).

use super::requests::RequestStates;
use crate::model::transformer::ForwardBatch;
use crate::ops::attention::AttnSeq;
use std::ops::Range;

use crate::request::{LoraRef, RequestId, TokenId};
use crate::scheduler::output::SchedulerOutput;

#[derive(Default)]
pub struct BatchBuilder {
    /// `[T]`
    token_ids: Vec<u32>,
    /// `[T]`
    positions: Vec<u32>,
    /// `[T]`
    slots: Vec<u32>,
    seqs: Vec<AttnSeq>,
    block_tables: Vec<u32>,
    /// `[S]` rows whose logits are sampled (a speculating request's rows are adjacent:
    /// its last token's, then one per draft token).
    logit_rows: Vec<usize>,
    /// `[S]` the request each logit row belongs to.
    sample_ids: Vec<RequestId>,
    /// `[P]` prompt positions whose logits give prompt logprobs, in batch order.
    prompt_rows: Vec<PromptRow>,
    /// `[P]` the batch row of each of `prompt_rows`.
    prompt_row_index: Vec<usize>,
    /// The rows of each request that runs with a LoRA adapter, in batch order.
    lora_rows: Vec<(LoraRef, Range<usize>)>,
}

/// A prompt position whose logits score the next prompt token (`prompt_logprobs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptRow {
    pub req_id: RequestId,
    /// Position of the row; its logits score the prompt token at `pos + 1`.
    pub pos: usize,
    /// The prompt token at `pos + 1`.
    pub target: TokenId,
    /// Top alternatives wanted.
    pub k: usize,
}

impl BatchBuilder {
    /// Fills the buffers for `so`; tokens and block tables come from `requests` (already
    /// updated with `so`).
    pub fn build(&mut self, so: &SchedulerOutput, requests: &RequestStates, block_size: usize) {
        self.clear();
        for sr in &so.scheduled {
            let Some(req) = requests.get(sr.req_id) else {
                debug_assert!(false, "scheduled request {} is not held", sr.req_id);
                continue;
            };
            let table = req.block_ids();
            let q_row = self.token_ids.len();
            let ctx_len = sr.start_pos + sr.num_tokens;
            let draft = so.draft(sr.req_id);
            let num_held = req.num_tokens();
            for pos in sr.start_pos..ctx_len {
                let token = match pos.checked_sub(num_held) {
                    None => req.token_at(pos),
                    Some(i) => draft[i],
                };
                self.token_ids.push(token);
                self.positions.push(pos as u32);
                let block = table[pos / block_size];
                self.slots
                    .push(block * block_size as u32 + (pos % block_size) as u32);
            }
            let table_len = ctx_len.div_ceil(block_size);
            self.seqs.push(AttnSeq {
                q_row,
                n_q: sr.num_tokens,
                ctx_len,
                table_start: self.block_tables.len(),
                table_len,
            });
            self.block_tables.extend_from_slice(&table[..table_len]);
            if let Some(lora) = req.lora() {
                let rows = q_row..q_row + sr.num_tokens;
                self.lora_rows.push((lora.clone(), rows));
            }
            if sr.sample {
                // The last token's row, and one per draft token after it.
                let first = q_row + sr.num_tokens - 1 - draft.len();
                for row in first..q_row + sr.num_tokens {
                    self.logit_rows.push(row);
                    self.sample_ids.push(sr.req_id);
                }
            }
            if let Some(k) = req.prompt_logprobs() {
                // Positions before the last prompt token; output tokens are not scored.
                let prompt = req.prompt_token_ids();
                let scored_end = ctx_len.min(prompt.len().saturating_sub(1));
                for pos in sr.start_pos..scored_end {
                    self.prompt_row_index.push(q_row + pos - sr.start_pos);
                    self.prompt_rows.push(PromptRow {
                        req_id: sr.req_id,
                        pos,
                        target: prompt[pos + 1],
                        k,
                    });
                }
            }
        }
    }

    fn clear(&mut self) {
        self.token_ids.clear();
        self.positions.clear();
        self.slots.clear();
        self.seqs.clear();
        self.block_tables.clear();
        self.logit_rows.clear();
        self.sample_ids.clear();
        self.prompt_rows.clear();
        self.prompt_row_index.clear();
        self.lora_rows.clear();
    }

    pub fn forward_batch(&self) -> ForwardBatch<'_> {
        ForwardBatch {
            token_ids: &self.token_ids,
            positions: &self.positions,
            slots: &self.slots,
            seqs: &self.seqs,
            block_tables: &self.block_tables,
            logit_rows: &self.logit_rows,
            lora: None,
        }
    }

    /// The rows of each request that runs with a LoRA adapter, in batch order.
    pub fn lora_rows(&self) -> &[(LoraRef, Range<usize>)] {
        &self.lora_rows
    }

    /// Prompt rows wanting logits, and the batch row of each.
    pub fn prompt_rows(&self) -> (&[PromptRow], &[usize]) {
        (&self.prompt_rows, &self.prompt_row_index)
    }

    /// The request of each logits row, in row order.
    pub fn sample_ids(&self) -> &[RequestId] {
        &self.sample_ids
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}
