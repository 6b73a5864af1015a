//! Fault injection: a [`GpuBackend`] wrapper that fails or stalls every Nth operation.
//!
//! [`FaultyBackend`] wraps any backend and, per [`OpClass`], fails every Nth call with a
//! configurable [`BackendError`] (typically [`BackendError::DeviceLost`] or
//! [`BackendError::OutOfMemory`]) and/or sleeps before every Mth call. It counts every operation
//! it saw, failed and delayed in a shared [`FaultLog`], which stays readable (and can disarm
//! the faults) after the backend has been moved into a node.
//!
//! ```
//! use std::time::Duration;
//! use rela_backend_host::OwnedHostBackend;
//! use rela_conformance::faults::{FaultyBackend, OpClass};
//! use rela_core::backend::{BackendError, GpuBackend};
//!
//! let mut b = FaultyBackend::new(OwnedHostBackend::with_capacity(1 << 20))
//!     .fail_every(OpClass::Write, 2, BackendError::DeviceLost)
//!     .delay_every(OpClass::Read, 3, Duration::from_millis(1));
//! let log = b.log();
//! let id = b.alloc(64).unwrap();
//! assert!(b.write(id, 0, b"ok").is_ok());
//! assert_eq!(b.write(id, 0, b"no"), Err(BackendError::DeviceLost));
//! assert_eq!(log.failed(OpClass::Write), 1);
//! log.set_armed(false);
//! assert!(b.write(id, 0, b"ok again").is_ok());
//! ```
//!
//! # Semantics
//!
//! - Counting is per class and 1-based: with `fail_every(Write, 3, _)` the 3rd, 6th, 9th, …
//!   WRITE fails. Delays count the same way, independently of failures; a call can be both
//!   delayed and failed.
//! - A failed call never reaches the wrapped backend: a failed `alloc` allocates nothing, a
//!   failed `write` writes nothing, and a failed `free` **leaves the buffer allocated** in the
//!   wrapped backend, as a device that refused the free would.
//! - `info`, `usage` and `size` are queries and are never faulted.
//! - While [`FaultLog::set_armed`] is `false`, calls pass straight through (and are still
//!   counted as operations).
//! - Delays are `std::thread::sleep` on the calling thread, like a device that blocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rela_core::backend::{BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage};

/// The operations a [`FaultyBackend`] can fault, each counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// [`GpuBackend::alloc`].
    Alloc,
    /// [`GpuBackend::free`].
    Free,
    /// [`GpuBackend::write`].
    Write,
    /// [`GpuBackend::read`].
    Read,
    /// [`GpuBackend::copy`].
    Copy,
    /// [`GpuBackend::fill`].
    Fill,
    /// [`GpuBackend::dispatch`].
    Dispatch,
    /// [`GpuBackend::commit`].
    Commit,
}

impl OpClass {
    /// Every class.
    pub const ALL: [Self; 8] = [
        Self::Alloc,
        Self::Free,
        Self::Write,
        Self::Read,
        Self::Copy,
        Self::Fill,
        Self::Dispatch,
        Self::Commit,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

/// Per-class counters.
#[derive(Debug, Default)]
struct Counters {
    ops: AtomicU64,
    failed: AtomicU64,
    delayed: AtomicU64,
}

/// What a [`FaultyBackend`] did, shared with whoever holds a clone; also its on/off switch.
#[derive(Debug)]
pub struct FaultLog {
    armed: AtomicBool,
    classes: [Counters; 8],
}

impl Default for FaultLog {
    fn default() -> Self {
        Self { armed: AtomicBool::new(true), classes: Default::default() }
    }
}

impl FaultLog {
    /// Calls of `class` seen (faulted or not).
    pub fn ops(&self, class: OpClass) -> u64 {
        self.classes[class.index()].ops.load(Ordering::Relaxed)
    }

    /// Calls of `class` failed by injection.
    pub fn failed(&self, class: OpClass) -> u64 {
        self.classes[class.index()].failed.load(Ordering::Relaxed)
    }

    /// Calls of `class` delayed by injection.
    pub fn delayed(&self, class: OpClass) -> u64 {
        self.classes[class.index()].delayed.load(Ordering::Relaxed)
    }

    /// Injected failures over every class.
    pub fn total_failed(&self) -> u64 {
        OpClass::ALL.iter().map(|c| self.failed(*c)).sum()
    }

    /// Injected delays over every class.
    pub fn total_delayed(&self) -> u64 {
        OpClass::ALL.iter().map(|c| self.delayed(*c)).sum()
    }

    /// Turns injection on or off (it starts on). Operations are counted either way.
    pub fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::Release);
    }

    /// Whether injection is on.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }
}

/// The plan for one class.
#[derive(Debug, Clone, Copy, Default)]
struct ClassPlan {
    fail: Option<(u64, BackendError)>,
    delay: Option<(u64, Duration)>,
}

/// A [`GpuBackend`] that fails or delays every Nth operation of chosen classes. See the
/// [module docs](self) for the exact semantics.
#[derive(Debug)]
pub struct FaultyBackend<B: GpuBackend> {
    inner: B,
    plan: [ClassPlan; 8],
    log: Arc<FaultLog>,
}

impl<B: GpuBackend> FaultyBackend<B> {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: B) -> Self {
        Self { inner, plan: [ClassPlan::default(); 8], log: Arc::new(FaultLog::default()) }
    }

    /// Fails every `n`th call of `class` with `error` (`n = 0` turns failures off for it).
    #[must_use]
    pub fn fail_every(mut self, class: OpClass, n: u64, error: BackendError) -> Self {
        self.plan[class.index()].fail = (n > 0).then_some((n, error));
        self
    }

    /// [`fail_every`](Self::fail_every) for every class.
    #[must_use]
    pub fn fail_all_every(mut self, n: u64, error: BackendError) -> Self {
        for class in OpClass::ALL {
            self = self.fail_every(class, n, error);
        }
        self
    }

    /// Sleeps `delay` before every `n`th call of `class` (`n = 0` turns delays off for it).
    #[must_use]
    pub fn delay_every(mut self, class: OpClass, n: u64, delay: Duration) -> Self {
        self.plan[class.index()].delay = (n > 0).then_some((n, delay));
        self
    }

    /// [`delay_every`](Self::delay_every) for every class.
    #[must_use]
    pub fn delay_all_every(mut self, n: u64, delay: Duration) -> Self {
        for class in OpClass::ALL {
            self = self.delay_every(class, n, delay);
        }
        self
    }

    /// The shared log: counters and the on/off switch. Clone it before moving the backend.
    pub fn log(&self) -> Arc<FaultLog> {
        self.log.clone()
    }

    /// The wrapped backend.
    pub const fn inner(&self) -> &B {
        &self.inner
    }

    /// Unwraps the backend.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Counts a call of `class`, sleeps if a delay is due, and says whether it must fail.
    fn inject(&self, class: OpClass) -> Result<(), BackendError> {
        let counters = &self.log.classes[class.index()];
        let n = counters.ops.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.log.armed() {
            return Ok(());
        }
        let plan = self.plan[class.index()];
        if let Some((every, delay)) = plan.delay
            && n.is_multiple_of(every)
        {
            counters.delayed.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
        }
        if let Some((every, error)) = plan.fail
            && n.is_multiple_of(every)
        {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        Ok(())
    }
}

impl<B: GpuBackend> GpuBackend for FaultyBackend<B> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.inject(OpClass::Alloc)?;
        self.inner.alloc(size)
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.inject(OpClass::Free)?;
        self.inner.free(id)
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.inner.size(id)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.inject(OpClass::Write)?;
        self.inner.write(id, offset, data)
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.inject(OpClass::Read)?;
        self.inner.read(id, offset, out)
    }

    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        self.inject(OpClass::Copy)?;
        self.inner.copy(src, src_offset, dst, dst_offset, len)
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.inject(OpClass::Fill)?;
        self.inner.fill(id, offset, len, value)
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.inject(OpClass::Dispatch)?;
        self.inner.dispatch(call)
    }

    fn dispatch_part(&mut self, call: &KernelCall, units: core::ops::Range<u32>) -> Result<(), BackendError> {
        self.inject(OpClass::Dispatch)?;
        self.inner.dispatch_part(call, units)
    }

    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        self.inject(OpClass::Commit)?;
        self.inner.commit(id, offset, len)
    }

    fn select_queue(&mut self, queue: QueueId) {
        self.inner.select_queue(queue)
    }

    fn end_queue(&mut self, queue: QueueId) {
        self.inner.end_queue(queue)
    }
}

#[cfg(test)]
mod tests {
    use rela_backend_host::OwnedHostBackend;

    use super::*;

    #[test]
    fn every_nth_fails_and_is_counted() {
        let mut b = FaultyBackend::new(OwnedHostBackend::with_capacity(1 << 16))
            .fail_every(OpClass::Alloc, 3, BackendError::OutOfMemory)
            .fail_every(OpClass::Read, 2, BackendError::DeviceLost);
        let log = b.log();
        let mut ok = 0;
        for i in 1..=9u64 {
            match b.alloc(16) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(e, BackendError::OutOfMemory);
                    assert_eq!(i % 3, 0, "call {i} failed");
                }
            }
        }
        assert_eq!((ok, log.ops(OpClass::Alloc), log.failed(OpClass::Alloc)), (6, 9, 3));
        // Failed allocations allocated nothing.
        assert_eq!(b.usage().buffers, 6);
        let id = b.alloc(16).expect("10th alloc");
        let mut out = [0u8; 4];
        assert!(b.read(id, 0, &mut out).is_ok());
        assert_eq!(b.read(id, 0, &mut out), Err(BackendError::DeviceLost));
        assert_eq!(log.total_failed(), 4);
        assert_eq!(log.failed(OpClass::Write), 0);
    }

    #[test]
    fn disarmed_passes_through_and_failed_free_keeps_the_buffer() {
        let mut b = FaultyBackend::new(OwnedHostBackend::with_capacity(1 << 16))
            .fail_all_every(1, BackendError::DeviceLost);
        let log = b.log();
        assert_eq!(b.alloc(8), Err(BackendError::DeviceLost));
        log.set_armed(false);
        let id = b.alloc(8).expect("disarmed");
        log.set_armed(true);
        assert_eq!(b.free(id), Err(BackendError::DeviceLost));
        assert_eq!(b.usage().buffers, 1, "a failed free leaves the buffer allocated");
        log.set_armed(false);
        b.free(id).expect("disarmed free");
        assert_eq!(b.usage(), Usage::default());
        assert_eq!(log.ops(OpClass::Free), 2);
        assert_eq!(log.failed(OpClass::Free), 1);
    }

    #[test]
    fn delays_are_counted() {
        let mut b = FaultyBackend::new(OwnedHostBackend::with_capacity(1 << 16))
            .delay_all_every(2, Duration::from_millis(1));
        let log = b.log();
        let id = b.alloc(8).expect("alloc");
        for _ in 0..4 {
            b.fill(id, 0, 8, 1).expect("fill");
        }
        assert_eq!(log.delayed(OpClass::Fill), 2);
        assert_eq!(log.delayed(OpClass::Alloc), 0);
        assert_eq!(log.total_delayed(), 2);
        assert_eq!(log.total_failed(), 0);
    }
}
