//! Checks for a backend that queues device work and returns before it runs (asynchronous
//! submission): every later call must still see the work queued before it, in order.

use rela_core::backend::{BinaryOp, GpuBackend, KernelCall};
use rela_kernels::reference;

use crate::f32_bytes;

fn read_all(b: &mut dyn GpuBackend, id: rela_core::backend::BufferId) -> Vec<u8> {
    let mut out = vec![0u8; b.size(id).expect("live buffer") as usize];
    b.read(id, 0, &mut out).expect("read");
    out
}

/// 200 dependent kernels (ADD into one buffer, SCALE of it back into the other, …), queued
/// without a wait, then one READ: each kernel must see the one before it, and the READ the last.
/// Checked against the reference kernels; frees what it allocates.
///
/// # Panics
/// On any failed call or wrong byte (a test helper).
pub fn dependent_kernel_chain(b: &mut dyn GpuBackend) {
    let n = 1000u32;
    let c = f32_bytes(&(0..n).map(|i| (i % 9) as f32 * 0.25 - 1.0).collect::<Vec<_>>());
    let mut x = f32_bytes(&(0..n).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<_>>());
    let len = x.len() as u64;
    let (xa, xb, xc) =
        (b.alloc(len).expect("alloc"), b.alloc(len).expect("alloc"), b.alloc(len).expect("alloc"));
    b.write(xa, 0, &x).expect("write");
    b.write(xc, 0, &c).expect("write");
    let mut tmp = vec![0u8; x.len()];
    for step in 0..100 {
        b.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a: xa, b: xc, out: xb, n }).expect("dispatch");
        reference::binary(BinaryOp::Add, &x, &c, &mut tmp, n as usize);
        let alpha = if step % 2 == 0 { 0.5 } else { 1.5 };
        b.dispatch(&KernelCall::Scale { x: xb, out: xa, n, alpha }).expect("dispatch");
        reference::scale(&tmp, &mut x, n as usize, alpha);
    }
    assert_eq!(read_all(b, xa), x, "200 queued dependent kernels, then one read");
    for id in [xa, xb, xc] {
        b.free(id).expect("free");
    }
}

/// A WRITE right after a kernel that reads the same buffer must not reach the kernel: it sees
/// the old bytes, and a READ after both sees the new ones. Likewise a fill and a copy queued
/// behind a kernel, and a fill with unaligned edges queued behind another with different edge
/// bytes (each keeps its own). Frees what it allocates.
///
/// # Panics
/// On any failed call or wrong byte (a test helper).
pub fn write_behind_kernel(b: &mut dyn GpuBackend) {
    let n = 4096u32;
    let old = f32_bytes(&(0..n).map(|i| i as f32).collect::<Vec<_>>());
    let new = f32_bytes(&(0..n).map(|i| -(i as f32) - 1.0).collect::<Vec<_>>());
    let len = old.len() as u64;
    let (x, out) = (b.alloc(len).expect("alloc"), b.alloc(len).expect("alloc"));
    b.write(x, 0, &old).expect("write");
    b.dispatch(&KernelCall::Scale { x, out, n, alpha: 3.0 }).expect("dispatch");
    b.write(x, 0, &new).expect("write");
    let mut want = vec![0u8; old.len()];
    reference::scale(&old, &mut want, n as usize, 3.0);
    assert_eq!(read_all(b, out), want, "the kernel read the bytes from before the write");
    assert_eq!(read_all(b, x), new);
    b.dispatch(&KernelCall::Scale { x, out, n, alpha: 2.0 }).expect("dispatch");
    b.fill(x, 0, len, 0).expect("fill");
    b.copy(out, 0, x, 0, len).expect("copy");
    reference::scale(&new, &mut want, n as usize, 2.0);
    assert_eq!(read_all(b, x), want, "the copy saw the kernel's output");
    b.fill(x, 1, 6, 0x11).expect("fill");
    b.fill(x, 9, 6, 0x22).expect("fill");
    let mut head = [0u8; 16];
    b.read(x, 0, &mut head).expect("read");
    let mut expect = want[..16].to_vec();
    expect[1..7].fill(0x11);
    expect[9..15].fill(0x22);
    assert_eq!(head, expect.as_slice(), "two queued fills keep their own edge bytes");
    for id in [x, out] {
        b.free(id).expect("free");
    }
}
