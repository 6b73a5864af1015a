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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rela_core::backend::{BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage};
use rela_models::{Embedder, ModelFiles};

/// Forwards to a backend, adding up the time each kind of kernel and transfer takes.
struct Timed<'a> {
    inner: &'a mut dyn GpuBackend,
    spent: BTreeMap<&'static str, (u32, Duration)>,
}

impl Timed<'_> {
    fn time<T>(&mut self, what: &'static str, f: impl FnOnce(&mut dyn GpuBackend) -> T) -> T {
        let t0 = Instant::now();
        let r = f(&mut *self.inner);
        let e = self.spent.entry(what).or_default();
        e.0 += 1;
        e.1 += t0.elapsed();
        r
    }
}

fn kind(call: &KernelCall) -> &'static str {
    match call {
        KernelCall::Binary { .. } => "Binary",
        KernelCall::Scale { .. } => "Scale",
        KernelCall::Matmul { .. } => "Matmul",
        KernelCall::Gather { .. } => "Gather",
        KernelCall::LayerNorm { .. } => "LayerNorm",
        KernelCall::Linear { .. } => "Linear",
        KernelCall::Gelu { .. } => "Gelu",
        KernelCall::Attention { .. } => "Attention",
        KernelCall::MeanPool { .. } => "MeanPool",
        KernelCall::L2Normalize { .. } => "L2Normalize",
        KernelCall::RmsNorm { .. } => "RmsNorm",
        KernelCall::Rope { .. } => "Rope",
        KernelCall::SwiGlu { .. } => "SwiGlu",
        KernelCall::QLinear { .. } => "QLinear",
        KernelCall::QGather { .. } => "QGather",
        KernelCall::CausalAttention { .. } => "CausalAttention",
        KernelCall::Softmax { .. } => "Softmax",
        KernelCall::Argmax { .. } => "Argmax",
    }
}

impl GpuBackend for Timed<'_> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn usage(&self) -> Usage {
        self.inner.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.time("alloc", |b| b.alloc(size))
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.time("free", |b| b.free(id))
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.inner.size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.time("write", |b| b.write(id, offset, data))
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.time("read", |b| b.read(id, offset, out))
    }
    fn copy(&mut self, s: BufferId, so: u64, d: BufferId, dof: u64, len: u64) -> Result<(), BackendError> {
        self.time("copy", |b| b.copy(s, so, d, dof, len))
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.time("fill", |b| b.fill(id, offset, len, value))
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.time(kind(call), |b| b.dispatch(call))
    }
}

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
            // Where one more run spends its time.
            let mut timed = Timed { inner: &mut *b, spent: BTreeMap::new() };
            e.embed(&mut timed, &texts).unwrap();
            let mut parts: Vec<_> = timed.spent.into_iter().collect();
            parts.sort_by_key(|(_, (_, d))| std::cmp::Reverse(*d));
            let total: f64 = parts.iter().map(|(_, (_, d))| d.as_secs_f64()).sum();
            let parts: Vec<String> = parts
                .iter()
                .map(|(k, (n, d))| {
                    let share = 100.0 * d.as_secs_f64() / total.max(f64::MIN_POSITIVE);
                    format!("{k} {:.1} ms/{n} ({share:.0} %)", d.as_secs_f64() * 1e3)
                })
                .collect();
            let line = format!("{name:12} batch {batch:2} breakdown: {}", parts.join(", "));
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
