//! `queues_keep_call_order`: work a host files under different queues
//! ([`GpuBackend::select_queue`]; the node names one per session) still sees every earlier call,
//! whatever queue made it.
//!
//! A backend with queues of its own (CUDA: a stream per queue) may run two queues' work side by
//! side, and must then order it wherever buffers are shared: a read on one queue sees the last
//! write made on another (read after write), a change made after a read on another queue does
//! not reach what that read produced (write after read, here with readers on two other queues),
//! a chain of dependent kernels alternating between queues ends where the calls say, a queue's
//! end leaves its buffers usable, and freeing zeroes whatever queue is selected. On a backend
//! with one queue (host, Vulkan, wgpu) the same calls must give the same bytes, so the case runs
//! everywhere; what it catches is a backend whose queues lose the order.

use rela_core::backend::{BinaryOp, BufferId, GpuBackend, KernelCall, QueueId};

use crate::Failure;
use crate::support::{Ctx, ensure, f32_bytes, read_all, same_bytes};

type Outcome = Result<(), Failure>;

/// Floats per buffer: 1 MiB, enough device work that a lost order shows.
const N: u32 = 1 << 18;

/// The values `0, 1, 2, …` (exact in f32 up to `N`).
fn ramp() -> Vec<f32> {
    (0..N).map(|i| i as f32).collect()
}

fn alloc_on(b: &mut dyn GpuBackend, queue: u64) -> Result<BufferId, Failure> {
    b.select_queue(QueueId(queue));
    b.alloc(u64::from(N) * 4).ctx(|| format!("alloc on queue {queue}"))
}

fn add(b: &mut dyn GpuBackend, a: BufferId, x: BufferId, out: BufferId) -> Outcome {
    let call = KernelCall::Binary { op: BinaryOp::Add, a, b: x, out, n: N };
    b.dispatch(&call).ctx(|| format!("ADD {a:?} + {x:?} -> {out:?}"))
}

/// `id` holds `want(i)` at every element `i` (compared as bytes: the first difference is
/// reported).
fn holds(b: &mut dyn GpuBackend, id: BufferId, what: &str, want: impl Fn(usize) -> f32) -> Outcome {
    let want: Vec<f32> = (0..N as usize).map(want).collect();
    same_bytes(what, &read_all(b, id)?, &f32_bytes(&want))
}

pub(crate) fn queues_keep_call_order(b: &mut dyn GpuBackend) -> Outcome {
    let start = b.usage();
    let values = ramp();
    // Read after write: `a` is written on queue 1, read by kernels on queues 2 and 3.
    let a = alloc_on(b, 1)?;
    b.write(a, 0, &f32_bytes(&values)).ctx(|| "write a on queue 1".into())?;
    let two = alloc_on(b, 2)?;
    add(b, a, a, two)?;
    let three = alloc_on(b, 3)?;
    add(b, a, a, three)?;
    // Write after read, with readers on two other queues: zeroing `a` on its own queue must
    // not reach the sums above.
    b.select_queue(QueueId(1));
    b.fill(a, 0, u64::from(N) * 4, 0).ctx(|| "fill a on queue 1".into())?;
    holds(b, two, "2a, summed on queue 2 before a was zeroed on queue 1", |i| 2.0 * values[i])?;
    holds(b, three, "2a, summed on queue 3 before a was zeroed on queue 1", |i| 2.0 * values[i])?;
    holds(b, a, "a, zeroed on queue 1", |_| 0.0)?;

    // A chain of dependent kernels alternating between queues: x <- x + one, 24 times, the
    // running sum moving between a buffer on queue 1 and one on queue 2 (each step runs on its
    // output's queue and reads the other's), then a copy back across.
    let one = alloc_on(b, 3)?;
    b.write(one, 0, &f32_bytes(&vec![1.0; N as usize])).ctx(|| "write ones on queue 3".into())?;
    b.select_queue(QueueId(2));
    b.copy(three, 0, two, 0, u64::from(N) * 4).ctx(|| "copy 2a to queue 2's buffer".into())?;
    let steps = 24u32;
    let (mut from, mut to) = (two, a);
    for step in 0..steps {
        b.select_queue(QueueId(1 + u64::from(step % 2)));
        add(b, from, one, to)?;
        (from, to) = (to, from);
    }
    b.select_queue(QueueId(3));
    b.copy(from, 0, three, 0, u64::from(N) * 4).ctx(|| "copy the sum to queue 3's buffer".into())?;
    holds(b, three, "2a + 24, summed on alternating queues", |i| 2.0 * values[i] + steps as f32)?;
    // An even number of steps ends with the sum in `two` and the step before it in `a`.
    ensure!(from == two, "the chain ended in {from:?}, expected {two:?}");
    holds(b, a, "2a + 23, the chain's step before last", |i| 2.0 * values[i] + (steps - 1) as f32)?;

    // A queue's end leaves its buffers usable; freeing zeroes whatever queue is selected.
    b.end_queue(QueueId(1));
    b.select_queue(QueueId(2));
    add(b, a, one, two)?;
    holds(b, two, "a + 1, a on a queue that has ended", |i| 2.0 * values[i] + steps as f32)?;
    for id in [a, two, three, one] {
        b.free(id).ctx(|| format!("free {id:?}"))?;
    }
    b.end_queue(QueueId(2));
    b.end_queue(QueueId(3));
    b.select_queue(QueueId::DEFAULT);
    let used = b.usage();
    ensure!(used == start, "usage after freeing everything is {used:?}, expected {start:?}");
    let fresh = b.alloc(u64::from(N) * 4).ctx(|| "alloc after the queues ended".into())?;
    holds(b, fresh, "a buffer allocated after the frees", |_| 0.0)?;
    b.free(fresh).ctx(|| "free the fresh buffer".into())?;
    Ok(())
}
