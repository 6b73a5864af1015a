//! The 36 LINEAR products of one all-MiniLM-L6-v2 forward pass (6 layers of 4 × 384→384,
//! 384→1536 and 1536→384) at a few rows, one after another, as a short text's pass runs them:
//! each weight matrix is read once per pass and has left the caches by the next, so at a few
//! rows the time is how fast the kernel streams 42.5 MB of f32 weights from memory.
//!
//! ```text
//! cargo run --release -p rela-kernels --features std --example linear_cold -- [--threads N] [ROWS...]
//! ```
//!
//! Prints, per row count, the best pass of 30 for `fast::linear_dot` (dot products with `w`'s
//! rows, what `fast::linear` runs for calls of at most `fast::LINEAR_DOT_MAX_ROWS` rows) and for
//! `fast::linear_gemm` (through `gemm`, what it runs for longer calls), run alternately over the
//! same weights, with the weight bytes streamed per second for the whole
//! pass and per shape (`k×n`: the best pass's time in that shape's six products). `--threads`
//! sizes the kernels' pool (default 1).

use std::time::Instant;

use rela_kernels::fast;

/// `count` deterministic values in [-1, 1) as little-endian f32 bytes, 64-byte aligned as the
/// host backend's buffers are (it aligns them to 256 bytes; a plain `Vec` of this size starts 16
/// bytes past a cache line, which costs the vector loads a split line each). Leaked: the
/// example keeps every buffer to its end.
fn values(count: usize, salt: usize) -> &'static mut [u8] {
    let v: Vec<u8> = (0..count)
        .flat_map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0).to_le_bytes())
        .collect();
    let a: &'static mut Vec<u8> = Box::leak(Box::new(vec![0u8; v.len() + 64]));
    let pad = (64 - (a.as_ptr() as usize % 64)) % 64;
    a[pad..pad + v.len()].copy_from_slice(&v);
    &mut a[pad..pad + v.len()]
}

/// The MiniLM shapes `(k, n)`, in the order of [`shape_of`]'s index.
const SHAPES: [(usize, usize); 3] = [(384, 384), (384, 1536), (1536, 384)];

fn shape_of(k: usize, n: usize) -> usize {
    SHAPES.iter().position(|&s| s == (k, n)).unwrap_or(0)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = 1;
    if let Some(at) = args.iter().position(|a| a == "--threads") {
        threads = args.get(at + 1).and_then(|v| v.parse().ok()).unwrap_or(1);
        args.drain(at..(at + 2).min(args.len()));
    }
    let rows: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let rows = if rows.is_empty() { vec![1, 4, 16, 32] } else { rows };
    fast::set_threads(threads);
    println!("{} kernel thread(s)", fast::threads());
    let mut shapes = Vec::new();
    for _ in 0..6 {
        shapes.extend([(384, 384); 4]);
        shapes.extend([(384, 1536), (1536, 384)]);
    }
    let weights: Vec<&[u8]> = shapes.iter().enumerate().map(|(i, &(k, n))| &*values(k * n, i)).collect();
    let biases: Vec<&[u8]> = shapes.iter().enumerate().map(|(i, &(_, n))| &*values(n, i + 99)).collect();
    let weight_bytes: usize = weights.iter().map(|w| w.len()).sum();
    let shape_bytes: Vec<usize> =
        SHAPES.iter().map(|&(k, n)| shapes.iter().filter(|&&s| s == (k, n)).count() * k * n * 4).collect();
    for m in rows {
        let x = values(m * 1536, 7);
        let out = values(m * 1536, 3);
        // Per kernel: the best pass, and the shape times of that pass.
        let mut best = [(f64::MAX, [0.0f64; 3]); 2];
        for _ in 0..30 {
            for (v, slot) in best.iter_mut().enumerate() {
                let mut per_shape = [0.0f64; 3];
                let pass = Instant::now();
                for (i, &(k, n)) in shapes.iter().enumerate() {
                    let (x, out) = (&x[..m * k * 4], &mut out[..m * n * 4]);
                    let t = Instant::now();
                    if v == 0 {
                        let f: fn(&[u8]) -> &[f32] = bytemuck::cast_slice;
                        let out = bytemuck::cast_slice_mut(out);
                        fast::linear_dot::linear(f(x), f(weights[i]), f(biases[i]), out, m, k, n, true);
                    } else {
                        fast::linear_gemm(x, weights[i], biases[i], out, m, k, n);
                    }
                    per_shape[shape_of(k, n)] += t.elapsed().as_secs_f64();
                }
                let total = pass.elapsed().as_secs_f64();
                if total < slot.0 {
                    *slot = (total, per_shape);
                }
            }
        }
        let gbs = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
        for (name, (total, per_shape)) in ["linear_dot", "linear_gemm"].iter().zip(best) {
            let shapes: Vec<String> = SHAPES
                .iter()
                .zip(&shape_bytes)
                .zip(per_shape)
                .map(|((&(k, n), &b), s)| format!("{k}x{n} {:.1}", gbs(b, s)))
                .collect();
            println!(
                "rows {m:>4}: {name:<12} {:6.2} ms, {:5.1} GB/s of weights ({} GB/s)",
                total * 1e3,
                gbs(weight_bytes, total),
                shapes.join(", ")
            );
        }
    }
}
