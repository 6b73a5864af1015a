//! The `GpuBackend` trait: what a node needs from a GPU (or from host memory).
//!
//! The trait is small, object-safe, `no_std` and allocation-free, so the same session code
//! drives a CUDA device on a server and a static byte arena on a microcontroller.
//!
//! # Contract
//!
//! - Buffers are named by backend-chosen [`BufferId`]s. Sessions never expose them on the wire:
//!   clients see per-session handles only (see [`crate::session`]).
//! - Every method validates its arguments and returns a [`BackendError`] rather than touching
//!   memory out of bounds; `offset + len` overflow is [`BackendError::OutOfBounds`].
//! - **Zero on free.** Memory returned by `free` is zeroed before it can be handed out again,
//!   so no allocation ever shows a previous owner's bytes. Fresh allocations read as zeros.
//! - `alloc(0)` is [`BackendError::InvalidArgument`]. Zero-length `write`, `read`, `copy` and
//!   `fill` within bounds succeed and do nothing.
//! - [`Usage`] is exact: `used` is the sum of the sizes of live buffers.
//! - Kernels are validated with [`KernelCall::validate`] before any device work.
//! - **Queues.** A host may say whose work follows ([`GpuBackend::select_queue`]: the node
//!   names each session's queue). A backend that keeps queues of its own (CUDA: a stream per
//!   queue) may run the work of different queues in any order relative to each other, but every
//!   call sees the effects of every call made before it, whatever queues they were made for:
//!   keeping that order across queues is the backend's job, never the host's.

use core::fmt;

use heapless::String;

use crate::config::{MAX_DEVICE_NAME, MAX_VENDOR_NAME};
pub use crate::kernel::{BinaryOp, KernelCall, KernelId, MAX_ATTENTION_SEQ, WeightType, Work};

/// Whose work a backend call is: a host-chosen name for a queue of device work
/// ([`GpuBackend::select_queue`]). The node names each session's queue by its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    /// The queue of work no host named (a backend's start, shared models, shutdown).
    pub const DEFAULT: Self = Self(0);
}

/// A backend's name for one of its buffers. Opaque to sessions and never sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u64);

/// Which kind of backend serves a node (an open wire enum).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKind(pub u8);

impl BackendKind {
    /// Host memory (the reference backend).
    pub const HOST: Self = Self(1);
    /// NVIDIA CUDA.
    pub const CUDA: Self = Self(2);
    /// Vulkan (vulkano).
    pub const VULKAN: Self = Self(3);
    /// WebGPU (wgpu).
    pub const WGPU: Self = Self(4);

    /// The lower-case name of a known backend.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("host"),
            2 => Some("cuda"),
            3 => Some("vulkan"),
            4 => Some("wgpu"),
            _ => None,
        }
    }
}

impl fmt::Debug for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "unknown({})", self.0),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Static facts about a backend's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Backend kind.
    pub backend: BackendKind,
    /// Device name, truncated to 64 bytes.
    pub name: String<MAX_DEVICE_NAME>,
    /// Vendor name, truncated to 32 bytes.
    pub vendor: String<MAX_VENDOR_NAME>,
    /// Bytes the backend lends in total.
    pub total: u64,
    /// Largest single allocation.
    pub max_alloc: u64,
}

impl DeviceInfo {
    /// Builds device info, truncating `name` and `vendor` at a character boundary to fit.
    pub fn new(backend: BackendKind, name: &str, vendor: &str, total: u64, max_alloc: u64) -> Self {
        Self { backend, name: truncated(name), vendor: truncated(vendor), total, max_alloc }
    }
}

fn truncated<const N: usize>(s: &str) -> String<N> {
    let mut out = String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// Live usage of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes in live buffers.
    pub used: u64,
    /// Live buffers.
    pub buffers: u32,
}

/// What a backend operation can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendError {
    /// No memory left for the request.
    OutOfMemory,
    /// Offset and length reach outside the buffer, or overflow.
    OutOfBounds,
    /// No live buffer has this id.
    NoSuchBuffer,
    /// An argument is invalid (zero size, kernel shape, aliasing, overlapping copy).
    InvalidArgument,
    /// The operation or kernel is not supported by this backend.
    Unsupported,
    /// The device was lost or failed.
    DeviceLost,
    /// The call costs more than the host allows one request (a node's per-DISPATCH limit).
    LimitExceeded,
    /// The buffer's memory is lent out ([`crate::checked::Checked::lease`]): nothing may write
    /// it until the lease ends. A host that holds a session's requests back while its buffers
    /// are leased never sees this; it reports a host bug.
    Leased,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfMemory => "out of device memory",
            Self::OutOfBounds => "out of bounds",
            Self::NoSuchBuffer => "no such buffer",
            Self::InvalidArgument => "invalid argument",
            Self::Unsupported => "unsupported",
            Self::DeviceLost => "device lost or failed",
            Self::LimitExceeded => "over the per-request cost limit",
            Self::Leased => "buffer memory is lent out",
        })
    }
}

impl core::error::Error for BackendError {}

impl From<BackendError> for crate::wire::ErrorCode {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::OutOfMemory => Self::OUT_OF_MEMORY,
            BackendError::OutOfBounds => Self::OUT_OF_BOUNDS,
            BackendError::NoSuchBuffer => Self::NO_SUCH_BUFFER,
            BackendError::InvalidArgument => Self::INVALID_ARGUMENT,
            BackendError::Unsupported => Self::UNSUPPORTED,
            BackendError::DeviceLost => Self::BACKEND,
            BackendError::LimitExceeded => Self::LIMIT_EXCEEDED,
            BackendError::Leased => Self::INTERNAL,
        }
    }
}

/// Checks that `offset..offset + len` lies inside a buffer of `size` bytes, overflow-safe.
/// Returns the range as `usize` bounds.
pub fn check_range(size: u64, offset: u64, len: u64) -> Result<core::ops::Range<u64>, BackendError> {
    let end = offset.checked_add(len).ok_or(BackendError::OutOfBounds)?;
    if end > size {
        return Err(BackendError::OutOfBounds);
    }
    Ok(offset..end)
}

/// A device that lends memory and runs kernels.
///
/// Object-safe, so hosts can pick a backend at run time (`Box<dyn GpuBackend + Send>`).
/// See the module docs for the contract every implementation must keep; the `rela-conformance`
/// crate checks it.
pub trait GpuBackend {
    /// Static facts about the device.
    fn info(&self) -> DeviceInfo;

    /// Live usage: bytes and buffers.
    fn usage(&self) -> Usage;

    /// Allocates a zeroed buffer of `size` bytes.
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError>;

    /// Zeroes and releases a buffer.
    fn free(&mut self, id: BufferId) -> Result<(), BackendError>;

    /// The size of a live buffer.
    fn size(&self, id: BufferId) -> Result<u64, BackendError>;

    /// Writes `data` at `offset`.
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError>;

    /// Reads `out.len()` bytes from `offset` into `out`.
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError>;

    /// Copies `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`. Within one buffer
    /// the ranges must not overlap ([`BackendError::InvalidArgument`]).
    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError>;

    /// Sets `len` bytes from `offset` to `value`.
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError>;

    /// Runs a built-in kernel. A GPU backend may only queue it: every later call sees its
    /// output, and an error in queued work may surface on a later call that waits (a READ) as
    /// [`BackendError::DeviceLost`].
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError>;

    /// Runs the part of `call` that writes output units `units` ([`KernelCall::work`]) and
    /// leaves the rest of the output as it is. Validation is that of the whole call, and
    /// `units` must lie inside `0..work().units` ([`BackendError::InvalidArgument`]). Running
    /// every part of a call, in any order, gives what [`dispatch`](Self::dispatch) gives.
    ///
    /// Hosts cut long calls into parts of bounded device time so other sessions get a turn.
    /// The default runs the whole call when `units` covers all of it and answers
    /// [`BackendError::Unsupported`] for a true part: a backend without partial dispatch is
    /// run whole.
    fn dispatch_part(&mut self, call: &KernelCall, units: core::ops::Range<u32>) -> Result<(), BackendError> {
        let all = call.work().units;
        if units.start > units.end || units.end > all {
            return Err(BackendError::InvalidArgument);
        }
        if units.start == 0 && units.end == all {
            self.dispatch(call)
        } else {
            Err(BackendError::Unsupported)
        }
    }

    /// Backs bytes `offset..offset + len` of buffer `id` with memory now, before anything is
    /// written there, without changing them (they stay as they read). A session commits every
    /// buffer it allocates, so that memory the device cannot back shows up as ALLOC's
    /// [`BackendError::OutOfMemory`] and not later, and a first WRITE pays no page faults.
    ///
    /// For backends whose allocations are backed when made (every GPU API), the default does
    /// nothing. A backend over memory the OS backs on first touch (the host backend in a node)
    /// faults the pages in. Hosts commit a large buffer in pieces, a turn at a time.
    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(self.size(id)?, offset, len).map(|_| ())
    }

    /// Where bytes `offset..offset + len` of buffer `id` lie in the backend's storage, as a
    /// byte range of that storage, for a backend whose storage is host memory that its owner
    /// can reach directly (the host backend). A host that built the backend over memory it
    /// shares can then move data into or out of that range itself, without a copy through
    /// [`write`](Self::write) or [`read`](Self::read). `None` when the backend has no such
    /// storage (the default: device memory) or the range is not inside the buffer.
    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<core::ops::Range<usize>> {
        let _ = (id, offset, len);
        None
    }

    /// The calls that follow are `queue`'s work, until another queue is selected. A backend
    /// with queues of its own puts the buffers allocated from now on on that queue, and the
    /// work on a buffer on the buffer's queue, so that waiting for one queue's work (a READ)
    /// does not wait for another's. Order across queues stays as the module docs require.
    /// The default (one queue for everything, as the host backend has) ignores it.
    fn select_queue(&mut self, queue: QueueId) {
        let _ = queue;
    }

    /// `queue` names no more work: its resources may go once its buffers are freed. Buffers
    /// still live on it stay usable. The default does nothing.
    fn end_queue(&mut self, queue: QueueId) {
        let _ = queue;
    }
}

/// Checks a same-buffer copy for overlap. Returns `Err(InvalidArgument)` if the two ranges of
/// one buffer overlap.
pub fn check_copy_overlap(
    src: BufferId,
    src_range: &core::ops::Range<u64>,
    dst: BufferId,
    dst_range: &core::ops::Range<u64>,
) -> Result<(), BackendError> {
    if src == dst && src_range.start < dst_range.end && dst_range.start < src_range.end {
        return Err(BackendError::InvalidArgument);
    }
    Ok(())
}

impl<B: GpuBackend + ?Sized> GpuBackend for &mut B {
    fn info(&self) -> DeviceInfo {
        (**self).info()
    }
    fn usage(&self) -> Usage {
        (**self).usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        (**self).alloc(size)
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        (**self).free(id)
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        (**self).size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        (**self).write(id, offset, data)
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        (**self).read(id, offset, out)
    }
    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        (**self).copy(src, src_offset, dst, dst_offset, len)
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        (**self).fill(id, offset, len, value)
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        (**self).dispatch(call)
    }
    fn dispatch_part(&mut self, call: &KernelCall, units: core::ops::Range<u32>) -> Result<(), BackendError> {
        (**self).dispatch_part(call, units)
    }
    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        (**self).commit(id, offset, len)
    }
    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<core::ops::Range<usize>> {
        (**self).storage_range(id, offset, len)
    }
    fn select_queue(&mut self, queue: QueueId) {
        (**self).select_queue(queue)
    }
    fn end_queue(&mut self, queue: QueueId) {
        (**self).end_queue(queue)
    }
}
