//! `Checked`: argument checks once above any backend, and the lease rule (a leased buffer is
//! never written, and freeing it waits for its last lease).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::MockBackend;
use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall};
use rela_core::checked::Checked;

fn backend() -> (Checked<MockBackend>, BufferId, BufferId) {
    let mut b = Checked::new(MockBackend::new(1 << 20));
    let a = b.alloc(64).unwrap();
    let c = b.alloc(64).unwrap();
    b.write(a, 0, &[1; 64]).unwrap();
    b.write(c, 0, &[2; 64]).unwrap();
    (b, a, c)
}

#[test]
fn arguments_are_checked_before_the_raw_backend_sees_them() {
    let (mut b, a, c) = backend();
    assert_eq!(b.alloc(0), Err(BackendError::InvalidArgument));
    assert_eq!(b.write(a, 60, &[0; 8]), Err(BackendError::OutOfBounds));
    assert_eq!(b.write(a, u64::MAX, &[0; 1]), Err(BackendError::OutOfBounds));
    assert_eq!(b.fill(a, 1, u64::MAX, 0), Err(BackendError::OutOfBounds));
    assert_eq!(b.copy(a, 0, a, 8, 16), Err(BackendError::InvalidArgument), "overlapping copy");
    let mut out = [0u8; 8];
    assert_eq!(b.read(c, 60, &mut out), Err(BackendError::OutOfBounds));
    let add = KernelCall::Binary { op: BinaryOp::Add, a, b: c, out: a, n: 16 };
    assert_eq!(b.dispatch(&add), Err(BackendError::InvalidArgument), "output aliases an input");
    let too_long = KernelCall::Binary { op: BinaryOp::Add, a, b: c, out: a, n: 17 };
    assert_eq!(b.dispatch(&too_long), Err(BackendError::OutOfBounds));
    let d = b.alloc(64).unwrap();
    let ok = KernelCall::Binary { op: BinaryOp::Add, a, b: c, out: d, n: 16 };
    assert_eq!(b.dispatch_part(&ok, 3..17), Err(BackendError::InvalidArgument), "units past the call");
    #[allow(clippy::reversed_empty_ranges, reason = "an inverted range is one of the bad inputs")]
    let inverted = 5..4;
    assert_eq!(b.dispatch_part(&ok, inverted), Err(BackendError::InvalidArgument));
    // Nothing reached the raw backend's kernels; the contents are as written.
    assert!(b.inner().dispatched.is_empty());
    assert_eq!(b.inner().bufs[&a.0], vec![1; 64]);
    b.dispatch(&ok).unwrap();
    assert_eq!(b.inner().dispatched.len(), 1);
}

#[test]
fn a_leased_buffer_is_never_written() {
    let (mut b, a, c) = backend();
    b.lease(a).unwrap();
    assert!(b.is_leased(a));
    assert_eq!(b.write(a, 0, &[9; 4]), Err(BackendError::Leased));
    assert_eq!(b.fill(a, 0, 64, 9), Err(BackendError::Leased));
    assert_eq!(b.copy(c, 0, a, 0, 8), Err(BackendError::Leased));
    let into_a = KernelCall::Scale { x: c, out: a, n: 16, alpha: 2.0 };
    assert_eq!(b.dispatch(&into_a), Err(BackendError::Leased));
    assert_eq!(b.dispatch_part(&into_a, 0..4), Err(BackendError::Leased));
    assert_eq!(b.inner().bufs[&a.0], vec![1; 64], "the leased buffer is unchanged");
    // Reading it, and using it as an input, is fine.
    let mut out = [0u8; 4];
    b.read(a, 0, &mut out).unwrap();
    b.copy(a, 0, c, 0, 8).unwrap();
    b.end_lease(a).unwrap();
    assert!(!b.is_leased(a));
    b.write(a, 0, &[9; 4]).unwrap();
}

#[test]
fn freeing_a_leased_buffer_waits_for_its_last_lease() {
    let (mut b, a, _) = backend();
    let before = b.usage();
    b.lease(a).unwrap();
    b.lease(a).unwrap();
    b.free(a).unwrap();
    // Gone for the caller at once...
    assert_eq!(b.size(a), Err(BackendError::NoSuchBuffer));
    assert_eq!(b.free(a), Err(BackendError::NoSuchBuffer));
    let mut out = [0u8; 4];
    assert_eq!(b.read(a, 0, &mut out), Err(BackendError::NoSuchBuffer));
    assert_eq!(b.write(a, 0, &[0; 4]), Err(BackendError::NoSuchBuffer));
    assert_eq!(b.storage_range(a, 0, 4), None);
    // ...but its memory stays where it is while anyone still reaches it.
    assert!(b.inner().bufs.contains_key(&a.0));
    assert_eq!(b.usage(), before);
    b.end_lease(a).unwrap();
    assert!(b.inner().bufs.contains_key(&a.0), "one lease is still out");
    b.end_lease(a).unwrap();
    assert!(!b.inner().bufs.contains_key(&a.0), "freed with the last lease");
    assert_eq!(b.inner().freed.last(), Some(&(a.0, true)), "and zeroed");
    assert_eq!(b.end_lease(a), Err(BackendError::InvalidArgument), "no lease left");
}

#[test]
fn only_live_buffers_can_be_leased() {
    let (mut b, a, _) = backend();
    assert_eq!(b.lease(BufferId(4242)), Err(BackendError::NoSuchBuffer));
    b.free(a).unwrap();
    assert_eq!(b.lease(a), Err(BackendError::NoSuchBuffer));
}
