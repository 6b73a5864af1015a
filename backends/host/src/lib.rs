//! Host-memory [`GpuBackend`]: the reference backend and the embedded default.
//!
//! [`HostBackend`] lends out a caller-provided byte arena (`&mut [u8]`, for example a static
//! array on a microcontroller). It is `no_std`, allocates nothing and contains no `unsafe`.
//! Kernels run on the CPU through [`rela_kernels::reference`], which makes this backend the
//! yardstick the conformance suite (`rela-conformance`) measures every other backend against.
//! With the `std` feature they run through `rela_kernels::fast` instead: the same functions on
//! all cores, in SIMD (`rela_kernels::fast::set_threads` sizes their pool).
//!
//! With the `std` feature, [`OwnedHostBackend`] owns a heap arena of a size chosen at run time.
//! Both are the same type, [`HostMemory`], over different storage.
//!
//! # Memory model
//!
//! - A first-fit [`Allocator`] with a fixed-capacity block table ([`MAX_BLOCKS`] live buffers
//!   by default; a full table is [`BackendError::OutOfMemory`]). Free space is coalesced at
//!   once, and every buffer starts at a multiple of [`ALIGN`] (256) bytes from the arena start.
//! - Buffer ids come from a monotonic counter and are never reused, so a stale id is
//!   [`BackendError::NoSuchBuffer`].
//! - The arena is zeroed when the backend is made, and each buffer is zeroed when freed, so a
//!   fresh allocation always reads as zeros.
//! - `write` and `read` are one `copy_from_slice` each; `copy` is one `copy_within`.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "std"))]
extern crate std;

mod allocator;
mod arena;

use core::ops::Range;

pub use allocator::{ALIGN, Allocator, MAX_BLOCKS};
pub use arena::{Arena, Around, KernelInputs};
use rela_core::backend::{
    BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage, check_copy_overlap,
    check_range,
};
// The fast kernels (multithreaded, SIMD) with `std`; the no_std reference kernels without.
#[cfg(feature = "std")]
use rela_kernels::fast as kernels;
#[cfg(not(feature = "std"))]
use rela_kernels::reference as kernels;
use rela_kernels::reference;

/// Device name reported in [`DeviceInfo`].
pub const DEVICE_NAME: &str = "host memory";
/// Vendor name reported in [`DeviceInfo`].
pub const VENDOR_NAME: &str = "vram-relay";

/// A [`GpuBackend`] over host memory held in `S` (an [`Arena`]), with a block table of `N` live
/// buffers.
///
/// Use the aliases: [`HostBackend`] borrows its arena, [`OwnedHostBackend`] (feature `std`)
/// owns one. Other arenas (memory shared with the host's I/O) plug in through [`Arena`];
/// [`GpuBackend::storage_range`] tells their owner where a buffer's bytes lie.
#[derive(Debug)]
pub struct HostMemory<S, const N: usize = MAX_BLOCKS> {
    storage: S,
    alloc: Allocator<N>,
}

/// The no-alloc host backend over a borrowed arena, for example a static array.
///
/// ```
/// use rela_backend_host::HostBackend;
/// use rela_core::backend::GpuBackend;
///
/// let mut arena = [0u8; 4096];
/// let mut host = HostBackend::new(&mut arena);
/// let id = host.alloc(16).unwrap();
/// host.write(id, 0, b"hello").unwrap();
/// let mut out = [0u8; 5];
/// host.read(id, 0, &mut out).unwrap();
/// assert_eq!(&out, b"hello");
/// ```
pub type HostBackend<'a, const N: usize = MAX_BLOCKS> = HostMemory<&'a mut [u8], N>;

/// The host backend over an owned heap arena (feature `std`), for PCs.
#[cfg(feature = "std")]
pub type OwnedHostBackend<const N: usize = MAX_BLOCKS> = HostMemory<std::boxed::Box<[u8]>, N>;

impl<S: Arena> HostMemory<S> {
    /// A backend lending out all of `storage`, with a table of [`MAX_BLOCKS`] live buffers.
    /// Zeroes the storage first (O(len)).
    pub fn new(storage: S) -> Self {
        Self::with_block_table(storage)
    }
}

impl<S: Arena, const N: usize> HostMemory<S, N> {
    /// A backend lending out all of `storage`, with a table of `N` live buffers, for example
    /// `HostBackend::<'_, 16>::with_block_table(&mut arena)`. Zeroes the storage first (O(len)).
    pub fn with_block_table(mut storage: S) -> Self {
        storage.zero_all();
        let alloc = Allocator::new(storage.len());
        Self { storage, alloc }
    }

    /// The allocator's view: live buffers, bytes used, the largest free gap.
    pub const fn allocator(&self) -> &Allocator<N> {
        &self.alloc
    }

    /// Gives the storage back. Live buffers' bytes are still in it.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The arena range `r` of buffer `id`, checked against the buffer's size.
    fn span(&self, id: BufferId, offset: u64, len: u64) -> Result<Range<usize>, BackendError> {
        let block = self.alloc.range(id)?;
        let r = check_range(block.len() as u64, offset, len)?;
        // `r` lies within the block, and the block within the arena, so both fit in usize.
        Ok(block.start + r.start as usize..block.start + r.end as usize)
    }
}

#[cfg(feature = "std")]
impl HostMemory<std::boxed::Box<[u8]>> {
    /// A backend owning a zeroed heap arena of `capacity` bytes, with a table of
    /// [`MAX_BLOCKS`] live buffers. Aborts if the heap cannot provide the arena, like any `Vec`;
    /// see [`try_with_capacity`](Self::try_with_capacity). For another table size, pass a boxed
    /// slice to [`with_block_table`](HostMemory::with_block_table).
    pub fn with_capacity(capacity: usize) -> Self {
        let storage = std::vec![0u8; capacity].into_boxed_slice();
        // Already zero: skip `new`'s second pass over the (lazily mapped) pages.
        Self { alloc: Allocator::new(storage.len()), storage }
    }

    /// Like [`with_capacity`](Self::with_capacity), but reports a heap that cannot hold
    /// `capacity` bytes instead of aborting.
    pub fn try_with_capacity(capacity: usize) -> Result<Self, std::collections::TryReserveError> {
        HostMemory::<std::boxed::Box<[u8]>, MAX_BLOCKS>::try_with_blocks(capacity)
    }
}

#[cfg(feature = "std")]
impl<const N: usize> HostMemory<std::boxed::Box<[u8]>, N> {
    /// A backend owning a zeroed heap arena of `capacity` bytes with a table of `N` live
    /// buffers, reporting a heap that cannot hold it instead of aborting. The arena's pages are
    /// mapped lazily (zeroed by the allocator), so memory is committed only as it is used.
    pub fn try_with_blocks(capacity: usize) -> Result<Self, std::collections::TryReserveError> {
        // Probe that the heap can provide `capacity` bytes, then take zeroed pages (calloc),
        // which the OS maps only when first written.
        std::vec::Vec::<u8>::new().try_reserve_exact(capacity)?;
        let storage = std::vec![0u8; capacity].into_boxed_slice();
        Ok(Self { alloc: Allocator::new(storage.len()), storage })
    }
}

impl<S: Arena, const N: usize> GpuBackend for HostMemory<S, N> {
    fn info(&self) -> DeviceInfo {
        let total = self.alloc.len() as u64;
        DeviceInfo::new(BackendKind::HOST, DEVICE_NAME, VENDOR_NAME, total, total)
    }

    fn usage(&self) -> Usage {
        // The table holds at most N entries; saturate rather than wrap for absurd N.
        let buffers = u32::try_from(self.alloc.live()).unwrap_or(u32::MAX);
        Usage { used: self.alloc.used(), buffers }
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        // The region was zeroed at construction or when its previous owner was freed.
        self.alloc.alloc(size).map(|(id, _)| id)
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        let r = self.alloc.free(id)?;
        // Zeroed now, before the region can go to another buffer (the arena may give its
        // pages back to the OS instead, which also reads as zero).
        self.storage.release(r);
        Ok(())
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.alloc.size(id).ok_or(BackendError::NoSuchBuffer)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let r = self.span(id, offset, data.len() as u64)?;
        self.storage.bytes_mut(r).copy_from_slice(data);
        Ok(())
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let r = self.span(id, offset, out.len() as u64)?;
        out.copy_from_slice(self.storage.bytes(r));
        Ok(())
    }

    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let s = self.span(src, src_offset, len)?;
        let d = self.span(dst, dst_offset, len)?;
        let as_u64 = |r: &Range<usize>| r.start as u64..r.end as u64;
        check_copy_overlap(src, &as_u64(&s), dst, &as_u64(&d))?;
        self.storage.copy_within(s, d.start);
        Ok(())
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        let r = self.span(id, offset, len)?;
        self.storage.bytes_mut(r).fill(value);
        Ok(())
    }

    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<Range<usize>> {
        self.span(id, offset, len).ok()
    }

    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        let r = self.span(id, offset, len)?;
        self.storage.commit(r)
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.dispatch_part(call, 0..call.work().units)
    }

    fn dispatch_part(&mut self, call: &KernelCall, units: Range<u32>) -> Result<(), BackendError> {
        call.validate(|id| self.alloc.size(id))?;
        if units.start > units.end || units.end > call.work().units {
            return Err(BackendError::InvalidArgument);
        }
        self.run(call, units);
        Ok(())
    }
}

impl<S: Arena, const N: usize> HostMemory<S, N> {
    /// The arena range of `count` units of `width` bytes each, from unit `first`, of buffer
    /// `id`. Only for a validated call: the range then lies inside the buffer, and an error
    /// (which validation rules out) leaves an empty range so nothing is touched.
    fn units(&self, id: BufferId, first: u64, count: u64, width: u64) -> Range<usize> {
        self.span(id, first * width, count * width).unwrap_or(0..0)
    }

    /// Runs output units `units` of a validated call (`units` inside `0..work().units`).
    ///
    /// After validation every byte count below fits its buffer (hence `usize`), and the spans
    /// of live buffers cannot fail; the output range is disjoint from every input range.
    fn run(&mut self, call: &KernelCall, units: Range<u32>) {
        let (s, c) = (u64::from(units.start), u64::from(units.end - units.start));
        let cu = c as usize;
        match *call {
            KernelCall::Binary { op, a, b, out, .. } => {
                let (a, b, out) = (self.units(a, s, c, 4), self.units(b, s, c, 4), self.units(out, s, c, 4));
                let (inputs, out) = self.storage.split(out);
                kernels::binary(op, inputs.get(a), inputs.get(b), out, cu);
            }
            KernelCall::Scale { x, out, alpha, .. } => {
                let (x, out) = (self.units(x, s, c, 4), self.units(out, s, c, 4));
                let (inputs, out) = self.storage.split(out);
                kernels::scale(inputs.get(x), out, cu, alpha);
            }
            KernelCall::Matmul { a, b, out, k, n, .. } => {
                let (k, n) = (u64::from(k), u64::from(n));
                let a = self.units(a, s, c, k * 4);
                let b = self.units(b, 0, k, n * 4);
                let out = self.units(out, s, c, n * 4);
                let (inputs, out) = self.storage.split(out);
                kernels::matmul(inputs.get(a), inputs.get(b), out, cu, k as usize, n as usize);
            }
            KernelCall::Gather { table, ids, out, vocab, dim, .. } => {
                let d = u64::from(dim);
                let table = self.units(table, 0, u64::from(vocab), d * 4);
                let ids = self.units(ids, s, c, 4);
                let out = self.units(out, s, c, d * 4);
                let (inputs, out) = self.storage.split(out);
                kernels::gather(inputs.get(table), inputs.get(ids), out, vocab as usize, dim as usize, cu);
            }
            KernelCall::LayerNorm { x, gamma, beta, out, dim, eps, .. } => {
                let d = u64::from(dim);
                let x = self.units(x, s, c, d * 4);
                let gamma = self.units(gamma, 0, d, 4);
                let beta = self.units(beta, 0, d, 4);
                let out = self.units(out, s, c, d * 4);
                let (inputs, out) = self.storage.split(out);
                kernels::layer_norm(
                    inputs.get(x),
                    inputs.get(gamma),
                    inputs.get(beta),
                    out,
                    cu,
                    dim as usize,
                    eps,
                );
            }
            KernelCall::Linear { x, w, bias, out, m, k, n, .. } => {
                let (k, n) = (u64::from(k), u64::from(n));
                let x = self.units(x, s, c, k * 4);
                let w = self.units(w, 0, n, k * 4);
                let bias = self.units(bias, 0, n, 4);
                let out = self.units(out, s, c, n * 4);
                let (inputs, out) = self.storage.split(out);
                let (x, w, bias) = (inputs.get(x), inputs.get(w), inputs.get(bias));
                // The fast kernels pick LINEAR's kernel from the whole call's rows, so that
                // every part of a call runs the same one and the parts give the whole's bytes.
                #[cfg(feature = "std")]
                kernels::linear_part(x, w, bias, out, cu, k as usize, n as usize, m as usize);
                #[cfg(not(feature = "std"))]
                {
                    let _ = m;
                    kernels::linear(x, w, bias, out, cu, k as usize, n as usize);
                }
            }
            KernelCall::Gelu { x, out, .. } => {
                let (x, out) = (self.units(x, s, c, 4), self.units(out, s, c, 4));
                let (inputs, out) = self.storage.split(out);
                kernels::gelu(inputs.get(x), out, cu);
            }
            KernelCall::Attention { q, k, v, mask, out, seq, heads, head_dim, .. } => {
                let row = u64::from(seq) * u64::from(heads) * u64::from(head_dim) * 4;
                let (q, k, v) =
                    (self.units(q, s, c, row), self.units(k, s, c, row), self.units(v, s, c, row));
                let mask = self.units(mask, s, c, u64::from(seq) * 4);
                let out = self.units(out, s, c, row);
                let (inputs, out) = self.storage.split(out);
                kernels::attention(
                    inputs.get(q),
                    inputs.get(k),
                    inputs.get(v),
                    inputs.get(mask),
                    out,
                    cu,
                    seq as usize,
                    heads as usize,
                    head_dim as usize,
                );
            }
            KernelCall::MeanPool { x, mask, out, seq, dim, .. } => {
                let (q, d) = (u64::from(seq), u64::from(dim));
                let x = self.units(x, s, c, q * d * 4);
                let mask = self.units(mask, s, c, q * 4);
                let out = self.units(out, s, c, d * 4);
                let (inputs, out) = self.storage.split(out);
                kernels::mean_pool(inputs.get(x), inputs.get(mask), out, cu, seq as usize, dim as usize);
            }
            KernelCall::L2Normalize { x, out, dim, .. } => {
                let d = u64::from(dim);
                let (x, out) = (self.units(x, s, c, d * 4), self.units(out, s, c, d * 4));
                let (inputs, out) = self.storage.split(out);
                kernels::l2_normalize(inputs.get(x), out, cu, dim as usize);
            }
            // The generation kernels run the reference with or without `std`: the fast host path
            // of text generation is rela-llm's own.
            KernelCall::RmsNorm { x, w, out, dim, eps, .. } => {
                let d = u64::from(dim);
                let (x, w, out) =
                    (self.units(x, s, c, d * 4), self.units(w, 0, d, 4), self.units(out, s, c, d * 4));
                let (inputs, out) = self.storage.split(out);
                reference::rms_norm(inputs.get(x), inputs.get(w), out, cu, dim as usize, eps);
            }
            KernelCall::Rope { x, pos, out, heads, head_dim, rope_dim, base, .. } => {
                let row = u64::from(heads) * u64::from(head_dim) * 4;
                let (x, pos, out) =
                    (self.units(x, s, c, row), self.units(pos, s, c, 4), self.units(out, s, c, row));
                let (inputs, out) = self.storage.split(out);
                reference::rope(
                    inputs.get(x),
                    inputs.get(pos),
                    out,
                    cu,
                    heads as usize,
                    head_dim as usize,
                    rope_dim as usize,
                    base,
                );
            }
            KernelCall::SwiGlu { gate, up, out, .. } => {
                let (g, u, out) =
                    (self.units(gate, s, c, 4), self.units(up, s, c, 4), self.units(out, s, c, 4));
                let (inputs, out) = self.storage.split(out);
                reference::swiglu(inputs.get(g), inputs.get(u), out, cu);
            }
            KernelCall::QLinear { x, w, out, m, k, n, wtype } => {
                // Units are output columns: the part reads every row of `x`, its rows of `w`
                // and writes its columns of every output row (the whole output is the span).
                let row_bytes = wtype.row_bytes(k).unwrap_or(0);
                let x = self.units(x, 0, u64::from(m), u64::from(k) * 4);
                let w = self.units(w, 0, u64::from(n), row_bytes);
                let out = self.units(out, 0, u64::from(m), u64::from(n) * 4);
                let (inputs, out) = self.storage.split(out);
                let cols = units.start as usize..units.end as usize;
                reference::q_linear(
                    inputs.get(x),
                    inputs.get(w),
                    out,
                    m as usize,
                    k as usize,
                    n as usize,
                    cols,
                    wtype,
                );
            }
            KernelCall::QGather { table, ids, out, vocab, dim, wtype, .. } => {
                let row_bytes = wtype.row_bytes(dim).unwrap_or(0);
                let table = self.units(table, 0, u64::from(vocab), row_bytes);
                let ids = self.units(ids, s, c, 4);
                let out = self.units(out, s, c, u64::from(dim) * 4);
                let (inputs, out) = self.storage.split(out);
                reference::q_gather(
                    inputs.get(table),
                    inputs.get(ids),
                    out,
                    vocab as usize,
                    dim as usize,
                    cu,
                    wtype,
                );
            }
            KernelCall::CausalAttention { q, k, v, out, tokens, pos0, heads, kv_heads, head_dim } => {
                // Unit `t·heads + h` writes head `h` of row `t`: units are contiguous in `out`.
                let (hd, keys) = (u64::from(head_dim), u64::from(pos0) + u64::from(tokens));
                let q = self.units(q, 0, u64::from(tokens), u64::from(heads) * hd * 4);
                let kv_row = u64::from(kv_heads) * hd * 4;
                let (k, v) = (self.units(k, 0, keys, kv_row), self.units(v, 0, keys, kv_row));
                let out = self.units(out, 0, u64::from(tokens), u64::from(heads) * hd * 4);
                let (inputs, out) = self.storage.split(out);
                reference::causal_attention(
                    inputs.get(q),
                    inputs.get(k),
                    inputs.get(v),
                    out,
                    units.start as usize..units.end as usize,
                    pos0 as usize,
                    heads as usize,
                    kv_heads as usize,
                    head_dim as usize,
                );
            }
            KernelCall::Softmax { x, out, dim, .. } => {
                let d = u64::from(dim);
                let (x, out) = (self.units(x, s, c, d * 4), self.units(out, s, c, d * 4));
                let (inputs, out) = self.storage.split(out);
                reference::softmax(inputs.get(x), out, cu, dim as usize);
            }
            KernelCall::Argmax { x, out, dim, .. } => {
                let (x, out) = (self.units(x, s, c, u64::from(dim) * 4), self.units(out, s, c, 4));
                let (inputs, out) = self.storage.split(out);
                reference::argmax(inputs.get(x), out, cu, dim as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rela_core::backend::BinaryOp;

    use super::*;

    fn f32s(v: &[f32]) -> std::vec::Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn new_zeroes_a_dirty_arena_and_reports_info() {
        let mut arena = [0xFFu8; 1000];
        let mut host = HostBackend::<'_, 4>::with_block_table(&mut arena);
        let info = host.info();
        assert_eq!(info.backend, BackendKind::HOST);
        assert_eq!((info.name.as_str(), info.vendor.as_str()), ("host memory", "vram-relay"));
        assert_eq!((info.total, info.max_alloc), (1000, 1000));
        let id = host.alloc(1000).expect("whole arena");
        let mut out = [0xAAu8; 1000];
        host.read(id, 0, &mut out).expect("in bounds");
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn free_zeroes_and_stale_ids_fail_everywhere() {
        let mut arena = [0u8; 2048];
        let mut host = HostBackend::new(&mut arena);
        let id = host.alloc(300).expect("room");
        host.fill(id, 0, 300, 0xAB).expect("in bounds");
        host.free(id).expect("live");
        let e = Err(BackendError::NoSuchBuffer);
        assert_eq!(host.free(id), e);
        assert_eq!(host.size(id), e.map(|()| 0));
        assert_eq!(host.write(id, 0, &[1]), e);
        assert_eq!(host.read(id, 0, &mut [0]), e);
        assert_eq!(host.fill(id, 0, 1, 1), e);
        let again = host.alloc(300).expect("room");
        assert_ne!(again, id);
        assert_eq!(host.copy(id, 0, again, 0, 1), e);
        assert_eq!(host.copy(again, 0, id, 0, 1), e);
        drop(host);
        assert!(arena.iter().all(|&b| b == 0), "freed bytes were zeroed in the arena itself");
    }

    #[test]
    fn bounds_and_overlap_leave_memory_untouched() {
        let mut arena = [0u8; 4096];
        let mut host = HostBackend::new(&mut arena);
        let a = host.alloc(10).expect("room");
        let b = host.alloc(10).expect("room");
        host.write(a, 0, &[7; 10]).expect("in bounds");
        let oob = Err(BackendError::OutOfBounds);
        assert_eq!(host.write(a, 5, &[1; 6]), oob);
        assert_eq!(host.write(a, u64::MAX, &[1]), oob);
        assert_eq!(host.read(a, 11, &mut []), oob);
        assert_eq!(host.fill(a, 1, u64::MAX, 0), oob);
        assert_eq!(host.copy(a, 0, b, 1, 10), oob);
        assert_eq!(host.copy(a, 0, a, 4, 5), Err(BackendError::InvalidArgument));
        assert_eq!(host.copy(a, 0, a, 5, 5), Ok(()));
        assert_eq!(host.write(a, 10, &[]), Ok(()));
        let mut out = [0u8; 10];
        host.read(a, 0, &mut out).expect("in bounds");
        assert_eq!(out, [7; 10]);
        host.read(b, 0, &mut out).expect("in bounds");
        assert_eq!(out, [0; 10]);
    }

    #[test]
    fn kernels_use_the_right_buffers() {
        let mut arena = [0u8; 8192];
        let mut host = HostBackend::new(&mut arena);
        // Output between inputs in the arena, and after them, to exercise both split halves.
        let a = host.alloc(16).expect("room");
        let out = host.alloc(16).expect("room");
        let b = host.alloc(16).expect("room");
        host.write(a, 0, &f32s(&[1.0, 2.0, 3.0, 4.0])).expect("in bounds");
        host.write(b, 0, &f32s(&[10.0, 20.0, 30.0, 40.0])).expect("in bounds");
        host.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a, b, out, n: 3 }).expect("valid");
        let mut got = [0u8; 16];
        host.read(out, 0, &mut got).expect("in bounds");
        assert_eq!(got.to_vec(), f32s(&[11.0, 22.0, 33.0, 0.0]));
        host.dispatch(&KernelCall::Scale { x: out, out: a, n: 4, alpha: 2.0 }).expect("valid");
        host.read(a, 0, &mut got).expect("in bounds");
        assert_eq!(got.to_vec(), f32s(&[22.0, 44.0, 66.0, 0.0]));
        // 2x2 · 2x2 with the output in the tail.
        let c = host.alloc(16).expect("room");
        host.dispatch(&KernelCall::Matmul { a, b, out: c, m: 2, k: 2, n: 2 }).expect("valid");
        host.read(c, 0, &mut got).expect("in bounds");
        assert_eq!(
            got.to_vec(),
            f32s(&[22.0 * 10.0 + 44.0 * 30.0, 22.0 * 20.0 + 44.0 * 40.0, 66.0 * 10.0, 66.0 * 20.0])
        );
        let bad = KernelCall::Binary { op: BinaryOp::Mul, a, b, out: a, n: 1 };
        assert_eq!(host.dispatch(&bad), Err(BackendError::InvalidArgument));
        let big = KernelCall::Scale { x: a, out: b, n: 5, alpha: 1.0 };
        assert_eq!(host.dispatch(&big), Err(BackendError::OutOfBounds));
    }

    #[cfg(feature = "std")]
    #[test]
    fn owned_backend_has_the_requested_capacity() {
        let mut host = OwnedHostBackend::with_capacity(1 << 20);
        assert_eq!(host.info().total, 1 << 20);
        let id = host.alloc(1 << 20).expect("whole arena");
        assert_eq!(host.alloc(1), Err(BackendError::OutOfMemory));
        host.free(id).expect("live");
        assert!(OwnedHostBackend::try_with_capacity(4096).is_ok());
        let arena = std::vec![0xEEu8; 4096].into_boxed_slice();
        let mut host = OwnedHostBackend::<2>::with_block_table(arena);
        host.alloc(1).expect("room");
        host.alloc(1).expect("room");
        assert_eq!(host.alloc(1), Err(BackendError::OutOfMemory));
        assert_eq!(host.usage(), Usage { used: 2, buffers: 2 });
    }
}
