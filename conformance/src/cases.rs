//! The cases, written once against `&mut dyn GpuBackend`.
//!
//! Every case builds its expectations itself (shadow copies of buffer contents, f32 or f64
//! arithmetic in plain Rust), so it can fail for the host backend too; the random sequence
//! additionally runs every step on a host reference backend.

use rela_backend_host::OwnedHostBackend;
use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, Usage};

use crate::support::{Ctx, Rng, Snapshot, ensure, expect_err, f32_bytes, f32_values, read_all, same_bytes};
use crate::{Case, Failure, Inspect, Run, SUITE_CAPACITY};

type Outcome = Result<(), Failure>;

const MIB: u64 = 1 << 20;
const OOB: BackendError = BackendError::OutOfBounds;
const NO_SUCH: BackendError = BackendError::NoSuchBuffer;
const INVALID: BackendError = BackendError::InvalidArgument;

/// Every case, in the order the suite runs them. Names are identifiers: `testgen!` turns each
/// into a `#[test]` fn of that name.
pub(crate) const ALL: &[Case] = &[
    Case { name: "info_and_empty_usage", run: Run::Backend(info_and_empty_usage) },
    Case { name: "alloc_zero_rejected", run: Run::Backend(alloc_zero_rejected) },
    Case { name: "accounting", run: Run::Backend(accounting) },
    Case { name: "round_trip_sizes", run: Run::Backend(round_trip_sizes) },
    Case { name: "round_trip_unaligned_offsets", run: Run::Backend(round_trip_unaligned_offsets) },
    Case { name: "zero_length_ops", run: Run::Backend(zero_length_ops) },
    Case { name: "fresh_alloc_reads_zero", run: Run::Backend(fresh_alloc_reads_zero) },
    Case { name: "out_of_bounds_rejected", run: Run::Backend(out_of_bounds_rejected) },
    Case { name: "offset_overflow_rejected", run: Run::Backend(offset_overflow_rejected) },
    Case { name: "stale_and_unknown_ids_rejected", run: Run::Backend(stale_and_unknown_ids_rejected) },
    Case { name: "copy_between_buffers", run: Run::Backend(copy_between_buffers) },
    Case { name: "copy_within_buffer", run: Run::Backend(copy_within_buffer) },
    Case { name: "copy_overlap_rejected", run: Run::Backend(copy_overlap_rejected) },
    Case { name: "fill_ranges", run: Run::Backend(fill_ranges) },
    Case { name: "commit_changes_nothing", run: Run::Backend(commit_changes_nothing) },
    Case { name: "realloc_after_free_reads_zero", run: Run::Backend(realloc_after_free_reads_zero) },
    Case { name: "zero_after_free", run: Run::Inspect(zero_after_free) },
    Case { name: "storage_ranges_are_consistent", run: Run::Backend(storage_ranges_are_consistent) },
    Case { name: "past_capacity_is_out_of_memory", run: Run::Backend(past_capacity_is_out_of_memory) },
    Case { name: "random_ops_match_reference", run: Run::Backend(random_ops_match_reference) },
    Case { name: "kernel_add", run: Run::Backend(kernel_add) },
    Case { name: "kernel_mul", run: Run::Backend(kernel_mul) },
    Case { name: "kernel_scale", run: Run::Backend(kernel_scale) },
    Case { name: "kernel_matmul", run: Run::Backend(kernel_matmul) },
    Case { name: "kernel_invalid_rejected", run: Run::Backend(kernel_invalid_rejected) },
    Case { name: "kernel_gather", run: Run::Backend(kernel_gather) },
    Case { name: "kernel_layer_norm", run: Run::Backend(kernel_layer_norm) },
    Case { name: "kernel_linear", run: Run::Backend(kernel_linear) },
    Case { name: "kernel_gelu", run: Run::Backend(kernel_gelu) },
    Case { name: "kernel_attention", run: Run::Backend(kernel_attention) },
    Case { name: "kernel_mean_pool", run: Run::Backend(kernel_mean_pool) },
    Case { name: "kernel_l2_normalize", run: Run::Backend(kernel_l2_normalize) },
    Case { name: "kernel_model_invalid_rejected", run: Run::Backend(kernel_model_invalid_rejected) },
    Case { name: "kernel_rms_norm", run: Run::Backend(crate::gen_cases::kernel_rms_norm) },
    Case { name: "kernel_rope", run: Run::Backend(crate::gen_cases::kernel_rope) },
    Case { name: "kernel_swiglu", run: Run::Backend(crate::gen_cases::kernel_swiglu) },
    Case { name: "kernel_q_linear", run: Run::Backend(crate::gen_cases::kernel_q_linear) },
    Case { name: "kernel_q_gather", run: Run::Backend(crate::gen_cases::kernel_q_gather) },
    Case { name: "kernel_causal_attention", run: Run::Backend(crate::gen_cases::kernel_causal_attention) },
    Case { name: "kernel_softmax", run: Run::Backend(crate::gen_cases::kernel_softmax) },
    Case { name: "kernel_argmax", run: Run::Backend(crate::gen_cases::kernel_argmax) },
    Case {
        name: "kernel_generation_invalid_rejected",
        run: Run::Backend(crate::gen_cases::kernel_generation_invalid_rejected),
    },
    Case {
        name: "partial_dispatch_matches_whole",
        run: Run::Backend(crate::partial::partial_dispatch_matches_whole),
    },
    Case { name: "queues_keep_call_order", run: Run::Backend(crate::queues::queues_keep_call_order) },
];

pub(crate) fn alloc(b: &mut dyn GpuBackend, size: u64) -> Result<BufferId, Failure> {
    b.alloc(size).ctx(|| format!("alloc({size})"))
}

pub(crate) fn write(b: &mut dyn GpuBackend, id: BufferId, offset: u64, data: &[u8]) -> Outcome {
    b.write(id, offset, data).ctx(|| format!("write({id:?}, {offset}, {} bytes)", data.len()))
}

/// Allocates a buffer holding seeded random bytes and returns them as its shadow.
pub(crate) fn patterned(
    b: &mut dyn GpuBackend,
    size: usize,
    seed: u64,
) -> Result<(BufferId, Vec<u8>), Failure> {
    let id = alloc(b, size as u64)?;
    let data = Rng::new(seed).bytes(size);
    write(b, id, 0, &data)?;
    Ok((id, data))
}

fn usage_is(b: &dyn GpuBackend, want: Usage, after: &str) -> Outcome {
    let got = b.usage();
    ensure!(got == want, "after {after}: usage is {got:?}, expected {want:?}");
    Ok(())
}

fn info_and_empty_usage(b: &mut dyn GpuBackend) -> Outcome {
    let info = b.info();
    ensure!(info.total > 0, "info.total is 0");
    ensure!(info.max_alloc > 0, "info.max_alloc is 0");
    ensure!(info.max_alloc <= info.total, "max_alloc {} > total {}", info.max_alloc, info.total);
    ensure!(!info.name.is_empty(), "empty device name");
    usage_is(b, Usage::default(), "creation")
}

fn alloc_zero_rejected(b: &mut dyn GpuBackend) -> Outcome {
    expect_err("alloc(0)", b.alloc(0), INVALID)?;
    usage_is(b, Usage::default(), "alloc(0)")?;
    let id = alloc(b, 8)?;
    expect_err("alloc(0) with a live buffer", b.alloc(0), INVALID)?;
    usage_is(b, Usage { used: 8, buffers: 1 }, "alloc(8), alloc(0)")?;
    ensure!(b.size(id) == Ok(8), "size of the live buffer is {:?}", b.size(id));
    Ok(())
}

fn accounting(b: &mut dyn GpuBackend) -> Outcome {
    let total = b.info().total;
    let sizes = [1u64, 3, 4096, 65_537, 255, 256, 257, MIB + 1];
    let mut live = Vec::new();
    let mut used = 0u64;
    for &size in &sizes {
        let id = alloc(b, size)?;
        ensure!(!live.iter().any(|&(other, _)| other == id), "alloc({size}) returned live id {id:?}");
        live.push((id, size));
        used += size;
        usage_is(b, Usage { used, buffers: live.len() as u32 }, &format!("alloc({size})"))?;
        let size_now = b.size(id).ctx(|| format!("size({id:?})"))?;
        ensure!(size_now == size, "size({id:?}) = {size_now}, allocated {size}");
        let info = b.info();
        ensure!(info.total == total, "info.total changed from {total} to {}", info.total);
        ensure!(b.usage().used <= total, "used {} exceeds total {total}", b.usage().used);
    }
    // Free in a scrambled order.
    for (freed, i) in [3usize, 0, 7, 1, 6, 2, 5, 4].into_iter().enumerate() {
        let (id, size) = live[i];
        b.free(id).ctx(|| format!("free({id:?})"))?;
        used -= size;
        let buffers = (sizes.len() - freed - 1) as u32;
        usage_is(b, Usage { used, buffers }, &format!("free of the {size}-byte buffer"))?;
    }
    usage_is(b, Usage::default(), "freeing everything")
}

fn round_trip_sizes(b: &mut dyn GpuBackend) -> Outcome {
    for (i, size) in [1usize, 3, 4095, 4096, 65_537, 16 << 20].into_iter().enumerate() {
        let (id, data) = patterned(b, size, 0x5EED_0000 + i as u64)?;
        let back = read_all(b, id)?;
        same_bytes(&format!("{size}-byte round trip"), &back, &data)?;
        // A second write over the first replaces it entirely.
        let data = Rng::new(0xD00D + i as u64).bytes(size);
        write(b, id, 0, &data)?;
        same_bytes(&format!("{size}-byte rewrite"), &read_all(b, id)?, &data)?;
        b.free(id).ctx(|| format!("free({id:?})"))?;
    }
    // Size 0: a zero-length round trip in a live buffer.
    let id = alloc(b, 16)?;
    write(b, id, 0, &[])?;
    b.read(id, 0, &mut []).ctx(|| "zero-length read".into())?;
    usage_is(b, Usage { used: 16, buffers: 1 }, "zero-length round trip")
}

fn round_trip_unaligned_offsets(b: &mut dyn GpuBackend) -> Outcome {
    let size = 3 * 4096 + 7;
    let (id, mut shadow) = patterned(b, size, 17)?;
    let mut rng = Rng::new(18);
    for offset in [1usize, 2, 3, 5, 255, 257, 1023, 4095, 4097, 8191, size - 9] {
        for len in [1usize, 2, 3, 7, 300, 4001] {
            let len = len.min(size - offset);
            let data = rng.bytes(len);
            write(b, id, offset as u64, &data)?;
            shadow[offset..offset + len].copy_from_slice(&data);
            let mut back = vec![0u8; len];
            b.read(id, offset as u64, &mut back).ctx(|| format!("read at {offset}, {len} bytes"))?;
            same_bytes(&format!("round trip at offset {offset}, {len} bytes"), &back, &data)?;
        }
    }
    same_bytes("whole buffer after unaligned writes", &read_all(b, id)?, &shadow)
}

fn zero_length_ops(b: &mut dyn GpuBackend) -> Outcome {
    let (id, _) = patterned(b, 100, 3)?;
    let (other, _) = patterned(b, 50, 4)?;
    let snap = Snapshot::take(b, &[id, other])?;
    for offset in [0u64, 1, 99, 100] {
        b.write(id, offset, &[]).ctx(|| format!("empty write at {offset}"))?;
        b.read(id, offset, &mut []).ctx(|| format!("empty read at {offset}"))?;
        b.fill(id, offset, 0, 0xFF).ctx(|| format!("empty fill at {offset}"))?;
        b.copy(id, offset, other, 50, 0).ctx(|| format!("empty copy from {offset}"))?;
        b.copy(id, offset, id, offset, 0).ctx(|| format!("empty self-copy at {offset}"))?;
    }
    snap.unchanged(b, &[id, other], "zero-length operations")?;
    // Zero length does not excuse an offset past the end.
    expect_err("empty write at 101", b.write(id, 101, &[]), OOB)?;
    expect_err("empty read at 101", b.read(id, 101, &mut []), OOB)?;
    expect_err("empty fill at 101", b.fill(id, 101, 0, 1), OOB)?;
    expect_err("empty copy from 101", b.copy(id, 101, other, 0, 0), OOB)?;
    expect_err("empty copy to 51", b.copy(id, 0, other, 51, 0), OOB)?;
    snap.unchanged(b, &[id, other], "rejected zero-length operations")
}

fn fresh_alloc_reads_zero(b: &mut dyn GpuBackend) -> Outcome {
    for size in [1u64, 7, 256, 4097, 65_536, 3 * MIB + 5] {
        let id = alloc(b, size)?;
        let data = read_all(b, id)?;
        if let Some(at) = data.iter().position(|&x| x != 0) {
            return Err(Failure(format!("fresh {size}-byte buffer has {:#x} at byte {at}", data[at])));
        }
    }
    Ok(())
}

fn out_of_bounds_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (id, _) = patterned(b, 1000, 5)?;
    let (other, _) = patterned(b, 10, 6)?;
    let ids = [id, other];
    let snap = Snapshot::take(b, &ids)?;
    expect_err("write 1 byte at 1000", b.write(id, 1000, &[1]), OOB)?;
    expect_err("write 2 bytes at 999", b.write(id, 999, &[1, 2]), OOB)?;
    expect_err("write 1001 bytes at 0", b.write(id, 0, &[9; 1001]), OOB)?;
    expect_err("write at 2^40", b.write(id, 1 << 40, &[1]), OOB)?;
    expect_err("read 1 byte at 1000", b.read(id, 1000, &mut [0]), OOB)?;
    expect_err("read 2 bytes at 999", b.read(id, 999, &mut [0, 0]), OOB)?;
    expect_err("read 1001 bytes at 0", b.read(id, 0, &mut [0; 1001]), OOB)?;
    expect_err("fill 1001 bytes at 0", b.fill(id, 0, 1001, 1), OOB)?;
    expect_err("fill 1 byte at 1000", b.fill(id, 1000, 1, 1), OOB)?;
    expect_err("fill 2 bytes at 999", b.fill(id, 999, 2, 1), OOB)?;
    expect_err("copy 11 bytes from a 10-byte source", b.copy(other, 0, id, 0, 11), OOB)?;
    expect_err("copy 2 bytes from offset 9 of 10", b.copy(other, 9, id, 0, 2), OOB)?;
    expect_err("copy 11 bytes into a 10-byte buffer", b.copy(id, 0, other, 0, 11), OOB)?;
    expect_err("copy 5 bytes to offset 6 of 10", b.copy(id, 0, other, 6, 5), OOB)?;
    expect_err("self-copy past the end", b.copy(id, 0, id, 600, 401), OOB)?;
    expect_err("self-copy from past the end", b.copy(id, 999, id, 0, 2), OOB)?;
    snap.unchanged(b, &ids, "rejected out-of-bounds operations")
}

fn offset_overflow_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (id, _) = patterned(b, 4096, 7)?;
    let (other, _) = patterned(b, 4096, 8)?;
    let ids = [id, other];
    let snap = Snapshot::take(b, &ids)?;
    let max = u64::MAX;
    // offset + len wraps around u64 to a small value, which a naive check would accept.
    expect_err("write at u64::MAX", b.write(id, max, &[1]), OOB)?;
    expect_err("write 16 bytes at u64::MAX - 7", b.write(id, max - 7, &[1; 16]), OOB)?;
    expect_err("read 16 bytes at u64::MAX - 7", b.read(id, max - 7, &mut [0; 16]), OOB)?;
    expect_err("read at u64::MAX", b.read(id, max, &mut [0]), OOB)?;
    expect_err("fill u64::MAX bytes at 2", b.fill(id, 2, max, 0xEE), OOB)?;
    expect_err("fill 2 bytes at u64::MAX", b.fill(id, max, 2, 0xEE), OOB)?;
    expect_err("fill u64::MAX bytes at 0", b.fill(id, 0, max, 0xEE), OOB)?;
    expect_err("copy u64::MAX bytes", b.copy(id, 0, other, 0, max), OOB)?;
    expect_err("copy from u64::MAX - 1", b.copy(id, max - 1, other, 0, 4), OOB)?;
    expect_err("copy to u64::MAX - 1", b.copy(id, 0, other, max - 1, 4), OOB)?;
    expect_err("copy 2 bytes at offset 2^63 both", b.copy(id, 1 << 63, other, 1 << 63, 2), OOB)?;
    snap.unchanged(b, &ids, "rejected overflowing operations")
}

fn stale_and_unknown_ids_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (stale, _) = patterned(b, 64, 9)?;
    let (live, _) = patterned(b, 64, 10)?;
    let (f32s, _) = patterned(b, 64, 11)?;
    b.free(stale).ctx(|| "free".into())?;
    let ids = [live, f32s];
    let snap = Snapshot::take(b, &ids)?;
    for (what, id) in
        [("stale", stale), ("unknown", BufferId(u64::MAX)), ("unknown", BufferId(0xDEAD_BEEF_0000))]
    {
        if ids.contains(&id) {
            continue; // a backend may hand out any id; only test ids it did not give us
        }
        expect_err(&format!("free of {what} {id:?}"), b.free(id), NO_SUCH)?;
        expect_err(&format!("size of {what} {id:?}"), b.size(id), NO_SUCH)?;
        expect_err(&format!("write to {what} {id:?}"), b.write(id, 0, &[1]), NO_SUCH)?;
        expect_err(&format!("read from {what} {id:?}"), b.read(id, 0, &mut [0]), NO_SUCH)?;
        expect_err(&format!("fill of {what} {id:?}"), b.fill(id, 0, 1, 1), NO_SUCH)?;
        expect_err(&format!("copy from {what} {id:?}"), b.copy(id, 0, live, 0, 1), NO_SUCH)?;
        expect_err(&format!("copy to {what} {id:?}"), b.copy(live, 0, id, 0, 1), NO_SUCH)?;
        let calls = [
            KernelCall::Binary { op: BinaryOp::Add, a: id, b: f32s, out: live, n: 1 },
            KernelCall::Binary { op: BinaryOp::Mul, a: f32s, b: live, out: id, n: 1 },
            KernelCall::Scale { x: id, out: live, n: 1, alpha: 2.0 },
            KernelCall::Matmul { a: f32s, b: id, out: live, m: 1, k: 1, n: 1 },
        ];
        for call in &calls {
            expect_err(&format!("dispatch {call:?} with {what} id"), b.dispatch(call), NO_SUCH)?;
        }
    }
    snap.unchanged(b, &ids, "operations on stale and unknown ids")?;
    expect_err("double free", b.free(stale), NO_SUCH)
}

fn copy_between_buffers(b: &mut dyn GpuBackend) -> Outcome {
    let (src, src_data) = patterned(b, 10_000, 12)?;
    let (dst, mut shadow) = patterned(b, 7_001, 13)?;
    for (so, d_o, len) in
        [(0, 0, 7_001), (1, 3, 1), (4_095, 17, 4_097), (9_999, 7_000, 1), (123, 4_567, 2_000)]
    {
        b.copy(src, so as u64, dst, d_o as u64, len as u64).ctx(|| format!("copy {so}->{d_o}, {len}"))?;
        shadow[d_o..d_o + len].copy_from_slice(&src_data[so..so + len]);
        same_bytes(&format!("destination after copy {so}->{d_o}, {len}"), &read_all(b, dst)?, &shadow)?;
    }
    same_bytes("source after copies", &read_all(b, src)?, &src_data)
}

fn copy_within_buffer(b: &mut dyn GpuBackend) -> Outcome {
    let (id, mut shadow) = patterned(b, 8_192, 14)?;
    // Adjacent (touching) and distant ranges, forwards and backwards: none overlap.
    for (so, d_o, len) in [(0, 100, 100), (100, 0, 100), (1, 4_097, 4_095), (5_000, 3, 3_000), (8_191, 0, 1)]
    {
        b.copy(id, so as u64, id, d_o as u64, len as u64).ctx(|| format!("self-copy {so}->{d_o}, {len}"))?;
        shadow.copy_within(so..so + len, d_o);
        same_bytes(&format!("after self-copy {so}->{d_o}, {len}"), &read_all(b, id)?, &shadow)?;
    }
    Ok(())
}

fn copy_overlap_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (id, _) = patterned(b, 4_096, 15)?;
    let snap = Snapshot::take(b, &[id])?;
    for (so, d_o, len) in
        [(0u64, 50u64, 100u64), (50, 0, 100), (0, 0, 10), (10, 11, 2), (0, 4_095, 1) /* ok */]
    {
        let got = b.copy(id, so, id, d_o, len);
        if so + len <= d_o || d_o + len <= so {
            got.ctx(|| format!("non-overlapping self-copy {so}->{d_o}, {len}"))?;
            continue;
        }
        expect_err(&format!("overlapping self-copy {so}->{d_o}, {len}"), got, INVALID)?;
        snap.unchanged(b, &[id], &format!("rejected overlapping self-copy {so}->{d_o}, {len}"))?;
    }
    Ok(())
}

fn fill_ranges(b: &mut dyn GpuBackend) -> Outcome {
    let (id, mut shadow) = patterned(b, 70_001, 16)?;
    let (other, other_data) = patterned(b, 300, 17)?;
    for (offset, len, value) in [
        (0, 1, 0xABu8),
        (1, 4_096, 0x00),
        (3, 65_537, 0x5A),
        (70_000, 1, 0xFF),
        (0, 70_001, 0x11),
        (999, 0, 0x22),
    ] {
        b.fill(id, offset as u64, len as u64, value).ctx(|| format!("fill({offset}, {len})"))?;
        shadow[offset..offset + len].fill(value);
        same_bytes(&format!("after fill({offset}, {len}, {value:#x})"), &read_all(b, id)?, &shadow)?;
    }
    same_bytes("other buffer after fills", &read_all(b, other)?, &other_data)
}

/// `commit` (what a session does to every buffer it allocates) backs any range of a live buffer,
/// whole, in pieces at odd offsets or empty, and changes no byte of it or of its neighbours;
/// ranges past the end and unknown or freed buffers get the same errors as a write.
fn commit_changes_nothing(b: &mut dyn GpuBackend) -> Outcome {
    let sizes = [1usize, 4_096, 70_001, 3 << 20];
    let mut live = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        live.push(patterned(b, size, 60 + i as u64)?.0);
    }
    let fresh = alloc(b, 5 << 20)?;
    live.push(fresh);
    let snap = Snapshot::take(b, &live)?;
    for (&id, &size) in live.iter().zip(sizes.iter().chain([5 << 20].iter())) {
        let size = size as u64;
        for (offset, len) in [(0, size), (size / 3, size / 2), (1, size.saturating_sub(1)), (size, 0)] {
            b.commit(id, offset, len)
                .ctx(|| format!("commit({id:?}, {offset}, {len}) of a {size}-byte buffer"))?;
        }
        expect_err(&format!("commit past the end of {id:?}"), b.commit(id, size, 1), OOB)?;
        expect_err(&format!("commit of {id:?} at 2^64 - 1"), b.commit(id, u64::MAX, 2), OOB)?;
    }
    snap.unchanged(b, &live, "commits")?;
    let (gone, _) = patterned(b, 4_096, 70)?;
    b.free(gone).ctx(|| "free".into())?;
    if !live.contains(&gone) {
        expect_err("commit of a freed buffer", b.commit(gone, 0, 1), NO_SUCH)?;
    }
    Ok(())
}

/// `storage_range` (what a node uses to move data straight to and from a backend's memory):
/// either `None` for every buffer (device memory), or, for every live buffer, exactly the
/// requested length at the buffer's base plus the offset, buffers disjoint, and `None` for
/// ranges outside a buffer and for freed buffers.
fn storage_ranges_are_consistent(b: &mut dyn GpuBackend) -> Outcome {
    let sizes = [4_096u64, 1, 65_539, 300_000];
    let mut live = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let (id, _) = patterned(b, size as usize, 40 + i as u64)?;
        live.push((id, size));
    }
    let shared = b.storage_range(live[0].0, 0, live[0].1).is_some();
    let mut whole = Vec::new();
    for &(id, size) in &live {
        let r = b.storage_range(id, 0, size);
        if !shared {
            ensure!(r.is_none(), "storage_range answers for {id:?} but not for the first buffer");
            continue;
        }
        let Some(r) = r else {
            return Err(Failure(format!("storage_range answers for the first buffer but not for {id:?}")));
        };
        ensure!(r.len() as u64 == size, "storage_range({id:?}, 0, {size}) is {r:?}");
        if size > 1 {
            let part = b.storage_range(id, 1, size - 1);
            ensure!(part == Some(r.start + 1..r.end), "storage_range({id:?}, 1, {}) is {part:?}", size - 1);
        }
        for (bad_offset, bad_len) in [(0, size + 1), (size, 1), (u64::MAX, 2)] {
            let got = b.storage_range(id, bad_offset, bad_len);
            ensure!(
                got.is_none(),
                "storage_range({id:?}, {bad_offset}, {bad_len}) outside the buffer is {got:?}"
            );
        }
        whole.push(r);
    }
    for (i, a) in whole.iter().enumerate() {
        for c in &whole[i + 1..] {
            ensure!(a.end <= c.start || c.end <= a.start, "storage ranges {a:?} and {c:?} overlap");
        }
    }
    for &(id, _) in &live {
        b.free(id).ctx(|| format!("free({id:?})"))?;
        let got = b.storage_range(id, 0, 1);
        ensure!(got.is_none(), "storage_range of freed {id:?} is {got:?}");
    }
    usage_is(b, Usage::default(), "the storage-range checks")
}

/// Sizes of the zero-after-free rounds: page-sized, odd, one byte, and large enough that a
/// host arena gives pages back to the OS instead of writing zeros.
const FREED_SIZES: [u64; 7] = [4_096, 1_000, 65_539, 1, 300_000, 256, 2 * MIB + 3];

/// What any backend shows through `GpuBackend` of zeroing freed memory: a buffer allocated
/// right after a filled one was freed (the same size, likely the same region, and a neighbour's
/// size, overlapping it) reads as zero. A backend that zeroes only on allocation passes too;
/// `zero_after_free` tells the two apart where the storage can be seen.
fn realloc_after_free_reads_zero(b: &mut dyn GpuBackend) -> Outcome {
    let sizes = FREED_SIZES;
    for round in 0..4 {
        for (i, &size) in sizes.iter().enumerate() {
            let id = alloc(b, size)?;
            b.fill(id, 0, size, 0xAB).ctx(|| format!("fill of {size} bytes"))?;
            b.free(id).ctx(|| format!("free({id:?})"))?;
            // Same size (likely the same region), then a neighbour's size (overlapping it).
            let again_sizes = [size, sizes[(i + round + 1) % sizes.len()]];
            let mut again = Vec::new();
            for s in again_sizes {
                let fresh = alloc(b, s)?;
                let data = read_all(b, fresh)?;
                if let Some(at) = data.iter().position(|&x| x != 0) {
                    return Err(Failure(format!(
                        "round {round}: {s}-byte buffer allocated after freeing a filled {size}-byte one \
                         has {:#x} at byte {at}",
                        data[at]
                    )));
                }
                again.push(fresh);
            }
            for fresh in again {
                b.free(fresh).ctx(|| format!("free({fresh:?})"))?;
            }
        }
    }
    usage_is(b, Usage::default(), "the realloc-after-free rounds")
}

/// Freed memory is zeroed by `free` itself: right after a filled buffer is freed, before
/// anything is allocated, its bytes in the backend's raw storage read as zero. Buffers beside
/// it keep their contents (zeroing stays inside the freed range).
fn zero_after_free(b: &mut dyn Inspect) -> Outcome {
    for (i, &size) in FREED_SIZES.iter().enumerate() {
        // A filled neighbour on each side, allocated in order, so that a zeroing pass that
        // strays past the freed range shows.
        let before = alloc(b, 4096)?;
        let id = alloc(b, size)?;
        let after = alloc(b, 4096)?;
        for (buf, len) in [(before, 4096), (id, size), (after, 4096)] {
            b.fill(buf, 0, len, 0xAB).ctx(|| format!("fill of {len} bytes"))?;
        }
        let Some(r) = b.storage_range(id, 0, size) else {
            return Err(Failure(format!(
                "the backend exposes its storage but gives no storage_range for live {id:?}"
            )));
        };
        let filled =
            b.storage_bytes(r.clone()).ok_or_else(|| Failure(format!("storage {r:?} not readable")))?;
        ensure!(filled.iter().all(|&x| x == 0xAB), "storage {r:?} of {id:?} does not hold what was written");
        b.free(id).ctx(|| format!("free({id:?})"))?;
        let freed =
            b.storage_bytes(r.clone()).ok_or_else(|| Failure(format!("storage {r:?} not readable")))?;
        if let Some(at) = freed.iter().position(|&x| x != 0) {
            return Err(Failure(format!(
                "round {i}: the {size}-byte buffer's storage {r:?} still holds {:#x} at byte {at} after \
                 free: free did not zero it",
                freed[at]
            )));
        }
        for (buf, len) in [(before, 4096u64), (after, 4096)] {
            let data = read_all(b, buf)?;
            ensure!(
                data.iter().all(|&x| x == 0xAB),
                "round {i}: freeing a {size}-byte buffer changed its {len}-byte neighbour {buf:?}"
            );
            b.free(buf).ctx(|| format!("free({buf:?})"))?;
        }
    }
    usage_is(b, Usage::default(), "the zero-after-free rounds")
}

fn past_capacity_is_out_of_memory(b: &mut dyn GpuBackend) -> Outcome {
    let info = b.info();
    let oom = BackendError::OutOfMemory;
    expect_err("alloc(u64::MAX)", b.alloc(u64::MAX), oom)?;
    expect_err("alloc(total + 1)", b.alloc(info.total.saturating_add(1)), oom)?;
    usage_is(b, Usage::default(), "rejected huge allocations")?;
    // Fill the device in eighths until it refuses; it must refuse within a bounded count.
    let chunk = (info.total / 8).min(info.max_alloc).max(1);
    let limit = info.total / chunk + 2;
    let mut live = Vec::new();
    let refused = loop {
        ensure!(
            (live.len() as u64) < limit,
            "{} allocations of {chunk} bytes exceed total {}",
            live.len(),
            info.total
        );
        match b.alloc(chunk) {
            Ok(id) => live.push(id),
            Err(e) => break e,
        }
    };
    ensure!(refused == oom, "allocation past capacity failed with {refused:?}, expected {oom:?}");
    let used = chunk * live.len() as u64;
    usage_is(b, Usage { used, buffers: live.len() as u32 }, "the refused allocation")?;
    ensure!(used <= info.total, "used {used} exceeds total {}", info.total);
    // Still usable: data in a live buffer survives, a small buffer works after freeing one.
    if let Some(&first) = live.first() {
        write(b, first, chunk - 3, &[1, 2, 3])?;
        b.free(live.pop().unwrap_or(first)).ctx(|| "free of the last chunk".into())?;
        let mut back = [0u8; 3];
        if live.contains(&first) {
            b.read(first, chunk - 3, &mut back).ctx(|| "read of the first chunk".into())?;
            ensure!(back == [1, 2, 3], "first chunk's data changed to {back:?}");
        }
    }
    let (small, data) = patterned(b, 4_099, 19)?;
    same_bytes("small buffer after out-of-memory", &read_all(b, small)?, &data)?;
    for id in live.into_iter().chain([small]) {
        b.free(id).ctx(|| format!("free({id:?})"))?;
    }
    usage_is(b, Usage::default(), "freeing everything after out-of-memory")?;
    let (big, data) = patterned(b, chunk.min(16 * MIB) as usize, 20)?;
    same_bytes("large buffer after recovery", &read_all(b, big)?, &data)
}

/// Steps in the random sequence.
pub(crate) const RANDOM_STEPS: usize = 10_000;
/// Seed of the random sequence; failures name the step so they can be replayed.
pub(crate) const RANDOM_SEED: u64 = 0x52454C41_00000001;

/// One buffer as the random sequence tracks it: ids in both backends and the expected bytes.
struct Tracked {
    test: BufferId,
    reference: BufferId,
    data: Vec<u8>,
}

fn random_ops_match_reference(b: &mut dyn GpuBackend) -> Outcome {
    let mut reference = OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize);
    let mut rng = Rng::new(RANDOM_SEED);
    let mut live: Vec<Tracked> = Vec::new();
    let mut stale: Vec<(BufferId, BufferId)> = Vec::new();
    for step in 0..RANDOM_STEPS {
        random_step(b, &mut reference, &mut rng, &mut live, &mut stale)
            .map_err(|f| Failure(format!("step {step} (seed {RANDOM_SEED:#x}): {}", f.0)))?;
        let (got, want) = (b.usage(), reference.usage());
        let model =
            Usage { used: live.iter().map(|t| t.data.len() as u64).sum(), buffers: live.len() as u32 };
        ensure!(want == model, "step {step}: reference usage {want:?}, model {model:?}");
        ensure!(got == want, "step {step}: usage {got:?}, reference {want:?}");
        if step % 1_000 == 999 {
            for t in &live {
                same_bytes(
                    &format!("step {step}: contents of {:?}", t.test),
                    &read_all(b, t.test)?,
                    &t.data,
                )?;
            }
        }
    }
    for t in live {
        b.free(t.test).ctx(|| format!("final free({:?})", t.test))?;
    }
    usage_is(b, Usage::default(), "the random sequence")
}

/// Runs one random operation on both backends and checks both against the model.
fn random_step(
    b: &mut dyn GpuBackend,
    r: &mut OwnedHostBackend,
    rng: &mut Rng,
    live: &mut Vec<Tracked>,
    stale: &mut Vec<(BufferId, BufferId)>,
) -> Outcome {
    // Results of the backend under test, the reference and the model must all agree.
    fn agree<T: PartialEq + std::fmt::Debug>(
        what: &str,
        got: Result<T, BackendError>,
        reference: Result<T, BackendError>,
        model: Result<T, BackendError>,
    ) -> Outcome {
        ensure!(reference == model, "{what}: reference gave {reference:?}, model expects {model:?}");
        ensure!(got == reference, "{what}: got {got:?}, reference gave {reference:?}");
        Ok(())
    }
    let op = rng.below(100);
    if live.is_empty() || (op < 14 && live.len() < 48) {
        let size = if rng.chance(2) {
            0
        } else if rng.chance(5) {
            rng.range(4_097, 65_536)
        } else {
            rng.range(1, 4_096)
        };
        let (got, want) = (b.alloc(size), r.alloc(size));
        if size == 0 {
            return agree("alloc(0)", got, want, Err(INVALID));
        }
        match (got, want) {
            (Ok(test), Ok(reference)) => {
                live.push(Tracked { test, reference, data: vec![0; size as usize] });
                Ok(())
            }
            (got, want) => Err(Failure(format!("alloc({size}): got {got:?}, reference gave {want:?}"))),
        }
    } else if op < 24 {
        if rng.chance(15) && !stale.is_empty() {
            let (t, rf) = stale[rng.below(stale.len() as u64) as usize];
            return agree("free of a stale id", b.free(t), r.free(rf), Err(NO_SUCH));
        }
        let t = live.swap_remove(rng.below(live.len() as u64) as usize);
        agree(&format!("free({:?})", t.test), b.free(t.test), r.free(t.reference), Ok(()))?;
        stale.push((t.test, t.reference));
        Ok(())
    } else if op < 30 && !stale.is_empty() {
        // Any operation on a stale id.
        let (t, rf) = stale[rng.below(stale.len() as u64) as usize];
        let other = &live[rng.below(live.len() as u64) as usize];
        match rng.below(4) {
            0 => agree("write to stale", b.write(t, 0, &[1]), r.write(rf, 0, &[1]), Err(NO_SUCH)),
            1 => agree("size of stale", b.size(t), r.size(rf), Err(NO_SUCH)),
            2 => agree(
                "copy from stale",
                b.copy(t, 0, other.test, 0, 1),
                r.copy(rf, 0, other.reference, 0, 1),
                Err(NO_SUCH),
            ),
            _ => agree(
                "copy to stale",
                b.copy(other.test, 0, t, 0, 1),
                r.copy(other.reference, 0, rf, 0, 1),
                Err(NO_SUCH),
            ),
        }
    } else {
        let i = rng.below(live.len() as u64) as usize;
        let size = live[i].data.len() as u64;
        let (offset, len, fits) = random_range(rng, size);
        let model = if fits { Ok(()) } else { Err(OOB) };
        let (o, n) = (offset as usize, len as usize);
        let what = |name: &str| {
            format!("{name}({:?}, offset {offset}, len {len}) of a {size}-byte buffer", live[i].test)
        };
        if op < 50 {
            let data = rng.bytes(n.min(70_000));
            if data.len() != n {
                return Ok(()); // an absurd length we can't materialise; covered elsewhere
            }
            agree(
                &what("write"),
                b.write(live[i].test, offset, &data),
                r.write(live[i].reference, offset, &data),
                model,
            )?;
            if fits {
                live[i].data[o..o + n].copy_from_slice(&data);
            }
            Ok(())
        } else if op < 70 {
            if n > 70_000 {
                return Ok(());
            }
            let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
            agree(
                &what("read"),
                b.read(live[i].test, offset, &mut got),
                r.read(live[i].reference, offset, &mut want),
                model,
            )?;
            if fits {
                same_bytes(&what("read (reference)"), &want, &live[i].data[o..o + n])?;
                same_bytes(&what("read"), &got, &want)?;
            }
            Ok(())
        } else if op < 82 {
            let value = rng.below(256) as u8;
            agree(
                &what("fill"),
                b.fill(live[i].test, offset, len, value),
                r.fill(live[i].reference, offset, len, value),
                model,
            )?;
            if fits {
                live[i].data[o..o + n].fill(value);
            }
            Ok(())
        } else {
            random_copy(b, r, rng, live, i, offset, len, fits)
        }
    }
}

/// A random `(offset, len, in_bounds)` for a buffer of `size` bytes; about one in ten is out
/// of bounds (past the end, or wrapping u64).
fn random_range(rng: &mut Rng, size: u64) -> (u64, u64, bool) {
    match rng.below(20) {
        0 => {
            let offset = rng.range(size + 1, size + 100);
            (offset, rng.below(4), false)
        }
        1 => {
            let offset = rng.below(size + 1);
            (offset, size - offset + rng.range(1, 64), false)
        }
        2 if rng.chance(50) => (u64::MAX - rng.below(8), rng.range(9, 64), false),
        _ => {
            let offset = rng.below(size + 1);
            let len = rng.below(size - offset + 1).min(if rng.chance(70) { 64 } else { u64::MAX });
            (offset, len, true)
        }
    }
}

/// A random copy from buffer `i` at `offset..offset+len`: to another buffer or within `i`,
/// in bounds or not, overlapping or not (one fault at a time).
#[allow(clippy::too_many_arguments)]
fn random_copy(
    b: &mut dyn GpuBackend,
    r: &mut OwnedHostBackend,
    rng: &mut Rng,
    live: &mut [Tracked],
    i: usize,
    offset: u64,
    len: u64,
    src_fits: bool,
) -> Outcome {
    let j = if rng.chance(30) { i } else { rng.below(live.len() as u64) as usize };
    let dst_size = live[j].data.len() as u64;
    let (dst_offset, dst_fits) = if !src_fits || len > dst_size {
        (0, len <= dst_size)
    } else if rng.chance(10) {
        (dst_size - len + rng.range(1, 16), false)
    } else {
        (rng.below(dst_size - len + 1), true)
    };
    let overlap =
        i == j && offset < dst_offset.saturating_add(len) && dst_offset < offset.saturating_add(len);
    let model = if !src_fits || !dst_fits {
        if overlap {
            return Ok(()); // two faults at once: backends may report either
        }
        Err(OOB)
    } else if overlap {
        Err(INVALID)
    } else {
        Ok(())
    };
    let what = format!(
        "copy({:?} @ {offset} -> {:?} @ {dst_offset}, len {len}) between buffers of {} and {dst_size} bytes",
        live[i].test,
        live[j].test,
        live[i].data.len()
    );
    let got = b.copy(live[i].test, offset, live[j].test, dst_offset, len);
    let want = r.copy(live[i].reference, offset, live[j].reference, dst_offset, len);
    ensure!(want == model, "{what}: reference gave {want:?}, model expects {model:?}");
    ensure!(got == want, "{what}: got {got:?}, reference gave {want:?}");
    if model.is_ok() {
        let (o, d, n) = (offset as usize, dst_offset as usize, len as usize);
        let src: Vec<u8> = live[i].data[o..o + n].to_vec();
        live[j].data[d..d + n].copy_from_slice(&src);
    }
    Ok(())
}

/// Element counts for the elementwise kernels: empty, one, around the workgroup size (256)
/// and a large non-multiple.
const ELEMENT_COUNTS: [u32; 6] = [0, 1, 255, 256, 257, 100_000];
/// Bytes past each output's end that a kernel must leave alone.
pub(crate) const TAIL: usize = 64;

/// Input buffers of a kernel and the values written to them.
type Inputs = Vec<(BufferId, Vec<f32>)>;

/// Buffers for an elementwise kernel: inputs of `n` values, an output of `n` values plus a
/// tail, all filled with known contents.
fn kernel_buffers(
    b: &mut dyn GpuBackend,
    inputs: usize,
    n: u32,
    seed: u64,
) -> Result<(Inputs, BufferId, Vec<u8>), Failure> {
    let mut rng = Rng::new(seed);
    let mut ins = Vec::new();
    for _ in 0..inputs {
        let values: Vec<f32> = (0..n).map(|_| rng.normal_f32(20, 20)).collect();
        let id = alloc(b, (n as u64 * 4).max(4))?;
        write(b, id, 0, &f32_bytes(&values))?;
        ins.push((id, values));
    }
    let out_init = rng.bytes(n as usize * 4 + TAIL);
    let out = alloc(b, out_init.len() as u64)?;
    write(b, out, 0, &out_init)?;
    Ok((ins, out, out_init))
}

/// Runs an elementwise kernel and checks every output bit, the untouched tail and inputs.
fn check_elementwise(
    b: &mut dyn GpuBackend,
    name: &str,
    inputs: usize,
    call: impl Fn(&[BufferId], BufferId, u32) -> KernelCall,
    expect: impl Fn(&[f32]) -> f32,
) -> Outcome {
    for (case, n) in ELEMENT_COUNTS.into_iter().enumerate() {
        let (ins, out, out_init) = kernel_buffers(b, inputs, n, 0xCAFE + case as u64)?;
        let ids: Vec<BufferId> = ins.iter().map(|(id, _)| *id).collect();
        let k = call(&ids, out, n);
        b.dispatch(&k).ctx(|| format!("{name} over {n} elements"))?;
        let got = read_all(b, out)?;
        let values = f32_values(&got[..n as usize * 4]);
        for (i, &v) in values.iter().enumerate() {
            let args: Vec<f32> = ins.iter().map(|(_, vals)| vals[i]).collect();
            let want = expect(&args);
            ensure!(
                same_f32(v, want),
                "{name} n={n}: element {i} of {args:?} is {v:e}, expected {want:e} (exact)"
            );
        }
        same_bytes(
            &format!("{name} n={n}: bytes past the output"),
            &got[n as usize * 4..],
            &out_init[n as usize * 4..],
        )?;
        for (id, vals) in &ins {
            let now = read_all(b, *id)?;
            same_bytes(&format!("{name} n={n}: input {id:?}"), &now[..n as usize * 4], &f32_bytes(vals))?;
        }
        for id in ids.into_iter().chain([out]) {
            b.free(id).ctx(|| format!("free({id:?})"))?;
        }
    }
    // One input used twice: out = a op a.
    let (ins, out, _) = kernel_buffers(b, 1, 300, 0xBEEF)?;
    let a = ins[0].0;
    let ids = vec![a; inputs];
    b.dispatch(&call(&ids, out, 300)).ctx(|| format!("{name} with one input twice"))?;
    let got = f32_values(&read_all(b, out)?[..1_200]);
    for (i, &v) in got.iter().enumerate() {
        let want = expect(&vec![ins[0].1[i]; inputs]);
        ensure!(same_f32(v, want), "{name} with one input twice: element {i} is {v:e}, expected {want:e}");
    }
    Ok(())
}

/// Bit-exact equality, except that the sign of a zero may differ (WGSL does not promise it).
fn same_f32(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got == 0.0 && want == 0.0)
}

fn kernel_add(b: &mut dyn GpuBackend) -> Outcome {
    let call =
        |ids: &[BufferId], out, n| KernelCall::Binary { op: BinaryOp::Add, a: ids[0], b: ids[1], out, n };
    check_elementwise(b, "ADD", 2, call, |v| v[0] + v[1])
}

fn kernel_mul(b: &mut dyn GpuBackend) -> Outcome {
    let call =
        |ids: &[BufferId], out, n| KernelCall::Binary { op: BinaryOp::Mul, a: ids[0], b: ids[1], out, n };
    check_elementwise(b, "MUL", 2, call, |v| v[0] * v[1])
}

fn kernel_scale(b: &mut dyn GpuBackend) -> Outcome {
    for alpha in [-0.37f32, 1.0, 3.25e3, 0.0] {
        let call = move |ids: &[BufferId], out, n| KernelCall::Scale { x: ids[0], out, n, alpha };
        check_elementwise(b, &format!("SCALE by {alpha}"), 1, call, |v| alpha * v[0])?;
    }
    Ok(())
}

fn kernel_matmul(b: &mut dyn GpuBackend) -> Outcome {
    let shapes =
        [(1u32, 1u32, 1u32), (17, 33, 15), (64, 64, 64), (100, 3, 70), (1, 257, 1), (0, 5, 3), (3, 5, 0)];
    for (case, (m, k, n)) in shapes.into_iter().enumerate() {
        let mut rng = Rng::new(0x3A7 + case as u64);
        let (mu, ku, nu) = (m as usize, k as usize, n as usize);
        let av: Vec<f32> = (0..mu * ku).map(|_| rng.normal_f32(8, 0)).collect();
        let bv: Vec<f32> = (0..ku * nu).map(|_| rng.normal_f32(8, 0)).collect();
        let a = alloc(b, (av.len() as u64 * 4).max(4))?;
        let bb = alloc(b, (bv.len() as u64 * 4).max(4))?;
        write(b, a, 0, &f32_bytes(&av))?;
        write(b, bb, 0, &f32_bytes(&bv))?;
        let out_init = rng.bytes(mu * nu * 4 + TAIL);
        let out = alloc(b, out_init.len() as u64)?;
        write(b, out, 0, &out_init)?;
        b.dispatch(&KernelCall::Matmul { a, b: bb, out, m, k, n }).ctx(|| format!("MATMUL {m}x{k}x{n}"))?;
        let got_bytes = read_all(b, out)?;
        let got = f32_values(&got_bytes[..mu * nu * 4]);
        for r in 0..mu {
            for c in 0..nu {
                let (mut want, mut magnitude) = (0f64, 0f64);
                for i in 0..ku {
                    let p = f64::from(av[r * ku + i]) * f64::from(bv[i * nu + c]);
                    want += p;
                    magnitude += p.abs();
                }
                let v = f64::from(got[r * nu + c]);
                // Relative to the sum of |products|: summation order may differ per backend.
                let tolerance = 1e-4 * magnitude;
                ensure!(
                    (v - want).abs() <= tolerance,
                    "MATMUL {m}x{k}x{n}: out[{r}][{c}] = {v:e}, expected {want:e} (tolerance {tolerance:e})"
                );
            }
        }
        same_bytes(
            &format!("MATMUL {m}x{k}x{n}: bytes past the output"),
            &got_bytes[mu * nu * 4..],
            &out_init[mu * nu * 4..],
        )?;
        same_bytes(
            &format!("MATMUL {m}x{k}x{n}: input a"),
            &read_all(b, a)?[..av.len() * 4],
            &f32_bytes(&av),
        )?;
        same_bytes(
            &format!("MATMUL {m}x{k}x{n}: input b"),
            &read_all(b, bb)?[..bv.len() * 4],
            &f32_bytes(&bv),
        )?;
        for id in [a, bb, out] {
            b.free(id).ctx(|| format!("free({id:?})"))?;
        }
    }
    Ok(())
}

fn kernel_invalid_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (x, _) = patterned(b, 400, 21)?; // 100 f32
    let (y, _) = patterned(b, 400, 22)?;
    let (out, _) = patterned(b, 400, 23)?;
    let (small, _) = patterned(b, 396, 24)?; // 99 f32
    let (gone, _) = patterned(b, 400, 25)?;
    b.free(gone).ctx(|| "free".into())?;
    let ids = [x, y, out, small];
    let snap = Snapshot::take(b, &ids)?;
    let add = |a, b2, o, n| KernelCall::Binary { op: BinaryOp::Add, a, b: b2, out: o, n };
    let mul = |a, b2, o, n| KernelCall::Binary { op: BinaryOp::Mul, a, b: b2, out: o, n };
    let scale = |x2, o, n, alpha| KernelCall::Scale { x: x2, out: o, n, alpha };
    let mm = |a, b2, o, m, k, n| KernelCall::Matmul { a, b: b2, out: o, m, k, n };
    let cases = [
        ("ADD output aliases a", add(x, y, x, 10), INVALID),
        ("ADD output aliases b", add(x, y, y, 10), INVALID),
        ("MUL output aliases both", mul(x, x, x, 10), INVALID),
        ("SCALE output aliases input", scale(x, x, 10, 2.0), INVALID),
        ("SCALE by NaN", scale(x, out, 10, f32::NAN), INVALID),
        ("SCALE by infinity", scale(x, out, 10, f32::INFINITY), INVALID),
        ("MATMUL output aliases a", mm(x, y, x, 2, 2, 2), INVALID),
        ("MATMUL output aliases b", mm(x, y, y, 2, 2, 2), INVALID),
        ("ADD a too small", add(small, y, out, 100), OOB),
        ("ADD b too small", add(x, small, out, 100), OOB),
        ("MUL out too small", mul(x, y, small, 100), OOB),
        ("ADD n = 101", add(x, y, out, 101), OOB),
        ("ADD n = u32::MAX", add(x, y, out, u32::MAX), OOB),
        ("SCALE input too small", scale(small, out, 100, 1.0), OOB),
        ("SCALE out too small", scale(x, small, 100, 1.0), OOB),
        ("MATMUL a too small", mm(small, y, out, 10, 10, 1), OOB),
        ("MATMUL b too small", mm(x, small, out, 1, 10, 10), OOB),
        ("MATMUL out too small", mm(x, y, small, 10, 1, 10), OOB),
        ("MATMUL 11x10 a", mm(x, y, out, 11, 10, 1), OOB),
        ("MATMUL shape overflows u64", mm(x, y, out, u32::MAX, u32::MAX, 1), OOB),
        ("ADD with a freed input", add(gone, y, out, 1), NO_SUCH),
        ("SCALE into a freed output", scale(x, gone, 1, 1.0), NO_SUCH),
        ("MATMUL with a freed b", mm(x, gone, out, 1, 1, 1), NO_SUCH),
    ];
    for (what, call, want) in cases {
        expect_err(what, b.dispatch(&call), want)?;
        snap.unchanged(b, &ids, &format!("rejected dispatch ({what})"))?;
    }
    Ok(())
}

// Model kernels (GATHER, LAYER_NORM, LINEAR, GELU, ATTENTION, MEAN_POOL, L2_NORMALIZE).
// Expectations are computed here in f64 from the f32 inputs; a value passes within 1e-4
// relative or 1e-5 absolute (sums compare against the sum of their terms' magnitudes).

/// Uniform-ish f32 in `lo..hi`.
pub(crate) fn uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    let unit = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    lo + (hi - lo) * unit
}

pub(crate) fn uniforms(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| uniform(rng, lo, hi)).collect()
}

/// A buffer holding `values` (at least 4 bytes).
pub(crate) fn upload(b: &mut dyn GpuBackend, values: &[f32]) -> Result<BufferId, Failure> {
    let id = alloc(b, (values.len() as u64 * 4).max(4))?;
    write(b, id, 0, &f32_bytes(values))?;
    Ok(id)
}

/// An output buffer of `len` f32 plus [`TAIL`] bytes, filled with random bytes.
pub(crate) fn output(b: &mut dyn GpuBackend, len: usize, seed: u64) -> Result<(BufferId, Vec<u8>), Failure> {
    patterned(b, len * 4 + TAIL, seed)
}

/// Reads an output made by [`output`]: checks the tail is untouched and returns the values.
pub(crate) fn outputs(
    b: &mut dyn GpuBackend,
    what: &str,
    out: BufferId,
    init: &[u8],
) -> Result<Vec<f32>, Failure> {
    let got = read_all(b, out)?;
    let len = init.len() - TAIL;
    same_bytes(&format!("{what}: bytes past the output"), &got[len..], &init[len..])?;
    Ok(f32_values(&got[..len]))
}

/// Fails unless every `got[i]` is within 1e-4 × `scale[i]` or 1e-5 of `want[i]`.
fn close_all(what: &str, got: &[f32], want: &[f64], scale: &[f64]) -> Outcome {
    ensure!(got.len() == want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        let tolerance = (1e-4 * scale[i]).max(1e-5);
        ensure!(
            (g - w).abs() <= tolerance,
            "{what}: out[{i}] = {g:e}, expected {w:e} (tolerance {tolerance:e})"
        );
    }
    Ok(())
}

/// `close_all` relative to each expected value's own magnitude.
fn close_rel(what: &str, got: &[f32], want: &[f64]) -> Outcome {
    let scale: Vec<f64> = want.iter().map(|w| w.abs()).collect();
    close_all(what, got, want, &scale)
}

pub(crate) fn free_all(b: &mut dyn GpuBackend, ids: &[BufferId]) -> Outcome {
    for &id in ids {
        b.free(id).ctx(|| format!("free({id:?})"))?;
    }
    Ok(())
}

fn kernel_gather(b: &mut dyn GpuBackend) -> Outcome {
    for (case, (vocab, dim, rows)) in
        [(1000u32, 384u32, 37u32), (3, 5, 4), (0, 3, 2), (10, 7, 0)].into_iter().enumerate()
    {
        let what = format!("GATHER vocab {vocab} dim {dim} rows {rows}");
        let mut rng = Rng::new(0x6A7 + case as u64);
        let (v, d, r) = (vocab as usize, dim as usize, rows as usize);
        let table_v = uniforms(&mut rng, v * d, -2.0, 2.0);
        let special = [vocab.saturating_sub(1), 0, vocab, u32::MAX, vocab.saturating_add(1)];
        let ids_v: Vec<u32> = (0..r)
            .map(|i| if i < special.len() { special[i] } else { rng.below(u64::from(vocab) + 1) as u32 })
            .collect();
        let table = upload(b, &table_v)?;
        let ids_bytes: Vec<u8> = ids_v.iter().flat_map(|i| i.to_le_bytes()).collect();
        let ids = alloc(b, (ids_bytes.len() as u64).max(4))?;
        write(b, ids, 0, &ids_bytes)?;
        let (out, init) = output(b, r * d, 0x6B0 + case as u64)?;
        b.dispatch(&KernelCall::Gather { table, ids, out, vocab, dim, rows }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let mut want = Vec::with_capacity(r * d);
        for &id in &ids_v {
            let id = id as usize;
            if id < v {
                want.extend_from_slice(&table_v[id * d..(id + 1) * d]);
            } else {
                want.extend(std::iter::repeat_n(0.0f32, d));
            }
        }
        same_bytes(&what, &f32_bytes(&got), &f32_bytes(&want))?;
        free_all(b, &[table, ids, out])?;
    }
    Ok(())
}

fn kernel_layer_norm(b: &mut dyn GpuBackend) -> Outcome {
    let shapes = [(7u32, 384u32, 1e-12f32), (3, 1000, 1e-5), (5, 1, 1e-5), (70_000, 1, 1e-5), (0, 8, 1e-5)];
    for (case, (rows, dim, eps)) in shapes.into_iter().enumerate() {
        let what = format!("LAYER_NORM rows {rows} dim {dim} eps {eps:e}");
        let mut rng = Rng::new(0x1A0 + case as u64);
        let (r, d) = (rows as usize, dim as usize);
        // An offset mean, so a one-pass variance would lose precision.
        let xv: Vec<f32> =
            (0..r * d).map(|i| 3.0 + (i % 7) as f32 * 0.01 + uniform(&mut rng, -1.0, 1.0)).collect();
        let gv = uniforms(&mut rng, d, 0.5, 1.5);
        let bv = uniforms(&mut rng, d, -0.5, 0.5);
        let (x, gamma, beta) = (upload(b, &xv)?, upload(b, &gv)?, upload(b, &bv)?);
        let (out, init) = output(b, r * d, 0x1B0 + case as u64)?;
        b.dispatch(&KernelCall::LayerNorm { x, gamma, beta, out, rows, dim, eps }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let mut want = Vec::with_capacity(r * d);
        for row in xv.chunks(d.max(1)).take(r) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for (c, &v) in row.iter().enumerate() {
                want.push((f64::from(v) - mean) * inv * f64::from(gv[c]) + f64::from(bv[c]));
            }
        }
        close_rel(&what, &got, &want)?;
        free_all(b, &[x, gamma, beta, out])?;
    }
    Ok(())
}

fn kernel_linear(b: &mut dyn GpuBackend) -> Outcome {
    let shapes =
        [(7u32, 384u32, 1536u32), (130, 33, 70), (65, 17, 1), (1, 1, 1), (3, 0, 5), (0, 4, 4), (4, 4, 0)];
    for (case, (m, k, n)) in shapes.into_iter().enumerate() {
        let what = format!("LINEAR m {m} k {k} n {n}");
        let mut rng = Rng::new(0x11E + case as u64);
        let (mu, ku, nu) = (m as usize, k as usize, n as usize);
        let xv = uniforms(&mut rng, mu * ku, -1.0, 1.0);
        let wv = uniforms(&mut rng, nu * ku, -0.2, 0.2);
        let bv = uniforms(&mut rng, nu, -1.0, 1.0);
        let (x, w, bias) = (upload(b, &xv)?, upload(b, &wv)?, upload(b, &bv)?);
        let (out, init) = output(b, mu * nu, 0x12E + case as u64)?;
        b.dispatch(&KernelCall::Linear { x, w, bias, out, m, k, n }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let (mut want, mut scale) = (Vec::with_capacity(mu * nu), Vec::with_capacity(mu * nu));
        for i in 0..mu {
            for j in 0..nu {
                let (mut sum, mut magnitude) = (f64::from(bv[j]), f64::from(bv[j]).abs());
                for t in 0..ku {
                    let p = f64::from(xv[i * ku + t]) * f64::from(wv[j * ku + t]);
                    sum += p;
                    magnitude += p.abs();
                }
                want.push(sum);
                scale.push(magnitude);
            }
        }
        close_all(&what, &got, &want, &scale)?;
        free_all(b, &[x, w, bias, out])?;
    }
    Ok(())
}

/// `erf` in f64 by its Maclaurin series (|x| ≤ 5 here: about 1e-9 absolute).
fn erf64(x: f64) -> f64 {
    let (mut term, mut sum, x2) = (x, x, x * x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn kernel_gelu(b: &mut dyn GpuBackend) -> Outcome {
    let mut rng = Rng::new(0x6E1);
    let mut xv = uniforms(&mut rng, 100_003, -7.0, 7.0);
    xv[..8].copy_from_slice(&[0.0, -0.0, 1e-30, -1e-30, 7.0, -7.0, 0.5, -0.5]);
    let n = xv.len() as u32;
    let x = upload(b, &xv)?;
    let (out, init) = output(b, xv.len(), 0x6E2)?;
    b.dispatch(&KernelCall::Gelu { x, out, n }).ctx(|| "GELU".into())?;
    let got = outputs(b, "GELU", out, &init)?;
    let want: Vec<f64> = xv
        .iter()
        .map(|&v| {
            let v = f64::from(v);
            0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))
        })
        .collect();
    close_rel("GELU", &got, &want)?;
    free_all(b, &[x, out])
}

/// Expected attention output in f64 (see `KernelCall::Attention`).
#[allow(clippy::too_many_arguments)]
fn attention64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
) -> Vec<f64> {
    let width = heads * hd;
    let mut out = vec![0.0f64; batch * seq * width];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let row = |buf: &[f32], t: usize| -> Vec<f64> {
                    let at = (b * seq + t) * width + h * hd;
                    buf[at..at + hd].iter().map(|&x| f64::from(x)).collect()
                };
                let qi = row(q, i);
                let keys: Vec<usize> = (0..seq).filter(|&j| mask[b * seq + j] != 0.0).collect();
                if keys.is_empty() {
                    continue;
                }
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| row(k, j).iter().zip(&qi).map(|(a, c)| a * c).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for (pj, &j) in p.iter().zip(&keys) {
                    for (d, vd) in row(v, j).iter().enumerate() {
                        out[(b * seq + i) * width + h * hd + d] += pj * vd / sum;
                    }
                }
            }
        }
    }
    out
}

fn kernel_attention(b: &mut dyn GpuBackend) -> Outcome {
    // (batch, seq, heads, head_dim); masks per batch: all tokens, a partial prefix, none,
    // holes with a non-unit weight (any non-zero is a token).
    let shapes = [
        (4u32, 13u32, 12u32, 32u32),
        (1, 512, 2, 8),
        (2, 70, 1, 100),
        (1, 1, 1, 1),
        (0, 5, 2, 2),
        (2, 3, 2, 0),
    ];
    for (case, (batch, seq, heads, head_dim)) in shapes.into_iter().enumerate() {
        let what = format!("ATTENTION batch {batch} seq {seq} heads {heads} head_dim {head_dim}");
        let mut rng = Rng::new(0xA77 + case as u64);
        let (bu, su, hu, du) = (batch as usize, seq as usize, heads as usize, head_dim as usize);
        let len = bu * su * hu * du;
        let qv = uniforms(&mut rng, len, -3.0, 3.0);
        let kv = uniforms(&mut rng, len, -1.0, 1.0);
        let vv = uniforms(&mut rng, len, -1.0, 1.0);
        let mut mv = Vec::with_capacity(bu * su);
        for bi in 0..bu {
            for j in 0..su {
                mv.push(match bi % 4 {
                    0 => 1.0,
                    1 => f32::from(j < 9),
                    2 => 0.0,
                    _ => [1.0, 0.0, 0.5][j % 3],
                });
            }
        }
        let (q, k, v, mask) = (upload(b, &qv)?, upload(b, &kv)?, upload(b, &vv)?, upload(b, &mv)?);
        let (out, init) = output(b, len, 0xA80 + case as u64)?;
        let call = KernelCall::Attention { q, k, v, mask, out, batch, seq, heads, head_dim };
        b.dispatch(&call).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let want = attention64(&qv, &kv, &vv, &mv, bu, su, hu, du);
        close_rel(&what, &got, &want)?;
        free_all(b, &[q, k, v, mask, out])?;
    }
    Ok(())
}

fn kernel_mean_pool(b: &mut dyn GpuBackend) -> Outcome {
    for (case, (batch, seq, dim)) in
        [(5u32, 13u32, 384u32), (2, 1, 3), (3, 0, 4), (0, 4, 4)].into_iter().enumerate()
    {
        let what = format!("MEAN_POOL batch {batch} seq {seq} dim {dim}");
        let mut rng = Rng::new(0x3E0 + case as u64);
        let (bu, su, du) = (batch as usize, seq as usize, dim as usize);
        let xv = uniforms(&mut rng, bu * su * du, -2.0, 2.0);
        let mv: Vec<f32> = (0..bu * su)
            .map(|t| match (t / su.max(1)) % 4 {
                0 => 1.0,
                1 => f32::from(t % su < 4),
                2 => 0.0,
                _ => uniform(&mut rng, 0.0, 1.0),
            })
            .collect();
        let (x, mask) = (upload(b, &xv)?, upload(b, &mv)?);
        let (out, init) = output(b, bu * du, 0x3F0 + case as u64)?;
        b.dispatch(&KernelCall::MeanPool { x, mask, out, batch, seq, dim }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let (mut want, mut scale) = (Vec::new(), Vec::new());
        for bi in 0..bu {
            let weight: f64 = mv[bi * su..(bi + 1) * su].iter().map(|&w| f64::from(w)).sum();
            for c in 0..du {
                let (mut acc, mut magnitude) = (0.0f64, 0.0f64);
                for s in 0..su {
                    let p = f64::from(mv[bi * su + s]) * f64::from(xv[(bi * su + s) * du + c]);
                    acc += p;
                    magnitude += p.abs();
                }
                let denom = weight.max(1e-9);
                want.push(acc / denom);
                scale.push(magnitude / denom);
            }
        }
        close_all(&what, &got, &want, &scale)?;
        free_all(b, &[x, mask, out])?;
    }
    Ok(())
}

fn kernel_l2_normalize(b: &mut dyn GpuBackend) -> Outcome {
    for (case, (rows, dim)) in [(7u32, 384u32), (3, 1000), (70_000, 3), (0, 5)].into_iter().enumerate() {
        let what = format!("L2_NORMALIZE rows {rows} dim {dim}");
        let mut rng = Rng::new(0x120 + case as u64);
        let (r, d) = (rows as usize, dim as usize);
        let mut xv = uniforms(&mut rng, r * d, -3.0, 3.0);
        if r > 1 {
            xv[d..2 * d].fill(0.0); // a zero row stays zero
        }
        let x = upload(b, &xv)?;
        let (out, init) = output(b, r * d, 0x130 + case as u64)?;
        b.dispatch(&KernelCall::L2Normalize { x, out, rows, dim }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let mut want = Vec::with_capacity(r * d);
        for row in xv.chunks(d.max(1)).take(r) {
            let norm = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt().max(1e-12);
            want.extend(row.iter().map(|&v| f64::from(v) / norm));
        }
        close_rel(&what, &got, &want)?;
        free_all(b, &[x, out])?;
    }
    Ok(())
}

fn kernel_model_invalid_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (x, _) = patterned(b, 400, 31)?; // 100 f32
    let (y, _) = patterned(b, 400, 32)?;
    let (z, _) = patterned(b, 400, 33)?;
    let (m, _) = patterned(b, 400, 34)?;
    let (out, _) = patterned(b, 400, 35)?;
    let (small, _) = patterned(b, 396, 36)?; // 99 f32
    let (gone, _) = patterned(b, 400, 37)?;
    b.free(gone).ctx(|| "free".into())?;
    let ids = [x, y, z, m, out, small];
    let snap = Snapshot::take(b, &ids)?;
    let gather = |table, ids, out, vocab, dim, rows| KernelCall::Gather { table, ids, out, vocab, dim, rows };
    let ln =
        |x, gamma, beta, out, rows, dim, eps| KernelCall::LayerNorm { x, gamma, beta, out, rows, dim, eps };
    let lin = |x, w, bias, out, m, k, n| KernelCall::Linear { x, w, bias, out, m, k, n };
    let gelu = |x, out, n| KernelCall::Gelu { x, out, n };
    let att = |q, k, v, mask, out, batch, seq, heads, head_dim| KernelCall::Attention {
        q,
        k,
        v,
        mask,
        out,
        batch,
        seq,
        heads,
        head_dim,
    };
    let pool = |x, mask, out, batch, seq, dim| KernelCall::MeanPool { x, mask, out, batch, seq, dim };
    let l2 = |x, out, rows, dim| KernelCall::L2Normalize { x, out, rows, dim };
    let max_seq = rela_core::backend::MAX_ATTENTION_SEQ;
    let cases = [
        ("GATHER output aliases table", gather(x, y, x, 10, 10, 1), INVALID),
        ("GATHER output aliases ids", gather(x, y, y, 10, 10, 1), INVALID),
        ("GATHER table too small", gather(small, y, out, 10, 10, 1), OOB),
        ("GATHER ids too small", gather(x, small, out, 1, 1, 100), OOB),
        ("GATHER out too small", gather(x, y, small, 1, 100, 1), OOB),
        ("GATHER shape overflows u64", gather(x, y, out, u32::MAX, u32::MAX, 1), OOB),
        ("GATHER with a freed table", gather(gone, y, out, 1, 1, 1), NO_SUCH),
        ("LAYER_NORM output aliases x", ln(x, y, z, x, 10, 10, 1e-5), INVALID),
        ("LAYER_NORM output aliases gamma", ln(x, y, z, y, 10, 10, 1e-5), INVALID),
        ("LAYER_NORM output aliases beta", ln(x, y, z, z, 10, 10, 1e-5), INVALID),
        ("LAYER_NORM eps = 0", ln(x, y, z, out, 10, 10, 0.0), INVALID),
        ("LAYER_NORM eps < 0", ln(x, y, z, out, 10, 10, -1e-5), INVALID),
        ("LAYER_NORM eps NaN", ln(x, y, z, out, 10, 10, f32::NAN), INVALID),
        ("LAYER_NORM eps infinite", ln(x, y, z, out, 10, 10, f32::INFINITY), INVALID),
        ("LAYER_NORM x too small", ln(small, y, z, out, 10, 10, 1e-5), OOB),
        ("LAYER_NORM gamma too small", ln(x, small, z, out, 1, 100, 1e-5), OOB),
        ("LAYER_NORM beta too small", ln(x, y, small, out, 1, 100, 1e-5), OOB),
        ("LAYER_NORM out too small", ln(x, y, z, small, 1, 100, 1e-5), OOB),
        ("LAYER_NORM with a freed beta", ln(x, y, gone, out, 1, 1, 1e-5), NO_SUCH),
        ("LINEAR output aliases x", lin(x, y, z, x, 2, 2, 2), INVALID),
        ("LINEAR output aliases w", lin(x, y, z, y, 2, 2, 2), INVALID),
        ("LINEAR output aliases bias", lin(x, y, z, z, 2, 2, 2), INVALID),
        ("LINEAR x too small", lin(small, y, z, out, 10, 10, 1), OOB),
        ("LINEAR w too small", lin(x, small, z, out, 1, 10, 10), OOB),
        ("LINEAR bias too small", lin(x, y, small, out, 1, 1, 100), OOB),
        ("LINEAR out too small", lin(x, y, z, small, 10, 1, 10), OOB),
        ("LINEAR shape overflows u64", lin(x, y, z, out, u32::MAX, u32::MAX, 1), OOB),
        ("LINEAR with a freed w", lin(x, gone, z, out, 1, 1, 1), NO_SUCH),
        ("GELU output aliases input", gelu(x, x, 10), INVALID),
        ("GELU input too small", gelu(small, out, 100), OOB),
        ("GELU out too small", gelu(x, small, 100), OOB),
        ("GELU into a freed output", gelu(x, gone, 1), NO_SUCH),
        ("ATTENTION output aliases q", att(x, y, z, m, x, 1, 2, 1, 2), INVALID),
        ("ATTENTION output aliases k", att(x, y, z, m, y, 1, 2, 1, 2), INVALID),
        ("ATTENTION output aliases v", att(x, y, z, m, z, 1, 2, 1, 2), INVALID),
        ("ATTENTION output aliases mask", att(x, y, z, m, m, 1, 2, 1, 2), INVALID),
        ("ATTENTION seq past the maximum", att(x, y, z, m, out, 0, max_seq + 1, 1, 1), INVALID),
        ("ATTENTION q too small", att(small, y, z, m, out, 1, 10, 2, 5), OOB),
        ("ATTENTION v too small", att(x, y, small, m, out, 1, 10, 2, 5), OOB),
        ("ATTENTION mask too small", att(x, y, z, small, out, 1, 100, 1, 1), OOB),
        ("ATTENTION out too small", att(x, y, z, m, small, 1, 10, 2, 5), OOB),
        ("ATTENTION shape overflows u64", att(x, y, z, m, out, u32::MAX, 512, u32::MAX, u32::MAX), OOB),
        ("ATTENTION with a freed mask", att(x, y, z, gone, out, 1, 1, 1, 1), NO_SUCH),
        ("MEAN_POOL output aliases x", pool(x, m, x, 1, 2, 2), INVALID),
        ("MEAN_POOL output aliases mask", pool(x, m, m, 1, 2, 2), INVALID),
        ("MEAN_POOL x too small", pool(small, m, out, 1, 10, 10), OOB),
        ("MEAN_POOL mask too small", pool(x, small, out, 1, 100, 1), OOB),
        ("MEAN_POOL out too small", pool(x, m, small, 100, 1, 1), OOB),
        ("MEAN_POOL shape overflows u64", pool(x, m, out, u32::MAX, u32::MAX, u32::MAX), OOB),
        ("MEAN_POOL with a freed x", pool(gone, m, out, 1, 1, 1), NO_SUCH),
        ("L2_NORMALIZE output aliases input", l2(x, x, 10, 10), INVALID),
        ("L2_NORMALIZE input too small", l2(small, out, 10, 10), OOB),
        ("L2_NORMALIZE out too small", l2(x, small, 10, 10), OOB),
        ("L2_NORMALIZE shape overflows u64", l2(x, out, u32::MAX, u32::MAX), OOB),
        ("L2_NORMALIZE with a freed input", l2(gone, out, 1, 1), NO_SUCH),
    ];
    for (what, call, want) in cases {
        expect_err(what, b.dispatch(&call), want)?;
        snap.unchanged(b, &ids, &format!("rejected dispatch ({what})"))?;
    }
    Ok(())
}
