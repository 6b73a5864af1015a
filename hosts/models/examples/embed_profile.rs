//! Embeds one text repeatedly on the host backend, in process, and prints the time per call:
//! a fixed workload for profilers (`valgrind --tool=callgrind`) and before/after comparisons.
//!
//! `cargo run --release -p rela-models --example embed_profile -- MODEL_DIR [TOKENS] [RUNS] [THREADS]`
//! embeds a text of about TOKENS word-piece tokens (default 256) RUNS times (default 10) on
//! THREADS kernel threads (default 1).

use std::time::Instant;

use rela_backend_host::OwnedHostBackend;
use rela_models::{Embedder, ModelFiles};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("usage: embed_profile MODEL_DIR [TOKENS] [RUNS] [THREADS]")?;
    let tokens: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let runs: usize = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let threads: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    rela_kernels::fast::set_threads(threads);
    let mut backend = OwnedHostBackend::with_capacity(512 << 20);
    let mut embedder = Embedder::load(&mut backend, &ModelFiles::in_dir(std::path::Path::new(dir)))?;
    // Common English words, each one word-piece token.
    let words = ["the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "bird"];
    let text: String =
        (0..tokens.saturating_sub(2)).map(|i| words[i % words.len()]).collect::<Vec<_>>().join(" ");
    let n = embedder.token_ids(&text)?.len();
    let mut best = f64::MAX;
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        let v = embedder.embed(&mut backend, &[text.as_str()])?;
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(v.len(), 1);
    }
    let mean = started.elapsed().as_secs_f64() / runs as f64;
    println!("{n} tokens, {threads} thread(s): mean {:.1} ms, best {:.1} ms", mean * 1e3, best * 1e3);
    Ok(())
}
