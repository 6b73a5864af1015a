//! The storage a [`HostMemory`](crate::HostMemory) lends out.
//!
//! The backend reaches its storage only through [`Arena`], and every call names the byte range
//! it touches: a buffer's range for `write`, `read` and `fill`, the two ranges of a `copy`, and
//! for a kernel its output range plus the input ranges it reads. It never takes the whole
//! storage at once after construction. So an [`Arena`] whose owner hands other ranges to other
//! threads (a node reading a WRITE's data from its socket straight into the buffer) only ever
//! sees the backend touch ranges of the buffers it is asked to work on.
//!
//! `&mut [u8]` and `Box<[u8]>` are arenas.

use core::ops::Range;

/// Byte storage addressed by range. Ranges passed in always lie inside `0..len()`.
pub trait Arena {
    /// The input ranges of one kernel call (see [`split`](Self::split)).
    type Inputs<'a>: KernelInputs
    where
        Self: 'a;

    /// Bytes of storage.
    fn len(&self) -> usize;

    /// Whether the storage is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets every byte to zero (once, when the backend is made). An arena that knows it is
    /// still zero (fresh pages) may skip the pass.
    fn zero_all(&mut self);

    /// The bytes of `r`.
    fn bytes(&self, r: Range<usize>) -> &[u8];

    /// The bytes of `r`, to change.
    fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8];

    /// Copies `src` to `dst..dst + src.len()`; the ranges do not overlap.
    fn copy_within(&mut self, src: Range<usize>, dst: usize);

    /// Zeroes the bytes of `r`, a freed buffer's range, before any other buffer can get them.
    /// An arena may return whole pages of `r` to the OS instead of writing them, as long as
    /// they read as zero afterwards (a node's arena does, for large ranges); the default fills
    /// `r` with zeros.
    fn release(&mut self, r: Range<usize>) {
        self.bytes_mut(r).fill(0);
    }

    /// Backs the bytes of `r`, a live buffer's range, with memory now, without changing them.
    /// Storage that is memory already (a slice, a boxed array: the default) has nothing to do;
    /// a mapping the OS backs on first touch (a node's arena) faults its pages in, and answers
    /// [`BackendError::OutOfMemory`] if the OS has none.
    ///
    /// [`BackendError::OutOfMemory`]: rela_core::backend::BackendError::OutOfMemory
    fn commit(&mut self, r: Range<usize>) -> Result<(), rela_core::backend::BackendError> {
        let _ = r;
        Ok(())
    }

    /// The output range `out` of a kernel, to change, and access to its input ranges, which lie
    /// wholly outside `out`.
    fn split(&mut self, out: Range<usize>) -> (Self::Inputs<'_>, &mut [u8]);
}

impl<S: Arena, const N: usize> crate::HostMemory<S, N> {
    /// The storage, freed ranges included, to inspect: a test checking what `free` left
    /// behind reads it at the ranges [`GpuBackend::storage_range`] reported for live buffers.
    ///
    /// [`GpuBackend::storage_range`]: rela_core::backend::GpuBackend::storage_range
    pub const fn storage(&self) -> &S {
        &self.storage
    }
}

/// The input ranges of a kernel call.
pub trait KernelInputs {
    /// The bytes of input range `r` (outside the call's output range).
    fn get(&self, r: Range<usize>) -> &[u8];
}

/// The storage around an output range: everything before it and everything after it.
#[derive(Debug)]
pub struct Around<'s> {
    head: &'s [u8],
    tail: &'s [u8],
    tail_start: usize,
}

impl KernelInputs for Around<'_> {
    /// An input range. Live buffers are disjoint and validation rejected an input aliasing the
    /// output, so `r` lies wholly in the head or wholly in the tail.
    fn get(&self, r: Range<usize>) -> &[u8] {
        if r.end <= self.head.len() {
            &self.head[r]
        } else {
            &self.tail[r.start - self.tail_start..r.end - self.tail_start]
        }
    }
}

/// Splits `storage` into the mutable output range and the shared rest.
fn around(storage: &mut [u8], out: Range<usize>) -> (Around<'_>, &mut [u8]) {
    let (head, rest) = storage.split_at_mut(out.start);
    let (out_bytes, tail) = rest.split_at_mut(out.len());
    (Around { head, tail, tail_start: out.end }, out_bytes)
}

macro_rules! slice_arena {
    ($ty:ty) => {
        impl Arena for $ty {
            type Inputs<'a>
                = Around<'a>
            where
                Self: 'a;

            fn len(&self) -> usize {
                <[u8]>::len(self)
            }

            fn zero_all(&mut self) {
                self.fill(0);
            }

            fn bytes(&self, r: Range<usize>) -> &[u8] {
                &self[r]
            }

            fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8] {
                &mut self[r]
            }

            fn copy_within(&mut self, src: Range<usize>, dst: usize) {
                <[u8]>::copy_within(self, src, dst);
            }

            fn split(&mut self, out: Range<usize>) -> (Around<'_>, &mut [u8]) {
                around(self, out)
            }
        }
    };
}

slice_arena!(&mut [u8]);
#[cfg(feature = "std")]
slice_arena!(std::boxed::Box<[u8]>);

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use rela_core::backend::GpuBackend;

    use super::*;
    use crate::HostMemory;

    /// An arena that records what it is asked to release and leaves those bytes as they are.
    struct Recording<'a> {
        bytes: &'a mut [u8],
        released: Vec<Range<usize>>,
    }

    impl Arena for Recording<'_> {
        type Inputs<'a>
            = Around<'a>
        where
            Self: 'a;

        fn len(&self) -> usize {
            self.bytes.len()
        }

        fn zero_all(&mut self) {
            self.bytes.fill(0);
        }

        fn bytes(&self, r: Range<usize>) -> &[u8] {
            &self.bytes[r]
        }

        fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8] {
            &mut self.bytes[r]
        }

        fn copy_within(&mut self, src: Range<usize>, dst: usize) {
            self.bytes.copy_within(src, dst);
        }

        fn release(&mut self, r: Range<usize>) {
            self.released.push(r);
        }

        fn split(&mut self, out: Range<usize>) -> (Around<'_>, &mut [u8]) {
            around(self.bytes, out)
        }
    }

    #[test]
    fn free_hands_exactly_the_buffers_range_to_release() {
        let mut bytes = [0u8; 4096];
        let mut host = HostMemory::new(Recording { bytes: &mut bytes, released: Vec::new() });
        let keep = host.alloc(100).expect("room");
        let id = host.alloc(300).expect("room");
        host.fill(id, 0, 300, 0xAB).expect("in bounds");
        host.fill(keep, 0, 100, 0xCD).expect("in bounds");
        let r = host.storage_range(id, 0, 300).expect("host memory has ranges");
        host.free(id).expect("live");
        let arena = host.into_storage();
        assert_eq!(arena.released, core::slice::from_ref(&r), "free releases the buffer's range, once");
        // Zeroing is the arena's job: this one kept the bytes, and nothing else was written.
        assert!(arena.bytes[r].iter().all(|&b| b == 0xAB));
        assert!(arena.bytes[..100].iter().all(|&b| b == 0xCD));
    }

    #[test]
    fn the_default_release_zeroes_the_range_only() {
        let mut bytes = [7u8; 64];
        let mut arena: &mut [u8] = &mut bytes;
        arena.release(10..20);
        assert!(bytes[..10].iter().all(|&b| b == 7));
        assert!(bytes[10..20].iter().all(|&b| b == 0));
        assert!(bytes[20..].iter().all(|&b| b == 7));
    }
}
