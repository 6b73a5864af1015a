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

use core::fmt;

use heapless::String;

use crate::config::{MAX_DEVICE_NAME, MAX_VENDOR_NAME};

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

/// Built-in kernel ids (an open wire enum).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelId(pub u16);

impl KernelId {
    /// `out[i] = a[i] + b[i]` over `n` f32 elements.
    pub const ADD: Self = Self(1);
    /// `out[i] = a[i] * b[i]` over `n` f32 elements.
    pub const MUL: Self = Self(2);
    /// `out[i] = alpha * a[i]` over `n` f32 elements.
    pub const SCALE: Self = Self(3);
    /// Row-major f32 matmul: `out (M×N) = a (M×K) · b (K×N)`.
    pub const MATMUL: Self = Self(4);

    /// The spec name of a known kernel.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("ADD"),
            2 => Some("MUL"),
            3 => Some("SCALE"),
            4 => Some("MATMUL"),
            _ => None,
        }
    }
}

impl fmt::Debug for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown({})", self.0),
        }
    }
}

/// A binary elementwise operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// Addition.
    Add,
    /// Multiplication.
    Mul,
}

/// A kernel invocation on backend buffers. Inputs and output are whole buffers read from
/// offset 0 as little-endian f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelCall {
    /// `out[i] = a[i] op b[i]` for `i < n`.
    Binary {
        /// The operation.
        op: BinaryOp,
        /// Left input.
        a: BufferId,
        /// Right input.
        b: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
    },
    /// `out[i] = alpha * x[i]` for `i < n`.
    Scale {
        /// Input.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
        /// Factor.
        alpha: f32,
    },
    /// `out = a · b`, row-major, `a` is M×K, `b` is K×N, `out` is M×N.
    Matmul {
        /// Left matrix.
        a: BufferId,
        /// Right matrix.
        b: BufferId,
        /// Output matrix.
        out: BufferId,
        /// Rows of `a`.
        m: u32,
        /// Inner dimension.
        k: u32,
        /// Columns of `b`.
        n: u32,
    },
    /// Embedding gather: `out[r, :] = table[ids[r], :]` for `r < rows`. `ids` holds `rows`
    /// little-endian `u32`; `table` is `vocab × dim`. An id ≥ `vocab` yields a row of zeros
    /// (checked on the device, never an out-of-bounds access).
    Gather {
        /// Embedding table, `vocab × dim`.
        table: BufferId,
        /// Token ids, `rows` u32.
        ids: BufferId,
        /// Output, `rows × dim`.
        out: BufferId,
        /// Rows of `table`.
        vocab: u32,
        /// Row width.
        dim: u32,
        /// Ids to gather.
        rows: u32,
    },
    /// Row-wise layer norm: `out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta`
    /// (biased variance); `x` is `rows × dim`, `gamma` and `beta` are `dim`.
    LayerNorm {
        /// Input.
        x: BufferId,
        /// Scale, `dim`.
        gamma: BufferId,
        /// Shift, `dim`.
        beta: BufferId,
        /// Output, `rows × dim`.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
        /// Variance epsilon (finite, > 0).
        eps: f32,
    },
    /// Linear layer: `out[i, j] = Σ_t x[i, t] · w[j, t] + bias[j]`; `x` is `m × k`, `w` is
    /// `n × k` (PyTorch `nn.Linear` layout), `bias` is `n`, `out` is `m × n`.
    Linear {
        /// Input, `m × k`.
        x: BufferId,
        /// Weights, `n × k`.
        w: BufferId,
        /// Bias, `n`.
        bias: BufferId,
        /// Output, `m × n`.
        out: BufferId,
        /// Rows of `x`.
        m: u32,
        /// Input features.
        k: u32,
        /// Output features.
        n: u32,
    },
    /// Exact (erf) GELU: `out[i] = 0.5 · x[i] · (1 + erf(x[i] / √2))` for `i < n`.
    Gelu {
        /// Input.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
    },
    /// Scaled dot-product self-attention with a key padding mask.
    ///
    /// `q`, `k`, `v` and `out` are `(batch·seq) × (heads·head_dim)` row-major; head `h` uses
    /// columns `h·head_dim .. (h+1)·head_dim`. `mask` is `batch·seq` f32 (1.0 = token,
    /// 0.0 = padding). For batch `b`, head `h`, query `i`: `s_j = (q_i · k_j) / √head_dim` over
    /// keys `j` with `mask[b, j] ≠ 0` (masked keys get probability 0), `p = softmax(s)`
    /// (max-subtracted), `out_i = Σ_j p_j v_j`. A query whose keys are all masked yields zeros.
    /// `seq` ≤ [`MAX_ATTENTION_SEQ`].
    Attention {
        /// Queries.
        q: BufferId,
        /// Keys.
        k: BufferId,
        /// Values.
        v: BufferId,
        /// Key padding mask, `batch·seq`.
        mask: BufferId,
        /// Output.
        out: BufferId,
        /// Sequences.
        batch: u32,
        /// Tokens per sequence.
        seq: u32,
        /// Heads.
        heads: u32,
        /// Width of one head.
        head_dim: u32,
    },
    /// Masked mean over tokens: `out[b, :] = Σ_s mask[b, s] · x[b·seq + s, :] /
    /// max(Σ_s mask[b, s], 1e-9)`; `x` is `(batch·seq) × dim`, `out` is `batch × dim`.
    MeanPool {
        /// Token vectors.
        x: BufferId,
        /// Mask, `batch·seq`.
        mask: BufferId,
        /// Output, `batch × dim`.
        out: BufferId,
        /// Sequences.
        batch: u32,
        /// Tokens per sequence.
        seq: u32,
        /// Vector width.
        dim: u32,
    },
    /// Row-wise L2 normalization: `out[r, :] = x[r, :] / max(‖x[r, :]‖₂, 1e-12)`.
    L2Normalize {
        /// Input, `rows × dim`.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
    },
}

/// Longest sequence [`KernelCall::Attention`] accepts.
pub const MAX_ATTENTION_SEQ: u32 = 512;

/// Bytes of `count` f32 elements, or `None` on overflow.
const fn f32_bytes(count: u64) -> Option<u64> {
    count.checked_mul(4)
}

/// How a [`KernelCall`] divides into independent parts ([`KernelCall::work`]): `units`
/// output units (elements, rows or sequences, by kernel), each costing about `unit_cost`
/// multiply-adds. A host cuts a long call into parts of bounded cost with
/// [`GpuBackend::dispatch_part`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Independent output units.
    pub units: u32,
    /// Multiply-adds (or comparable element operations) per unit, at least 1.
    pub unit_cost: u64,
}

impl Work {
    /// The whole call's cost, saturating.
    pub const fn total(&self) -> u64 {
        (self.units as u64).saturating_mul(self.unit_cost)
    }
}

impl KernelCall {
    /// The output buffer.
    pub const fn output(&self) -> BufferId {
        match self {
            Self::Binary { out, .. }
            | Self::Scale { out, .. }
            | Self::Matmul { out, .. }
            | Self::Gather { out, .. }
            | Self::LayerNorm { out, .. }
            | Self::Linear { out, .. }
            | Self::Gelu { out, .. }
            | Self::Attention { out, .. }
            | Self::MeanPool { out, .. }
            | Self::L2Normalize { out, .. } => *out,
        }
    }

    /// The call's units and their cost: elements for ADD, MUL, SCALE and GELU; output rows
    /// for MATMUL, LINEAR, GATHER, LAYER_NORM and L2_NORMALIZE; sequences for ATTENTION and
    /// MEAN_POOL. Part `units` of a call writes exactly those units of its output.
    pub fn work(&self) -> Work {
        // Saturating: `work` is also asked of calls not yet validated.
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let (units, unit_cost) = match *self {
            Self::Binary { n, .. } | Self::Scale { n, .. } | Self::Gelu { n, .. } => (n, 1),
            Self::Matmul { m, k, n, .. } | Self::Linear { m, k, n, .. } => (m, mul(k as u64, n as u64)),
            Self::Gather { rows, dim, .. } => (rows, dim as u64),
            Self::LayerNorm { rows, dim, .. } => (rows, mul(4, dim as u64)),
            Self::L2Normalize { rows, dim, .. } => (rows, mul(2, dim as u64)),
            Self::Attention { batch, seq, heads, head_dim, .. } => {
                (batch, mul(mul(2 * seq as u64, seq as u64), mul(heads as u64, head_dim as u64)))
            }
            Self::MeanPool { batch, seq, dim, .. } => (batch, mul(seq as u64, dim as u64)),
        };
        Work { units, unit_cost: if unit_cost == 0 { 1 } else { unit_cost } }
    }

    /// Validates shapes against buffer sizes before any device work.
    ///
    /// `size_of` returns a buffer's size, or `None` if no such buffer exists. Checks, with
    /// overflow-safe arithmetic: every buffer exists (`NoSuchBuffer`); every buffer holds what the
    /// shape needs (`OutOfBounds`, also when the byte count overflows `u64`);
    /// the output aliases no input (the kernels are not in-place safe on every backend). Zero
    /// elements (or a zero dimension) is allowed and does nothing.
    pub fn validate(&self, size_of: impl Fn(BufferId) -> Option<u64>) -> Result<(), BackendError> {
        let need = |id: BufferId, bytes: Option<u64>| -> Result<(), BackendError> {
            let have = size_of(id).ok_or(BackendError::NoSuchBuffer)?;
            let bytes = bytes.ok_or(BackendError::OutOfBounds)?;
            if bytes > have { Err(BackendError::OutOfBounds) } else { Ok(()) }
        };
        let distinct = |out: BufferId, inputs: &[BufferId]| {
            if inputs.contains(&out) { Err(BackendError::InvalidArgument) } else { Ok(()) }
        };
        match *self {
            Self::Binary { a, b, out, n, .. } => {
                let bytes = f32_bytes(n as u64);
                need(a, bytes)?;
                need(b, bytes)?;
                need(out, bytes)?;
                if out == a || out == b {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Scale { x, out, n, alpha } => {
                let bytes = f32_bytes(n as u64);
                need(x, bytes)?;
                need(out, bytes)?;
                if out == x || !alpha.is_finite() {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Matmul { a, b, out, m, k, n } => {
                let (m, k, n) = (m as u64, k as u64, n as u64);
                need(a, m.checked_mul(k).and_then(f32_bytes))?;
                need(b, k.checked_mul(n).and_then(f32_bytes))?;
                need(out, m.checked_mul(n).and_then(f32_bytes))?;
                if out == a || out == b {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Gather { table, ids, out, vocab, dim, rows } => {
                let (vocab, dim, rows) = (vocab as u64, dim as u64, rows as u64);
                need(table, vocab.checked_mul(dim).and_then(f32_bytes))?;
                need(ids, f32_bytes(rows))?;
                need(out, rows.checked_mul(dim).and_then(f32_bytes))?;
                distinct(out, &[table, ids])?;
            }
            Self::LayerNorm { x, gamma, beta, out, rows, dim, eps } => {
                let (rows, dim) = (rows as u64, dim as u64);
                need(x, rows.checked_mul(dim).and_then(f32_bytes))?;
                need(gamma, f32_bytes(dim))?;
                need(beta, f32_bytes(dim))?;
                need(out, rows.checked_mul(dim).and_then(f32_bytes))?;
                distinct(out, &[x, gamma, beta])?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Linear { x, w, bias, out, m, k, n } => {
                let (m, k, n) = (m as u64, k as u64, n as u64);
                need(x, m.checked_mul(k).and_then(f32_bytes))?;
                need(w, n.checked_mul(k).and_then(f32_bytes))?;
                need(bias, f32_bytes(n))?;
                need(out, m.checked_mul(n).and_then(f32_bytes))?;
                distinct(out, &[x, w, bias])?;
            }
            Self::Gelu { x, out, n } => {
                need(x, f32_bytes(n as u64))?;
                need(out, f32_bytes(n as u64))?;
                distinct(out, &[x])?;
            }
            Self::Attention { q, k, v, mask, out, batch, seq, heads, head_dim } => {
                if seq > MAX_ATTENTION_SEQ {
                    return Err(BackendError::InvalidArgument);
                }
                let tokens = (batch as u64).checked_mul(seq as u64);
                let bytes = tokens
                    .and_then(|t| t.checked_mul(heads as u64))
                    .and_then(|t| t.checked_mul(head_dim as u64))
                    .and_then(f32_bytes);
                for buf in [q, k, v, out] {
                    need(buf, bytes)?;
                }
                need(mask, tokens.and_then(f32_bytes))?;
                distinct(out, &[q, k, v, mask])?;
            }
            Self::MeanPool { x, mask, out, batch, seq, dim } => {
                let (batch, seq, dim) = (batch as u64, seq as u64, dim as u64);
                let tokens = batch.checked_mul(seq);
                need(x, tokens.and_then(|t| t.checked_mul(dim)).and_then(f32_bytes))?;
                need(mask, tokens.and_then(f32_bytes))?;
                need(out, batch.checked_mul(dim).and_then(f32_bytes))?;
                distinct(out, &[x, mask])?;
            }
            Self::L2Normalize { x, out, rows, dim } => {
                let bytes = (rows as u64).checked_mul(dim as u64).and_then(f32_bytes);
                need(x, bytes)?;
                need(out, bytes)?;
                distinct(out, &[x])?;
            }
        }
        Ok(())
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

    /// Runs a built-in kernel and waits for it to complete.
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
    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<core::ops::Range<usize>> {
        (**self).storage_range(id, offset, len)
    }
}
