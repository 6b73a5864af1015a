//! The kernels' threads: a fixed pool whose workers spin between calls, and in which the
//! calling thread takes its share of the work.
//!
//! A forward pass is a run of short kernel calls (at batch 1, each a fraction of a
//! millisecond) with a little serial work between them. A pool whose idle workers sleep at
//! once (rayon's, after a few dozen yields) pays, on every call, a wake-up of a sleeping
//! worker, and with `install` from outside the pool also a sleep and a wake-up of the calling
//! thread: tens of microseconds each on a virtual machine whose idle vCPU must be woken, which
//! at batch 1 ate most of what the second core brought. Here:
//!
//! - the calling thread runs tasks itself, beside the workers, and never sleeps on a call;
//! - a call's tasks are claimed one by one from a shared counter, so a worker that arrives late
//!   (descheduled, or still waking) takes fewer of them instead of holding the call up, and a
//!   worker that never arrived is not waited for;
//! - a worker spins for [`SPIN`] after its last task before it sleeps, so the next call of a
//!   pass finds it awake; onnxruntime's and OpenMP's pools do the same. A spinning worker that
//!   loses its core (a gap of more than [`PREEMPTED`] between two looks at the clock) sleeps at
//!   once, leaving the core to whatever wanted it;
//! - on an oversubscribed machine, where a call waited for a worker that lost its core with a
//!   task in hand (more than [`HELD_UP`] longer than the calling thread's own share took),
//!   twice within [`HELD_UP_AGAIN`], calls run on the calling thread alone for a while
//!   ([`BACKOFF`], doubled while it keeps happening): parallel calls would wait a time slice
//!   each. A worker displaced for a moment
//!   by a short-lived thread (the node's connection and engine threads, clients on the same
//!   machine) does not start one: with a back-off for every such moment, a node serving
//!   several sessions ran its kernels on one thread most of the time.
//!
//! The pool has [`threads`]` − 1` workers. A call made while another thread's call is running,
//! or from inside a task, runs its tasks on the calling thread.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// How long an idle worker spins, watching for the next call, before it sleeps.
pub const SPIN: Duration = Duration::from_micros(250);

/// A gap between two looks at the clock in a spin-wait that says the thread lost its core to
/// another (a spin-wait looks every few microseconds): a spinning worker then goes to sleep,
/// leaving the core to whatever wanted it. Also the least wait for a worker that counts as
/// being held up by one that lost its core.
pub const PREEMPTED: Duration = Duration::from_micros(200);

/// How much longer than its own share of a call the calling thread must wait for a worker
/// before the machine counts as oversubscribed (a back-off starts). A worker that a short-lived
/// thread (a connection's I/O, a client on the same machine) displaced for a moment holds its
/// call up by less; one displaced for a time slice of a CPU-bound process, by more.
pub const HELD_UP: Duration = Duration::from_millis(1);

/// How long the pool runs calls on the calling thread alone, with no spinning, after a call
/// waited for a worker that had lost its core: at first; each such wait within
/// [`BACKOFF_MEMORY`] of the end of the last back-off doubles it, up to [`BACKOFF_MAX`].
pub const BACKOFF: Duration = Duration::from_millis(50);

/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// How long after a back-off the next one still counts as a repeat (and is doubled).
pub const BACKOFF_MEMORY: Duration = Duration::from_secs(2);

/// A call held up by a worker starts a back-off only if another was held up less than this
/// before: once is a moment (the VM's vCPU taken away, a thread of a higher class run first),
/// and a back-off costs tens of milliseconds of half speed (about 5 % of a batched decode's
/// throughput on this project's 2-vCPU VM, one or two moments a second); on an oversubscribed
/// machine, nearly every call is held up, so the second comes at once.
pub const HELD_UP_AGAIN: Duration = Duration::from_millis(100);

/// Environment variable that sizes the pool when [`set_threads`] was not called first: a
/// positive thread count (anything else means one per available core).
pub const THREADS_ENV: &str = "RELA_KERNEL_THREADS";

/// A task body with its lifetime erased: only ever called between a worker's entry into a
/// published call and its exit, which [`Pool::run`] waits for before it returns (see there).
type Task = &'static (dyn Fn(usize) + Sync);

/// One call's shared state.
struct Call {
    /// Tasks in the call.
    tasks: usize,
    /// The next task to claim.
    next: AtomicUsize,
    /// Workers that entered the call and have not left it.
    inside: AtomicUsize,
    /// Whether a task panicked on a worker.
    panicked: AtomicBool,
}

impl Call {
    /// Claims and runs tasks until none is left.
    fn work(&self, f: &(dyn Fn(usize) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            f(i);
        }
    }
}

/// What the workers see, under [`Shared::state`].
struct State {
    /// The call being run, if any, and its tasks.
    call: Option<(Arc<Call>, Task)>,
    /// Bumped at every publication.
    epoch: u64,
    /// Workers asleep on [`Shared::wake`].
    sleepers: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// [`State::epoch`], readable without the lock by spinning workers.
    epoch: AtomicU64,
    /// The pool's clock origin.
    origin: Instant,
    /// Nanoseconds after `origin` until which the machine counts as oversubscribed.
    calm_from: AtomicU64,
    /// The length of the last back-off, in nanoseconds.
    backoff: AtomicU64,
    /// Nanoseconds after `origin` of the last call held up by a worker (0: none yet).
    held_up_at: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a call waited for a descheduled worker less than [`BACKOFF`] ago. A task claimed
    /// by a worker that lost its core holds its call up for a whole time slice of whatever
    /// took the core; on a machine that busy the pool runs calls on the calling thread alone
    /// (and its workers do not spin) until the back-off is over.
    fn contended(&self) -> bool {
        self.now() < self.calm_from.load(Ordering::Relaxed)
    }

    /// A call was held up by a worker: the second time within [`HELD_UP_AGAIN`], starts a
    /// back-off ([`Self::contended`]): [`BACKOFF`], or twice the last one if that ended less
    /// than [`BACKOFF_MEMORY`] ago (at most [`BACKOFF_MAX`]). A quiet machine where something
    /// ran for a moment loses nothing; a busy one soon runs on one thread.
    fn preempted(&self) {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let now = self.now().max(1);
        let before = self.held_up_at.swap(now, Ordering::Relaxed);
        if before == 0 || now.saturating_sub(before) > ns(HELD_UP_AGAIN) {
            // The first in a while: a moment, not yet a busy machine.
            return;
        }
        let last_end = self.calm_from.load(Ordering::Relaxed);
        let repeat = last_end != 0 && now < last_end.saturating_add(ns(BACKOFF_MEMORY));
        let backoff = if repeat {
            self.backoff.load(Ordering::Relaxed).saturating_mul(2).clamp(ns(BACKOFF), ns(BACKOFF_MAX))
        } else {
            ns(BACKOFF)
        };
        self.backoff.store(backoff, Ordering::Relaxed);
        self.calm_from.fetch_max(now.saturating_add(backoff), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing runs user code under this lock, so a poisoned lock still holds a
        // consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pool: [`threads`]` − 1` workers and the calling thread.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: usize,
}

std::thread_local! {
    /// Whether this thread is running a pool task (a worker, or a caller inside [`Pool::run`]).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A pool for `threads` threads in all (0: one per available core); fewer workers if the
    /// system will not start them.
    fn new(threads: usize) -> Self {
        let threads =
            if threads == 0 { thread::available_parallelism().map_or(1, usize::from) } else { threads };
        let shared = Arc::new(Shared {
            state: Mutex::new(State { call: None, epoch: 0, sleepers: 0 }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            origin: Instant::now(),
            calm_from: AtomicU64::new(0),
            backoff: AtomicU64::new(0),
            held_up_at: AtomicU64::new(0),
        });
        let mut started = 1;
        for i in 1..threads {
            let s = Arc::clone(&shared);
            // A compute thread, in the class the process chose for them (`priority`).
            let spawned = super::priority::spawn(std::format!("rela-kernels-{i}"), move || worker(&s));
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        Self { shared, threads: started }
    }

    /// Threads that run a call's tasks: the workers and the calling thread.
    pub(crate) const fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0)`, …, `f(tasks − 1)`, each once, on the calling thread and the workers;
    /// returns when all have run. Tasks run in no set order. A panic in a task is raised again
    /// here once every task has finished.
    pub(crate) fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if tasks == 1 || self.threads < 2 || IN_TASK.with(Cell::get) || self.shared.contended() {
            return (0..tasks).for_each(f);
        }
        let call = Arc::new(Call {
            tasks,
            next: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        // SAFETY: `task` is `f` with its lifetime erased; it is reachable by the workers only
        // through `State::call`, which `Published` clears before it returns (also when a task
        // panics on this thread: it is cleared in `drop`). A worker calls it only after it
        // entered the call (incremented `inside` under the state lock while the call was
        // published) and before it leaves (decrements `inside`, with release ordering, after
        // its last call of `task`). `Published::drop` clears the call under the same lock, so
        // no worker enters after that, then waits (acquire) until `inside` is 0, so every
        // call of `task` has returned before `f`'s borrow ends.
        #[allow(unsafe_code)]
        let task: Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(f) };
        {
            let mut st = self.shared.lock();
            if st.call.is_some() {
                // Another thread's call is running: run this one here.
                drop(st);
                return (0..tasks).for_each(f);
            }
            st.epoch += 1;
            st.call = Some((Arc::clone(&call), task));
            self.shared.epoch.store(st.epoch, Ordering::Release);
            if st.sleepers > 0 {
                self.shared.wake.notify_all();
            }
        }
        let published = Published { shared: &self.shared, call: &call, started: Instant::now() };
        IN_TASK.with(|t| t.set(true));
        call.work(f);
        drop(published);
        assert!(!call.panicked.load(Ordering::Relaxed), "a kernel task panicked on a pool thread");
    }
}

/// A published call: dropping it withdraws the call and waits for the workers inside it.
struct Published<'a> {
    shared: &'a Shared,
    call: &'a Call,
    /// When the calling thread began its share of the tasks.
    started: Instant,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        IN_TASK.with(|t| t.set(false));
        self.shared.lock().call = None;
        // The calling thread's own share took this long; with tasks claimed one at a time, a
        // worker that runs alongside finishes its last one within about a task's time, which is
        // at most that.
        let mut watch = Watch::new();
        let own = watch.start.duration_since(self.started).max(PREEMPTED);
        let mut flagged = false;
        while self.call.inside.load(Ordering::Acquire) != 0 {
            // The workers inside are running their last claimed tasks. Waiting longer than the
            // calling thread's own share took means one of them lost its core: the machine is
            // oversubscribed.
            std::hint::spin_loop();
            if let Some(look) = watch.tick() {
                if !flagged && look.since_start > own + HELD_UP {
                    self.shared.preempted();
                    flagged = true;
                }
                if look.since_start >= PREEMPTED {
                    thread::yield_now();
                }
            }
        }
    }
}

/// A spin-wait's clock: looks at it every [`Watch::EVERY`] spins.
struct Watch {
    start: Instant,
    last: Instant,
    spins: u32,
}

/// What a [`Watch`] saw.
struct Look {
    /// Time since the wait began.
    since_start: Duration,
    /// Whether more than [`PREEMPTED`] passed since the previous look.
    preempted: bool,
}

impl Watch {
    const EVERY: u32 = 64;

    fn new() -> Self {
        let now = Instant::now();
        Self { start: now, last: now, spins: 0 }
    }

    /// Counts a spin; every [`Self::EVERY`] spins, a look at the clock.
    fn tick(&mut self) -> Option<Look> {
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(Self::EVERY) {
            return None;
        }
        let now = Instant::now();
        let preempted = now.duration_since(self.last) > PREEMPTED;
        self.last = now;
        Some(Look { since_start: now.duration_since(self.start), preempted })
    }
}

/// A worker: waits for a call (spinning for [`SPIN`] unless the pool is contended, then
/// asleep), enters it, runs tasks until none is left, leaves it, and waits again.
fn worker(shared: &Shared) {
    IN_TASK.with(|t| t.set(true));
    let mut seen = 0u64;
    loop {
        if !shared.contended() {
            let mut watch = Watch::new();
            while shared.epoch.load(Ordering::Acquire) == seen {
                std::hint::spin_loop();
                // Lost the core while spinning: another thread wants it (one of the process's
                // own, or another process); sleep and leave it.
                if let Some(look) = watch.tick()
                    && (look.preempted || look.since_start >= SPIN)
                {
                    break;
                }
            }
        }
        let mut st = shared.lock();
        while st.epoch == seen {
            st.sleepers += 1;
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.sleepers -= 1;
        }
        seen = st.epoch;
        let Some((call, task)) = st.call.clone() else { continue };
        call.inside.fetch_add(1, Ordering::Relaxed);
        drop(st);
        if catch_unwind(AssertUnwindSafe(|| call.work(task))).is_err() {
            call.panicked.store(true, Ordering::Relaxed);
            // The other threads stop claiming tasks.
            call.next.store(call.tasks, Ordering::Relaxed);
        }
        call.inside.fetch_sub(1, Ordering::Release);
    }
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Sizes the kernels' pool: `threads` threads in all, the calling thread included (0 means one
/// per available CPU core).
///
/// Takes effect only before the first kernel runs (or the first call of this function or of
/// [`threads`]); returns whether it did. Without it, the pool has [`THREADS_ENV`] threads if
/// that is set, else one per available core.
pub fn set_threads(threads: usize) -> bool {
    let mut applied = false;
    POOL.get_or_init(|| {
        applied = true;
        Pool::new(threads)
    });
    applied
}

/// Threads the kernels use (the calling thread and the pool's workers).
pub fn threads() -> usize {
    pool().threads()
}

/// The pool, made on first use.
pub(crate) fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let threads = std::env::var(THREADS_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok());
        Pool::new(threads.unwrap_or(0))
    })
}

/// Runs `f(0)`, …, `f(tasks − 1)`, each once and in no set order, on the kernels' threads (the
/// calling thread takes its share); returns when all have run. A call made from inside a task,
/// or while another thread's call is running, runs its tasks on the calling thread. A panic in a
/// task is raised again here once every task has finished.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    pool().run(tasks, &f);
}

/// Runs `f(i, &mut items[i])` for every item on the kernels' threads, as [`for_each`] does.
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    // One uncontended lock per task: each task takes only its own item.
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    for_each(cells.len(), |i| {
        let mut item = cells[i].lock().unwrap_or_else(PoisonError::into_inner);
        f(i, &mut item);
    });
}

/// `f(i)` for `i < tasks` on the kernels' threads, as [`for_each`] runs them, collected in
/// order of `i`.
pub fn map<T: Send>(tasks: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out: Vec<Option<T>> = (0..tasks).map(|_| None).collect();
    for_each_mut(&mut out, |i, slot| *slot = Some(f(i)));
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::vec::Vec;

    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = Pool::new(3);
        for tasks in [0usize, 1, 2, 3, 7, 100, 1000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{tasks} tasks");
        }
    }

    #[test]
    fn workers_take_tasks_and_calls_from_many_threads_and_from_tasks_complete() {
        let pool = Pool::new(2);
        // A worker takes part: with tasks that wait for each other, a lone caller would hang;
        // give it a long while, then fail.
        let arrived = AtomicUsize::new(0);
        pool.run(2, &|_| {
            arrived.fetch_add(1, Ordering::AcqRel);
            let t = Instant::now();
            while arrived.load(Ordering::Acquire) < 2 {
                assert!(t.elapsed() < Duration::from_secs(60), "no worker took the second task");
                thread::yield_now();
            }
        });
        // Concurrent callers and a nested call: every task still runs exactly once.
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        pool.run(8, &|_| {
                            pool.run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 8 * 3);
    }

    #[test]
    fn a_panicking_task_panics_the_call_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        for _ in 0..20 {
            let r = catch_unwind(AssertUnwindSafe(|| pool.run(64, &|i| assert!(i != 37, "task 37"))));
            assert!(r.is_err());
        }
        let total = AtomicUsize::new(0);
        pool.run(64, &|_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn back_offs_run_calls_on_the_caller_and_double_while_they_repeat() {
        let pool = Pool::new(2);
        assert!(!pool.shared.contended());
        // Once is a moment; a second hold-up soon after starts the back-off.
        pool.shared.preempted();
        assert!(!pool.shared.contended());
        pool.shared.preempted();
        assert!(pool.shared.contended());
        let first = pool.shared.backoff.load(Ordering::Relaxed);
        assert_eq!(u128::from(first), BACKOFF.as_nanos());
        // While backing off, a call runs every task on the calling thread (checked when the
        // back-off outlasted the call, as it does unless this thread was held up for longer).
        let me = thread::current().id();
        let others = AtomicUsize::new(0);
        pool.run(64, &|_| {
            if thread::current().id() != me {
                others.fetch_add(1, Ordering::Relaxed);
            }
        });
        if pool.shared.contended() {
            assert_eq!(others.load(Ordering::Relaxed), 0);
        }
        pool.shared.preempted();
        assert_eq!(pool.shared.backoff.load(Ordering::Relaxed), 2 * first);
    }

    #[test]
    fn map_and_for_each_mut_keep_order() {
        let got = map(50, |i| i * i);
        assert_eq!(got, (0..50).map(|i| i * i).collect::<Vec<_>>());
        let mut v = std::vec![0usize; 33];
        for_each_mut(&mut v, |i, x| *x = i + 1);
        assert_eq!(v, (1..=33).collect::<Vec<_>>());
    }
}
