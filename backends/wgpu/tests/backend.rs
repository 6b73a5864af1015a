//! Integration tests on real adapters: Vulkan (lavapipe in CI) and GL (llvmpipe via EGL).
//!
//! A test whose API has no adapter prints why and passes, unless `RELA_REQUIRE_BACKENDS`
//! (comma-separated) names that backend (`wgpu-vulkan`, `wgpu-gl`): then it fails.
#![allow(clippy::unwrap_used, missing_docs)]

use rela_backend_wgpu::{Api, InitError, WgpuBackend, WgpuConfig, list_adapters};
use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall};
use rela_kernels::reference;
use rela_test_support::{f32_bytes, pattern};

const CAPACITY: u64 = 64 << 20;

fn open(name: &str, api: Api) -> Option<WgpuBackend> {
    match WgpuBackend::new(WgpuConfig { capacity: CAPACITY, backends: api, adapter: None }) {
        Ok(b) => Some(b),
        Err(e) => {
            let required = std::env::var("RELA_REQUIRE_BACKENDS").unwrap_or_default();
            if required.split(',').any(|s| s.trim() == name) {
                panic!("{name} is required (RELA_REQUIRE_BACKENDS) but unavailable: {e}");
            }
            eprintln!("SKIP {name}: {e}");
            None
        }
    }
}

fn read_all(b: &mut WgpuBackend, id: BufferId) -> Vec<u8> {
    let mut out = vec![0u8; b.size(id).unwrap() as usize];
    b.read(id, 0, &mut out).unwrap();
    out
}

fn round_trips(b: &mut WgpuBackend) {
    for size in [1u64, 3, 4, 5, 255, 4096, 4099, (4 << 20) + 13, (9 << 20) + 1] {
        let id = b.alloc(size).unwrap();
        assert!(read_all(b, id).iter().all(|&x| x == 0), "fresh buffer of {size} not zero");
        let data = pattern(size as u32, size as usize);
        b.write(id, 0, &data).unwrap();
        assert_eq!(read_all(b, id), data, "round trip of {size}");
        b.free(id).unwrap();
    }
    // Unaligned offsets and lengths against a host mirror.
    let size = 4 * 1024 + 7;
    let id = b.alloc(size).unwrap();
    let mut mirror = vec![0u8; size as usize];
    let mut seed = 1;
    for off in [0u64, 1, 2, 3, 5, 6, 7, 1021, 4093] {
        for len in [0u64, 1, 2, 3, 4, 5, 7, 8, 9, 63, 1000] {
            if off + len > size {
                continue;
            }
            seed += 1;
            let data = pattern(seed, len as usize);
            b.write(id, off, &data).unwrap();
            mirror[off as usize..(off + len) as usize].copy_from_slice(&data);
            let mut back = vec![0u8; len as usize];
            b.read(id, off, &mut back).unwrap();
            assert_eq!(back, data, "read back at {off}+{len}");
        }
    }
    assert_eq!(read_all(b, id), mirror);
    // Bounds.
    assert_eq!(b.write(id, size, &[1]), Err(BackendError::OutOfBounds));
    assert_eq!(b.write(id, u64::MAX, &[1]), Err(BackendError::OutOfBounds));
    assert_eq!(b.read(id, size - 1, &mut [0, 0]), Err(BackendError::OutOfBounds));
    assert_eq!(b.write(id, size, &[]), Ok(()));
    assert_eq!(b.read(id, size, &mut []), Ok(()));
    assert_eq!(b.write(BufferId(999_999), 0, &[1]), Err(BackendError::NoSuchBuffer));
    b.free(id).unwrap();
    assert_eq!(b.free(id), Err(BackendError::NoSuchBuffer));
}

fn zero_after_free(b: &mut WgpuBackend) {
    let before = b.usage();
    let ids: Vec<_> = (0..8).map(|i| b.alloc(1000 + i).unwrap()).collect();
    for (i, &id) in ids.iter().enumerate() {
        b.fill(id, 0, 1000, 0xA5 ^ i as u8).unwrap();
    }
    for id in ids {
        b.free(id).unwrap();
    }
    assert_eq!(b.usage(), before);
    for i in 0..8 {
        let id = b.alloc(1000 + i).unwrap();
        assert!(read_all(b, id).iter().all(|&x| x == 0));
        b.free(id).unwrap();
    }
}

fn fill_edges(b: &mut WgpuBackend) {
    let size = (4 << 20) + 11;
    let id = b.alloc(size).unwrap();
    let mut mirror = vec![0u8; size as usize];
    let cases = [
        (0, size, 0x11u8),
        (1, 1, 0x22),
        (3, 2, 0x33),
        (5, 7, 0x44),
        (2, 4, 0),
        (6, 4000, 0),
        (7, size - 7, 0x55),
        (13, (4 << 20) - 20, 0x66),
        (size - 3, 3, 0x77),
        (size - 1, 1, 0),
        (100, 0, 0x99),
    ];
    for (off, len, v) in cases {
        b.fill(id, off, len, v).unwrap();
        mirror[off as usize..(off + len) as usize].fill(v);
        assert_eq!(read_all(b, id), mirror, "fill {off}+{len}={v:#x}");
    }
    assert_eq!(b.fill(id, size, 1, 0), Err(BackendError::OutOfBounds));
    assert_eq!(b.fill(id, 1, u64::MAX, 0), Err(BackendError::OutOfBounds));
    b.free(id).unwrap();
}

fn copy_edges(b: &mut WgpuBackend) {
    let size = 10_000u64;
    let (s, d) = (b.alloc(size).unwrap(), b.alloc(size + 3).unwrap());
    let src = pattern(7, size as usize);
    b.write(s, 0, &src).unwrap();
    let mut mirror = vec![0u8; (size + 3) as usize];
    for (so, dof, len) in [
        (0u64, 0u64, 16u64),
        (0, 0, 9),
        (1, 5, 11),
        (2, 3, 1),
        (3, 0, 4000),
        (4, 7, 9996),
        (5, 6, 3),
        (0, 9, 0),
    ] {
        b.copy(s, so, d, dof, len).unwrap();
        mirror[dof as usize..(dof + len) as usize].copy_from_slice(&src[so as usize..(so + len) as usize]);
        assert_eq!(read_all(b, d), mirror, "copy {so}->{dof} len {len}");
    }
    // Same buffer, disjoint ranges, every phase.
    let mut smirror = src.clone();
    for (so, dof, len) in [(0u64, 5000u64, 5000u64), (1, 4001, 999), (6000, 10, 2001), (3, 9000, 7)] {
        b.copy(s, so, s, dof, len).unwrap();
        let chunk = smirror[so as usize..(so + len) as usize].to_vec();
        smirror[dof as usize..(dof + len) as usize].copy_from_slice(&chunk);
        assert_eq!(read_all(b, s), smirror, "self copy {so}->{dof} len {len}");
    }
    assert_eq!(b.copy(s, 0, s, 10, 20), Err(BackendError::InvalidArgument));
    assert_eq!(b.copy(s, 0, d, size, 4), Err(BackendError::OutOfBounds));
    assert_eq!(b.copy(s, u64::MAX, d, 0, 2), Err(BackendError::OutOfBounds));
    assert_eq!(b.copy(s, size, d, 0, 0), Ok(()));
    b.free(s).unwrap();
    b.free(d).unwrap();
}

fn kernels(b: &mut WgpuBackend) {
    for n in [0u32, 1, 7, 256, 1000, 70_000] {
        let len = (n as usize * 4).max(4);
        let (xa, xb) = (pattern(1, n as usize), pattern(2, n as usize));
        let to_f = |v: &[u8]| f32_bytes(&v.iter().map(|&x| x as f32 / 16.0 - 7.0).collect::<Vec<_>>());
        let (fa, fb) = (to_f(&xa), to_f(&xb));
        let a = b.alloc(len as u64).unwrap();
        let bb = b.alloc(len as u64).unwrap();
        let out = b.alloc(len as u64 + 8).unwrap();
        b.write(a, 0, &fa).unwrap();
        b.write(bb, 0, &fb).unwrap();
        for op in [BinaryOp::Add, BinaryOp::Mul] {
            b.dispatch(&KernelCall::Binary { op, a, b: bb, out, n }).unwrap();
            let mut want = vec![0u8; n as usize * 4];
            reference::binary(op, &fa, &fb, &mut want, n as usize);
            let mut got = vec![0u8; n as usize * 4];
            b.read(out, 0, &mut got).unwrap();
            assert_eq!(got, want, "{op:?} n={n}");
        }
        b.dispatch(&KernelCall::Scale { x: a, out, n, alpha: -2.5 }).unwrap();
        let mut want = vec![0u8; n as usize * 4];
        reference::scale(&fa, &mut want, n as usize, -2.5);
        let mut got = vec![0u8; n as usize * 4];
        b.read(out, 0, &mut got).unwrap();
        assert_eq!(got, want, "scale n={n}");
        for id in [a, bb, out] {
            b.free(id).unwrap();
        }
    }
    for (m, k, n) in
        [(1u32, 1u32, 1u32), (2, 3, 2), (16, 16, 16), (17, 33, 5), (64, 1, 70), (5, 0, 3), (0, 4, 4)]
    {
        let fa = f32_bytes(&(0..m * k).map(|i| (i % 13) as f32 * 0.5 - 2.0).collect::<Vec<_>>());
        let fb = f32_bytes(&(0..k * n).map(|i| (i % 7) as f32 * 0.25 + 1.0).collect::<Vec<_>>());
        let a = b.alloc(fa.len().max(4) as u64).unwrap();
        let bb = b.alloc(fb.len().max(4) as u64).unwrap();
        let out_len = (m * n * 4) as usize;
        let out = b.alloc(out_len.max(4) as u64).unwrap();
        b.fill(out, 0, out_len.max(4) as u64, 0xCD).unwrap();
        b.write(a, 0, &fa).unwrap();
        b.write(bb, 0, &fb).unwrap();
        b.dispatch(&KernelCall::Matmul { a, b: bb, out, m, k, n }).unwrap();
        let mut want = vec![0u8; out_len];
        reference::matmul(&fa, &fb, &mut want, m as usize, k as usize, n as usize);
        let mut got = vec![0u8; out_len];
        b.read(out, 0, &mut got).unwrap();
        assert_eq!(got, want, "matmul {m}x{k}x{n}");
        for id in [a, bb, out] {
            b.free(id).unwrap();
        }
    }
    // Validation before device work.
    let a = b.alloc(16).unwrap();
    let out = b.alloc(16).unwrap();
    let call = KernelCall::Binary { op: BinaryOp::Add, a, b: a, out, n: 5 };
    assert_eq!(b.dispatch(&call), Err(BackendError::OutOfBounds));
    let call = KernelCall::Binary { op: BinaryOp::Add, a, b: a, out: a, n: 4 };
    assert_eq!(b.dispatch(&call), Err(BackendError::InvalidArgument));
    let call = KernelCall::Scale { x: a, out, n: 4, alpha: f32::NAN };
    assert_eq!(b.dispatch(&call), Err(BackendError::InvalidArgument));
    let call = KernelCall::Matmul { a, b: BufferId(424_242), out, m: 1, k: 1, n: 1 };
    assert_eq!(b.dispatch(&call), Err(BackendError::NoSuchBuffer));
    b.free(a).unwrap();
    b.free(out).unwrap();
}

fn accounting(b: &mut WgpuBackend) {
    let info = b.info();
    assert_eq!(info.total, CAPACITY);
    assert!(info.max_alloc <= CAPACITY && info.max_alloc > 0);
    assert_eq!(b.alloc(0), Err(BackendError::InvalidArgument));
    assert_eq!(b.alloc(CAPACITY + 1), Err(BackendError::OutOfMemory));
    assert_eq!(b.alloc(u64::MAX), Err(BackendError::OutOfMemory));
    let start = b.usage();
    let big = b.alloc(CAPACITY - start.used - 10).unwrap();
    assert_eq!(b.alloc(11), Err(BackendError::OutOfMemory));
    let small = b.alloc(10).unwrap();
    assert_eq!(b.usage().used, CAPACITY);
    assert_eq!(b.usage().buffers, start.buffers + 2);
    assert_eq!(b.alloc(1), Err(BackendError::OutOfMemory));
    assert_eq!(b.size(small), Ok(10));
    b.free(big).unwrap();
    b.free(small).unwrap();
    assert_eq!(b.usage(), start);
}

/// Random operations, valid and not, against a host model.
fn random_ops(b: &mut WgpuBackend) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m.max(1)
    };
    let mut model: Vec<(BufferId, Vec<u8>)> = Vec::new();
    for step in 0..400 {
        let pick = |r: u64, model: &Vec<(BufferId, Vec<u8>)>| {
            if model.is_empty() || r.is_multiple_of(10) { None } else { Some((r as usize) % model.len()) }
        };
        match rnd(6) {
            0 if model.len() < 12 => {
                let size = 1 + rnd(3000);
                let id = b.alloc(size).unwrap();
                model.push((id, vec![0; size as usize]));
            }
            1 if model.len() > 3 => {
                let i = rnd(model.len() as u64) as usize;
                let (id, _) = model.swap_remove(i);
                b.free(id).unwrap();
            }
            2 => {
                let (off, len) = (rnd(3100), rnd(200));
                let data = pattern(step, len as usize);
                match pick(rnd(1000), &model) {
                    Some(i) if off + len <= model[i].1.len() as u64 => {
                        b.write(model[i].0, off, &data).unwrap();
                        model[i].1[off as usize..(off + len) as usize].copy_from_slice(&data);
                    }
                    Some(i) => assert_eq!(b.write(model[i].0, off, &data), Err(BackendError::OutOfBounds)),
                    None => {
                        assert_eq!(b.write(BufferId(u64::MAX), off, &data), Err(BackendError::NoSuchBuffer))
                    }
                }
            }
            3 => {
                let (off, len, v) = (rnd(3100), rnd(300), rnd(256) as u8);
                match pick(rnd(1000), &model) {
                    Some(i) if off + len <= model[i].1.len() as u64 => {
                        b.fill(model[i].0, off, len, v).unwrap();
                        model[i].1[off as usize..(off + len) as usize].fill(v);
                    }
                    Some(i) => assert_eq!(b.fill(model[i].0, off, len, v), Err(BackendError::OutOfBounds)),
                    None => assert_eq!(b.fill(BufferId(0), off, len, v), Err(BackendError::NoSuchBuffer)),
                }
            }
            4 => {
                let (Some(i), Some(j)) = (pick(rnd(1000), &model), pick(rnd(1000), &model)) else { continue };
                let (so, dof, len) = (rnd(1500), rnd(1500), rnd(1500));
                let (sl, dl) = (model[i].1.len() as u64, model[j].1.len() as u64);
                let got = b.copy(model[i].0, so, model[j].0, dof, len);
                if so + len > sl || dof + len > dl {
                    assert_eq!(got, Err(BackendError::OutOfBounds));
                } else if i == j && so < dof + len && dof < so + len && len > 0 {
                    assert_eq!(got, Err(BackendError::InvalidArgument));
                } else {
                    got.unwrap();
                    let chunk = model[i].1[so as usize..(so + len) as usize].to_vec();
                    model[j].1[dof as usize..(dof + len) as usize].copy_from_slice(&chunk);
                }
            }
            _ => {
                if let Some(i) = pick(rnd(1000), &model) {
                    let (id, want) = &model[i];
                    assert_eq!(&read_all(b, *id), want, "step {step}");
                }
            }
        }
        let used: u64 = model.iter().map(|(_, v)| v.len() as u64).sum();
        assert_eq!(b.usage().used, used);
        assert_eq!(b.usage().buffers as usize, model.len());
    }
    for (id, want) in &model {
        assert_eq!(&read_all(b, *id), want);
    }
}

macro_rules! api_tests {
    ($module:ident, $name:literal, $api:expr) => {
        mod $module {
            use super::*;

            /// An API that opens lists at least one adapter, and the one it opened among them;
            /// one that does not open lists none or skips.
            #[test]
            fn adapters_listed() {
                let adapters = list_adapters($api);
                eprintln!("{} adapters: {:?}", $name, adapters);
                if let Some(b) = open($name, $api) {
                    let name = b.info().name;
                    assert!(!adapters.is_empty(), "{} opened but lists no adapter", $name);
                    assert!(
                        adapters.iter().any(|a| a.contains(name.as_str())),
                        "{} opened {name:?}, which is not in {adapters:?}",
                        $name
                    );
                }
            }

            #[test]
            fn round_trips() {
                if let Some(mut b) = open($name, $api) {
                    super::round_trips(&mut b);
                }
            }

            #[test]
            fn zero_after_free() {
                if let Some(mut b) = open($name, $api) {
                    super::zero_after_free(&mut b);
                }
            }

            #[test]
            fn fill_edges() {
                if let Some(mut b) = open($name, $api) {
                    super::fill_edges(&mut b);
                }
            }

            #[test]
            fn copy_edges() {
                if let Some(mut b) = open($name, $api) {
                    super::copy_edges(&mut b);
                }
            }

            #[test]
            fn kernels() {
                if let Some(mut b) = open($name, $api) {
                    super::kernels(&mut b);
                }
            }

            #[test]
            fn random_ops() {
                if let Some(mut b) = open($name, $api) {
                    super::random_ops(&mut b);
                }
            }

            #[test]
            fn dependent_chain() {
                if let Some(mut b) = open($name, $api) {
                    rela_test_support::queued::dependent_kernel_chain(&mut b);
                }
            }

            #[test]
            fn write_after_dispatch() {
                if let Some(mut b) = open($name, $api) {
                    rela_test_support::queued::write_behind_kernel(&mut b);
                }
            }

            #[test]
            fn accounting() {
                if let Some(mut b) = open($name, $api) {
                    super::accounting(&mut b);
                }
            }
        }
    };
}

api_tests!(vulkan, "wgpu-vulkan", Api::Vulkan);
api_tests!(gl, "wgpu-gl", Api::Gl);

#[test]
fn bad_adapter_selector_is_typed() {
    let cfg = WgpuConfig { capacity: 1024, backends: Api::Auto, adapter: Some("no such gpu zzz".into()) };
    match WgpuBackend::new(cfg) {
        Err(InitError::NoMatchingAdapter { .. } | InitError::Unavailable(_)) => {}
        other => panic!("unexpected: {:?}", other.map(|b| b.info())),
    }
}

#[test]
fn backend_is_send() {
    fn send<T: Send>() {}
    send::<WgpuBackend>();
    send::<Box<dyn GpuBackend + Send>>();
}

/// The facts a backend reports: the wgpu kind, a device name, the configured capacity as its
/// total, a largest allocation within it; with an unbounded capacity, a largest allocation
/// that the device bounds, enforced by `alloc`.
#[test]
fn device_facts() {
    for (name, api) in [("wgpu-vulkan", Api::Vulkan), ("wgpu-gl", Api::Gl)] {
        let Some(b) = open(name, api) else { continue };
        let info = b.info();
        eprintln!("{name}: {info:?} on {:?}", b.api());
        assert_eq!(info.backend, rela_core::backend::BackendKind::WGPU);
        assert!(!info.name.is_empty(), "{name}: no device name");
        assert_eq!(info.total, CAPACITY, "{name}: the total is the configured capacity");
        assert!(info.max_alloc > 0 && info.max_alloc <= info.total, "{name}: {info:?}");
        assert_eq!(b.usage(), rela_core::backend::Usage::default());
        drop(b);

        let cfg = WgpuConfig { capacity: u64::MAX, backends: api, adapter: None };
        let mut b = WgpuBackend::new(cfg).unwrap();
        let info = b.info();
        eprintln!("{name}: device max_alloc {}", info.max_alloc);
        assert_eq!(info.total, u64::MAX);
        assert!(info.max_alloc > 0 && info.max_alloc < u64::MAX, "{name}: the device bounds max_alloc");
        assert_eq!(b.alloc(info.max_alloc.saturating_add(1)), Err(BackendError::OutOfMemory));
        let id = b.alloc(info.max_alloc.min(16 << 20)).unwrap();
        b.free(id).unwrap();
    }
}

#[test]
fn api_not_compiled_in_is_unavailable() {
    let cfg = WgpuConfig { capacity: 1024, backends: Api::Metal, adapter: None };
    match WgpuBackend::new(cfg) {
        Err(e @ InitError::Unavailable(_)) => eprintln!("{e}"),
        other => panic!("unexpected: {:?}", other.map(|b| b.info())),
    }
}

/// `cargo test -p rela-backend-wgpu --release -- --ignored --nocapture throughput`
#[test]
#[ignore = "timing, not a check"]
fn throughput() {
    for (name, api) in [("wgpu-vulkan", Api::Vulkan), ("wgpu-gl", Api::Gl)] {
        let Some(mut b) = open(name, api) else { continue };
        let size = 48 << 20;
        let id = b.alloc(size).unwrap();
        let data = pattern(3, size as usize);
        let mut out = vec![0u8; size as usize];
        let t = std::time::Instant::now();
        b.write(id, 0, &data).unwrap();
        let w = t.elapsed();
        let t = std::time::Instant::now();
        b.read(id, 0, &mut out).unwrap();
        let r = t.elapsed();
        let t = std::time::Instant::now();
        b.fill(id, 1, size - 1, 0x5A).unwrap();
        let f = t.elapsed();
        let mb = (size >> 20) as f64;
        eprintln!(
            "{name}: write {:.0} MiB/s, read {:.0} MiB/s, fill {:.0} MiB/s",
            mb / w.as_secs_f64(),
            mb / r.as_secs_f64(),
            mb / f.as_secs_f64()
        );
        assert_eq!(out, data);
    }
}

/// `cargo test -p rela-backend-wgpu -- --ignored --nocapture latency`
#[test]
#[ignore = "timing, not a check"]
fn latency() {
    for (name, api) in [("wgpu-vulkan", Api::Vulkan), ("wgpu-gl", Api::Gl)] {
        let Some(mut b) = open(name, api) else { continue };
        let id = b.alloc(4096).unwrap();
        let per = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e6 / 200.0;
        let t = std::time::Instant::now();
        for i in 0..200 {
            b.write(id, 8 * i, &[1, 2, 3, 4]).unwrap();
        }
        let w = per(t);
        let t = std::time::Instant::now();
        for i in 0..200 {
            b.read(id, 8 * i, &mut [0; 4]).unwrap();
        }
        let r = per(t);
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let x = b.alloc(100).unwrap();
            b.free(x).unwrap();
        }
        let a = per(t);
        eprintln!("{name}: aligned write {w:.0} us, read {r:.0} us, alloc+free {a:.0} us");
    }
}

/// `cargo test -p rela-backend-wgpu --release -- --ignored --nocapture dispatch_chain`:
/// 2000 small dependent ADDs, then one READ.
#[test]
#[ignore = "timing, not a check"]
fn dispatch_chain() {
    for (name, api) in [("wgpu-vulkan", Api::Vulkan), ("wgpu-gl", Api::Gl)] {
        let Some(mut b) = open(name, api) else { continue };
        let n = 256u32;
        let one = f32_bytes(&vec![1.0; n as usize]);
        let (x, y, c) = (b.alloc(1024).unwrap(), b.alloc(1024).unwrap(), b.alloc(1024).unwrap());
        b.write(c, 0, &one).unwrap();
        b.fill(x, 0, 1024, 0).unwrap();
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
            "{name}: 2000 dependent ADDs + READ: {:.1} ms ({:.0} us each)",
            e.as_secs_f64() * 1e3,
            e.as_secs_f64() * 1e6 / 2000.0
        );
    }
}
