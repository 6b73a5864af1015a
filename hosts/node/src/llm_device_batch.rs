//! Continuous batching of decode steps on a device backend (Vulkan, wgpu, CUDA).
//!
//! The host backend's [`Batcher`](crate::llm_batch::Batcher) runs its passes on a thread of its
//! own, on the host CPU. On a device the pass is backend work, which a session may only do
//! through its job's turns ([`crate::engine`]): so here the pass is run by one of the waiting
//! generations, the **leader**, on its own backend handle, for every generation waiting with
//! it.
//!
//! - A generation that needs its next token posts a step (the token and a [`KvView`] of its
//!   cache) and waits. If no pass is being gathered or run, it becomes the leader: it waits up
//!   to [`GATHER`] for the steps of the other seated generations (a decoding generation holds a
//!   [`Seat`]), takes up to [`MAX_BATCH`] of the posted steps, runs them in one pass
//!   ([`DeviceLlm::forward_batch`]: each weight read once for all of them), posts each its
//!   logits, and hands on: a step left waiting then leads the next pass.
//! - Each generation's cache stays its own: the pass writes the step's keys and values through
//!   the view, and the owner takes the position in ([`DeviceKv::accept`]) when it collects its
//!   logits. Nothing of one session's is lent to another's thread but buffer ids.
//! - A pass that fails (the leader's session ended and its turns fail, a cache too small, a
//!   backend error) answers every step in it with a retry: each generation then runs its step
//!   alone on its own backend handle, with its own outcome. A leader that panics answers the
//!   same way as it unwinds ([`Leading`]'s `Drop`), so no generation waits for a pass that is
//!   gone.
//! - The pass's buffers ([`DeviceBatch`]) are made when the model is loaded and belong to the
//!   shared model (freed and zeroed with its weights by the last release), like the weights.
//! - Fairness: the pass takes the leader's turns, so a light session still gets the backend
//!   between any two of its kernels; generations that wait for a pass hold no turn.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rela_core::backend::GpuBackend;
use rela_llm::{DeviceBatch, DeviceError, DeviceKv, DeviceLlm, KvView};

pub(crate) use crate::llm_batch::{GATHER, MAX_BATCH, Seat};

/// Longest a waiting generation sleeps before looking at the batch's state again (a safety
/// net: every change of state wakes it).
const RECHECK: Duration = Duration::from_millis(100);

/// One generation's posted step.
struct Posted {
    ticket: u64,
    token: u32,
    view: KvView,
}

/// A step's answer: its logits row, or `None` (run the step alone).
type Answer = Option<Vec<f32>>;

#[derive(Default)]
struct State {
    /// Steps posted and not yet taken into a pass.
    queue: VecDeque<Posted>,
    /// Answers not yet collected, by ticket.
    answers: HashMap<u64, Answer>,
    /// Whether a leader is gathering or running a pass.
    leading: bool,
    /// The pass's buffers while no pass runs (a leader holds them during its pass).
    batch: Option<DeviceBatch>,
    next_ticket: u64,
}

/// The device batch of one shared model. See the [module docs](self).
pub(crate) struct DeviceBatcher {
    state: Mutex<State>,
    changed: Condvar,
    seated: Arc<AtomicUsize>,
    bytes: u64,
}

impl std::fmt::Debug for DeviceBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBatcher").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl DeviceBatcher {
    /// The batch of `model`, with its pass's buffers made in `backend`.
    pub(crate) fn new(backend: &mut dyn GpuBackend, model: &DeviceLlm) -> Result<Self, DeviceError> {
        let batch = model.new_batch(backend, MAX_BATCH)?;
        let bytes = batch.bytes();
        let state = State { batch: Some(batch), ..State::default() };
        Ok(Self { state: Mutex::new(state), changed: Condvar::new(), seated: Arc::default(), bytes })
    }

    /// Device bytes of the pass's buffers.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Frees (and so zeroes) the pass's buffers. Called by the model's last release, when no
    /// generation uses the model.
    pub(crate) fn free(&self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        match self.lock().batch.take() {
            Some(batch) => batch.free(backend),
            None => Ok(()),
        }
    }

    /// A seat for a generation that is about to decode: hold it until the generation ends.
    pub(crate) fn seat(&self) -> Seat {
        Seat::new(self.seated.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `token` at the next position of `kv`, its next-token logits into `logits`, in a
    /// pass with the other generations waiting for a step; `model` and `backend` are the
    /// caller's (used if it leads the pass, or runs its step alone after a failed pass).
    pub(crate) fn step(
        &self,
        model: &DeviceLlm,
        backend: &mut dyn GpuBackend,
        token: u32,
        kv: &mut DeviceKv,
        logits: &mut Vec<f32>,
    ) -> Result<(), DeviceError> {
        let view = kv.view();
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Posted { ticket, token, view: view.clone() });
        self.changed.notify_all();
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                drop(state);
                return match answer {
                    Some(row) => {
                        kv.accept(&view)?;
                        *logits = row;
                        Ok(())
                    }
                    None => model.forward(backend, token, kv, logits),
                };
            }
            if !state.leading && state.queue.iter().any(|p| p.ticket == ticket) {
                state.leading = true;
                drop(state);
                self.lead(model, backend);
                state = self.lock();
                continue;
            }
            state = self.changed.wait_timeout(state, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Gathers the posted steps (waiting up to [`GATHER`] for every seated generation's), runs
    /// up to [`MAX_BATCH`] of them in one pass and posts their answers.
    fn lead(&self, model: &DeviceLlm, backend: &mut dyn GpuBackend) {
        let mut state = self.lock();
        let deadline = Instant::now() + GATHER;
        loop {
            let want = self.seated.load(Ordering::Acquire).clamp(1, MAX_BATCH);
            let left = deadline.saturating_duration_since(Instant::now());
            if state.queue.len() >= want || left.is_zero() {
                break;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        let take = state.queue.len().min(MAX_BATCH);
        let steps: Vec<Posted> = state.queue.drain(..take).collect();
        let mut leading =
            Leading { batcher: self, tickets: steps.iter().map(|p| p.ticket).collect(), batch: None };
        leading.batch = state.batch.take();
        drop(state);
        let Some(batch) = leading.batch.as_mut() else {
            // The model is being released: nothing batches any more.
            return;
        };
        let pairs: Vec<(u32, &KvView)> = steps.iter().map(|p| (p.token, &p.view)).collect();
        let mut rows = Vec::new();
        match model.forward_batch(backend, batch, &pairs, &mut rows) {
            Ok(()) => leading.answer(&rows),
            Err(e) => {
                tracing::debug!(error = %e, steps = steps.len(), "a batched decode step failed; each runs alone")
            }
        }
        if steps.len() > 1 {
            tracing::trace!(streams = steps.len(), "batched device decode step");
        }
    }
}

/// A leader's pass in progress: when dropped (the pass done, failed or unwinding from a panic)
/// it gives the pass's buffers back, answers every step it took that has no answer yet with a
/// retry, and hands the lead on.
struct Leading<'a> {
    batcher: &'a DeviceBatcher,
    tickets: Vec<u64>,
    batch: Option<DeviceBatch>,
}

impl Leading<'_> {
    /// Posts each step's row of `rows`.
    fn answer(&mut self, rows: &[f32]) {
        let per = rows.len() / self.tickets.len().max(1);
        let mut state = self.batcher.lock();
        for (ticket, row) in self.tickets.drain(..).zip(rows.chunks(per.max(1))) {
            state.answers.insert(ticket, Some(row.to_vec()));
        }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut state = self.batcher.lock();
        if let Some(batch) = self.batch.take() {
            state.batch = Some(batch);
        }
        for ticket in self.tickets.drain(..) {
            state.answers.insert(ticket, None);
        }
        state.leading = false;
        self.batcher.changed.notify_all();
    }
}
