//! Owned arenas with a larger block table, and lazily committed memory.

use rela_backend_host::HostMemory;
use rela_core::backend::{BackendError, GpuBackend};

#[test]
fn a_larger_table_holds_more_live_buffers() {
    let mut b = HostMemory::<Box<[u8]>, 1024>::try_with_blocks(8 << 20).expect("8 MiB");
    let ids: Vec<_> = (0..1024).map(|_| b.alloc(16).expect("room in the table")).collect();
    assert_eq!(b.alloc(16), Err(BackendError::OutOfMemory), "a full table is a typed error");
    assert_eq!(b.usage().buffers, 1024);
    for id in ids {
        b.free(id).expect("free");
    }
    assert_eq!(b.usage().used, 0);
}

#[test]
fn an_impossible_arena_is_an_error_not_an_abort() {
    assert!(HostMemory::<Box<[u8]>, 16>::try_with_blocks(usize::MAX).is_err());
}
