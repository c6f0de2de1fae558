//! The engine's public face: `start` spawns the engine thread; `EngineHandle::submit`
//! hands a validated request to the thread and returns a `RequestStream` of token
//! events. The HTTP layer and the CLI both use only this API, and both validate what
//! they submit once, in `server::validate`: `submit` trusts its input (checked only by
//! debug assertions).
//!
//! The engine thread blocks on its command channel when idle and otherwise drains it
//! between steps, so adds and aborts take effect at the next step boundary. After every
//! step that ran tokens it reports the step to the `StepObserver`, if one is set.
//!
//! A panic in a step (a bug; requests are validated before they reach the thread) fails
//! the requests in flight with `EngineError::Internal` and the engine goes on serving; if
//! aborting them does not leave it idle with every KV block free, the thread stops and
//! `EngineHandle::is_running` turns false (`/health` then answers 503).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;

use super::core::{Command, EngineCore, StepStats};
use super::error::EngineError;
use super::stream::RequestStream;
use crate::backend::{self, Device};
use crate::config::EngineConfig;
use crate::error::ModelError;
use crate::model::{LoadedModel, ModelAssets};
use crate::request::{Request, SamplingParams, TokenId};
use crate::runner::ModelRunner;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::structured::{GrammarCompiler, StructuredError};

/// Facts about the running engine that request validation needs.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub max_model_len: usize,
    pub vocab: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    /// Shared by every request (`Request::eos_token_ids`).
    pub eos_token_ids: Arc<[TokenId]>,
    /// Where the forward pass runs (`--device`).
    pub device: Device,
}

/// Engine counters as of the last step or command.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub num_preemptions: u64,
    /// Prompt tokens looked up in / served from the prefix cache.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Speculative decoding: drafts verified, their tokens, and the tokens accepted.
    pub spec_decode_num_drafts: u64,
    pub spec_decode_num_draft_tokens: u64,
    pub spec_decode_num_accepted_tokens: u64,
}

/// Live counts published by the engine thread after every step and command.
#[derive(Debug, Default)]
pub struct EngineGauges {
    stats: std::sync::Mutex<EngineStats>,
}

impl EngineGauges {
    pub fn snapshot(&self) -> EngineStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn publish(&self, sched: &Scheduler) {
        let s = sched.stats();
        let total = sched.config().num_blocks;
        let stats = EngineStats {
            num_running: s.num_running,
            num_waiting: s.num_waiting,
            kv_blocks_total: total,
            kv_blocks_used: total - sched.num_free_blocks(),
            num_preemptions: s.num_preemptions,
            prefix_cache_queries: s.prefix_cache.queries,
            prefix_cache_hits: s.prefix_cache.hits,
            spec_decode_num_drafts: s.spec_decode.num_drafts,
            spec_decode_num_draft_tokens: s.spec_decode.num_draft_tokens,
            spec_decode_num_accepted_tokens: s.spec_decode.num_accepted_tokens,
        };
        if let Ok(mut guard) = self.stats.lock() {
            *guard = stats;
        }
    }
}

/// Told about every engine step that ran tokens, on the engine thread: implementations
/// must be cheap and must not block (metrics use atomics).
pub trait StepObserver: Send + Sync {
    fn on_step(&self, stats: &StepStats, duration: Duration);
}

/// The engine thread's observer slot (set at most once, read every step).
type ObserverSlot = OnceLock<Arc<dyn StepObserver>>;

/// Cheap to clone; every clone talks to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    next_id: Arc<AtomicU64>,
    info: Arc<EngineInfo>,
    gauges: Arc<EngineGauges>,
    observer: Arc<ObserverSlot>,
    model: Arc<ModelAssets>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// Structured output's compiler, built from the tokenizer on first use.
    grammars: Arc<OnceLock<Result<GrammarCompiler, StructuredError>>>,
}

/// Builds the scheduler and runner for `model` and starts the engine thread.
pub fn start(model: LoadedModel, cfg: &EngineConfig) -> Result<EngineHandle, ModelError> {
    init_compute_threads(cfg.num_threads);
    let LoadedModel {
        transformer,
        assets,
    } = model;
    let max_model_len = transformer.max_positions();
    let vocab = transformer.cfg.vocab;
    let mut sched_cfg = SchedulerConfig {
        max_num_seqs: cfg.max_num_seqs,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        max_model_len,
        block_size: cfg.block_size,
        num_blocks: 0,
        enable_prefix_caching: cfg.enable_prefix_caching,
        long_prefill_token_threshold: cfg.long_prefill_token_threshold,
        speculative: cfg.speculative,
    };
    if cfg.device != Device::Cpu && !assets.adapters.adapters().is_empty() {
        return Err(ModelError::Invalid(format!(
            "LoRA adapters are served on --device cpu only (not yet on {})",
            cfg.device
        )));
    }
    let built = backend::build(transformer, cfg, sched_cfg.max_logit_rows())
        .map_err(|e| ModelError::Invalid(e.to_string()))?;
    let num_blocks = built.num_blocks;
    sched_cfg.num_blocks = num_blocks;
    if num_blocks == 0 || cfg.block_size == 0 || cfg.max_num_seqs == 0 {
        return Err(ModelError::Invalid(format!(
            "the KV cache needs at least one block (num_kv_blocks {num_blocks}, block_size {}, \
             max_num_seqs {}); raise --kv-cache-memory",
            cfg.block_size, cfg.max_num_seqs
        )));
    }
    let info = EngineInfo {
        max_model_len,
        vocab,
        num_kv_blocks: num_blocks,
        block_size: cfg.block_size,
        eos_token_ids: assets.tokenizer.eos_ids().into(),
        device: cfg.device,
    };
    let scheduler = Scheduler::new(sched_cfg)?;
    let runner = ModelRunner::new(built.backend, cfg.block_size);
    let (tx, rx) = mpsc::channel();
    let gauges = Arc::new(EngineGauges::default());
    let observer = Arc::new(ObserverSlot::new());
    let (thread_gauges, thread_observer) = (gauges.clone(), observer.clone());
    let core = EngineCore::new(scheduler, runner);
    let thread = std::thread::Builder::new()
        .name("tessera-engine".into())
        .spawn(move || run_loop(core, rx, &thread_gauges, &thread_observer))
        .map_err(|e| ModelError::Invalid(format!("cannot start the engine thread: {e}")))?;
    Ok(EngineHandle {
        commands: tx,
        next_id: Arc::new(AtomicU64::new(1)),
        info: Arc::new(info),
        gauges,
        observer,
        model: Arc::new(assets),
        thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        grammars: Arc::new(OnceLock::new()),
    })
}

fn init_compute_threads(requested: usize) {
    let n = if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    };
    // The first engine in a process sizes the pool; later ones share it.
    crate::ops::pool::init(n);
}

fn run_loop(
    mut core: EngineCore,
    commands: Receiver<Command>,
    gauges: &EngineGauges,
    observer: &ObserverSlot,
) {
    loop {
        if !core.has_unfinished_requests() {
            match commands.recv() {
                Ok(cmd) => {
                    if !core.apply(cmd) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        while let Ok(cmd) = commands.try_recv() {
            if !core.apply(cmd) {
                return;
            }
        }
        gauges.publish(core.scheduler());
        let go_on = step_guarded(&mut core, observer);
        gauges.publish(core.scheduler());
        if !go_on {
            return;
        }
    }
}

/// One step and its report to the observer. After a panic in either, fails the requests
/// in flight; false when the engine cannot go on (not clean after that).
fn step_guarded(core: &mut EngineCore, observer: &ObserverSlot) -> bool {
    let started = Instant::now();
    let stepped = catch_unwind(AssertUnwindSafe(|| {
        let stats = core.step();
        if let Some(observer) = observer.get().filter(|_| stats.num_tokens > 0) {
            observer.on_step(&stats, started.elapsed());
        }
    }));
    let Err(payload) = stepped else {
        return true;
    };
    let reason = panic_message(payload.as_ref());
    tracing::error!(%reason, "engine step panicked; failing the requests in flight");
    let err = EngineError::Internal(format!("engine step failed: {reason}"));
    let clean = catch_unwind(AssertUnwindSafe(|| {
        core.fail_all(&err);
        core.is_clean()
    }))
    .unwrap_or(false);
    if !clean {
        tracing::error!("engine state inconsistent after a failed step; the engine stops");
    }
    clean
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl EngineHandle {
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn gauges(&self) -> &EngineGauges {
        &self.gauges
    }

    /// Installs the observer of engine steps; false when one was already set.
    pub fn set_step_observer(&self, observer: Arc<dyn StepObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The loaded model's tokenizer, chat template and metadata.
    pub fn model(&self) -> &ModelAssets {
        &self.model
    }

    /// The compiler of structured-output grammars for this model's vocabulary (built on
    /// the first call, which takes a while: call it off the async workers).
    pub fn grammar_compiler(&self) -> Result<&GrammarCompiler, StructuredError> {
        self.grammars
            .get_or_init(|| {
                let bytes = self.model.tokenizer.token_bytes();
                GrammarCompiler::new(&bytes, &self.info.eos_token_ids)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Enqueues a request; its events arrive on the returned stream. The request must be
    /// valid (`server::validate` checks it once for every front end); this only asserts
    /// that in debug builds. Fails only when the engine has stopped.
    pub fn submit(
        &self,
        prompt_token_ids: Vec<TokenId>,
        sampling: SamplingParams,
    ) -> Result<RequestStream, EngineError> {
        self.debug_check(&prompt_token_ids, &sampling);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let num_prompt = prompt_token_ids.len();
        let stops = sampling.stop.clone();
        let req = Request::new(
            id,
            prompt_token_ids,
            sampling,
            Arc::clone(&self.info.eos_token_ids),
        );
        let arrival = req.arrival;
        let (tx, rx) = unbounded_channel();
        self.commands
            .send(Command::Add(Box::new(req), tx))
            .map_err(|_| EngineError::Stopped)?;
        Ok(RequestStream::new(
            id,
            rx,
            self.commands.clone(),
            self.model.clone(),
            stops,
            num_prompt,
            arrival,
        ))
    }

    /// What validation guarantees and the engine relies on: a non-empty prompt of
    /// in-vocabulary ids that fits the context with its `max_tokens`, and in-range
    /// sampling values.
    fn debug_check(&self, prompt: &[TokenId], sampling: &SamplingParams) {
        let info = &self.info;
        debug_assert!(!prompt.is_empty(), "submitted an empty prompt");
        debug_assert!(
            prompt.iter().all(|&t| (t as usize) < info.vocab),
            "submitted a prompt with ids outside the vocabulary ({})",
            info.vocab
        );
        debug_assert!(
            prompt.len() + sampling.max_tokens <= info.max_model_len,
            "submitted {} + {} tokens > max_model_len {}",
            prompt.len(),
            sampling.max_tokens,
            info.max_model_len
        );
        debug_assert_eq!(sampling.validate(), Ok(()), "submitted invalid sampling");
    }

    /// Whether the engine thread is alive (false after `shutdown` or a failure it could
    /// not recover from).
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// Aborts every request and stops the engine thread; waits for it to exit.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}
