//! `EngineCore`: the state the engine thread owns — scheduler, runner, per-request random
//! streams and output channels — and one `step()`:
//! `schedule → execute → sample → update → emit`.
//!
//! Invariant: a request has an output channel exactly while the scheduler holds it. A
//! closed channel (the consumer left) aborts the request at the start of the next step,
//! which frees its blocks in that same step. A request that wants prompt logprobs has a
//! `PromptLogprobBuffer` for the same span; its prompt rows are scored after each step's
//! sampling and the whole list rides on the request's first output.
//!
//! Timing for metrics: the clock is read twice per step (after `schedule`, after
//! `update`), never per token; each output carries its request's first-scheduled time
//! and the step's end time (`OutputTiming`).

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::request::{PromptLogprob, Request, RequestId};
use super::sampler::{self, SamplerScratch, SeqRng};
use crate::error::EngineError;
use crate::runner::ModelRunner;
use crate::scheduler::output::{ModelRunnerOutput, OutputTiming, RequestOutput};
use crate::scheduler::Scheduler;

/// What the engine sends a request's consumer.
#[derive(Debug)]
pub enum EngineEvent {
    Output(RequestOutput, OutputTiming),
    Error(EngineError),
}

/// Counters of one step, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepStats {
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub num_preempted: usize,
}

pub struct EngineCore {
    scheduler: Scheduler,
    runner: ModelRunner,
    outputs: HashMap<RequestId, UnboundedSender<EngineEvent>>,
    rngs: HashMap<RequestId, SeqRng>,
    /// When each request was first scheduled (absent until then).
    first_scheduled: HashMap<RequestId, Instant>,
    /// Prompt logprobs being gathered, for the requests that asked.
    prompt_logprobs: HashMap<RequestId, PromptLogprobBuffer>,
    scratch: SamplerScratch,
}

/// The prompt logprobs of one request, gathered chunk by chunk.
#[derive(Debug, Default)]
struct PromptLogprobBuffer {
    /// Entry `i` scores prompt token `i + 1`; positions arrive in order (no prefix-cache
    /// hits for such requests), and a recompute after preemption repeats known ones.
    entries: Vec<PromptLogprob>,
    /// Handed to the first output already.
    sent: bool,
}

impl EngineCore {
    pub fn new(scheduler: Scheduler, runner: ModelRunner) -> Self {
        Self {
            scheduler,
            runner,
            outputs: HashMap::new(),
            rngs: HashMap::new(),
            first_scheduled: HashMap::new(),
            prompt_logprobs: HashMap::new(),
            scratch: SamplerScratch::new(),
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Admits a request; a refusal is reported on its own channel.
    pub fn add_request(&mut self, req: Request, out: UnboundedSender<EngineEvent>) {
        let id = req.id;
        let seed = req.sampling.seed;
        let wants_prompt_logprobs = req.sampling.prompt_logprobs.is_some();
        match self.scheduler.add_request(req) {
            Ok(()) => {
                if wants_prompt_logprobs {
                    self.prompt_logprobs
                        .insert(id, PromptLogprobBuffer::default());
                }
                self.rngs.insert(id, SeqRng::new(seed));
                self.outputs.insert(id, out);
            }
            Err(e) => {
                let _ = out.send(EngineEvent::Error(EngineError::Rejected(e.to_string())));
            }
        }
    }

    /// Removes a request wherever it is and frees its blocks now.
    pub fn abort_request(&mut self, id: RequestId) {
        let last = self.scheduler.abort_request(id);
        self.rngs.remove(&id);
        self.prompt_logprobs.remove(&id);
        let timing = OutputTiming {
            first_scheduled: self.first_scheduled.remove(&id),
            produced: Instant::now(),
        };
        if let (Some(out), Some(last)) = (self.outputs.remove(&id), last) {
            let _ = out.send(EngineEvent::Output(last, timing));
        }
    }

    /// Aborts everything (shutdown).
    pub fn abort_all(&mut self) {
        let ids: Vec<RequestId> = self.outputs.keys().copied().collect();
        for id in ids {
            self.abort_request(id);
        }
    }

    /// Fails every request in flight with `err` and frees its blocks (after a step failed).
    pub fn fail_all(&mut self, err: &EngineError) {
        let ids: Vec<RequestId> = self.outputs.keys().copied().collect();
        for id in ids {
            self.scheduler.abort_request(id);
            self.rngs.remove(&id);
            self.first_scheduled.remove(&id);
            self.prompt_logprobs.remove(&id);
            if let Some(out) = self.outputs.remove(&id) {
                let _ = out.send(EngineEvent::Error(err.clone()));
            }
        }
    }

    /// Whether nothing is in flight and every KV block is free (true after `fail_all`
    /// unless the failure left the scheduler's books inconsistent).
    pub fn is_clean(&self) -> bool {
        self.outputs.is_empty()
            && !self.scheduler.has_unfinished_requests()
            && self.scheduler.num_free_blocks() == self.scheduler.config().num_blocks
    }

    pub fn has_unfinished_requests(&self) -> bool {
        self.scheduler.has_unfinished_requests()
    }

    /// Aborts every request whose consumer has gone away.
    fn reap_disconnected(&mut self) {
        let gone: Vec<RequestId> = self
            .outputs
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.abort_request(id);
        }
    }

    /// One engine iteration. Returns what ran.
    pub fn step(&mut self) -> StepStats {
        self.reap_disconnected();
        let so = self.scheduler.schedule();
        if so.scheduled.is_empty() {
            return StepStats::default();
        }
        let stats = StepStats {
            num_tokens: so.total_num_tokens,
            num_seqs: so.scheduled.len(),
            num_preempted: so.preempted.len(),
        };
        let scheduled_at = Instant::now();
        for s in &so.scheduled {
            self.first_scheduled.entry(s.req_id).or_insert(scheduled_at);
        }
        let step = self.runner.execute(&so, &self.scheduler);
        let mut sampled = Vec::with_capacity(step.ids.len());
        for (&id, row) in step
            .ids
            .iter()
            .zip(step.logits.chunks_exact_mut(step.vocab))
        {
            let (Some(req), Some(rng)) = (self.scheduler.request(id), self.rngs.get_mut(&id))
            else {
                continue;
            };
            let token = sample_for(req, row, rng, &mut self.scratch);
            sampled.push((id, token));
        }
        self.score_prompt_rows();
        let outputs = self
            .scheduler
            .update_from_output(&so, &ModelRunnerOutput { sampled });
        self.emit(outputs, Instant::now());
        stats
    }

    /// Scores this step's prompt rows (for the requests that want prompt logprobs).
    fn score_prompt_rows(&mut self) {
        let buffers = &mut self.prompt_logprobs;
        self.runner.for_each_prompt_row(|row, logits| {
            let Some(buffer) = buffers.get_mut(&row.req_id) else {
                return;
            };
            if row.pos == buffer.entries.len() && !buffer.sent {
                buffer
                    .entries
                    .push(sampler::prompt_logprob(logits, row.target, row.k));
            }
        });
    }

    fn emit(&mut self, outputs: Vec<RequestOutput>, produced: Instant) {
        for mut out in outputs {
            let id = out.req_id;
            if let Some(buffer) = self.prompt_logprobs.get_mut(&id).filter(|b| !b.sent) {
                // The first output comes after the whole prompt ran, so every entry is in.
                buffer.sent = true;
                out.prompt_logprobs = Some(std::mem::take(&mut buffer.entries));
            }
            let finished = out.finish_reason.is_some();
            let timing = OutputTiming {
                first_scheduled: self.first_scheduled.get(&id).copied(),
                produced,
            };
            if let Some(tx) = self.outputs.get(&id) {
                let delivered = tx.send(EngineEvent::Output(out, timing)).is_ok();
                if !delivered && !finished {
                    self.abort_request(id);
                    continue;
                }
            }
            if finished {
                self.outputs.remove(&id);
                self.rngs.remove(&id);
                self.first_scheduled.remove(&id);
                self.prompt_logprobs.remove(&id);
            }
        }
    }
}

fn sample_for(
    req: &Request,
    logits: &mut [f32],
    rng: &mut SeqRng,
    scratch: &mut SamplerScratch,
) -> super::request::SampledToken {
    sampler::sample(
        logits,
        &req.sampling,
        &req.prompt_token_ids,
        &req.output_token_ids,
        &req.eos_token_ids,
        rng,
        scratch,
    )
}
