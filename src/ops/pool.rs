//! The compute pool: `threads - 1` persistent workers plus the calling thread run the
//! tasks of one parallel region (`run(n_tasks, f)`), then the caller continues. Built for
//! the engine's many small regions per token (≈150 per decoded token): workers spin
//! briefly between regions instead of sleeping, so waking them costs nanoseconds, and
//! park after `SPIN_LIMIT` idle so an idle server does not burn CPU.
//!
//! Invariant: `run` returns only after every task ran and every worker left the region,
//! so `f` may borrow from the caller's stack. Regions do not nest (a task that calls
//! `run` executes its inner region inline on its own thread).
//!
//! Tasks write their results through `SharedOut`: one `&mut [T]` that the tasks of a
//! region split among themselves at run time (rows, columns, blocks).

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN_LIMIT: Duration = Duration::from_micros(200);

type Task = dyn Fn(usize) + Sync;

struct Region {
    /// The region's task function; valid while `active` workers may read it.
    f: *const Task,
    n_tasks: usize,
}

struct Shared {
    /// Incremented when a region starts; workers join regions they have not seen.
    epoch: AtomicUsize,
    region: Mutex<Region>,
    wake: Condvar,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Workers still inside the current region.
    active: AtomicUsize,
    /// A task panicked on a worker during the current region.
    panicked: AtomicBool,
}

// SAFETY: `Region::f` points to a `Sync` closure that outlives every access (see `run`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

pub struct ComputePool {
    shared: Arc<Shared>,
    workers: usize,
    /// Serializes callers: one region at a time.
    caller: Mutex<()>,
}

thread_local! {
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

static GLOBAL: OnceLock<ComputePool> = OnceLock::new();

/// Sets the number of compute threads (first call wins); 0 means available cores.
pub fn init(threads: usize) -> &'static ComputePool {
    GLOBAL.get_or_init(|| {
        let n = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        ComputePool::new(n)
    })
}

/// The process-wide pool (available cores unless `init` chose otherwise).
pub fn global() -> &'static ComputePool {
    init(0)
}

/// An output buffer the tasks of one region write in disjoint parts: a `&mut [T]` split
/// at run time (strided columns, say) where `split_at_mut` cannot express the split.
/// Bounds and lifetime hold by construction; disjointness is the caller's promise.
pub(crate) struct SharedOut<'a, T> {
    ptr: *mut T,
    len: usize,
    buf: PhantomData<&'a mut [T]>,
}

impl<T> Clone for SharedOut<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOut<'_, T> {}

// SAFETY: a `SharedOut` is a `&'a mut [T]` whose parts go to several threads, which is
// what sending `&mut` pieces of a slice does (sound for `T: Send`, as for
// `split_at_mut` + scoped threads). The buffer stays mutably borrowed for `'a`, so it
// outlives every copy and nothing else reads or writes it meanwhile; `part` checks
// bounds; the one remaining obligation, that no two live parts overlap, is on each
// `part` call (it is `unsafe`).
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
// SAFETY: as for `Send`: through `&SharedOut` a thread can only take parts (unsafe, with
// the disjointness promise), never observe another thread's part.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub(crate) fn new(buf: &'a mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            buf: PhantomData,
        }
    }

    /// Elements `start..start + len`; panics when they do not lie inside the buffer.
    ///
    /// # Safety
    /// No other part taken from this buffer that overlaps this one is alive (in any
    /// thread) while this one is.
    #[inline(always)]
    pub(crate) unsafe fn part(self, start: usize, len: usize) -> &'a mut [T] {
        assert!(
            start <= self.len && len <= self.len - start,
            "SharedOut: part {start}+{len} of {}",
            self.len
        );
        // SAFETY: in bounds (checked), borrowed for 'a (new), not aliased (the caller).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Runs `f(0..n_tasks)` on the global pool.
pub fn run(n_tasks: usize, f: impl Fn(usize) + Sync) {
    global().run(n_tasks, &f)
}

/// Elements per task at least when a row-wise op is split over the pool: below this,
/// waking a worker costs about what it saves (a region costs ~1-2 µs).
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;
/// Tasks per thread of a split row-wise op: a few, so a descheduled thread does not
/// hold up the region.
const ROW_TASKS_PER_THREAD: usize = 2;

/// Calls `f(first_row, rows)` over runs of whole rows of `buf: [rows, row_len]` that
/// together cover it once: on the global pool when the buffer is large enough to repay
/// the region, else as one run on this thread. For the row-wise ops between the
/// matmuls (norms, RoPE, SwiGLU, adds), which would otherwise run on the engine thread
/// alone while the workers wait.
pub fn for_row_runs<T: Send>(buf: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = buf.len().checked_div(row_len).unwrap_or(0);
    debug_assert_eq!(rows * row_len, buf.len(), "for_row_runs: whole rows");
    let by_size = (rows * row_len) / MIN_ELEMS_PER_TASK;
    let tasks = by_size
        .min(rows)
        .min(global().threads() * ROW_TASKS_PER_THREAD);
    if tasks <= 1 {
        return f(0, buf);
    }
    let per_task = rows.div_ceil(tasks);
    let out = SharedOut::new(buf);
    run(rows.div_ceil(per_task), |task| {
        let first = task * per_task;
        let n = per_task.min(rows - first);
        // SAFETY: task `task` alone takes rows `first..first + n`.
        f(first, unsafe { out.part(first * row_len, n * row_len) })
    });
}

/// Most tasks a `Guided` split makes (the last one takes whatever is left).
const GUIDED_MAX_TASKS: usize = 48;

/// `n` items split into tasks largest first (guided self-scheduling): each task takes
/// `1 / (2·threads)` of the items left, rounded up to a multiple of `align` and at least
/// `min`. The first tasks are long contiguous runs (what the hardware prefetcher and the
/// kernels' blocking want), the last ones short, so a thread that ran slower than the
/// others (a busy host, a late start) holds the region up by one short task at most.
/// With equal quarters on 2 threads, the caller waited for the worker 12.8 % of the
/// Qwen-shaped prefill's matmul regions (bench/NOTES.md §39).
pub struct Guided {
    /// Task `i` covers `ends[i - 1]..ends[i]` (`0..ends[0]` for the first).
    ends: [usize; GUIDED_MAX_TASKS],
    len: usize,
}

impl Guided {
    pub fn new(n: usize, align: usize, min: usize) -> Self {
        let share = 2 * global().threads();
        let mut ends = [0; GUIDED_MAX_TASKS];
        let (mut len, mut start) = (0, 0);
        while start < n {
            let left = n - start;
            let take = if len + 1 == GUIDED_MAX_TASKS {
                left
            } else {
                left.div_ceil(share)
                    .next_multiple_of(align)
                    .max(min)
                    .min(left)
            };
            start += take;
            ends[len] = start;
            len += 1;
        }
        Self { ends, len }
    }

    /// How many tasks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none (`n` was 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The items of task `task`.
    pub fn range(&self, task: usize) -> std::ops::Range<usize> {
        let start = if task == 0 { 0 } else { self.ends[task - 1] };
        start..self.ends[task]
    }
}

impl ComputePool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            region: Mutex::new(Region {
                f: std::ptr::null::<fn(usize)>() as *const Task,
                n_tasks: 0,
            }),
            wake: Condvar::new(),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let workers = threads.saturating_sub(1);
        for i in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("tessera-compute-{}", i + 1))
                .spawn(move || worker_loop(&shared))
                .expect("spawning a compute thread");
        }
        Self {
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    /// Threads that execute a region (workers + the caller).
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(i)` for every `i < n_tasks`, spread over the pool; returns when all ran.
    pub fn run<'a>(&self, n_tasks: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers == 0 || n_tasks == 1 || IN_REGION.with(Cell::get) {
            (0..n_tasks).for_each(f);
            return;
        }
        let _one_region = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        {
            let mut region = s.region.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY (lifetime erasure): workers only call `f` while `active > 0`, and this
            // function does not return before `active` drops back to 0.
            region.f =
                unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Task>(f) };
            region.n_tasks = n_tasks;
            s.next.store(0, Ordering::Relaxed);
            s.active.store(self.workers, Ordering::Relaxed);
            s.epoch.fetch_add(1, Ordering::Release);
        }
        s.wake.notify_all();
        IN_REGION.with(|r| r.set(true));
        let caller_result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drain(s, f, n_tasks)));
        IN_REGION.with(|r| r.set(false));
        let mut backoff = Backoff::default();
        while s.active.load(Ordering::Acquire) != 0 {
            backoff.snooze();
        }
        if let Err(payload) = caller_result {
            std::panic::resume_unwind(payload);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a compute task panicked on a worker thread");
        }
    }
}

/// Takes tasks until none are left.
fn drain(s: &Shared, f: &(dyn Fn(usize) + Sync + '_), n_tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n_tasks {
            return;
        }
        f(i);
    }
}

fn worker_loop(s: &Shared) {
    IN_REGION.with(|r| r.set(true));
    let mut seen = 0usize;
    loop {
        seen = wait_for_region(s, seen);
        let (f, n_tasks) = {
            let region = s.region.lock().unwrap_or_else(|e| e.into_inner());
            (region.f, region.n_tasks)
        };
        // SAFETY: the caller keeps `f` alive until `active` reaches 0 (below).
        let f = unsafe { &*f };
        // A panicking task must not leave the caller waiting forever: note it, leave the
        // region, and let the caller re-raise it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drain(s, f, n_tasks))).is_err()
        {
            s.panicked.store(true, Ordering::Release);
        }
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spins, then parks, until the epoch moves past `seen`; returns the new epoch.
fn wait_for_region(s: &Shared, seen: usize) -> usize {
    let mut spin_until = None;
    let mut backoff = Backoff::default();
    loop {
        let epoch = s.epoch.load(Ordering::Acquire);
        if epoch != seen {
            return epoch;
        }
        // Read the clock only once spinning turned into yielding (it costs a syscall-free
        // but not free vDSO call).
        if !backoff.yielding()
            || Instant::now() < *spin_until.get_or_insert_with(|| Instant::now() + SPIN_LIMIT)
        {
            backoff.snooze();
            continue;
        }
        let region = s.region.lock().unwrap_or_else(|e| e.into_inner());
        if s.epoch.load(Ordering::Acquire) == seen {
            drop(s.wake.wait_timeout(region, Duration::from_millis(100)));
        }
    }
}

/// Busy-waits a little, then yields the core: on an oversubscribed machine a spinning
/// waiter must not keep the thread it waits for off the CPU.
#[derive(Default)]
struct Backoff {
    spins: u32,
}

impl Backoff {
    const SPINS_BEFORE_YIELD: u32 = 256;

    fn yielding(&self) -> bool {
        self.spins >= Self::SPINS_BEFORE_YIELD
    }

    fn snooze(&mut self) {
        if self.spins < Self::SPINS_BEFORE_YIELD {
            self.spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn guided_tasks_cover_every_item_once_largest_first() {
        let threads = global().threads();
        for (n, align, min) in [
            (0, 8, 32),
            (5, 8, 32),
            (896, 8, 32),
            (4864, 8, 32),
            (151_936, 8, 32),
        ] {
            let tasks = Guided::new(n, align, min);
            let mut next = 0;
            for t in 0..tasks.len() {
                let r = tasks.range(t);
                assert_eq!(
                    r.start, next,
                    "n = {n}: task {t} starts where the last ended"
                );
                assert!(!r.is_empty(), "n = {n}: task {t} is empty");
                if r.end < n {
                    assert_eq!(r.len() % align, 0, "n = {n}: task {t} is aligned");
                    assert!(r.len() >= min, "n = {n}: task {t} is at least {min}");
                }
                if t > 0 {
                    assert!(
                        r.len() <= tasks.range(t - 1).len(),
                        "n = {n}: largest first"
                    );
                }
                next = r.end;
            }
            assert_eq!(next, n, "n = {n}: the tasks cover every item");
            assert_eq!(tasks.is_empty(), n == 0);
        }
        // Two threads: a quarter of what is left each time.
        if threads == 2 {
            let tasks = Guided::new(896, 8, 32);
            let sizes: Vec<usize> = (0..tasks.len()).map(|t| tasks.range(t).len()).collect();
            assert_eq!(sizes, [224, 168, 128, 96, 72, 56, 40, 32, 32, 32, 16]);
        }
    }

    #[test]
    fn every_task_runs_exactly_once_across_many_regions() {
        let pool = ComputePool::new(3);
        for n in [1usize, 2, 7, 64, 1000] {
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                "n = {n}"
            );
        }
    }

    #[test]
    fn tasks_may_borrow_the_callers_stack_and_nested_regions_run_inline() {
        let pool = ComputePool::new(2);
        let data: Vec<u64> = (0..100).collect();
        let sum = AtomicU64::new(0);
        pool.run(10, &|i| {
            let inner = AtomicU64::new(0);
            pool.run(10, &|j| {
                inner.fetch_add(data[i * 10 + j], Ordering::Relaxed);
            });
            sum.fetch_add(inner.load(Ordering::Relaxed), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), (0..100).sum::<u64>());
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_keeps_working() {
        let pool = ComputePool::new(2);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "task 5 fails"));
        }));
        assert!(result.is_err());
        let count = AtomicU64::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn row_runs_cover_every_row_once_with_its_index() {
        // Sizes below, at and far above the split threshold; rows of 1 and of 1000.
        for (rows, row_len) in [(0usize, 7usize), (1, 5), (3, 1000), (40, 1000), (999, 33)] {
            let mut buf = vec![0u32; rows * row_len];
            let runs = AtomicU64::new(0);
            for_row_runs(&mut buf, row_len, |first, part| {
                assert_eq!(part.len() % row_len, 0);
                runs.fetch_add(1, Ordering::Relaxed);
                for (i, x) in part.iter_mut().enumerate() {
                    *x += (first * row_len + i) as u32 + 1;
                }
            });
            let want: Vec<u32> = (1..=(rows * row_len) as u32).collect();
            assert_eq!(buf, want, "{rows} rows of {row_len}");
            let split = rows * row_len >= 2 * MIN_ELEMS_PER_TASK && rows > 1;
            assert_eq!(
                runs.load(Ordering::Relaxed) > 1,
                split,
                "{rows} × {row_len}"
            );
        }
    }

    #[test]
    fn workers_park_after_idle_and_wake_for_the_next_region() {
        let pool = ComputePool::new(2);
        std::thread::sleep(SPIN_LIMIT * 5);
        let count = AtomicU64::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
