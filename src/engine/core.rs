//! `EngineCore`: the state the engine thread owns — scheduler, runner, and per request
//! its output channel and what sampling it needs — and one `step()`:
//! `schedule → execute → sample → update → emit`.
//!
//! The sampler reads only the engine's own `Sequence` of each request (its parameters,
//! prompt and output tokens, EOS ids and random stream), built at admission and extended
//! from each step's outputs; the runner reads only the `SchedulerOutput`. Neither looks
//! into the scheduler.
//!
//! Invariant: a request has a `Sequence` exactly while the scheduler holds it. A closed
//! channel (the consumer left) aborts the request at the start of the next step, which
//! frees its blocks in that same step. A request that wants prompt logprobs has a
//! `PromptLogprobBuffer` in its `Sequence`; the runner hands over its prompt rows' logits
//! after each step's sampling, and the whole list rides on the request's first output.
//!
//! Structured output: a constrained request's `Sequence` holds its `GuideState`. Each
//! step computes the masks of the constrained rows that sample (they depend only on
//! tokens committed in earlier steps): on a helper thread while the forward pass runs
//! when the compute pool leaves a core spare, else on the engine thread before it; every
//! emitted token is committed to its guide. A preempted request keeps its `Sequence`, so
//! its guide stays where its output is. A guide that fails ends its request with an
//! error before the scheduler sees the step's tokens.
//!
//! Timing for metrics: the clock is read twice per step (after `schedule`, after
//! `update`), never per token; each output carries its request's first-scheduled time
//! and the step's end time (`OutputTiming`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::error::EngineError;
use super::sampler::{self, History, SamplerScratch, SeqRng};
use crate::request::{PromptLogprob, Request, RequestId, SampledToken, SamplingParams, TokenId};
use crate::runner::{ModelRunner, StepLogits};
use crate::scheduler::output::SchedulerOutput;
use crate::scheduler::output::{ModelRunnerOutput, OutputTiming, RequestOutput};
use crate::scheduler::Scheduler;
use crate::spec_decode;
use crate::structured::{GuideState, StructuredError};

/// What the engine sends a request's consumer.
#[derive(Debug)]
pub enum EngineEvent {
    Output(RequestOutput, OutputTiming),
    Error(EngineError),
}

/// What the engine thread is told, between steps.
pub(crate) enum Command {
    Add(Box<Request>, UnboundedSender<EngineEvent>),
    Abort(RequestId),
    Shutdown,
}

/// Counters of one step, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepStats {
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub num_preempted: usize,
}

/// One admitted request as the engine sees it: where its events go, and everything its
/// next token is sampled from.
struct Sequence {
    out: UnboundedSender<EngineEvent>,
    /// When it was first scheduled (`None` until then).
    first_scheduled: Option<Instant>,
    rng: SeqRng,
    sampling: Arc<SamplingParams>,
    prompt_token_ids: Arc<[TokenId]>,
    output_token_ids: Vec<TokenId>,
    eos_token_ids: Arc<[TokenId]>,
    /// Prompt logprobs being gathered (`None`: not asked for).
    prompt_logprobs: Option<PromptLogprobBuffer>,
    /// Structured output: where the output is in its grammar (`None`: unconstrained).
    guide: Option<GuideState>,
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

pub struct EngineCore {
    scheduler: Scheduler,
    runner: ModelRunner,
    seqs: HashMap<RequestId, Sequence>,
    scratch: SamplerScratch,
}

impl EngineCore {
    pub fn new(scheduler: Scheduler, runner: ModelRunner) -> Self {
        Self {
            scheduler,
            runner,
            seqs: HashMap::new(),
            scratch: SamplerScratch::new(),
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Applies one command; false means shut down.
    pub(crate) fn apply(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Add(req, out) => self.add_request(*req, out),
            Command::Abort(id) => self.abort_request(id),
            Command::Shutdown => {
                self.abort_all();
                return false;
            }
        }
        true
    }

    /// Admits a request (validated before it was submitted).
    pub fn add_request(&mut self, req: Request, out: UnboundedSender<EngineEvent>) {
        let seq = Sequence {
            out,
            first_scheduled: None,
            rng: SeqRng::new(req.sampling.seed),
            sampling: Arc::clone(&req.sampling),
            prompt_token_ids: Arc::clone(&req.prompt_token_ids),
            output_token_ids: Vec::new(),
            eos_token_ids: Arc::clone(&req.eos_token_ids),
            prompt_logprobs: req
                .sampling
                .prompt_logprobs
                .map(|_| PromptLogprobBuffer::default()),
            guide: req.sampling.guide.as_ref().map(|g| g.start()),
        };
        self.seqs.insert(req.id, seq);
        self.scheduler.add_request(req);
    }

    /// Removes a request wherever it is and frees its blocks now.
    pub fn abort_request(&mut self, id: RequestId) {
        let last = self.scheduler.abort_request(id);
        let Some(seq) = self.seqs.remove(&id) else {
            return;
        };
        let timing = OutputTiming {
            first_scheduled: seq.first_scheduled,
            produced: Instant::now(),
        };
        if let Some(last) = last {
            let _ = seq.out.send(EngineEvent::Output(last, timing));
        }
    }

    /// Aborts everything (shutdown).
    pub fn abort_all(&mut self) {
        let ids: Vec<RequestId> = self.seqs.keys().copied().collect();
        for id in ids {
            self.abort_request(id);
        }
    }

    /// Fails every request in flight with `err` and frees its blocks (after a step failed).
    pub fn fail_all(&mut self, err: &EngineError) {
        for (id, seq) in std::mem::take(&mut self.seqs) {
            self.scheduler.abort_request(id);
            let _ = seq.out.send(EngineEvent::Error(err.clone()));
        }
        self.runner.clear_requests();
    }

    /// Whether nothing is in flight and every KV block is free (true after `fail_all`
    /// unless the failure left the scheduler's books inconsistent).
    pub fn is_clean(&self) -> bool {
        self.seqs.is_empty()
            && self.runner.num_requests() == 0
            && !self.scheduler.has_unfinished_requests()
            && self.scheduler.num_free_blocks() == self.scheduler.config().num_blocks
    }

    pub fn has_unfinished_requests(&self) -> bool {
        self.scheduler.has_unfinished_requests()
    }

    /// Aborts every request whose consumer has gone away.
    fn reap_disconnected(&mut self) {
        let gone: Vec<RequestId> = self
            .seqs
            .iter()
            .filter(|(_, seq)| seq.out.is_closed())
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
        let scheduled_at = Instant::now();
        let (step, guide_failures) = execute_with_masks(&mut self.runner, &mut self.seqs, &so);
        if so.scheduled.is_empty() {
            return StepStats::default(); // the runner only dropped finished requests
        }
        let stats = StepStats {
            num_tokens: so.total_num_tokens,
            num_seqs: so.scheduled.len(),
            num_preempted: so.preempted.len(),
        };
        for s in &so.scheduled {
            if let Some(seq) = self.seqs.get_mut(&s.req_id) {
                seq.first_scheduled.get_or_insert(scheduled_at);
            }
        }
        let mut sampled = Vec::with_capacity(step.ids.len());
        let mut rest: &mut [f32] = step.logits;
        // A request's rows are adjacent: one, or 1 + its draft's length.
        for ids in step.ids.chunk_by(|a, b| a == b) {
            let (mine, after) = std::mem::take(&mut rest).split_at_mut(ids.len() * step.vocab);
            rest = after;
            let (id, request_rows) = (ids[0], mine.chunks_exact_mut(step.vocab));
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            if guide_failures.iter().any(|(failed, _)| *failed == id) {
                continue;
            }
            let tokens = sample_rows(seq, request_rows, so.draft(id), &mut self.scratch);
            sampled.push((id, tokens));
        }
        for (id, err) in guide_failures {
            self.fail_request(id, &err);
        }
        self.score_prompt_rows();
        let outputs = self
            .scheduler
            .update_from_output(&so, &ModelRunnerOutput { sampled });
        self.emit(outputs, Instant::now());
        stats
    }

    /// Ends a request with an error (its consumer sees `err`) and frees its blocks.
    fn fail_request(&mut self, id: RequestId, err: &StructuredError) {
        tracing::error!(req_id = id, %err, "structured decoding failed; request ends");
        if let Some(seq) = self.seqs.remove(&id) {
            let _ = seq
                .out
                .send(EngineEvent::Error(EngineError::Internal(err.to_string())));
        }
        self.scheduler.abort_request(id);
    }

    /// Scores this step's prompt rows (for the requests that want prompt logprobs).
    fn score_prompt_rows(&mut self) {
        let seqs = &mut self.seqs;
        self.runner.for_each_prompt_row(|row, logits| {
            let Some(buffer) = seqs
                .get_mut(&row.req_id)
                .and_then(|seq| seq.prompt_logprobs.as_mut())
            else {
                return;
            };
            if row.pos == buffer.entries.len() && !buffer.sent {
                buffer
                    .entries
                    .push(sampler::prompt_logprob(logits, row.target, row.k));
            }
        });
    }

    /// Records each output's tokens in its sequence and sends it (the first one with the
    /// prompt logprobs, when asked for); a consumer that is gone aborts its request.
    /// Finished requests leave `seqs`.
    fn emit(&mut self, outputs: Vec<RequestOutput>, produced: Instant) {
        for mut out in outputs {
            let id = out.req_id;
            let finished = out.finish_reason.is_some();
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.output_token_ids.extend_from_slice(&out.new_token_ids);
            let committed = match (&mut seq.guide, finished) {
                (Some(guide), false) => out.new_token_ids.iter().try_for_each(|&t| guide.commit(t)),
                _ => Ok(()),
            };
            if let Err(err) = committed {
                self.fail_request(id, &err);
                continue;
            }
            if let Some(buffer) = seq.prompt_logprobs.as_mut().filter(|b| !b.sent) {
                // The first output comes after the whole prompt ran, so every entry is in.
                buffer.sent = true;
                out.prompt_logprobs = Some(std::mem::take(&mut buffer.entries));
            }
            let timing = OutputTiming {
                first_scheduled: seq.first_scheduled,
                produced,
            };
            let delivered = seq.out.send(EngineEvent::Output(out, timing)).is_ok();
            if finished {
                self.seqs.remove(&id);
            } else if !delivered {
                self.abort_request(id);
            }
        }
    }
}

/// Samples one request's rows: its next token, or with a draft the accepted draft
/// tokens and one more (`spec_decode::verify`: each row is sampled exactly as without
/// speculation, over the history extended by the tokens accepted before it).
fn sample_rows<'r>(
    seq: &mut Sequence,
    rows: impl Iterator<Item = &'r mut [f32]>,
    draft: &[TokenId],
    scratch: &mut SamplerScratch,
) -> Vec<SampledToken> {
    let num_output = seq.output_token_ids.len();
    let tokens = spec_decode::verify::verify(rows, draft, |row, accepted| {
        seq.output_token_ids.truncate(num_output);
        seq.output_token_ids
            .extend(accepted.iter().map(|t| t.token_id));
        let history = History {
            prompt_ids: &seq.prompt_token_ids,
            output_ids: &seq.output_token_ids,
            eos_ids: &seq.eos_token_ids,
        };
        sampler::sample_masked(
            row,
            &seq.sampling,
            &history,
            seq.guide.as_ref().map(GuideState::mask),
            &mut seq.rng,
            scratch,
        )
    });
    // The tokens join the sequence when the scheduler's output says which were kept.
    seq.output_token_ids.truncate(num_output);
    tokens
}

/// Runs the forward pass of `so` and computes the masks of the constrained requests
/// that sample this step: meanwhile on a helper thread when a core is spare, else just
/// before it. Returns the step and the requests whose guide failed.
fn execute_with_masks<'r>(
    runner: &'r mut ModelRunner,
    seqs: &mut HashMap<RequestId, Sequence>,
    so: &SchedulerOutput,
) -> (StepLogits<'r>, Vec<(RequestId, StructuredError)>) {
    let wanted: Vec<RequestId> = so
        .scheduled
        .iter()
        .filter(|s| s.sample)
        .map(|s| s.req_id)
        .filter(|id| seqs.get(id).is_some_and(|seq| seq.guide.is_some()))
        .collect();
    if wanted.is_empty() {
        return (runner.execute(so), Vec::new());
    }
    if !spare_core() {
        let failures = compute_masks(seqs, &wanted);
        return (runner.execute(so), failures);
    }
    std::thread::scope(|scope| {
        let masks = scope.spawn(|| compute_masks(seqs, &wanted));
        let step = runner.execute(so);
        let failures = masks.join().unwrap_or_else(|_| {
            let err = StructuredError::Matcher("mask computation panicked".into());
            wanted.iter().map(|&id| (id, err.clone())).collect()
        });
        (step, failures)
    })
}

/// Whether a core is left beside the compute pool for a mask helper thread. When the
/// pool takes every core (the default), the masks are computed on the engine thread just
/// before the forward pass: a helper competing with the pool's workers for a core cost
/// the step more (they wait for each other at every parallel section) than the masks
/// themselves (~20 µs each; bench/NOTES.md #14).
fn spare_core() -> bool {
    static SPARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SPARE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        crate::ops::pool::global().threads() < cores
    })
}

/// The masks of `ids`' next tokens (each a constrained request); the requests whose
/// guide failed, with why. Timed as a whole for the debug log.
fn compute_masks(
    seqs: &mut HashMap<RequestId, Sequence>,
    ids: &[RequestId],
) -> Vec<(RequestId, StructuredError)> {
    let started = Instant::now();
    let mut failures = Vec::new();
    for &id in ids {
        let Some(guide) = seqs.get_mut(&id).and_then(|seq| seq.guide.as_mut()) else {
            continue;
        };
        if let Err(err) = guide.compute_mask() {
            failures.push((id, err));
        }
    }
    tracing::debug!(
        masks = ids.len(),
        micros = started.elapsed().as_micros() as u64,
        "structured output masks"
    );
    failures
}
