//! Host memory shared between the host backend and the connection readers, so that a WRITE's
//! data goes from the socket straight into its buffer (no copy through a staging buffer).
//!
//! [`SharedArena`] is the host backend's storage ([`rela_backend_host::Arena`]): the backend,
//! on the engine thread, reaches it only by naming the byte ranges of the buffers it works on.
//! [`DirectMemory`] is the engine's second handle on the same memory: for a WRITE that the
//! session has accepted ([`rela_core::session::Session::begin_write`]) it lends the buffer's
//! range to the connection's reader as a [`Lease`], and the reader reads the payload into it.
//! For a READ it lends the range the other way: the engine computes the response's CRC over it
//! and the connection's writer sends the bytes from there.
//!
//! # Why this is sound
//!
//! The memory is a mapping of its own (not heap memory) owned by [`Memory`] behind an `Arc`; no
//! reference to all of it ever exists, only references to the ranges an access names, so the
//! rules for references apply range by range. Two handles touch it:
//!
//! - the backend, through [`SharedArena`], on the engine thread: the ranges of the buffers
//!   named by the call it is running (a session's own buffers, a model's tensors);
//! - a reader, through a [`Lease`]: one buffer of its own session, for the WRITEs into it;
//! - a writer, through a [`Lease`]: the range of a READ's data, only read (several READs of
//!   one session may be out at once; they only read).
//!
//! The engine grants a lease only for a range [`GpuBackend::storage_range`] reports inside a
//! live buffer of the leasing session, and until the lease comes back it runs no input of that
//! session that could write or free a buffer (only further READs, which only read; everything
//! else, the session's timer, an abort and the node's shutdown wait; see `engine.rs`). Other
//! sessions cannot name that buffer. So while a WRITE lease lives nothing else touches its
//! bytes, and while READ leases live nothing writes theirs. A READ lease goes back before its
//! session could free anything: the lease's drop, then the deferred commands. The `Arc` keeps
//! the memory alive for as long as any lease exists, even if the engine thread ends first.
//!
//! # Freed memory goes back to the OS
//!
//! A freed buffer's range is zeroed before another buffer can get it ([`Arena::release`]). For
//! a large range the zeros are not written: the whole pages inside it go back to the OS
//! (`madvise(MADV_DONTNEED)` on Linux, valid because the mapping is private, anonymous and
//! page-aligned by construction), so the node's resident memory shrinks as soon as a session's
//! buffers are freed, and those pages read as zero when next touched. Only the unaligned head
//! and tail are filled.
//!
//! The mapping asks for transparent huge pages (`MADV_HUGEPAGE`): a first write into fresh
//! memory then faults once per 2 MiB, not once per 4 KiB. A range given back splits the huge
//! pages it cuts, so what goes back is still exactly the freed range's whole 4 KiB pages.
//!
//! [`GpuBackend::storage_range`]: rela_core::backend::GpuBackend::storage_range

use std::io;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Arc;

use rela_backend_host::{Arena, HostMemory, KernelInputs};
use rela_core::backend::BackendError;

/// Freed ranges whose page-aligned interior spans at least this many bytes go back to the OS
/// (where it zeroes them by unmapping, [`os::discard`]); smaller ones are zeroed with a fill,
/// which costs about what the system call does and keeps their pages for the next buffer.
const DISCARD_MIN: usize = 64 * 1024;

/// Zeroed memory mapped straight from the OS, reached only through raw pointers.
///
/// The mapping is made here ([`os::map`]: private and anonymous on Unix), not by an allocator,
/// so by construction it starts on a page boundary, reads as zero, gets physical pages only as
/// they are written, and is the only thing on its pages. That is what lets [`zero`](Self::zero)
/// hand whole pages back to the OS instead of writing zeros into them.
///
/// Invariant (set by [`zeroed`](Self::zeroed), the only constructor; the fields are private to
/// this module and never change): `ptr..ptr + len` is one mapping owned by this value, and
/// where `page` is `Some(p)` it is a private anonymous mapping starting on a `p`-aligned
/// address, `p` being the OS page size.
#[derive(Debug)]
struct Memory {
    /// The mapping's start, or dangling when `len` is 0 (nothing mapped).
    ptr: NonNull<u8>,
    len: usize,
    /// The OS page size where pages may be given back ([`os::discard`], Linux), else `None`.
    page: Option<usize>,
}

// SAFETY: `Memory` is plain bytes with no thread affinity; who may touch which bytes when is
// governed by the lease discipline in the module docs, not by the owner's thread.
unsafe impl Send for Memory {}
// SAFETY: as above; `&Memory` gives no access by itself (every access is an `unsafe` range
// access justified at its call site).
unsafe impl Sync for Memory {}

impl Memory {
    /// `len` zeroed bytes, which the OS backs only as they are written, or why it cannot map
    /// them.
    fn zeroed(len: usize) -> io::Result<Self> {
        let ptr = if len == 0 { NonNull::dangling() } else { os::map(len)? };
        Ok(Self { ptr, len, page: os::page_size() })
    }

    /// Panics unless `r` lies inside the allocation (a broken caller, never the peer: every
    /// range comes from the backend's allocator).
    fn check(&self, r: &Range<usize>) {
        assert!(r.start <= r.end && r.end <= self.len, "range {r:?} outside an arena of {} bytes", self.len);
    }

    /// The bytes of `r`.
    ///
    /// # Safety
    /// `r` is inside the allocation and nothing changes those bytes while the slice lives.
    unsafe fn slice(&self, r: Range<usize>) -> &[u8] {
        // SAFETY: in bounds (caller), and no writer for the slice's lifetime (caller).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(r.start), r.len()) }
    }

    /// The bytes of `r`, to change.
    ///
    /// # Safety
    /// `r` is inside the allocation and nothing else touches those bytes while the slice lives.
    #[allow(clippy::mut_from_ref, reason = "exclusive per range, by the lease discipline")]
    unsafe fn slice_mut(&self, r: Range<usize>) -> &mut [u8] {
        // SAFETY: in bounds (caller), and exclusive for the slice's lifetime (caller).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(r.start), r.len()) }
    }

    /// The whole pages inside `r` (possibly none), where pages may be given back or populated:
    /// offsets that are multiples of the page size are page boundaries because the mapping
    /// starts on one (`os::map`).
    fn whole_pages(&self, r: &Range<usize>) -> Option<Range<usize>> {
        let page = self.page?;
        let start = r.start.next_multiple_of(page).min(r.end);
        Some(start..(r.end - r.end % page).max(start))
    }

    /// Backs the whole pages inside `r` with memory now (as a first write would, without
    /// writing), leaving every byte as it is. A partial page at either end is left to its first
    /// write. `Err` only when the OS has no memory for them.
    fn commit(&self, r: &Range<usize>) -> io::Result<()> {
        match self.whole_pages(r) {
            // SAFETY: whole pages inside this mapping (`r` is inside it: the caller checked);
            // populating changes no byte, so it is sound whatever else reads or writes them.
            Some(p) if !p.is_empty() => unsafe { os::populate(self.ptr.as_ptr().add(p.start), p.len()) },
            _ => Ok(()),
        }
    }

    /// Sets the bytes of `r` to zero. The whole pages inside a large `r` go back to the OS
    /// (they read as zero and hold no memory until written again); the unaligned head and tail,
    /// and all of a small `r`, are filled with zeros.
    ///
    /// # Safety
    /// `r` is inside the allocation and nothing else touches those bytes meanwhile.
    unsafe fn zero(&self, r: Range<usize>) {
        if let Some(Range { start, end }) = self.whole_pages(&r) {
            // SAFETY: `start..end` is whole pages inside `r`, so inside this mapping and
            // untouched by anything else (caller).
            if end - start >= DISCARD_MIN && unsafe { os::discard(self.ptr.as_ptr().add(start), end - start) }
            {
                // SAFETY: both inside `r` (caller).
                unsafe {
                    self.slice_mut(r.start..start).fill(0);
                    self.slice_mut(end..r.end).fill(0);
                }
                return;
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.slice_mut(r) }.fill(0);
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping `zeroed` made, unmapped once (the last `Arc` goes, so no
            // slice or lease of it is left).
            unsafe { os::unmap(self.ptr, self.len) };
        }
    }
}

/// The OS's memory calls: every `unsafe` call into libc in this crate.
#[cfg(unix)]
mod os {
    use std::io;
    use std::ptr::{self, NonNull};

    /// Maps `len` (more than 0) bytes of private anonymous memory: page-aligned, zeroed, backed
    /// by physical pages only once written (huge pages where the system allows).
    pub(super) fn map(len: usize) -> io::Result<NonNull<u8>> {
        // SAFETY: a new mapping at an address the kernel picks; it replaces nothing.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Transparent huge pages where the system gives them on request (`madvise` mode, a
        // common default): a buffer's first write then faults once per 2 MiB instead of once
        // per 4 KiB, which is most of the cost of uploading into fresh memory. Refused (THP
        // off, another system), the mapping stays as it is.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: advice on the whole mapping just made; it changes no contents.
        let _ = unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned address 0"))
    }

    /// Unmaps a mapping.
    ///
    /// # Safety
    /// `ptr` and `len` are exactly a mapping made by [`map`], and nothing uses it afterwards.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
        // SAFETY: a whole mapping of ours (caller). Failure is impossible for one made by
        // `map`; nothing could be done about it in a destructor anyway.
        let _ = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    }

    /// The size of a page, where [`discard`] may be used.
    pub(super) fn page_size() -> Option<usize> {
        // SAFETY: sysconf reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page).ok().filter(|&p| p > 0 && cfg!(any(target_os = "linux", target_os = "android")))
    }

    /// Backs the pages at `ptr..ptr + len` with memory, writable, without changing a byte
    /// (`MADV_POPULATE_WRITE`, Linux 5.14). `Err` only when the OS has no memory for them; a
    /// kernel without it (or another system) leaves them to their first write.
    ///
    /// # Safety
    /// `ptr` is page-aligned, `len` a multiple of the page size, and the range inside a mapping
    /// made by [`map`].
    pub(super) unsafe fn populate(ptr: *mut u8, len: usize) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: whole pages of our private anonymous mapping (caller); populating faults
            // them in as a write would, and changes no contents.
            if unsafe { libc::madvise(ptr.cast(), len, libc::MADV_POPULATE_WRITE) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOMEM) {
                    return Err(e);
                }
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = (ptr, len);
        Ok(())
    }

    /// Gives the pages at `ptr..ptr + len` back to the OS; they read as zero afterwards.
    /// `false` if they were left as they are (the caller zeroes them itself).
    ///
    /// On Linux, `MADV_DONTNEED` on a private anonymous mapping frees the pages at once, and a
    /// later access maps fresh zeroed pages; other systems make no such promise for it.
    ///
    /// # Safety
    /// `ptr` is page-aligned, `len` a multiple of the page size, the range inside a mapping made
    /// by [`map`], and nothing else touches it meanwhile.
    pub(super) unsafe fn discard(ptr: *mut u8, len: usize) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: whole pages of our private anonymous mapping that nothing else touches
            // (caller): dropping their contents is the same as writing zeros.
            unsafe { libc::madvise(ptr.cast(), len, libc::MADV_DONTNEED) == 0 }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = (ptr, len);
            false
        }
    }
}

/// The OS's memory calls, without Unix: zeroed memory from the global allocator, never handed
/// back early.
#[cfg(not(unix))]
mod os {
    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::io;
    use std::ptr::NonNull;

    /// `len` (more than 0) zeroed bytes.
    pub(super) fn map(len: usize) -> io::Result<NonNull<u8>> {
        let layout = Layout::from_size_align(len, 1).map_err(io::Error::other)?;
        // SAFETY: `layout` has a non-zero size.
        NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }

    /// Frees memory from [`map`].
    ///
    /// # Safety
    /// `ptr` and `len` are exactly what [`map`] gave, and nothing uses it afterwards.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
        // SAFETY: allocated by `map` with this layout (caller), which `map` checked.
        unsafe { dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(len, 1)) }
    }

    /// No pages are ever handed back here.
    pub(super) const fn page_size() -> Option<usize> {
        None
    }

    /// Never called: [`page_size`] is `None`.
    ///
    /// # Safety
    /// None needed: it does nothing.
    pub(super) unsafe fn populate(_: *mut u8, _: usize) -> io::Result<()> {
        Ok(())
    }

    /// Never called: [`page_size`] is `None`.
    ///
    /// # Safety
    /// None needed: it does nothing.
    pub(super) unsafe fn discard(_: *mut u8, _: usize) -> bool {
        false
    }
}

/// The host backend's storage in a node ([`NodeBackend::host`](crate::NodeBackend::host)): shared with
/// the connection tasks, which read WRITE data into it and send READ data from it.
#[derive(Debug)]
pub(crate) struct SharedArena {
    mem: Arc<Memory>,
    /// Not written since it was made (the OS gave zeroed pages): `zero_all` can skip the pass
    /// (which would commit every page of the arena at once).
    fresh: bool,
}

impl Arena for SharedArena {
    type Inputs<'a> = SharedInputs<'a>;

    fn len(&self) -> usize {
        self.mem.len
    }

    fn zero_all(&mut self) {
        if !self.fresh {
            let all = 0..self.mem.len;
            // SAFETY: in bounds; called when the backend is made, before any lease exists.
            unsafe { self.mem.zero(all) };
        }
    }

    fn release(&mut self, r: Range<usize>) {
        self.mem.check(&r);
        // SAFETY: in bounds; the range of a buffer being freed, which no lease holds (the engine
        // frees nothing of a session while its leases are out: module docs), and `&mut self`
        // keeps the backend from holding a slice of it meanwhile.
        unsafe { self.mem.zero(r) };
    }

    fn commit(&mut self, r: Range<usize>) -> Result<(), BackendError> {
        self.mem.check(&r);
        self.mem.commit(&r).map_err(|e| {
            tracing::warn!(bytes = r.len(), error = %e, "the OS has no memory to back a buffer");
            BackendError::OutOfMemory
        })
    }

    fn bytes(&self, r: Range<usize>) -> &[u8] {
        self.mem.check(&r);
        // SAFETY: in bounds; the backend names a range of a buffer it is working on, which no
        // lease holds (module docs), and `&self` keeps the backend from changing it meanwhile.
        unsafe { self.mem.slice(r) }
    }

    fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        self.mem.check(&r);
        self.fresh = false;
        // SAFETY: in bounds; a range of a buffer the backend is working on, which no lease
        // holds, and `&mut self` makes this the backend's only slice.
        unsafe { self.mem.slice_mut(r) }
    }

    fn copy_within(&mut self, src: Range<usize>, dst: usize) {
        let to = dst..dst.saturating_add(src.len());
        self.mem.check(&src);
        self.mem.check(&to);
        assert!(src.end <= to.start || to.end <= src.start, "overlapping copy");
        self.fresh = false;
        // SAFETY: both in bounds and disjoint, ranges of buffers the backend is working on.
        let (from, into) = unsafe { (self.mem.slice(src), self.mem.slice_mut(to)) };
        into.copy_from_slice(from);
    }

    fn split(&mut self, out: Range<usize>) -> (SharedInputs<'_>, &mut [u8]) {
        self.mem.check(&out);
        self.fresh = false;
        // SAFETY: in bounds; the output range of a kernel call, which no lease holds; inputs
        // are handed out only outside it (`SharedInputs::get`).
        let bytes = unsafe { self.mem.slice_mut(out.clone()) };
        (SharedInputs { mem: &self.mem, out }, bytes)
    }
}

/// The input ranges of a kernel call on a [`SharedArena`].
#[derive(Debug)]
pub(crate) struct SharedInputs<'a> {
    mem: &'a Memory,
    out: Range<usize>,
}

impl KernelInputs for SharedInputs<'_> {
    fn get(&self, r: Range<usize>) -> &[u8] {
        self.mem.check(&r);
        assert!(r.end <= self.out.start || self.out.end <= r.start, "kernel input overlaps its output");
        // SAFETY: in bounds, outside the call's output range, and a range of a buffer the
        // kernel names, which no lease holds.
        unsafe { self.mem.slice(r) }
    }
}

/// The engine's handle on a [`SharedArena`]'s memory, to lend ranges to readers.
#[derive(Debug, Clone)]
pub(crate) struct DirectMemory {
    mem: Arc<Memory>,
}

impl DirectMemory {
    /// Lends `r` to a reader.
    ///
    /// # Safety
    /// `r` is the range of a live buffer (as [`GpuBackend::storage_range`] reports it) that
    /// nothing else touches until the lease is dropped: see the module docs.
    ///
    /// [`GpuBackend::storage_range`]: rela_core::backend::GpuBackend::storage_range
    pub(crate) unsafe fn lease(&self, r: Range<usize>) -> Lease {
        self.mem.check(&r);
        Lease { mem: self.mem.clone(), range: r }
    }
}

/// A buffer's range lent to a reader for one WRITE. Keeps the memory alive.
#[derive(Debug)]
pub(crate) struct Lease {
    mem: Arc<Memory>,
    range: Range<usize>,
}

impl Lease {
    /// Bytes lent.
    pub(crate) fn len(&self) -> usize {
        self.range.len()
    }

    /// The leased bytes, to read.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: in bounds (checked when lent); while the lease lives nothing writes the range
        // (`DirectMemory::lease`'s contract; a READ lease is only ever read).
        unsafe { self.mem.slice(self.range.clone()) }
    }

    /// The leased bytes.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: in bounds (checked when lent) and exclusive to this lease until it is dropped
        // (`DirectMemory::lease`'s contract); `&mut self` makes this the only slice of it.
        unsafe { self.mem.slice_mut(self.range.clone()) }
    }
}

/// A host backend over a [`SharedArena`] with a table of `N` live buffers, and the engine's
/// handle on its memory.
pub(crate) fn host_backend<const N: usize>(
    capacity: usize,
) -> io::Result<(HostMemory<SharedArena, N>, DirectMemory)> {
    let mem = Arc::new(Memory::zeroed(capacity)?);
    let direct = DirectMemory { mem: mem.clone() };
    Ok((HostMemory::with_block_table(SharedArena { mem, fresh: true }), direct))
}

#[cfg(test)]
mod tests {
    use rela_core::backend::{BinaryOp, GpuBackend, KernelCall};

    use super::*;

    #[test]
    fn a_lease_lands_in_the_buffer_and_the_backend_works_around_it() {
        let (mut host, direct) = host_backend::<16>(1 << 16).expect("arena");
        let a = host.alloc(1024).expect("a");
        let b = host.alloc(1024).expect("b");
        let out = host.alloc(1024).expect("out");
        let r = host.storage_range(a, 4, 1000).expect("a's range");
        // SAFETY: `a` is live and nothing else touches it while the lease lives.
        let mut lease = unsafe { direct.lease(r) };
        lease.as_mut_slice().copy_from_slice(&[7u8; 1000]);
        drop(lease);
        let mut back = vec![0u8; 1024];
        host.read(a, 0, &mut back).expect("read");
        assert_eq!(&back[..4], &[0; 4]);
        assert!(back[4..1004].iter().all(|&x| x == 7));
        assert_eq!(&back[1004..], &[0; 20]);
        // Kernels and copies go through ranges too.
        host.fill(b, 0, 1024, 0).expect("fill");
        let ones: Vec<u8> = 1.0f32.to_le_bytes().repeat(256);
        host.write(b, 0, &ones).expect("write");
        host.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a: b, b, out, n: 256 }).expect("add");
        host.read(out, 0, &mut back).expect("read out");
        assert_eq!(&back[..4], &2.0f32.to_le_bytes());
        host.copy(out, 0, a, 0, 8).expect("copy");
        host.read(a, 0, &mut back[..8]).expect("read a");
        assert_eq!(&back[..8], &[0, 0, 0, 64, 0, 0, 0, 64]);
        // Freeing zeroes the arena range.
        host.free(a).expect("free");
        let r = host.storage_range(b, 0, 1024).expect("b's range");
        assert_eq!(r.start % rela_backend_host::ALIGN, 0);
        assert!(host.storage_range(a, 0, 1).is_none(), "freed buffers have no range");
    }

    /// Which pages of `r` are resident (Linux `mincore`).
    #[cfg(target_os = "linux")]
    fn resident_pages(mem: &Memory, r: Range<usize>) -> Vec<bool> {
        let page = mem.page.expect("Linux gives pages back");
        assert!(r.start.is_multiple_of(page) && r.end.is_multiple_of(page));
        let mut vec = vec![0u8; r.len() / page];
        // SAFETY: `r` is whole pages of the mapping; mincore only reports on them.
        let rc = unsafe { libc::mincore(mem.ptr.as_ptr().add(r.start).cast(), r.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().map(|&v| v & 1 == 1).collect()
    }

    #[test]
    fn zeroing_a_large_range_gives_its_whole_pages_back_and_nothing_outside_it() {
        let mem = Memory::zeroed(4 << 20).expect("map");
        let page = mem.page.unwrap_or(4096);
        assert_eq!(mem.ptr.as_ptr() as usize % page, 0, "the mapping starts on a page");
        // SAFETY: all of it, no other access in this test.
        unsafe { mem.slice_mut(0..mem.len) }.fill(0xAB);
        // Unaligned at both ends, with hundreds of whole pages inside.
        let r = 3 * page + 100..300 * page - 7;
        // SAFETY: in bounds, no other access.
        unsafe { mem.zero(r.clone()) };
        #[cfg(target_os = "linux")]
        {
            let interior = resident_pages(&mem, 4 * page..299 * page);
            assert!(interior.iter().all(|&p| !p), "whole pages inside the range were handed back");
            let edges = resident_pages(&mem, 3 * page..4 * page);
            assert!(edges[0], "the page holding the head (and bytes outside the range) stays");
        }
        // SAFETY: in bounds, no writer.
        let all = unsafe { mem.slice(0..mem.len) };
        assert!(all[r.clone()].iter().all(|&b| b == 0), "the range reads as zero");
        assert!(all[..r.start].iter().all(|&b| b == 0xAB), "bytes before it are untouched");
        assert!(all[r.end..].iter().all(|&b| b == 0xAB), "bytes after it are untouched");
    }

    #[test]
    fn zeroing_a_small_range_fills_it() {
        let mem = Memory::zeroed(1 << 20).expect("map");
        // SAFETY: all of it, no other access in this test.
        unsafe { mem.slice_mut(0..mem.len) }.fill(0xAB);
        let r = 5000..5000 + DISCARD_MIN / 2;
        // SAFETY: in bounds, no other access.
        unsafe { mem.zero(r.clone()) };
        // SAFETY: in bounds, no writer.
        let all = unsafe { mem.slice(0..mem.len) };
        assert!(all[r.clone()].iter().all(|&b| b == 0));
        assert!(all[..r.start].iter().all(|&b| b == 0xAB) && all[r.end..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn an_empty_arena_maps_nothing() {
        let (mut host, _direct) = host_backend::<4>(0).expect("nothing to map");
        assert!(host.alloc(1).is_err());
    }

    #[test]
    fn the_shared_arena_passes_the_backend_suite_with_its_storage_in_view() {
        use rela_conformance::{SUITE_CAPACITY, Tested};
        let make = || {
            let (host, _direct) = host_backend::<{ rela_backend_host::MAX_BLOCKS }>(SUITE_CAPACITY as usize)
                .map_err(|e| e.to_string())?;
            Ok(Tested::inspectable(host))
        };
        let report = rela_conformance::run_suite("node-host", &make);
        // Every case ran (zero_after_free included, through the view) and passed.
        assert_eq!(
            report.counts(),
            (rela_conformance::CASES.len(), 0, 0),
            "{}",
            rela_conformance::render_table(&[report])
        );
    }

    #[test]
    fn a_lease_keeps_the_memory_alive_after_the_backend_is_gone() {
        let (mut host, direct) = host_backend::<16>(4096).expect("arena");
        let a = host.alloc(64).expect("a");
        let r = host.storage_range(a, 0, 64).expect("range");
        // SAFETY: `a` is live; the backend is dropped below and never touches it again.
        let mut lease = unsafe { direct.lease(r) };
        drop(host);
        lease.as_mut_slice().fill(1);
        assert!(lease.as_mut_slice().iter().all(|&x| x == 1));
    }
}
