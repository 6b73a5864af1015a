//! [`Checked`]: the rules every backend shares, written once, above any [`GpuBackend`].
//!
//! As wgpu-core sits above wgpu-hal, a host wraps its raw backend in [`Checked`] and talks to
//! that. It checks every argument before the raw backend sees it:
//!
//! - `alloc(0)` is `InvalidArgument`;
//! - every byte range lies inside its buffer, with overflow-checked arithmetic
//!   ([`check_range`]); a copy's ranges within one buffer do not overlap
//!   ([`check_copy_overlap`]);
//! - every kernel call passes [`KernelCall::validate`], and a part's units lie inside the call;
//!
//! and it keeps the **lease rule**: a host may lend a buffer's memory to someone outside the
//! backend (a socket task reading a WRITE's data straight into place, or sending a READ's data
//! from where it lies) with [`lease`](Checked::lease). While a buffer is leased:
//!
//! - nothing writes it: a WRITE, FILL, COPY into it, or a kernel whose output it is, is
//!   [`BackendError::Leased`] and changes nothing;
//! - freeing it only retires its id: the caller sees it gone (`NoSuchBuffer` from then on), but
//!   the raw backend frees (and zeroes) it when the last lease ends
//!   ([`end_lease`](Checked::end_lease)), so its memory is never handed to another buffer
//!   while someone outside still reaches it.
//!
//! A raw backend still checks what it must for its own safety; the conformance suite holds raw
//! backends to the same rules, and runs on `Checked` too.

use core::ops::Range;

use heapless::Vec;

use crate::backend::{
    BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage, check_copy_overlap,
    check_range,
};

/// Most buffers leased at once (a node lends at most a few per connection).
pub const MAX_LEASED: usize = 256;

/// A leased buffer: how many leases are out, and whether it was freed meanwhile.
#[derive(Debug, Clone, Copy)]
struct Leased {
    id: BufferId,
    count: u32,
    freed: bool,
}

/// A [`GpuBackend`] with argument checks and the lease rule applied before `B` sees a call.
#[derive(Debug)]
pub struct Checked<B> {
    inner: B,
    leased: Vec<Leased, MAX_LEASED>,
}

impl<B: GpuBackend> Checked<B> {
    /// Wraps a raw backend.
    pub const fn new(inner: B) -> Self {
        Self { inner, leased: Vec::new() }
    }

    /// The raw backend.
    pub const fn inner(&self) -> &B {
        &self.inner
    }

    /// The raw backend, to change (bypassing the checks: for the backend's owner only).
    pub const fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Unwraps the raw backend (leases still out are dropped with it).
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn entry(&self, id: BufferId) -> Option<&Leased> {
        self.leased.iter().find(|l| l.id == id)
    }

    /// Whether `id` is retired: freed by its owner while leased.
    fn retired(&self, id: BufferId) -> bool {
        self.entry(id).is_some_and(|l| l.freed)
    }

    /// Whether `id` has a lease out.
    pub fn is_leased(&self, id: BufferId) -> bool {
        self.entry(id).is_some()
    }

    /// Lends buffer `id`'s memory out: until every lease taken on it has ended, nothing writes
    /// it and freeing it is deferred. `NoSuchBuffer` for a buffer that is not live,
    /// `OutOfMemory` when [`MAX_LEASED`] buffers are leased already.
    pub fn lease(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.size(id)?;
        if let Some(l) = self.leased.iter_mut().find(|l| l.id == id) {
            l.count = l.count.checked_add(1).ok_or(BackendError::OutOfMemory)?;
            return Ok(());
        }
        self.leased.push(Leased { id, count: 1, freed: false }).map_err(|_| BackendError::OutOfMemory)
    }

    /// Ends one lease on `id`. When it was the last and the buffer was freed meanwhile, the raw
    /// backend frees (and zeroes) it now. `InvalidArgument` if `id` has no lease out.
    pub fn end_lease(&mut self, id: BufferId) -> Result<(), BackendError> {
        let at = self.leased.iter().position(|l| l.id == id).ok_or(BackendError::InvalidArgument)?;
        let l = &mut self.leased[at];
        l.count -= 1;
        if l.count > 0 {
            return Ok(());
        }
        let freed = l.freed;
        self.leased.swap_remove(at);
        if freed { self.inner.free(id) } else { Ok(()) }
    }

    /// `Leased` if `id` may not be written now.
    fn writable(&self, id: BufferId) -> Result<(), BackendError> {
        match self.entry(id) {
            Some(l) if l.freed => Err(BackendError::NoSuchBuffer),
            Some(_) => Err(BackendError::Leased),
            None => Ok(()),
        }
    }

    /// The size of a live, not retired buffer.
    fn live_size(&self, id: BufferId) -> Option<u64> {
        if self.retired(id) { None } else { self.inner.size(id).ok() }
    }

    fn check_kernel(&self, call: &KernelCall) -> Result<(), BackendError> {
        call.validate(|id| self.live_size(id))?;
        self.writable(call.output())
    }
}

impl<B: GpuBackend> GpuBackend for Checked<B> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        if size == 0 {
            return Err(BackendError::InvalidArgument);
        }
        self.inner.alloc(size)
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        match self.leased.iter_mut().find(|l| l.id == id) {
            Some(l) if l.freed => Err(BackendError::NoSuchBuffer),
            Some(l) => {
                // Retired now, freed (and zeroed) by the raw backend when the last lease ends.
                l.freed = true;
                Ok(())
            }
            None => self.inner.free(id),
        }
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        if self.retired(id) {
            return Err(BackendError::NoSuchBuffer);
        }
        self.inner.size(id)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        check_range(self.size(id)?, offset, data.len() as u64)?;
        self.writable(id)?;
        self.inner.write(id, offset, data)
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        check_range(self.size(id)?, offset, out.len() as u64)?;
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
        let from = check_range(self.size(src)?, src_offset, len)?;
        let to = check_range(self.size(dst)?, dst_offset, len)?;
        check_copy_overlap(src, &from, dst, &to)?;
        self.writable(dst)?;
        self.inner.copy(src, src_offset, dst, dst_offset, len)
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        check_range(self.size(id)?, offset, len)?;
        self.writable(id)?;
        self.inner.fill(id, offset, len, value)
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.check_kernel(call)?;
        self.inner.dispatch(call)
    }

    fn dispatch_part(&mut self, call: &KernelCall, units: Range<u32>) -> Result<(), BackendError> {
        self.check_kernel(call)?;
        if units.start > units.end || units.end > call.work().units {
            return Err(BackendError::InvalidArgument);
        }
        self.inner.dispatch_part(call, units)
    }

    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        // Committing changes no byte, so a leased range may be committed.
        check_range(self.size(id)?, offset, len)?;
        self.inner.commit(id, offset, len)
    }

    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<Range<usize>> {
        if self.retired(id) { None } else { self.inner.storage_range(id, offset, len) }
    }

    fn select_queue(&mut self, queue: QueueId) {
        self.inner.select_queue(queue)
    }

    fn end_queue(&mut self, queue: QueueId) {
        self.inner.end_queue(queue)
    }
}
