//! SmolLM2-135M-Instruct Q4_1: the forward pass gives the same bits whatever the size of the
//! kernels' pool. The pool is sized once per process, so the test runs itself again as child
//! processes with `RELA_KERNEL_THREADS` at 1, 2 and 3, each writing every logit of a fixed run
//! (prompts as batches of both kinds, decode steps, a batch of sequences) to a file, and
//! compares the files byte for byte. Skipped loudly without the file unless
//! RELA_REQUIRE_GGUF=1.

// Only the model is read here, not the JSON fixtures.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use rela_llm::generate::argmax;
use rela_llm::{GgufTokenizer, KvCache, Model};

const TEST: &str = "logits_do_not_depend_on_the_thread_count";

/// Set in a child: where it writes its logits.
const OUT_ENV: &str = "RELA_THREAD_COUNT_TEST_OUT";

/// Every logit of the fixed run, as little-endian bytes.
fn run(model: &Model<'_>, tok: &GgufTokenizer) -> Vec<u8> {
    let vocab = model.config.vocab_size;
    let mut all: Vec<f32> = Vec::new();
    // A long prompt (panels of dequantized weights, attention over many tokens), then decode
    // steps (the row kernels, attention at one token).
    let long = "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts flew to the Moon \
                and two of them walked on it while the third stayed in orbit around it, waiting.";
    let ids = tok.encode(long, false).expect("encode");
    assert!(ids.len() > 16, "{} ids: the long prompt must take the panel path", ids.len());
    let mut cache = model.new_cache(ids.len() + 8);
    let mut logits = model.prefill(&ids, &mut cache).expect("prefill");
    all.extend(&logits);
    for _ in 0..6 {
        let next = argmax(&logits) as u32;
        model.forward(next, &mut cache, &mut logits).expect("step");
        all.extend(&logits);
    }
    // Short prompts (the batched row kernels), then their decode steps as one batch.
    let short = ["Once upon a time", "def fibonacci(n):", "The capital of France is"];
    let mut caches: Vec<KvCache> = Vec::new();
    let mut batch: Vec<f32> = Vec::new();
    for p in short {
        let ids = tok.encode(p, false).expect("encode");
        assert!(ids.len() <= 16, "{} ids: a short prompt must take the batched row kernels", ids.len());
        let mut c = model.new_cache(ids.len() + 8);
        batch.extend(model.prefill(&ids, &mut c).expect("prefill"));
        caches.push(c);
    }
    all.extend(&batch);
    for _ in 0..4 {
        let next: Vec<u32> = batch.chunks_exact(vocab).map(|l| argmax(l) as u32).collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        model.forward_batch(&next, &mut refs, &mut batch).expect("batch step");
        all.extend(&batch);
    }
    all.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Runs this test in a child process with a pool of `threads` threads; its logits' bytes.
fn child(threads: usize, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("logits-{threads}"));
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST, "--nocapture"])
        .env(rela_llm::threads::THREADS_ENV, threads.to_string())
        .env(OUT_ENV, &out)
        .status()
        .expect("child test");
    assert!(status.success(), "the run with {threads} threads failed: {status}");
    std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}

#[test]
fn logits_do_not_depend_on_the_thread_count() {
    let Some(f) = common::model(TEST) else { return };
    if let Some(out) = std::env::var_os(OUT_ENV) {
        // A child: the pool has the size the parent asked for.
        let wanted: usize = std::env::var(rela_llm::threads::THREADS_ENV)
            .expect("thread count")
            .parse()
            .expect("thread count");
        assert_eq!(rela_llm::threads::threads(), wanted, "pool size");
        let model = Model::new(f).expect("model");
        let tok = GgufTokenizer::from_gguf(&f.gguf).expect("tokenizer");
        std::fs::write(PathBuf::from(out), run(&model, &tok)).expect("write logits");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rela-thread-count-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let one = child(1, &dir);
    for threads in [2, 3] {
        let other = child(threads, &dir);
        assert_eq!(one.len(), other.len(), "{threads} threads: logit count");
        let first = one.iter().zip(&other).position(|(a, b)| a != b);
        assert_eq!(first.map(|i| i / 4), None, "{threads} threads: first differing logit");
    }
    assert!(!one.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}
