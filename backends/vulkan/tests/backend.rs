//! Integration tests of the Vulkan backend against the `GpuBackend` contract and the host
//! reference kernels. Each test skips (printing why) when no Vulkan device is present, unless
//! `RELA_REQUIRE_BACKENDS` lists `vulkan`. With `RELA_VK_VALIDATION=1` the validation layer is on
//! and every test asserts it reported nothing.

mod common;

use common::{CAPACITY, f32_bytes, pattern, small_floats, try_backend};
use rela_backend_vulkan::{HostAccess, STAGING_SIZE, VulkanBackend};
use rela_core::backend::{BackendError, BackendKind, BinaryOp, BufferId, GpuBackend, KernelCall, Usage};
use rela_kernels::reference;

/// Runs `f` on a fresh backend (or skips), then checks the validation layer stayed silent.
fn with_backend(f: impl FnOnce(&mut VulkanBackend)) {
    let Some(mut b) = try_backend(CAPACITY) else { return };
    assert_eq!(b.validation_enabled(), common::validation_requested());
    f(&mut b);
    assert_eq!(b.validation_messages(), 0, "validation layer reported messages");
}

fn read_all(b: &mut VulkanBackend, id: BufferId) -> Vec<u8> {
    let mut out = vec![0xAA; b.size(id).expect("live") as usize];
    b.read(id, 0, &mut out).expect("read");
    out
}

#[test]
fn info_and_capacity() {
    with_backend(|b| {
        let info = b.info();
        assert_eq!(info.backend, BackendKind::VULKAN);
        assert!(info.total > 0 && info.total <= CAPACITY);
        assert!(info.max_alloc > 0 && info.max_alloc <= info.total);
        assert!(!info.name.is_empty());
        eprintln!("device: {} ({}), total {}", info.name, info.vendor, info.total);
    });
}

#[test]
fn every_kernel_pipeline_builds() {
    // Pipelines are built at each kernel's first call; this builds all of them, so a kernel the
    // driver cannot compile is found here, not only by the conformance case that runs it.
    with_backend(|b| {
        b.build_pipelines().expect("every supported kernel's pipeline builds");
        // Built once: a second time has nothing left to do and still succeeds.
        b.build_pipelines().expect("again");
    });
}

#[test]
fn round_trip_sizes_and_offsets() {
    with_backend(|b| {
        let big = STAGING_SIZE as usize * 2 + 7;
        for (i, &size) in [1usize, 2, 3, 4, 5, 7, 255, 4099, big].iter().enumerate() {
            let id = b.alloc(size as u64).expect("alloc");
            assert_eq!(read_all(b, id), vec![0; size], "fresh allocation of {size} reads zero");
            let data = pattern(i as u32, size);
            b.write(id, 0, &data).expect("write");
            assert_eq!(read_all(b, id), data, "round trip of {size}");
            for off in [1usize, 2, 3, 5] {
                if off >= size {
                    continue;
                }
                let len = (size - off).min(size / 2 + 1);
                let chunk = pattern(100 + off as u32, len);
                b.write(id, off as u64, &chunk).expect("write at offset");
                let mut got = vec![0; len];
                b.read(id, off as u64, &mut got).expect("read at offset");
                assert_eq!(got, chunk, "size {size} offset {off}");
            }
            b.free(id).expect("free");
        }
        assert_eq!(b.usage(), Usage::default());
    });
}

#[test]
fn zero_after_free() {
    with_backend(|b| {
        for size in [64u64, 1000, 3 << 20] {
            let id = b.alloc(size).expect("alloc");
            b.write(id, 0, &vec![0xFF; size as usize]).expect("write");
            b.free(id).expect("free");
            assert_eq!(b.read(id, 0, &mut [0u8; 1]), Err(BackendError::NoSuchBuffer));
            let again = b.alloc(size).expect("alloc again");
            assert!(read_all(b, again).iter().all(|&x| x == 0), "reused memory is zeroed ({size})");
            b.free(again).expect("free");
        }
    });
}

#[test]
fn fill_edges() {
    with_backend(|b| {
        let size = 37usize;
        let id = b.alloc(size as u64).expect("alloc");
        let mut model = vec![0u8; size];
        let cases = [
            (0, 0),
            (0, 1),
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 5),
            (3, 4),
            (4, 4),
            (5, 8),
            (6, 31),
            (0, 37),
            (33, 4),
        ];
        for (i, &(off, len)) in cases.iter().enumerate() {
            let value = 0x11u8.wrapping_mul(i as u8 + 1);
            b.fill(id, off as u64, len as u64, value).expect("fill");
            model[off..off + len].fill(value);
            assert_eq!(read_all(b, id), model, "fill({off}, {len})");
        }
        assert_eq!(b.fill(id, 30, 8, 1), Err(BackendError::OutOfBounds));
        assert_eq!(b.fill(id, u64::MAX, 2, 1), Err(BackendError::OutOfBounds));
        b.fill(id, 37, 0, 1).expect("empty fill at the end");
        b.free(id).expect("free");
    });
}

#[test]
fn copy_between_and_within() {
    with_backend(|b| {
        let a = b.alloc(101).expect("alloc");
        let c = b.alloc(99).expect("alloc");
        let data = pattern(7, 101);
        b.write(a, 0, &data).expect("write");
        b.copy(a, 3, c, 1, 90).expect("copy");
        let got = read_all(b, c);
        assert_eq!(&got[1..91], &data[3..93]);
        assert_eq!(got[0], 0);
        assert!(got[91..].iter().all(|&x| x == 0));
        // Within one buffer: disjoint ranges are fine, overlapping ones are not.
        b.copy(a, 0, a, 50, 50).expect("disjoint same-buffer copy");
        let mut expect = data.clone();
        expect.copy_within(0..50, 50);
        assert_eq!(read_all(b, a), expect);
        assert_eq!(b.copy(a, 0, a, 10, 20), Err(BackendError::InvalidArgument));
        assert_eq!(b.copy(a, 0, c, 0, 100), Err(BackendError::OutOfBounds));
        assert_eq!(b.copy(a, u64::MAX, c, 0, 2), Err(BackendError::OutOfBounds));
        assert_eq!(b.copy(a, 0, BufferId(9999), 0, 1), Err(BackendError::NoSuchBuffer));
        b.copy(a, 101, c, 99, 0).expect("empty copy at the ends");
        b.copy(a, 5, a, 5, 0).expect("empty same-buffer copy");
        b.free(a).expect("free");
        b.free(c).expect("free");
    });
}

#[test]
fn errors_and_accounting() {
    with_backend(|b| {
        assert_eq!(b.alloc(0), Err(BackendError::InvalidArgument));
        assert_eq!(b.alloc(u64::MAX), Err(BackendError::OutOfMemory));
        assert_eq!(b.alloc(b.info().total + 1), Err(BackendError::OutOfMemory));
        let x = b.alloc(10).expect("alloc");
        let y = b.alloc(CAPACITY / 2).expect("alloc half");
        assert_eq!(b.usage(), Usage { used: 10 + CAPACITY / 2, buffers: 2 });
        assert_eq!(b.alloc(CAPACITY / 2), Err(BackendError::OutOfMemory));
        assert_eq!(b.usage(), Usage { used: 10 + CAPACITY / 2, buffers: 2 });
        assert_eq!(b.size(x), Ok(10));
        assert_eq!(b.write(x, 8, &[1, 2, 3]), Err(BackendError::OutOfBounds));
        assert_eq!(b.write(x, u64::MAX, &[1]), Err(BackendError::OutOfBounds));
        assert_eq!(b.read(x, 11, &mut []), Err(BackendError::OutOfBounds));
        b.read(x, 10, &mut []).expect("empty read at the end");
        b.write(x, 10, &[]).expect("empty write at the end");
        b.free(y).expect("free");
        assert_eq!(b.free(y), Err(BackendError::NoSuchBuffer));
        assert_eq!(b.size(y), Err(BackendError::NoSuchBuffer));
        let z = b.alloc(CAPACITY / 2).expect("capacity is back");
        assert_eq!(b.usage(), Usage { used: 10 + CAPACITY / 2, buffers: 2 });
        b.free(z).expect("free");
        b.free(x).expect("free");
        assert_eq!(b.usage(), Usage::default());
    });
}

fn upload(b: &mut VulkanBackend, v: &[f32]) -> BufferId {
    let bytes = f32_bytes(v);
    let id = b.alloc(bytes.len().max(4) as u64).expect("alloc");
    b.write(id, 0, &bytes).expect("write");
    id
}

#[test]
fn binary_and_scale_match_reference() {
    with_backend(|b| {
        for n in [1usize, 255, 256, 257, 10_000] {
            let (va, vb) = (small_floats(1, n), small_floats(2, n));
            let (a, bb) = (upload(b, &va), upload(b, &vb));
            let out = b.alloc(n as u64 * 4 + 3).expect("alloc out");
            for op in [BinaryOp::Add, BinaryOp::Mul] {
                b.dispatch(&KernelCall::Binary { op, a, b: bb, out, n: n as u32 }).expect("binary");
                let mut want = vec![0u8; n * 4];
                reference::binary(op, &f32_bytes(&va), &f32_bytes(&vb), &mut want, n);
                assert_eq!(&read_all(b, out)[..n * 4], &want[..], "{op:?} n={n}");
            }
            b.dispatch(&KernelCall::Scale { x: a, out, n: n as u32, alpha: 0.5 }).expect("scale");
            let mut want = vec![0u8; n * 4];
            reference::scale(&f32_bytes(&va), &mut want, n, 0.5);
            assert_eq!(&read_all(b, out)[..n * 4], &want[..], "scale n={n}");
            // Only n elements are touched.
            assert_eq!(&read_all(b, out)[n * 4..], &[0, 0, 0]);
            for id in [a, bb, out] {
                b.free(id).expect("free");
            }
        }
    });
}

#[test]
fn matmul_matches_reference() {
    with_backend(|b| {
        for (m, k, n) in [(1, 1, 1), (2, 3, 2), (16, 16, 16), (17, 5, 33), (40, 70, 9), (3, 0, 4), (0, 4, 4)]
        {
            let (va, vb) = (small_floats(3, (m * k).max(1)), small_floats(4, (k * n).max(1)));
            let (a, bb) = (upload(b, &va), upload(b, &vb));
            let out = b.alloc((m * n * 4).max(4) as u64).expect("alloc out");
            b.fill(out, 0, (m * n * 4) as u64, 0x7F).expect("poison output");
            let call = KernelCall::Matmul { a, b: bb, out, m: m as u32, k: k as u32, n: n as u32 };
            b.dispatch(&call).expect("matmul");
            let mut want = vec![0u8; m * n * 4];
            reference::matmul(&f32_bytes(&va), &f32_bytes(&vb), &mut want, m, k, n);
            assert_eq!(&read_all(b, out)[..m * n * 4], &want[..], "matmul {m}x{k}x{n}");
            for id in [a, bb, out] {
                b.free(id).expect("free");
            }
        }
    });
}

#[test]
fn kernel_validation_errors() {
    with_backend(|b| {
        let a = b.alloc(16).expect("alloc");
        let c = b.alloc(16).expect("alloc");
        let bin = |a, bb, out, n| KernelCall::Binary { op: BinaryOp::Add, a, b: bb, out, n };
        assert_eq!(b.dispatch(&bin(a, a, a, 4)), Err(BackendError::InvalidArgument));
        assert_eq!(b.dispatch(&bin(a, a, c, 5)), Err(BackendError::OutOfBounds));
        assert_eq!(b.dispatch(&bin(a, BufferId(777), c, 1)), Err(BackendError::NoSuchBuffer));
        b.dispatch(&bin(a, a, c, 4)).expect("a op a is fine");
        b.dispatch(&bin(a, a, c, 0)).expect("zero elements");
        let scale = KernelCall::Scale { x: a, out: c, n: 4, alpha: f32::NAN };
        assert_eq!(b.dispatch(&scale), Err(BackendError::InvalidArgument));
        let mm = KernelCall::Matmul { a, b: a, out: c, m: u32::MAX, k: u32::MAX, n: u32::MAX };
        assert!(b.dispatch(&mm).is_err());
        let mm = KernelCall::Matmul { a, b: c, out: c, m: 2, k: 2, n: 2 };
        assert_eq!(b.dispatch(&mm), Err(BackendError::InvalidArgument));
        b.free(a).expect("free");
        b.free(c).expect("free");
    });
}

#[test]
fn backend_is_send() {
    fn is_send<T: Send>() {}
    is_send::<VulkanBackend>();
}

/// Past 65,535 workgroups the 1-D grid folds into a second dimension; every element must still
/// be covered exactly once.
#[test]
fn folded_grid_covers_every_element() {
    with_backend(|b| {
        let n = 65_535 * 256 + 1000;
        let x: Vec<f32> = (0..n).map(|i| (i % 1024) as f32).collect();
        let xb = upload(b, &x);
        let out = b.alloc(n as u64 * 4).expect("alloc out");
        b.dispatch(&KernelCall::Scale { x: xb, out, n: n as u32, alpha: 2.0 }).expect("scale");
        let got = read_all(b, out);
        for (i, chunk) in got.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            assert_eq!(v, 2.0 * (i % 1024) as f32, "element {i}");
        }
        b.free(xb).expect("free");
        b.free(out).expect("free");
    });
}

/// Rough numbers for later tuning: `cargo test -p rela-backend-vulkan --release -- --ignored
/// --nocapture throughput_probe`.
#[test]
#[ignore = "timing probe, not a check"]
fn throughput_probe() {
    with_backend(|b| {
        let size = 64usize << 20;
        let id = b.alloc(size as u64).expect("alloc");
        let data = pattern(1, size);
        let t = std::time::Instant::now();
        b.write(id, 0, &data).expect("write");
        let w = t.elapsed();
        let mut out = vec![0; size];
        let t = std::time::Instant::now();
        b.read(id, 0, &mut out).expect("read");
        let r = t.elapsed();
        let t = std::time::Instant::now();
        for i in 0..1000u64 {
            b.write(id, i * 8, &[1, 2, 3, 4]).expect("small write");
        }
        let small = t.elapsed() / 1000;
        let mib = (size >> 20) as f64;
        eprintln!(
            "write {:.0} MiB/s, read {:.0} MiB/s, small write {small:?}",
            mib / w.as_secs_f64(),
            mib / r.as_secs_f64()
        );
        b.free(id).expect("free");
    });
}

/// lavapipe's memory is all host memory: the default maps buffers, and data written through
/// the mapping is what kernels and device copies see (and the other way round).
#[test]
fn unified_memory_is_mapped_and_coherent_with_device_work() {
    with_backend(|b| {
        let cpu = b.info().name.contains("llvmpipe");
        if cpu {
            assert!(b.host_mapped(), "lavapipe's device-local memory is host-visible");
        }
        eprintln!("{}: host_mapped = {}", b.info().name, b.host_mapped());
        let n = 1000u32;
        let (x, y) = (small_floats(1, n as usize), small_floats(2, n as usize));
        let bytes = u64::from(n) * 4;
        let (a, c, out) = (b.alloc(bytes).unwrap(), b.alloc(bytes).unwrap(), b.alloc(bytes).unwrap());
        b.write(a, 0, &f32_bytes(&x)).unwrap();
        b.write(c, 0, &f32_bytes(&y)).unwrap();
        b.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a, b: c, out, n }).unwrap();
        let want: Vec<f32> = x.iter().zip(&y).map(|(p, q)| p + q).collect();
        assert_eq!(read_all(b, out), f32_bytes(&want), "host writes reached the kernel, its output the host");
        // A device fill, then a host write over part of it, then a device copy of the whole.
        b.fill(out, 0, bytes, 0x5A).unwrap();
        b.write(out, 8, &[1, 2, 3]).unwrap();
        b.copy(out, 0, a, 0, bytes).unwrap();
        let mut expect = vec![0x5A; bytes as usize];
        expect[8..11].copy_from_slice(&[1, 2, 3]);
        assert_eq!(read_all(b, a), expect);
    });
}

/// Runs `f` on a backend that maps buffers (where the device allows) and on one that stages
/// every transfer, checking the validation layer stayed silent on each.
fn with_both_access_paths(f: impl Fn(&mut VulkanBackend)) {
    with_backend(&f);
    let config = common::config(CAPACITY);
    let staged = rela_backend_vulkan::VulkanConfig { host_access: HostAccess::Staging, ..config };
    let Ok(mut b) = VulkanBackend::new(staged) else { return };
    assert!(!b.host_mapped());
    f(&mut b);
    assert_eq!(b.validation_messages(), 0, "validation layer reported messages (staging)");
}

/// 200 dependent kernels (ADD into one buffer, SCALE of it back into the other, …), queued
/// without a wait, then one READ: each kernel must see the one before it, and the READ the
/// last, across several submitted batches.
#[test]
fn dependent_chain_then_one_read() {
    with_both_access_paths(|b| rela_test_support::queued::dependent_kernel_chain(b));
}

/// A WRITE right after a kernel that reads the same buffer must not reach the kernel: it sees
/// the old bytes. Likewise fills and copies queued behind a kernel, and a fill with edges
/// queued behind another with different edge bytes.
#[test]
fn write_after_dispatch_is_not_seen_by_it() {
    with_both_access_paths(|b| rela_test_support::queued::write_behind_kernel(b));
}

/// `cargo test -p rela-backend-vulkan --release -- --ignored --nocapture dispatch_chain`:
/// 2000 small dependent ADDs, then one READ.
#[test]
#[ignore = "timing probe, not a check"]
fn dispatch_chain_probe() {
    with_backend(|b| {
        let n = 256u32;
        let one = f32_bytes(&vec![1.0; n as usize]);
        let (x, y, c) = (b.alloc(1024).unwrap(), b.alloc(1024).unwrap(), b.alloc(1024).unwrap());
        b.write(c, 0, &one).unwrap();
        let mut out = vec![0u8; 1024];
        b.read(x, 0, &mut out).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            b.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a: x, b: c, out: y, n }).unwrap();
            b.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a: y, b: c, out: x, n }).unwrap();
        }
        b.read(x, 0, &mut out).unwrap();
        let e = t.elapsed();
        assert_eq!(out, f32_bytes(&vec![2000.0; n as usize]));
        eprintln!(
            "vulkan: 2000 dependent ADDs + READ: {:.1} ms ({:.0} us each)",
            e.as_secs_f64() * 1e3,
            e.as_secs_f64() * 1e6 / 2000.0
        );
    });
}
