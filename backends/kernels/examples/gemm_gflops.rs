//! GFLOP/s of `rela_kernels::fast::matmul` and `fast::linear` on the byte buffers the host
//! backend hands them, for `scripts/bench/embed-peers.sh` (which runs numpy on the same shapes
//! in the same run).
//!
//! ```text
//! cargo run --release -p rela-kernels --features std --example gemm_gflops -- \
//!     [--threads N] [--seconds S] [--shapes MxKxN,...]
//! ```
//!
//! Prints one line per kernel and shape: `matmul|linear M K N GFLOPS` (2·M·K·N flops per call;
//! the best of three timed stretches of at least S/3 seconds each, after one warm-up call).

use std::time::{Duration, Instant};

use rela_kernels::fast;

fn usage() -> ! {
    eprintln!("usage: gemm_gflops [--threads N] [--seconds S] [--shapes MxKxN,...]");
    std::process::exit(2)
}

/// Parses `MxKxN`.
fn shape(s: &str) -> Option<(usize, usize, usize)> {
    let mut it = s.split('x').map(|v| v.trim().parse::<usize>().ok());
    let shape = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(shape)
}

/// Deterministic values in [-1, 1) as little-endian f32 bytes.
fn values(count: usize, salt: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0).to_le_bytes())
        .collect()
}

/// The best GFLOP/s of three stretches of at least `seconds / 3` of `f`, after one warm-up call.
fn gflops(flops: f64, seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let stretch = Duration::from_secs_f64(seconds / 3.0);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let (t, mut calls) = (Instant::now(), 0u32);
        while calls == 0 || t.elapsed() < stretch {
            f();
            calls += 1;
        }
        best = best.max(flops * f64::from(calls) / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    let (mut threads, mut seconds) = (0usize, 3.0f64);
    let mut shapes = vec![(256, 384, 1536), (256, 1536, 384), (32, 384, 384), (1024, 1024, 1024)];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--threads" => threads = value.parse().unwrap_or_else(|_| usage()),
            "--seconds" => seconds = value.parse().unwrap_or_else(|_| usage()),
            "--shapes" => {
                shapes = value.split(',').map(|s| shape(s).unwrap_or_else(|| usage())).collect();
            }
            _ => usage(),
        }
    }
    if threads > 0 && !fast::set_threads(threads) {
        eprintln!("gemm_gflops: the kernel pool already existed");
    }
    eprintln!("gemm_gflops: {} kernel threads", fast::threads());
    for (m, k, n) in shapes {
        let flops = 2.0 * (m * k * n) as f64;
        let (a, b, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
        let mut out = vec![0u8; m * n * 4];
        let g = gflops(flops, seconds, || fast::matmul(&a, &b, &mut out, m, k, n));
        println!("matmul {m} {k} {n} {g:.2}");
        // b holds k·n values: as w it is n rows of k.
        let g = gflops(flops, seconds, || fast::linear(&a, &b, &bias, &mut out, m, k, n));
        println!("linear {m} {k} {n} {g:.2}");
    }
}
