//! all-MiniLM-L6-v2 on every backend against the sentence-transformers fixture
//! (`tests/fixtures/reference.json`, made by `make_reference.py`).
//!
//! Needs the real model (`hosts/models/fetch-model.sh`, or `RELA_MODEL_DIR`); without it each
//! test prints a SKIPPED line and passes, unless `RELA_REQUIRE_MODEL=1`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::*;
use rela_core::backend::Usage;
use rela_models::{Embedder, MAX_TOKENS, ModelFiles, ModelRepository};

/// Cosine similarity every fixture embedding must reach.
const MIN_COSINE: f64 = 0.9999;

fn conformance(name: &str) {
    let test = format!("fixture_{name}");
    let Some(dir) = model_dir(&test) else { return };
    let Some(mut tb) = backend(name, CAPACITY, &test) else { return };
    let reference = reference();
    let b = tb.as_dyn();
    let files = ModelFiles::in_dir(&dir);
    let t0 = Instant::now();
    let mut e = Embedder::load(b, &files).unwrap();
    let load = t0.elapsed();
    assert_eq!(e.dim(), reference.dim);
    assert_eq!(e.max_tokens(), reference.max_seq_length);

    // Tokenization matches the Python tokenizer exactly (truncation included).
    for case in &reference.cases {
        assert_eq!(e.token_ids(&case.text).unwrap(), case.token_ids, "tokens of {:?}", case.text);
    }
    assert!(
        reference.cases.iter().any(|c| c.token_ids.len() == MAX_TOKENS),
        "fixture lacks a truncated text"
    );

    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let t0 = Instant::now();
    let out = match e.embed(b, &texts) {
        Err(err) if kernels_missing(name, &test, &err) => {
            e.unload(b).unwrap();
            return;
        }
        r => r.unwrap(),
    };
    let run = t0.elapsed();
    let mut min_cos = f64::INFINITY;
    let mut max_diff = 0.0f64;
    for (case, got) in reference.cases.iter().zip(&out) {
        assert_eq!(got.len(), reference.dim);
        let cos = cosine(got, &case.embedding);
        let diff = max_abs_diff(got, &case.embedding);
        assert!(cos >= MIN_COSINE, "{name}: cosine {cos} for {:?}", case.text);
        min_cos = min_cos.min(cos);
        max_diff = max_diff.max(diff);
    }
    eprintln!(
        "rela-models fixture on {name}: {} sentences, min cosine {min_cos:.9} (1 - min = {:.2e}), max abs diff {max_diff:.3e}, \
         load {:.2}s, embed {:.2}s ({} weight bytes, {} workspace bytes)",
        out.len(),
        1.0 - min_cos,
        load.as_secs_f64(),
        run.as_secs_f64(),
        e.device_bytes(),
        e.workspace_bytes()
    );

    // Unload frees everything, and fresh memory reads as zeros.
    e.unload(b).unwrap();
    assert_eq!(b.usage(), Usage::default(), "{name}: unload left buffers behind");
    let size = 64 << 20;
    let id = b.alloc(size).unwrap();
    let mut back = vec![0xFFu8; size as usize];
    b.read(id, 0, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0), "{name}: fresh allocation after unload is not zeroed");
    b.free(id).unwrap();
    tb.check_validation();
}

#[test]
fn fixture_host() {
    conformance("host");
}

#[test]
fn fixture_vulkan() {
    conformance("vulkan");
}

#[test]
fn fixture_wgpu_vulkan() {
    conformance("wgpu-vulkan");
}

#[test]
fn fixture_wgpu_gl() {
    conformance("wgpu-gl");
}

#[test]
fn repository_finds_the_model() {
    let Some(dir) = model_dir("repository_finds_the_model") else { return };
    let Some(parent) = dir.parent() else { return };
    let name = dir.file_name().unwrap().to_str().unwrap();
    let repo = ModelRepository::open(parent).unwrap();
    assert!(repo.names().iter().any(|n| n == name));
    let files = repo.files(name).unwrap();
    assert!(files.safetensors.ends_with("model.safetensors"));
    let mut tb = backend("host", CAPACITY, "repository_finds_the_model").unwrap();
    let b = tb.as_dyn();
    let mut last = (0, 0);
    let e = Embedder::load_with_progress(b, &files, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last, (e.device_bytes(), e.device_bytes()));
    // 22.7 M parameters as f32, without the pooler and position_ids.
    assert!(e.device_bytes() > 80 << 20 && e.device_bytes() < 100 << 20, "{}", e.device_bytes());
    e.unload(b).unwrap();
    assert_eq!(b.usage(), Usage::default());
}

#[test]
fn real_model_rejects_truncated_file_before_allocation() {
    let Some(dir) = model_dir("real_model_rejects_truncated_file") else { return };
    let files = ModelFiles::in_dir(&dir);
    let st = std::fs::read(&files.safetensors).unwrap();
    let tok = std::fs::read(&files.tokenizer).unwrap();
    let cfg = std::fs::read(&files.config).unwrap();
    let mut tb = backend("host", CAPACITY, "real_model_rejects_truncated_file").unwrap();
    let b = tb.as_dyn();
    for cut in [st.len() / 2, st.len() - 1] {
        assert!(Embedder::load_from_bytes(b, &st[..cut], &tok, &cfg).is_err());
        assert_eq!(b.usage(), Usage::default());
    }
}
