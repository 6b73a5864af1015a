//! Device tests. Each one skips loudly when no CUDA device is usable, unless the
//! `RELA_REQUIRE_BACKENDS` environment variable lists `cuda`, in which case it fails.

use rela_backend_cuda::{CudaBackend, CudaConfig};
use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, QueueId};
use rela_kernels::reference;
use rela_test_support::f32_bytes;

const CAPACITY: u64 = 64 << 20;

fn required() -> bool {
    std::env::var("RELA_REQUIRE_BACKENDS")
        .map(|v| v.split(',').any(|name| name.trim().eq_ignore_ascii_case("cuda")))
        .unwrap_or(false)
}

/// The backend, or `None` after printing why the test is skipped.
fn backend(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(CudaConfig::new(CAPACITY)) {
        Ok(b) => Some(b),
        Err(e) if required() => panic!("{test}: RELA_REQUIRE_BACKENDS lists cuda but: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

fn read_all(b: &mut CudaBackend, id: BufferId) -> Vec<u8> {
    let size = b.size(id).expect("live buffer");
    let mut out = vec![0xAA; size as usize];
    b.read(id, 0, &mut out).expect("read");
    out
}

#[test]
fn alloc_is_zeroed_and_accounted() {
    let Some(mut b) = backend("alloc_is_zeroed_and_accounted") else { return };
    assert_eq!(b.alloc(0), Err(BackendError::InvalidArgument));
    let x = b.alloc(1000).expect("alloc");
    assert!(read_all(&mut b, x).iter().all(|&v| v == 0));
    assert_eq!(b.usage().used, 1000);
    assert_eq!(b.usage().buffers, 1);
    assert_eq!(b.alloc(b.info().total), Err(BackendError::OutOfMemory));
    assert_eq!(b.alloc(u64::MAX), Err(BackendError::OutOfMemory));
    b.free(x).expect("free");
    assert_eq!(b.free(x), Err(BackendError::NoSuchBuffer));
    assert_eq!(b.usage().used, 0);
    assert_eq!(b.usage().buffers, 0);
}

#[test]
fn write_read_fill_at_offsets() {
    let Some(mut b) = backend("write_read_fill_at_offsets") else { return };
    let x = b.alloc(64).expect("alloc");
    b.write(x, 3, &[1, 2, 3, 4, 5]).expect("write");
    b.fill(x, 10, 6, 0x7F).expect("fill");
    let mut out = [0u8; 20];
    b.read(x, 0, &mut out).expect("read");
    assert_eq!(out, [0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0x7F, 0x7F, 0x7F, 0x7F, 0x7F, 0x7F, 0, 0, 0, 0]);
    assert_eq!(b.write(x, 60, &[0; 5]), Err(BackendError::OutOfBounds));
    assert_eq!(b.write(x, u64::MAX, &[0; 2]), Err(BackendError::OutOfBounds));
    assert_eq!(b.read(x, 65, &mut []), Err(BackendError::OutOfBounds));
    assert_eq!(b.fill(x, 64, 1, 1), Err(BackendError::OutOfBounds));
    b.write(x, 64, &[]).expect("empty write at end");
    b.fill(x, 64, 0, 9).expect("empty fill at end");
}

#[test]
fn free_zeroes_before_reuse() {
    let Some(mut b) = backend("free_zeroes_before_reuse") else { return };
    for _ in 0..4 {
        let x = b.alloc(1 << 16).expect("alloc");
        assert!(read_all(&mut b, x).iter().all(|&v| v == 0));
        b.fill(x, 0, 1 << 16, 0xEE).expect("fill");
        b.free(x).expect("free");
    }
}

#[test]
fn copy_between_and_within_buffers() {
    let Some(mut b) = backend("copy_between_and_within_buffers") else { return };
    let x = b.alloc(32).expect("alloc");
    let y = b.alloc(32).expect("alloc");
    let data: Vec<u8> = (0..32).collect();
    b.write(x, 0, &data).expect("write");
    b.copy(x, 4, y, 8, 10).expect("copy");
    let mut out = [0u8; 32];
    b.read(y, 0, &mut out).expect("read");
    assert_eq!(&out[8..18], &data[4..14]);
    assert!(out[..8].iter().chain(&out[18..]).all(|&v| v == 0));
    // Same buffer, both directions, no overlap.
    b.copy(x, 0, x, 16, 8).expect("forward");
    b.copy(x, 24, x, 8, 8).expect("backward");
    b.read(x, 0, &mut out).expect("read");
    assert_eq!(&out[16..24], &data[0..8]);
    assert_eq!(&out[8..16], &data[24..32]);
    assert_eq!(b.copy(x, 0, x, 4, 8), Err(BackendError::InvalidArgument));
    assert_eq!(b.copy(x, 30, y, 0, 4), Err(BackendError::OutOfBounds));
    b.copy(x, 32, y, 32, 0).expect("empty copy");
}

#[test]
fn kernels_match_reference() {
    let Some(mut b) = backend("kernels_match_reference") else { return };
    let n = 1000u32;
    let av: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    let bv: Vec<f32> = (0..n).map(|i| 3.25 - i as f32 * 0.125).collect();
    let (ab, bb) = (f32_bytes(&av), f32_bytes(&bv));
    let bytes = u64::from(n) * 4;
    let (a, bid, out) =
        (b.alloc(bytes).expect("a"), b.alloc(bytes).expect("b"), b.alloc(bytes).expect("out"));
    b.write(a, 0, &ab).expect("write a");
    b.write(bid, 0, &bb).expect("write b");
    for op in [BinaryOp::Add, BinaryOp::Mul] {
        b.dispatch(&KernelCall::Binary { op, a, b: bid, out, n }).expect("binary");
        let mut want = vec![0u8; bytes as usize];
        reference::binary(op, &ab, &bb, &mut want, n as usize);
        assert_eq!(read_all(&mut b, out), want, "{op:?}");
    }
    b.dispatch(&KernelCall::Scale { x: a, out, n, alpha: -1.5 }).expect("scale");
    let mut want = vec![0u8; bytes as usize];
    reference::scale(&ab, &mut want, n as usize, -1.5);
    assert_eq!(read_all(&mut b, out), want);

    // 20 x 50 times 50 x 17, not multiples of the tile.
    let (m, k, nn) = (20u32, 50u32, 17u32);
    let mv: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.25 - 1.0).collect();
    let kv: Vec<f32> = (0..k * nn).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
    let (mb, kb) = (f32_bytes(&mv), f32_bytes(&kv));
    let ma = b.alloc(mb.len() as u64).expect("ma");
    let kbid = b.alloc(kb.len() as u64).expect("kb");
    let mo = b.alloc(u64::from(m * nn) * 4).expect("mo");
    b.write(ma, 0, &mb).expect("write");
    b.write(kbid, 0, &kb).expect("write");
    b.dispatch(&KernelCall::Matmul { a: ma, b: kbid, out: mo, m, k, n: nn }).expect("matmul");
    let mut want = vec![0u8; (m * nn * 4) as usize];
    reference::matmul(&mb, &kb, &mut want, m as usize, k as usize, nn as usize);
    assert_eq!(read_all(&mut b, mo), want);

    // Validation before any device work.
    assert_eq!(
        b.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a, b: bid, out: a, n }),
        Err(BackendError::InvalidArgument)
    );
    assert_eq!(
        b.dispatch(&KernelCall::Scale { x: a, out, n: n + 1, alpha: 1.0 }),
        Err(BackendError::OutOfBounds)
    );
    assert_eq!(
        b.dispatch(&KernelCall::Scale { x: BufferId(u64::MAX), out, n, alpha: 1.0 }),
        Err(BackendError::NoSuchBuffer)
    );
    b.dispatch(&KernelCall::Scale { x: a, out, n: 0, alpha: 1.0 }).expect("empty scale");
}

#[test]
fn matmul_with_zero_inner_dimension_writes_zeros() {
    let Some(mut b) = backend("matmul_with_zero_inner_dimension_writes_zeros") else { return };
    let (a, bb) = (b.alloc(4).expect("a"), b.alloc(4).expect("b"));
    let out = b.alloc(4 * 6).expect("out");
    b.fill(out, 0, 24, 0xFF).expect("fill");
    b.dispatch(&KernelCall::Matmul { a, b: bb, out, m: 2, k: 0, n: 3 }).expect("matmul");
    assert!(read_all(&mut b, out).iter().all(|&v| v == 0));
}

#[test]
fn transfers_over_pinned_chunks_land_exactly() {
    let Some(mut b) = backend("transfers_over_pinned_chunks_land_exactly") else { return };
    eprintln!(
        "cuBLAS for MATMUL and LINEAR: {}; pinned staging: {}",
        b.uses_cublas(),
        b.uses_pinned_staging()
    );
    // Two and a half staging chunks and an odd tail, at an odd offset: whole chunks through
    // both pinned buffers (each reused), the tail straight.
    let len = (5 << 20) / 2 + 3;
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4099) as u8).collect();
    let id = b.alloc(len as u64 + 8).expect("alloc");
    b.write(id, 5, &data).expect("write");
    let mut back = vec![0u8; len];
    b.read(id, 5, &mut back).expect("read");
    assert!(back == data, "a staged round trip changed the bytes");
    let mut edges = [0xAAu8; 8];
    b.read(id, 0, &mut edges[..5]).expect("read head");
    b.read(id, 5 + len as u64, &mut edges[5..]).expect("read tail");
    assert_eq!(edges, [0; 8], "bytes outside the written range stay zero");
}

#[test]
fn a_stream_per_queue_until_the_queue_ends() {
    let Some(mut b) = backend("a_stream_per_queue_until_the_queue_ends") else { return };
    assert_eq!(b.queue_streams(), 0, "no queue named yet");
    b.select_queue(QueueId(1));
    let one = b.alloc(4096).expect("alloc on queue 1");
    b.select_queue(QueueId(2));
    let two = b.alloc(4096).expect("alloc on queue 2");
    b.select_queue(QueueId(1));
    let again = b.alloc(4096).expect("another alloc on queue 1");
    assert_eq!(b.queue_streams(), 2, "one stream per queue that allocated");
    b.fill(one, 0, 4096, 7).expect("fill on queue 1");
    b.select_queue(QueueId(2));
    b.copy(one, 0, two, 0, 4096).expect("copy from queue 1's buffer into queue 2's");
    b.end_queue(QueueId(1));
    assert_eq!(b.queue_streams(), 1, "queue 1's stream is let go");
    assert!(read_all(&mut b, two).iter().all(|&v| v == 7), "the copy across streams saw the fill");
    assert!(read_all(&mut b, one).iter().all(|&v| v == 7), "a buffer of an ended queue stays usable");
    for id in [one, two, again] {
        b.free(id).expect("free");
    }
    b.end_queue(QueueId(2));
    assert_eq!(b.queue_streams(), 0);
    assert_eq!(b.usage().used, 0);
}

/// Not a timing assertion: prints how long a small READ of one queue took while another queue's
/// long kernels ran, next to how long those kernels took (the READ should take a small part of
/// it), and checks both results.
#[test]
fn a_read_on_one_queue_while_another_computes() {
    let Some(mut b) = backend("a_read_on_one_queue_while_another_computes") else { return };
    let side = 2048u32;
    let bytes = u64::from(side) * u64::from(side) * 4;
    b.select_queue(QueueId(1));
    let (x, y, out) = (b.alloc(bytes).expect("x"), b.alloc(bytes).expect("y"), b.alloc(bytes).expect("out"));
    b.fill(x, 0, bytes, 0).expect("fill x");
    b.fill(y, 0, bytes, 0).expect("fill y");
    b.select_queue(QueueId(2));
    let small = b.alloc(4096).expect("small");
    let data = vec![0x5Au8; 4096];
    let start = std::time::Instant::now();
    b.select_queue(QueueId(1));
    let rounds = 40;
    for _ in 0..rounds {
        b.dispatch(&KernelCall::Matmul { a: x, b: y, out, m: side, k: side, n: side }).expect("matmul");
    }
    let queued = start.elapsed();
    b.select_queue(QueueId(2));
    b.write(small, 0, &data).expect("write on queue 2");
    assert_eq!(read_all(&mut b, small), data, "queue 2's round trip");
    let light = start.elapsed();
    assert!(read_all(&mut b, out).iter().all(|&v| v == 0), "0 · 0 is 0");
    let heavy = start.elapsed();
    eprintln!(
        "{rounds} MATMULs {side}³ on queue 1: enqueued in {:.2} ms, done after {:.2} ms; a 4 KiB WRITE+READ on \
         queue 2 meanwhile done after {:.2} ms",
        queued.as_secs_f64() * 1e3,
        heavy.as_secs_f64() * 1e3,
        light.as_secs_f64() * 1e3
    );
}

/// Not a timing assertion: 2000 dependent ADDs, then one READ (as the Vulkan and wgpu probes
/// of the same name), with no device wait between the calls.
#[test]
fn dispatch_chain() {
    let Some(mut b) = backend("dispatch_chain") else { return };
    let n = 256u32;
    let (x, one, y) = (b.alloc(1024).expect("x"), b.alloc(1024).expect("one"), b.alloc(1024).expect("y"));
    b.write(one, 0, &f32_bytes(&vec![1.0; n as usize])).expect("ones");
    let start = std::time::Instant::now();
    let (mut from, mut to) = (x, y);
    for _ in 0..2000 {
        b.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a: from, b: one, out: to, n }).expect("add");
        (from, to) = (to, from);
    }
    let sum = read_all(&mut b, from);
    eprintln!("2000 dependent ADDs and a READ: {:.2} ms", start.elapsed().as_secs_f64() * 1e3);
    assert!(sum.chunks_exact(4).all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) == 2000.0));
}
