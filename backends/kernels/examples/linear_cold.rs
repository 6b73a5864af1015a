//! The 36 LINEAR products of one all-MiniLM-L6-v2 forward pass (6 layers of 4 × 384→384,
//! 384→1536 and 1536→384) at a few rows, one after another, as a short text's pass runs them:
//! each weight matrix is read once per pass and has left the caches by the next, so at a few
//! rows the time is how fast the kernel streams 42.5 MB of f32 weights from memory.
//!
//! ```text
//! cargo run --release -p rela-kernels --features std --example linear_cold -- [ROWS...]
//! ```
//!
//! Prints, per row count, the best pass of 30 for `fast::linear` (`w` as `n × k`, the kernel's
//! layout) and for `fast::matmul` over the same weights stored `k × n`, with the weight bytes
//! streamed per second. One kernel thread.

use std::time::Instant;

use rela_kernels::fast;

/// Deterministic values in [-1, 1) as little-endian f32 bytes.
fn values(count: usize, salt: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0).to_le_bytes())
        .collect()
}

fn main() {
    let rows: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = if rows.is_empty() { vec![8, 16, 32, 64] } else { rows };
    fast::set_threads(1);
    let mut shapes = Vec::new();
    for _ in 0..6 {
        shapes.extend([(384, 384); 4]);
        shapes.extend([(384, 1536), (1536, 384)]);
    }
    let weights: Vec<Vec<u8>> = shapes.iter().enumerate().map(|(i, &(k, n))| values(k * n, i)).collect();
    let biases: Vec<Vec<u8>> = shapes.iter().enumerate().map(|(i, &(_, n))| values(n, i + 99)).collect();
    let weight_bytes: usize = weights.iter().map(Vec::len).sum();
    for m in rows {
        let x = values(m * 1536, 7);
        let mut out = vec![0u8; m * 1536 * 4];
        let mut best = [f64::MAX; 2];
        for _ in 0..30 {
            for (v, slot) in best.iter_mut().enumerate() {
                let t = Instant::now();
                for (i, &(k, n)) in shapes.iter().enumerate() {
                    let (x, out) = (&x[..m * k * 4], &mut out[..m * n * 4]);
                    if v == 0 {
                        fast::linear(x, &weights[i], &biases[i], out, m, k, n);
                    } else {
                        fast::matmul(x, &weights[i], out, m, k, n);
                    }
                }
                *slot = slot.min(t.elapsed().as_secs_f64());
            }
        }
        let gbs = |s: f64| weight_bytes as f64 / s / 1e9;
        println!(
            "rows {m}: linear {:.2} ms ({:.1} GB/s of weights), matmul (k x n) {:.2} ms ({:.1} GB/s)",
            best[0] * 1e3,
            gbs(best[0]),
            best[1] * 1e3,
            gbs(best[1])
        );
    }
}
