//! Long requests as jobs: a request that may run long (DISPATCH, INFER, MODEL_LOAD,
//! MODEL_UNLOAD, MODEL_COMMIT, COPY, FILL, GENERATE, and an ALLOC of more than [`CHUNK`] bytes,
//! whose memory is committed) runs on a thread of its own, which borrows the backend
//! from the engine one **turn** at a time (a generation's forward pass on the host backend runs
//! on the host CPU and takes no turn; on any other backend its kernels take turns like
//! INFER's; see [`crate::llm`]).
//!
//! # How a request becomes steps
//!
//! - The engine hands the frame, the session's state and its model host to a job thread and
//!   keeps serving every other session.
//! - The job runs the frame through the core session as usual, but its backend is a [`Turns`]:
//!   before each backend call it asks the engine for the backend ([`Command::Want`]) and blocks
//!   until the engine sends it over ([`Grant`]); after at most [`QUANTUM`] of device time it
//!   sends it back ([`Command::Back`]) and asks again. The backend is a `Box` that moves between
//!   threads, so exactly one thread can reach it at a time: ownership, not call order, keeps
//!   the backend single-threaded.
//! - [`Turns`] cuts every call into steps of bounded device time: a kernel into parts of output
//!   units ([`GpuBackend::dispatch_part`]) sized from the device's measured speed
//!   ([`PartBudget`]), and a transfer, copy, fill or commit into [`CHUNK`]-byte pieces. A forward pass
//!   is a sequence of such calls, a model load a sequence of tensor uploads: all of it
//!   interleaves with other sessions at every step.
//! - Host-side work (parsing files, tokenizing, converting weights) runs on the job thread
//!   without a turn, in parallel with everything else: the calls it follows (WRITE, READ,
//!   ALLOC, FREE) end the turn, while kernels, copies, fills and queries keep it for the next
//!   call (see [`Turns`]' [`GpuBackend`] impl).
//! - A request that is not a job's (a light request, a lease, a session's end) makes the job
//!   step aside at its next step ([`JobEnv::wanted`]): the engine runs every light request
//!   that is waiting, then lends the backend back to the same job, whose turn goes on until it
//!   has lasted [`QUANTUM`]. Between turns the [`Scheduler`](super::sched::Scheduler) picks
//!   the next job by service received; another job waiting does not cut a turn short.
//! - While a session has a job, its later commands wait in the job's queue (responses stay in
//!   request order); the job's answer goes out when it ends ([`Command::JobDone`]).
//! - Cancelling (the session aborts, the node shuts down) makes every later backend call of
//!   the job fail at once with [`BackendError::DeviceLost`], so the job ends in a step. FREE
//!   still runs, so a job frees what it allocated on the way out (an ALLOC whose commit was
//!   cut short).
//! - A panic on a job thread is caught: the backend goes back to the engine as the stack
//!   unwinds ([`Turns`]' `Drop`), and the engine ends that session alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::{Discriminant, discriminant};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rela_core::backend::{
    BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage, check_copy_overlap,
    check_range,
};
use rela_core::checked::Checked;
use rela_core::time::Instant as CoreInstant;
use rela_core::wire::{Frame, HeaderRepr};
use tokio::sync::OwnedSemaphorePermit;

use super::output::drain;
use crate::messages::{Command, ConnId, ConnState, EngineTx, OutBuf, Payload};
use crate::models::SessionModels;

/// The raw backend a node was started with.
pub(crate) struct Raw(pub(crate) Box<dyn GpuBackend + Send>);

impl GpuBackend for Raw {
    fn info(&self) -> DeviceInfo {
        self.0.info()
    }
    fn usage(&self) -> Usage {
        self.0.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.0.alloc(size)
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.0.free(id)
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.0.size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.write(id, offset, data)
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(id, offset, out)
    }
    fn copy(&mut self, src: BufferId, so: u64, dst: BufferId, d: u64, len: u64) -> Result<(), BackendError> {
        self.0.copy(src, so, dst, d, len)
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.0.fill(id, offset, len, value)
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.0.dispatch(call)
    }
    fn dispatch_part(&mut self, call: &KernelCall, units: Range<u32>) -> Result<(), BackendError> {
        self.0.dispatch_part(call, units)
    }
    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        self.0.commit(id, offset, len)
    }
    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<Range<usize>> {
        self.0.storage_range(id, offset, len)
    }
    fn select_queue(&mut self, queue: QueueId) {
        self.0.select_queue(queue)
    }
    fn end_queue(&mut self, queue: QueueId) {
        self.0.end_queue(queue)
    }
}

/// The backend as it moves between the engine and job threads: the raw backend behind the
/// checks and the lease rule every backend shares ([`Checked`]).
pub(crate) type BackendBox = Box<Checked<Raw>>;

/// The backend on its way back to the engine.
pub(crate) struct Lent(pub(crate) BackendBox);

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lent(backend)")
    }
}

/// The engine's side of a job's grant channel: sends the backend for one turn.
pub(crate) type Grant = std_mpsc::SyncSender<BackendBox>;

/// How long a job's turn lasts before another job may have the backend. Light requests do not
/// wait for it: a job steps aside for them at its next step ([`JobEnv::wanted`]) and then goes
/// on with its turn. Each change of job costs thread wake-ups and cold caches, so turns are
/// many steps long: two heavy MATMUL sessions beside a light one on 2 cores ran at 0.76-0.80
/// of one alone with 2 ms turns that every waiting request ended, 0.86-0.89 with 8 ms turns
/// and 0.91-0.94 with these, the light session's p99 the same (`docs/BENCHMARKS.md`). Another
/// heavy session waits up to this long for its turn; light requests never do.
pub(crate) const QUANTUM: Duration = Duration::from_millis(32);

/// Bytes per step of a WRITE, READ, COPY or FILL that a job runs: about a millisecond of
/// memory traffic, more where the pages are new to the process (a model's weights written
/// into memory whose pages were given back to the OS: 8 MiB steps took 3.6-5.7 ms there).
pub(crate) const CHUNK: u64 = 2 << 20;

/// Device time one kernel part aims at.
const PART_TARGET: Duration = Duration::from_micros(2_000);
/// A part teaches [`PartBudget`] only if it costs at least this fraction of the budget.
const LEARN_FROM: u64 = 8;
/// Bounds of [`PartBudget`] (multiply-adds).
const PART_MIN: u64 = 1 << 12;
const PART_MAX: u64 = 1 << 34;

/// Multiply-adds one kernel part may cost, learnt from the device's speed for each kind of
/// kernel: after each part that costs at least `1 /` [`LEARN_FROM`] of its kernel's budget,
/// the budget moves halfway to what would have taken [`PART_TARGET`].
///
/// Kinds are learnt apart because a unit of cost runs at very different speeds from one
/// kernel to another (a MATMUL's multiply-add in a packed GEMM, an ATTENTION's in short dot
/// products, a GELU's element): with one budget for all, the slower kernels' parts overran the
/// target whenever a MATMUL had set it (up to 16.7 ms for a 2 ms target beside MATMULs).
#[derive(Debug, Default)]
pub(crate) struct PartBudget(Mutex<HashMap<Discriminant<KernelCall>, u64>>);

impl PartBudget {
    /// A first guess for a kernel not yet seen, for a slow CPU (1 GMAC/s); corrected after its
    /// first part.
    const FIRST_GUESS: u64 = 1 << 20;

    fn budgets(&self) -> MutexGuard<'_, HashMap<Discriminant<KernelCall>, u64>> {
        // A panic while holding it leaves a map of plain numbers, still valid.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budget of `call`'s kind of kernel.
    pub(crate) fn get(&self, call: &KernelCall) -> u64 {
        self.budgets().get(&discriminant(call)).copied().unwrap_or(Self::FIRST_GUESS)
    }

    fn learn(&self, call: &KernelCall, cost: u64, took: Duration) {
        let mut budgets = self.budgets();
        let budget = budgets.entry(discriminant(call)).or_insert(Self::FIRST_GUESS);
        // A part far below the budget is timed mostly by what every call costs whatever its
        // size (validation, a kernel's set-up, waking the kernels' threads), not by the
        // device's speed. Learning from those parts shrank the budget until a short text's
        // LINEAR calls were cut into parts of a few rows, each streaming all of `w` again.
        // They teach nothing; the parts of calls that are cut (which cost about the budget)
        // and whole calls of a similar size do.
        if cost < *budget / LEARN_FROM {
            return;
        }
        let nanos = took.as_nanos().max(1);
        let ideal = (u128::from(cost) * PART_TARGET.as_nanos() / nanos).min(u128::from(PART_MAX)) as u64;
        *budget = (*budget / 2 + ideal / 2).clamp(PART_MIN, PART_MAX);
    }
}

/// The backend as a job sees it: borrowed from the engine a turn at a time, every call cut into
/// bounded steps. Returns the backend when dropped (also while unwinding from a panic).
pub(crate) struct Turns {
    conn: ConnId,
    engine: EngineTx,
    grants: std_mpsc::Receiver<BackendBox>,
    /// The backend while this job holds it, and when the turn began.
    held: RefCell<Option<(BackendBox, Instant)>>,
    cancel: Arc<AtomicBool>,
    info: DeviceInfo,
    budget: Arc<PartBudget>,
    /// Most multiply-adds one DISPATCH may cost.
    max_cost: u64,
    /// Set by the engine when something waits for the backend while this job holds it.
    wanted: Arc<AtomicBool>,
}

impl Turns {
    /// The job's current turn, starting one (blocking until the engine grants it) if needed.
    ///
    /// A turn held for [`QUANTUM`], or while a request that is not a job waits
    /// ([`JobEnv::wanted`]), goes back before this step, asking for the next one at once.
    fn with<R>(
        &self,
        f: impl FnOnce(&mut dyn GpuBackend) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        if self.cancel.load(Ordering::Acquire) {
            self.give_back();
            return Err(BackendError::DeviceLost);
        }
        self.turn(f)
    }

    /// [`with`](Self::with) whether or not the job was cancelled: for the calls that clean up
    /// after a failed step (a FREE of what the job allocated), which nothing else could make
    /// once the job has ended.
    fn turn<R>(
        &self,
        f: impl FnOnce(&mut dyn GpuBackend) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let mut held = self.held.borrow_mut();
        let waited_on = self.wanted.load(Ordering::Acquire);
        let mut asked = false;
        if held.as_ref().is_some_and(|(_, since)| waited_on || since.elapsed() >= QUANTUM) {
            self.send_back(held.take(), true);
            asked = true;
        }
        let (backend, _) = match &mut *held {
            Some(h) => h,
            slot @ None => {
                // The engine is gone only when the node is stopping.
                if !asked {
                    self.engine
                        .send(Command::Want { conn: self.conn })
                        .map_err(|_| BackendError::DeviceLost)?;
                }
                let mut backend = self.grants.recv().map_err(|_| BackendError::DeviceLost)?;
                // The job's device work goes on its session's queue.
                backend.select_queue(QueueId(self.conn));
                slot.insert((backend, Instant::now()))
            }
        };
        f(&mut **backend)
    }

    /// One whole call: the turn ends with it. Host-side work of the job between two calls
    /// (tokenizing, converting) then never holds the backend.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut dyn GpuBackend) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let r = self.with(f);
        self.give_back();
        r
    }

    /// Runs one part of `call` and learns the device's speed for its kind of kernel from it.
    fn part(
        &self,
        call: &KernelCall,
        cost: u64,
        f: impl FnOnce(&mut dyn GpuBackend) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        self.with(|b| {
            let start = Instant::now();
            let r = f(b);
            if r.is_ok() {
                self.budget.learn(call, cost, start.elapsed());
            }
            r
        })
    }

    /// Runs one whole call made of steps (see the `*_steps` methods); the turn ends with it.
    fn ending<R>(&mut self, call: impl FnOnce(&mut Self) -> R) -> R {
        let r = call(self);
        self.give_back();
        r
    }

    /// Ends the current turn, if any.
    pub(crate) fn give_back(&self) {
        let held = self.held.borrow_mut().take();
        self.send_back(held, false);
    }

    /// Sends the backend back, asking for the next turn with it when `again`.
    fn send_back(&self, held: Option<(BackendBox, Instant)>, again: bool) {
        if let Some((backend, since)) = held {
            let used = since.elapsed();
            // Fails only if the engine is gone; the backend is then dropped here.
            let _ = self.engine.send(Command::Back { conn: self.conn, backend: Lent(backend), used, again });
        }
    }

    /// `len` bytes from `offset` in steps of [`CHUNK`]: `(offset, position, length)` each.
    fn chunks(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
        (0..len.div_ceil(CHUNK)).map(move |i| {
            let pos = i * CHUNK;
            (offset + pos, pos, CHUNK.min(len - pos))
        })
    }
}

/// The steps of the calls that come in pieces; the caller ends the turn.
impl Turns {
    fn write_steps(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let size = self.with(|b| b.size(id))?;
        check_range(size, offset, data.len() as u64)?;
        for (at, pos, len) in Self::chunks(offset, data.len() as u64) {
            // In range: `pos + len <= data.len()`.
            let piece = &data[pos as usize..(pos + len) as usize];
            self.with(|b| b.write(id, at, piece))?;
        }
        Ok(())
    }

    fn read_steps(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let size = self.with(|b| b.size(id))?;
        check_range(size, offset, out.len() as u64)?;
        for (at, pos, len) in Self::chunks(offset, out.len() as u64) {
            let piece = &mut out[pos as usize..(pos + len) as usize];
            self.with(|b| b.read(id, at, piece))?;
        }
        Ok(())
    }

    fn copy_steps(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        // Checked whole first, so a refused copy changes nothing.
        let from = check_range(self.with(|b| b.size(src))?, src_offset, len)?;
        let to = check_range(self.with(|b| b.size(dst))?, dst_offset, len)?;
        check_copy_overlap(src, &from, dst, &to)?;
        for (at, pos, piece) in Self::chunks(src_offset, len) {
            self.with(|b| b.copy(src, at, dst, dst_offset + pos, piece))?;
        }
        Ok(())
    }

    /// `step(backend, at, piece)` for each [`CHUNK`]-byte piece of bytes `offset..offset + len`
    /// of buffer `id` (a range checked whole first), a step each.
    fn in_place_steps(
        &mut self,
        id: BufferId,
        offset: u64,
        len: u64,
        step: impl Fn(&mut dyn GpuBackend, u64, u64) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        check_range(self.with(|b| b.size(id))?, offset, len)?;
        for (at, _, piece) in Self::chunks(offset, len) {
            self.with(|b| step(b, at, piece))?;
        }
        Ok(())
    }

    fn fill_steps(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.in_place_steps(id, offset, len, |b, at, piece| b.fill(id, at, piece, value))
    }

    fn commit_steps(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        self.in_place_steps(id, offset, len, |b, at, piece| b.commit(id, at, piece))
    }

    fn dispatch_steps(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        let work = call.work();
        if work.total() > self.max_cost {
            return Err(BackendError::LimitExceeded);
        }
        let per_part = (self.budget.get(call) / work.unit_cost).clamp(1, u64::from(work.units.max(1)));
        let per_part = u32::try_from(per_part).unwrap_or(u32::MAX);
        if per_part >= work.units {
            return self.part(call, work.total(), |b| b.dispatch(call));
        }
        let mut start = 0;
        while start < work.units {
            let units: Range<u32> = start..start + per_part.min(work.units - start);
            let cost = u64::from(units.end - units.start) * work.unit_cost;
            match self.part(call, cost, |b| b.dispatch_part(call, units.clone())) {
                // A backend that does not cut kernels runs them whole.
                Err(BackendError::Unsupported) if start == 0 => {
                    return self.part(call, work.total(), |b| b.dispatch(call));
                }
                r => r?,
            }
            start = units.end;
        }
        Ok(())
    }
}

impl Drop for Turns {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Device-side calls (kernels, copies and fills between buffers) and queries keep the turn: a
/// forward pass is a run of them with no host-side work of note in between, and giving the
/// backend back after each would cost every call two thread hand-offs (tens of µs each on a VM
/// whose idle vCPU must be woken; a packed INFER of 32 texts makes hundreds of small COPYs). The
/// job steps aside at its next step while a request that is not a job's waits, and asks again;
/// the turn ends after [`QUANTUM`], at the job's next call that moves data to or from the host
/// (WRITE, READ), allocates or frees, since host-side work (tokenizing, converting weights) may
/// follow those and must not hold the backend; and when the job ends.
impl GpuBackend for Turns {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn usage(&self) -> Usage {
        self.with(|b| Ok(b.usage())).unwrap_or_default()
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.call(|b| b.alloc(size))
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        // Also once cancelled: a job whose step failed frees what it allocated (an ALLOC whose
        // commit was cut short), and nothing would free it after the job.
        let r = self.turn(|b| b.free(id));
        self.give_back();
        r
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.with(|b| b.size(id))
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.ending(|t| t.write_steps(id, offset, data))
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.ending(|t| t.read_steps(id, offset, out))
    }

    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        self.copy_steps(src, src_offset, dst, dst_offset, len)
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.fill_steps(id, offset, len, value)
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.dispatch_steps(call)
    }

    fn dispatch_part(&mut self, call: &KernelCall, units: Range<u32>) -> Result<(), BackendError> {
        self.with(|b| b.dispatch_part(call, units))
    }

    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        self.ending(|t| t.commit_steps(id, offset, len))
    }
}

/// Everything a job needs, moved onto its thread.
pub(crate) struct JobSpec {
    pub(crate) conn: ConnId,
    pub(crate) now: CoreInstant,
    pub(crate) header: HeaderRepr,
    pub(crate) payload: Payload,
    pub(crate) out: OutBuf,
    pub(crate) ticket: OwnedSemaphorePermit,
    pub(crate) state: Arc<ConnState>,
    /// The session's model host, for model requests (given back in [`JobDone`]).
    pub(crate) models: Option<SessionModels>,
}

/// What a job hands back to the engine.
pub(crate) struct JobDone {
    /// The response frames, in `out[..len]`.
    pub(crate) out: OutBuf,
    pub(crate) len: usize,
    pub(crate) ticket: OwnedSemaphorePermit,
    pub(crate) models: Option<SessionModels>,
    /// The job panicked (its message): the engine ends the session.
    pub(crate) panicked: Option<String>,
}

impl std::fmt::Debug for JobDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDone")
            .field("len", &self.len)
            .field("panicked", &self.panicked)
            .finish_non_exhaustive()
    }
}

/// What the engine keeps of a running job.
pub(crate) struct JobHandle {
    /// Sends the backend for a turn.
    pub(crate) grant: Grant,
    /// Set to end the job at its next step.
    pub(crate) cancel: Arc<AtomicBool>,
    /// The session's commands that arrived while the job ran, in order.
    pub(crate) queue: std::collections::VecDeque<Command>,
}

/// The per-job settings the engine passes on.
#[derive(Clone)]
pub(crate) struct JobEnv {
    pub(crate) engine: EngineTx,
    pub(crate) info: DeviceInfo,
    pub(crate) budget: Arc<PartBudget>,
    pub(crate) max_cost: u64,
    /// Set while the backend is lent and a request that is not a job's turn waits for it (a
    /// light request, a lease, a session's end): the job steps aside at its next step. Other
    /// jobs waiting do not set it; they get the backend when the turn's [`QUANTUM`] is over.
    pub(crate) wanted: Arc<AtomicBool>,
}

/// Starts `spec` on a thread of its own; `None` if no thread can be made (the spec is dropped,
/// and the engine ends the session).
pub(crate) fn start(env: &JobEnv, spec: JobSpec) -> Option<JobHandle> {
    let (grant, grants) = std_mpsc::sync_channel(1);
    let cancel = Arc::new(AtomicBool::new(false));
    let turns = Turns {
        conn: spec.conn,
        engine: env.engine.clone(),
        grants,
        held: RefCell::new(None),
        cancel: cancel.clone(),
        info: env.info.clone(),
        budget: env.budget.clone(),
        max_cost: env.max_cost,
        wanted: env.wanted.clone(),
    };
    // A compute thread (prompts, tokenizing, converting weights), in the class the process chose
    // (`serve --compute-priority`): with `Idle`, a light request's threads do not queue behind
    // it for a core.
    match rela_kernels::fast::priority::spawn("rela-job".into(), move || run(turns, spec)) {
        Ok(_) => Some(JobHandle { grant, cancel, queue: std::collections::VecDeque::new() }),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a job thread");
            None
        }
    }
}

/// The job thread: runs the frame through the session, drains the answer, hands back.
fn run(turns: Turns, spec: JobSpec) {
    let JobSpec { conn, now, header, payload, mut out, ticket, state, mut models } = spec;
    let engine = turns.engine.clone();
    if let Some(m) = models.as_mut() {
        // A generation checks this between its steps, besides the backend calls that fail.
        m.abort = Some(turns.cancel.clone());
    }
    let mut turns = turns;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut session = state.lock();
        let backend: &mut dyn GpuBackend = &mut turns;
        match payload.as_slice().get(..header.len as usize) {
            Some(p) => {
                let frame = Frame::from_verified(header, p);
                // Err only if the session is closing; the engine sees that when the job ends.
                let _ = match models.as_mut() {
                    Some(m) => session.handle_frame_with(now, frame, backend, m),
                    None => session.handle_frame(now, frame, backend),
                };
            }
            None => session.abort(backend),
        }
        drop(payload);
        match drain(&mut session, backend, &mut out) {
            Ok(len) => len,
            Err(e) => {
                tracing::error!(%e, "response does not fit; aborting session");
                session.abort(backend);
                0
            }
        }
    }));
    // The backend goes back before the answer, so the engine has it when the answer arrives.
    turns.give_back();
    let (len, panicked) = match result {
        Ok(len) => (len, None),
        Err(p) => (0, Some(panic_message(&*p))),
    };
    let done = JobDone { out, len, ticket, models, panicked };
    // Fails only if the engine is gone, and then nobody waits for the answer.
    let _ = engine.send(Command::JobDone { conn, done: Box::new(done) });
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rela_core::backend::{BufferId, KernelCall};

    use super::{LEARN_FROM, PART_TARGET, PartBudget};

    #[test]
    fn small_parts_do_not_shrink_the_part_budget() {
        let budget = PartBudget::default();
        let call = matmul();
        let start = budget.get(&call);
        // Calls far below the budget that take long for their cost (fixed overheads).
        for _ in 0..100 {
            budget.learn(&call, start / LEARN_FROM - 1, Duration::from_micros(50));
        }
        assert_eq!(budget.get(&call), start);
        // A part of about the budget that ran at 100 times the guessed speed raises it, and
        // one that ran slowly brings it down again.
        budget.learn(&call, start, PART_TARGET / 100);
        let raised = budget.get(&call);
        assert!(raised > 10 * start, "{raised} after a fast part");
        budget.learn(&call, raised, PART_TARGET * 4);
        assert!(budget.get(&call) < raised, "a slow part lowers the budget");
    }

    #[test]
    fn each_kind_of_kernel_learns_its_own_budget() {
        let budget = PartBudget::default();
        let (fast, slow) = (matmul(), gelu());
        let start = budget.get(&fast);
        // MATMUL parts run 100 times faster than the first guess; GELU's at the guess.
        for _ in 0..20 {
            budget.learn(&fast, budget.get(&fast), PART_TARGET / 100);
            budget.learn(&slow, budget.get(&slow), PART_TARGET);
        }
        assert!(budget.get(&fast) > 50 * start, "MATMUL budget {}", budget.get(&fast));
        assert_eq!(budget.get(&slow), start, "GELU keeps its own budget");
    }

    fn matmul() -> KernelCall {
        KernelCall::Matmul { a: BufferId(1), b: BufferId(2), out: BufferId(3), m: 64, k: 64, n: 64 }
    }

    fn gelu() -> KernelCall {
        KernelCall::Gelu { x: BufferId(1), out: BufferId(2), n: 64 }
    }
}
