//! Request CPU work off actix's async workers: the bounded pool that parses request
//! bodies, renders chat templates, tokenizes and detokenizes, and the byte bound that
//! refuses a prompt that cannot fit before any of that work is spent on it.
//!
//! Invariants: at most `threads` jobs run at once (so at most that many prompts are
//! being tokenized, which bounds the memory tokenization takes) and at most `queue` more
//! wait; a job beyond that is refused at once with 429 (`ApiError::Busy`). A job gives its
//! place back before its result goes out, so a requester's next job never finds its own
//! last one still counted. A job whose
//! requester has gone (the client left) is skipped when its turn comes; a job that
//! panics fails its own request only; one that runs past `SLOW_JOB` is logged (a sign of
//! a pathological chat template or prompt). The threads are plain threads that nothing joins:
//! they never hold up the process's exit. The async workers only read bodies and await
//! jobs, so they keep answering `/health`, `/ready` and `/metrics` whatever is queued.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::time::timeout;

use super::request::{ChatMessageIn, MessageContent, PromptField};
use crate::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

/// How long a job may run before it is logged as slow.
const SLOW_JOB: Duration = Duration::from_secs(1);

/// The pool (see the module header).
pub struct CpuPool {
    jobs: SyncSender<Job>,
    queue: usize,
    /// Jobs admitted at once at most: `threads + queue`.
    capacity: usize,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    queued: AtomicUsize,
    running: AtomicUsize,
    /// Jobs admitted whose result is not yet out (each holds a `Slot`).
    admitted: AtomicUsize,
}

/// One admitted job's place in the pool, given back when its result is ready (before the
/// requester can see it, so a client that sends its next request the moment it has an
/// answer finds the place free), or when the job is dropped unrun or panics.
struct Slot(Arc<Counts>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CpuPool {
    /// Starts `threads` threads (at least one) taking jobs from a queue of `queue`.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let capacity = threads + queue;
        let (jobs, receiver) = sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let counts = Arc::new(Counts::default());
        for index in 0..threads {
            let (receiver, counts) = (receiver.clone(), counts.clone());
            std::thread::Builder::new()
                .name(format!("tessera-cpu-{index}"))
                .spawn(move || work(&receiver, &counts))?;
        }
        Ok(Self {
            jobs,
            queue,
            capacity,
            counts,
        })
    }

    /// Runs `job` on the pool and awaits its result; `ApiError::Busy` at once when the
    /// queue is full. A job that runs longer than `SLOW_JOB` is logged (once) as still running.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if self.counts.admitted.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.counts.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Busy { queued: self.queue });
        }
        let slot = Slot(self.counts.clone());
        let (done, mut result) = oneshot::channel();
        let started = Arc::new(OnceLock::new());
        let started_at = started.clone();
        let wrapped: Job = Box::new(move || {
            let slot = slot;
            if !done.is_closed() {
                let _ = started_at.set(Instant::now());
                let outcome = job();
                drop(slot);
                let _ = done.send(outcome);
            }
        });
        self.counts.queued.fetch_add(1, Ordering::SeqCst);
        if let Err(refused) = self.jobs.try_send(wrapped) {
            self.counts.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(match refused {
                TrySendError::Full(_) => ApiError::Busy { queued: self.queue },
                TrySendError::Disconnected(_) => ApiError::Internal("the CPU pool stopped".into()),
            });
        }
        let mut warned = false;
        loop {
            match timeout(SLOW_JOB, &mut result).await {
                Ok(outcome) => {
                    return outcome.map_err(|_| {
                        ApiError::Internal(
                            "the request's CPU job failed (see the server log)".into(),
                        )
                    })?
                }
                Err(_) => {
                    let running = started.get().map(Instant::elapsed);
                    if let Some(running) = running.filter(|r| !warned && *r >= SLOW_JOB) {
                        let seconds = running.as_secs_f64();
                        tracing::warn!(
                            seconds,
                            "a request's CPU job (chat template, tokenizer) is still running"
                        );
                        warned = true;
                    }
                }
            }
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.counts.running.load(Ordering::SeqCst)
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.counts.queued.load(Ordering::SeqCst)
    }
}

/// One pool thread: takes jobs until the pool is dropped.
fn work(receiver: &Mutex<Receiver<Job>>, counts: &Counts) {
    loop {
        let next = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        counts.running.fetch_add(1, Ordering::SeqCst);
        counts.queued.fetch_sub(1, Ordering::SeqCst);
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a request's CPU job panicked; its request failed");
        }
        counts.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The longest prompt text that can fit: `max_model_len` tokens of at most
/// `max_bytes_per_token` bytes each (`Tokenizer::max_bytes_per_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLimit {
    pub max_model_len: usize,
    pub max_bytes_per_token: usize,
}

impl PromptLimit {
    fn max_bytes(&self) -> usize {
        self.max_model_len.saturating_mul(self.max_bytes_per_token)
    }

    /// Refuses `bytes` of prompt text (the field `param`) that cannot fit.
    pub fn check(&self, param: &'static str, bytes: usize) -> Result<(), ApiError> {
        if bytes <= self.max_bytes() {
            return Ok(());
        }
        Err(ApiError::PromptTooLong {
            param,
            bytes,
            max_bytes: self.max_bytes(),
            max_model_len: self.max_model_len,
            max_bytes_per_token: self.max_bytes_per_token,
        })
    }

    /// Refuses chat messages whose text cannot fit. Counts each content without its
    /// surrounding whitespace: a template may trim contents, never drop more of them.
    pub fn check_messages(&self, messages: Option<&[ChatMessageIn]>) -> Result<(), ApiError> {
        let bytes: usize = messages
            .unwrap_or_default()
            .iter()
            .map(|m| match &m.content {
                Some(MessageContent::Text(text)) => text.trim().len(),
                Some(MessageContent::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .map(|t| t.trim().len())
                    .sum(),
                None => 0,
            })
            .sum();
        self.check("messages", bytes)
    }

    /// Refuses a completion prompt text (each text of a list on its own) that cannot fit.
    pub fn check_prompt(&self, prompt: Option<&PromptField>) -> Result<(), ApiError> {
        match prompt {
            Some(PromptField::Text(text)) => self.check("prompt", text.len()),
            Some(PromptField::Texts(texts)) => texts
                .iter()
                .try_for_each(|text| self.check("prompt", text.len())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn jobs_run_off_the_caller_and_the_queue_is_bounded() {
        let pool = Arc::new(CpuPool::new(1, 1).expect("pool"));
        let (release_tx, release_rx) = channel::<()>();
        let (started_tx, started_rx) = channel::<()>();
        let blocker = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                block_on(pool.run(move || {
                    started_tx.send(()).expect("started");
                    release_rx.recv().expect("released");
                    Ok(std::thread::current().name().map(str::to_string))
                }))
            })
        };
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("job started");
        assert_eq!(pool.running(), 1);
        let waiting = {
            let pool = pool.clone();
            std::thread::spawn(move || block_on(pool.run(|| Ok(7))))
        };
        assert!(wait_until(|| pool.queued() == 1), "second job queued");
        let refused = block_on(pool.run(|| Ok(8)));
        assert!(
            matches!(refused, Err(ApiError::Busy { queued: 1 })),
            "{refused:?}"
        );
        release_tx.send(()).expect("release");
        let name = blocker.join().expect("blocker").expect("ran");
        assert_eq!(name.as_deref(), Some("tessera-cpu-0"));
        assert_eq!(waiting.join().expect("waiting").expect("ran"), 7);
        assert!(wait_until(|| pool.running() == 0 && pool.queued() == 0));
    }

    #[test]
    fn a_finished_jobs_place_is_free_when_its_answer_arrives() {
        // No queue: one place. Each answer arrives after its job gave the place back, so
        // the next request, sent at once, is never refused (even when the pool's thread
        // has not yet gone back to waiting for work); a panicking job gives it back too.
        let pool = CpuPool::new(1, 0).expect("pool");
        for i in 0..500 {
            assert_eq!(block_on(pool.run(move || Ok(i))).expect("admitted"), i);
        }
        let failed = block_on(pool.run(|| -> Result<(), ApiError> { panic!("boom") }));
        assert!(matches!(failed, Err(ApiError::Internal(_))), "{failed:?}");
        assert_eq!(block_on(pool.run(|| Ok(1))).expect("admitted"), 1);
    }

    #[test]
    fn a_panicking_job_fails_only_its_request() {
        let pool = CpuPool::new(1, 4).expect("pool");
        let failed = block_on(pool.run(|| -> Result<(), ApiError> { panic!("boom") }));
        assert!(matches!(failed, Err(ApiError::Internal(_))), "{failed:?}");
        assert_eq!(block_on(pool.run(|| Ok(1))).expect("pool still works"), 1);
    }

    #[test]
    fn prompts_longer_than_the_context_can_hold_are_refused() {
        let limit = PromptLimit {
            max_model_len: 10,
            max_bytes_per_token: 4,
        };
        assert!(limit.check("prompt", 40).is_ok());
        let err = limit.check("prompt", 41).expect_err("too long");
        let message = err.to_string();
        assert!(
            message.contains("41 bytes") && message.contains("at most 40"),
            "{message}"
        );
        let text = |t: &str| Some(PromptField::Texts(vec!["ok".into(), t.into()]));
        assert!(limit.check_prompt(text(&"x".repeat(40)).as_ref()).is_ok());
        assert!(limit.check_prompt(text(&"x".repeat(41)).as_ref()).is_err());
        let padded = ChatMessageIn {
            role: Some("user".into()),
            content: Some(MessageContent::Text(format!("  {}  \n", "x".repeat(40)))),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        };
        assert!(limit
            .check_messages(Some(std::slice::from_ref(&padded)))
            .is_ok());
        assert!(limit
            .check_messages(Some(&[padded.clone(), padded]))
            .is_err());
    }

    fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..3000 {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
