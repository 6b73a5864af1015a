//! The block allocator behind [`HostMemory`](crate::HostMemory): pure bookkeeping, no memory.

use core::ops::Range;

use heapless::Vec;
use rela_core::backend::{BackendError, BufferId};

/// Alignment of every buffer start, in bytes, relative to the start of the arena.
///
/// 256 is the strictest storage-buffer offset alignment GPU APIs ask for
/// (`minStorageBufferOffsetAlignment`), so offsets the host backend hands out are valid on any
/// device a buffer might later be mirrored to.
pub const ALIGN: usize = 256;

/// Default capacity of the block table: the most live buffers one backend holds at once.
///
/// Matches [`rela_core::config::MAX_BUFFERS`], the buffer table of one session, which is what an
/// embedded node serves. Each entry costs 24 bytes (16 on 32-bit targets); pick another
/// capacity with the `N` parameter of [`HostMemory`](crate::HostMemory) or [`Allocator`].
pub const MAX_BLOCKS: usize = 256;

/// One live buffer: where it lives in the arena and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    id: u64,
    offset: usize,
    size: usize,
}

impl Block {
    const fn end(&self) -> usize {
        // Cannot overflow: `offset + size <= arena length` was checked when the block was made.
        self.offset + self.size
    }
}

/// A first-fit allocator over an arena of `len` bytes with a fixed-capacity block table.
///
/// The table holds only live blocks, sorted by offset; the free space is exactly the gaps
/// between them. Freeing a block therefore coalesces it with its free neighbours at once, and
/// the table never fills with free fragments: `N` bounds live buffers only. Allocation takes the
/// first gap, in address order, that holds the size at an [`ALIGN`]-aligned start.
///
/// Ids come from a monotonic counter and are never reused, so a stale id is
/// [`BackendError::NoSuchBuffer`] for the allocator's whole lifetime. Lookups scan the table
/// (at most `N` entries).
#[derive(Debug, Clone)]
pub struct Allocator<const N: usize = MAX_BLOCKS> {
    len: usize,
    blocks: Vec<Block, N>,
    next_id: u64,
    used: u64,
}

impl<const N: usize> Allocator<N> {
    /// An empty allocator over an arena of `len` bytes.
    pub const fn new(len: usize) -> Self {
        Self { len, blocks: Vec::new(), next_id: 1, used: 0 }
    }

    /// Arena length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the arena has no bytes at all (every allocation fails).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in live buffers (the sum of their requested sizes).
    pub const fn used(&self) -> u64 {
        self.used
    }

    /// Live buffers.
    pub fn live(&self) -> usize {
        self.blocks.len()
    }

    /// Reserves `size` bytes and returns the new id and its byte range in the arena.
    ///
    /// Errors: `size == 0` is [`BackendError::InvalidArgument`]; no gap large enough, or a full
    /// block table, is [`BackendError::OutOfMemory`]. On error nothing changes.
    pub fn alloc(&mut self, size: u64) -> Result<(BufferId, Range<usize>), BackendError> {
        if size == 0 {
            return Err(BackendError::InvalidArgument);
        }
        let size = usize::try_from(size).map_err(|_| BackendError::OutOfMemory)?;
        if size > self.len || self.blocks.is_full() {
            return Err(BackendError::OutOfMemory);
        }
        let (index, offset) = self.first_fit(size).ok_or(BackendError::OutOfMemory)?;
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(BackendError::OutOfMemory)?;
        let block = Block { id, offset, size };
        // Cannot fail: the table was checked for room above.
        self.blocks.insert(index, block).map_err(|_| BackendError::OutOfMemory)?;
        self.used += size as u64;
        Ok((BufferId(id), offset..block.end()))
    }

    /// Releases a buffer and returns the arena range it held (the caller zeroes it).
    pub fn free(&mut self, id: BufferId) -> Result<Range<usize>, BackendError> {
        let index = self.index_of(id)?;
        let block = self.blocks.remove(index);
        self.used -= block.size as u64;
        Ok(block.offset..block.end())
    }

    /// The arena range of a live buffer (its length is the buffer's size).
    pub fn range(&self, id: BufferId) -> Result<Range<usize>, BackendError> {
        let block = self.blocks[self.index_of(id)?];
        Ok(block.offset..block.end())
    }

    /// The size of a live buffer, if there is one with this id.
    pub fn size(&self, id: BufferId) -> Option<u64> {
        self.blocks.iter().find(|b| b.id == id.0).map(|b| b.size as u64)
    }

    /// The largest single allocation that could succeed right now.
    pub fn largest_free(&self) -> usize {
        let mut best = 0;
        let mut prev_end: usize = 0;
        for b in self.blocks.iter().map(|b| (b.offset, b.end())).chain([(self.len, self.len)]) {
            if let Some(start) = prev_end.checked_next_multiple_of(ALIGN) {
                best = best.max(b.0.saturating_sub(start));
            }
            prev_end = b.1;
        }
        best
    }

    fn index_of(&self, id: BufferId) -> Result<usize, BackendError> {
        self.blocks.iter().position(|b| b.id == id.0).ok_or(BackendError::NoSuchBuffer)
    }

    /// The table index to insert at and the aligned offset of the first gap holding `size`.
    fn first_fit(&self, size: usize) -> Option<(usize, usize)> {
        let fits = |prev_end: usize, next_start: usize| {
            let start = prev_end.checked_next_multiple_of(ALIGN)?;
            (start.checked_add(size)? <= next_start).then_some(start)
        };
        let mut prev_end = 0;
        for (index, block) in self.blocks.iter().enumerate() {
            if let Some(start) = fits(prev_end, block.offset) {
                return Some((index, start));
            }
            prev_end = block.end();
        }
        fits(prev_end, self.len).map(|start| (self.blocks.len(), start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn alloc_zero_is_invalid_and_changes_nothing() {
        let mut a = Allocator::<8>::new(4096);
        assert_eq!(a.alloc(0), Err(BackendError::InvalidArgument));
        assert_eq!((a.used(), a.live()), (0, 0));
        // Ids are not consumed by a failed allocation.
        assert_eq!(a.alloc(1).map(|(id, _)| id), Ok(BufferId(1)));
    }

    #[test]
    fn starts_are_aligned_and_blocks_disjoint() {
        let mut a = Allocator::<64>::new(MIB);
        let mut ranges = std::vec::Vec::new();
        for size in [1u64, 3, 255, 256, 257, 4095, 4096, 1, 511] {
            let (_, r) = a.alloc(size).expect("room");
            assert_eq!(r.start % ALIGN, 0, "{r:?}");
            assert_eq!(r.len() as u64, size);
            ranges.push(r);
        }
        for (i, x) in ranges.iter().enumerate() {
            for y in &ranges[i + 1..] {
                assert!(x.end <= y.start || y.end <= x.start, "{x:?} overlaps {y:?}");
            }
        }
        // Packed tightly: 1 → 0, 3 → 256, 255 → 512, 256 → 768, 257 → 1024, 4095 → 1536...
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[1].start, 256);
        assert_eq!(ranges[4].start, 1024);
        assert_eq!(ranges[5].start, 1536);
        assert_eq!(a.used(), 1 + 3 + 255 + 256 + 257 + 4095 + 4096 + 1 + 511);
    }

    #[test]
    fn first_fit_reuses_holes_and_coalesces_neighbours() {
        let mut a = Allocator::<8>::new(4 * 1024);
        let ids: std::vec::Vec<_> = (0..4).map(|_| a.alloc(1024).expect("room").0).collect();
        assert_eq!(a.alloc(1), Err(BackendError::OutOfMemory));
        // Free the middle two: a 2048-byte hole only if they coalesce.
        a.free(ids[1]).expect("live");
        assert_eq!(a.largest_free(), 1024);
        a.free(ids[2]).expect("live");
        assert_eq!(a.largest_free(), 2048);
        let (_, r) = a.alloc(2048).expect("coalesced hole");
        assert_eq!(r, 1024..3072);
        // Fragmentation: 1024 free in two 512 holes does not hold 1024 bytes.
        let mut a = Allocator::<8>::new(3 * 1024);
        let x = a.alloc(512).expect("room").0;
        let _y = a.alloc(1024).expect("room").0;
        let z = a.alloc(512).expect("room").0;
        let _w = a.alloc(1024).expect("room").0;
        a.free(x).expect("live");
        a.free(z).expect("live");
        assert_eq!(a.used(), 2048);
        assert_eq!(a.alloc(1024), Err(BackendError::OutOfMemory));
        assert_eq!(a.alloc(512).map(|(_, r)| r), Ok(0..512), "first fit takes the lowest hole");
        assert_eq!(a.alloc(512).map(|(_, r)| r), Ok(1536..2048));
    }

    #[test]
    fn alignment_padding_counts_against_gaps() {
        let mut a = Allocator::<8>::new(512);
        a.alloc(1).expect("room");
        // 511 bytes are free but the next aligned start is 256, leaving 256.
        assert_eq!(a.alloc(257), Err(BackendError::OutOfMemory));
        assert_eq!(a.alloc(256).map(|(_, r)| r), Ok(256..512));
        // An arena that is not a multiple of ALIGN still hands out its tail.
        let mut a = Allocator::<8>::new(300);
        a.alloc(10).expect("room");
        assert_eq!(a.alloc(44).map(|(_, r)| r), Ok(256..300));
        assert_eq!(a.alloc(1), Err(BackendError::OutOfMemory));
    }

    #[test]
    fn exhaustion_of_bytes_and_of_table() {
        let mut a = Allocator::<2>::new(MIB);
        assert_eq!(a.alloc(MIB as u64 + 1), Err(BackendError::OutOfMemory));
        assert_eq!(a.alloc(u64::MAX), Err(BackendError::OutOfMemory));
        a.alloc(1).expect("room");
        let (last, _) = a.alloc(1).expect("room");
        assert_eq!(a.alloc(1), Err(BackendError::OutOfMemory), "table full");
        assert_eq!((a.used(), a.live()), (2, 2));
        a.free(last).expect("live");
        assert!(a.alloc(1).is_ok(), "usable again after a free");
        let mut a = Allocator::<4>::new(MIB);
        let (whole, r) = a.alloc(MIB as u64).expect("whole arena");
        assert_eq!(r, 0..MIB);
        assert_eq!(a.largest_free(), 0);
        a.free(whole).expect("live");
        assert_eq!(a.largest_free(), MIB);
    }

    #[test]
    fn stale_ids_are_never_reused() {
        let mut a = Allocator::<4>::new(4096);
        let (first, r1) = a.alloc(100).expect("room");
        a.free(first).expect("live");
        assert_eq!(a.free(first), Err(BackendError::NoSuchBuffer));
        let (second, r2) = a.alloc(100).expect("room");
        assert_eq!(r1, r2, "same region reused");
        assert_ne!(first, second, "but never the same id");
        assert_eq!(a.range(first), Err(BackendError::NoSuchBuffer));
        assert_eq!(a.size(first), None);
        assert_eq!(a.size(second), Some(100));
        assert_eq!(a.free(BufferId(0)), Err(BackendError::NoSuchBuffer));
        assert_eq!(a.free(BufferId(u64::MAX)), Err(BackendError::NoSuchBuffer));
    }

    #[test]
    fn accounting_is_exact_through_churn() {
        let mut a = Allocator::<32>::new(MIB);
        let mut live = std::vec::Vec::new();
        let mut expected = 0u64;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if live.is_empty() || (!seed.is_multiple_of(3) && live.len() < 32) {
                let size = 1 + seed % 20_000;
                match a.alloc(size) {
                    Ok((id, r)) => {
                        assert_eq!(r.start % ALIGN, 0);
                        live.push((id, r));
                        expected += size;
                    }
                    Err(e) => assert_eq!(e, BackendError::OutOfMemory, "step {step}"),
                }
            } else {
                let (id, r) = live.swap_remove((seed as usize / 3) % live.len());
                assert_eq!(a.free(id), Ok(r.clone()));
                expected -= r.len() as u64;
            }
            assert_eq!(a.used(), expected, "step {step}");
            assert_eq!(a.live(), live.len(), "step {step}");
            for (id, r) in &live {
                assert_eq!(a.range(*id).as_ref(), Ok(r));
            }
        }
    }
}
