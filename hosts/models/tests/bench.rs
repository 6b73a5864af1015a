//! Throughput of all-MiniLM-L6-v2 on each backend: sentences per second for batches of 1, 8 and
//! 32 (in-process backend time: tokenization, uploads of the inputs, every kernel, read-back).
//!
//! Ignored by default; run with the model fetched:
//!
//! ```text
//! cargo test -p rela-models --release --test bench -- --ignored --nocapture
//! ```
//!
//! `RELA_BENCH_BACKENDS=host,vulkan` restricts the backends; `RELA_BENCH_SECONDS` (default 3)
//! is the minimum time per measurement.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rela_models::{Embedder, ModelFiles};

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (needs the model)"]
fn throughput() {
    let Some(dir) = model_dir("bench") else { return };
    let reference = reference();
    // Typical sentences: the fixture's texts under 64 tokens (2 to 48 tokens, mean ~16).
    let pool: Vec<&str> =
        reference.cases.iter().filter(|c| c.token_ids.len() < 64).map(|c| c.text.as_str()).collect();
    let min_time = Duration::from_secs_f64(
        std::env::var("RELA_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0),
    );
    let only = std::env::var("RELA_BENCH_BACKENDS").ok();
    let mut rows = Vec::new();
    for name in BACKENDS {
        if let Some(list) = &only
            && !list.split(',').any(|n| n.trim().eq_ignore_ascii_case(name))
        {
            continue;
        }
        let Some(mut tb) = backend(name, CAPACITY, "bench") else { continue };
        let b = tb.as_dyn();
        let device = b.info().name.to_string();
        let mut e = Embedder::load(b, &ModelFiles::in_dir(&dir)).unwrap();
        // Warm-up (pipelines, workspace).
        match e.embed(b, &pool[..1]) {
            Err(err) if kernels_missing(name, "bench", &err) => {
                e.unload(b).unwrap();
                continue;
            }
            r => drop(r.unwrap()),
        }
        for batch in [1usize, 8, 32] {
            let texts: Vec<&str> = pool.iter().cycle().take(batch).copied().collect();
            let tokens: usize = texts.iter().map(|t| e.token_ids(t).unwrap().len()).sum();
            let t0 = Instant::now();
            let mut runs = 0u32;
            while runs == 0 || t0.elapsed() < min_time {
                let out = e.embed(b, &texts).unwrap();
                assert_eq!(out.len(), batch);
                runs += 1;
            }
            let secs = t0.elapsed().as_secs_f64() / f64::from(runs);
            let line = format!(
                "{name:12} {device:40} batch {batch:2}: {:8.1} sentences/s, {:7.1} ms/batch, {:8.0} tokens/s ({runs} runs)",
                batch as f64 / secs,
                secs * 1e3,
                tokens as f64 / secs
            );
            eprintln!("{line}");
            rows.push(line);
        }
        e.unload(b).unwrap();
    }
    eprintln!("\nrela-models throughput (all-MiniLM-L6-v2):");
    for r in rows {
        eprintln!("  {r}");
    }
}
