//! Loading, validation and request limits, on a tiny synthetic BERT (no real weights needed),
//! plus the forward pass of that tiny BERT on every backend against a plain-Rust f64 reference.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rela_core::backend::{GpuBackend, Usage};
use rela_models::{Embedder, MAX_TEXT_BYTES, MAX_TEXTS, ModelError, ModelRepository, validate_name};

fn host() -> TestBackend {
    backend("host", 64 << 20, "loading").unwrap()
}

fn load_tiny(b: &mut dyn GpuBackend, st: &[u8]) -> Result<Embedder, ModelError> {
    Embedder::load_from_bytes(b, st, tiny_tokenizer().as_bytes(), tiny_config().as_bytes())
}

#[test]
fn bad_names_are_rejected() {
    for bad in ["../x", "a/b", ".hidden", "", &"x".repeat(65), "a\\b", "..", "a..b"] {
        assert!(matches!(validate_name(bad), Err(ModelError::InvalidName { .. })), "{bad:?}");
    }
    let dir = std::env::temp_dir();
    let repo = ModelRepository::open(&dir).unwrap();
    for bad in ["../x", "a/b", ".hidden", "", &"x".repeat(65)] {
        assert!(matches!(repo.files(bad), Err(ModelError::InvalidName { .. })), "{bad:?}");
    }
}

#[test]
fn tiny_model_loads_and_unloads_to_zero() {
    let mut tb = host();
    let b = tb.as_dyn();
    let mut calls = Vec::new();
    let e = Embedder::load_from_bytes_with_progress(
        b,
        &tiny_safetensors("F32"),
        tiny_tokenizer().as_bytes(),
        tiny_config().as_bytes(),
        &mut |done, total| calls.push((done, total)),
    )
    .unwrap();
    assert_eq!(e.dim(), TINY_HIDDEN);
    assert_eq!(calls.first().unwrap().0, 0);
    let (done, total) = *calls.last().unwrap();
    assert_eq!(done, total);
    assert_eq!(total, e.device_bytes());
    assert!(b.usage().used >= e.device_bytes());
    e.unload(b).unwrap();
    assert_eq!(b.usage(), Usage::default());
}

#[test]
fn corrupted_or_truncated_safetensors_is_rejected_before_allocation() {
    let good = tiny_safetensors("F32");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated header length", good[..4].to_vec()),
        ("truncated header", good[..40].to_vec()),
        ("truncated data", good[..good.len() - 5].to_vec()),
        ("trailing bytes", [good.as_slice(), &[0u8; 12]].concat()),
        ("garbage", vec![0xAB; 4096]),
    ];
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("huge header length", huge_header));
    let mut bad_json = good.clone();
    bad_json[8] = b'[';
    cases.push(("header not an object", bad_json));
    for (what, bytes) in cases {
        let mut tb = host();
        let b = tb.as_dyn();
        let err = load_tiny(b, &bytes).unwrap_err();
        assert!(matches!(err, ModelError::Safetensors(_)), "{what}: {err}");
        assert_eq!(b.usage(), Usage::default(), "{what}");
    }
}

/// The tiny tensors with one replaced (or removed, with `shape` None).
fn tiny_with(name: &str, replace: Option<(&'static str, Vec<usize>)>) -> Vec<u8> {
    let mut raw: Vec<RawTensor> = tiny_tensors()
        .into_iter()
        .map(|(n, shape, v)| RawTensor {
            name: n,
            dtype: "F32",
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    let i = raw.iter().position(|t| t.name == name).unwrap();
    match replace {
        None => {
            raw.remove(i);
        }
        Some((dtype, shape)) => {
            let size = match dtype {
                "F64" | "I64" => 8,
                "F16" | "BF16" => 2,
                _ => 4,
            };
            raw[i].data = vec![0; shape.iter().product::<usize>() * size];
            raw[i].dtype = dtype;
            raw[i].shape = shape;
        }
    }
    safetensors_bytes(&raw)
}

#[test]
fn wrong_shape_missing_or_wrong_dtype_is_rejected_before_allocation() {
    let l1 = "encoder.layer.1.intermediate.dense.weight";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("transposed", tiny_with(l1, Some(("F32", vec![TINY_HIDDEN, TINY_FFN])))),
        ("wrong rank", tiny_with("embeddings.LayerNorm.weight", Some(("F32", vec![1, TINY_HIDDEN])))),
        ("short vocab", tiny_with("embeddings.word_embeddings.weight", Some(("F32", vec![3, TINY_HIDDEN])))),
        ("missing", tiny_with("encoder.layer.0.attention.self.key.bias", None)),
        ("f64", tiny_with(l1, Some(("F64", vec![TINY_FFN, TINY_HIDDEN])))),
        ("i32", tiny_with(l1, Some(("I32", vec![TINY_FFN, TINY_HIDDEN])))),
    ];
    for (what, bytes) in cases {
        let mut tb = host();
        let b = tb.as_dyn();
        let err = load_tiny(b, &bytes).unwrap_err();
        let ok = match what {
            "missing" => matches!(err, ModelError::MissingTensor(_)),
            "f64" | "i32" => matches!(err, ModelError::Dtype { .. }),
            _ => matches!(err, ModelError::Shape { .. }),
        };
        assert!(ok, "{what}: {err}");
        assert_eq!(b.usage(), Usage::default(), "{what}");
    }
}

#[test]
fn bad_config_or_tokenizer_is_rejected_before_allocation() {
    let st = tiny_safetensors("F32");
    let mut tb = host();
    let b = tb.as_dyn();
    let cfg = tiny_config().replace("\"gelu\"", "\"relu\"");
    let err = Embedder::load_from_bytes(b, &st, tiny_tokenizer().as_bytes(), cfg.as_bytes()).unwrap_err();
    assert!(matches!(err, ModelError::Config(_)), "{err}");
    // A config that disagrees with the weights is a shape error.
    let cfg = tiny_config().replace("\"intermediate_size\":16", "\"intermediate_size\":32");
    let err = Embedder::load_from_bytes(b, &st, tiny_tokenizer().as_bytes(), cfg.as_bytes()).unwrap_err();
    assert!(matches!(err, ModelError::Shape { .. }), "{err}");
    let err = Embedder::load_from_bytes(b, &st, b"{not json", tiny_config().as_bytes()).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer(_)), "{err}");
    assert_eq!(b.usage(), Usage::default());
}

#[test]
fn failed_upload_frees_everything() {
    // A backend too small for the weights: the load fails part-way and must leave nothing behind.
    let mut tb = backend("host", 8 << 10, "failed_upload").unwrap();
    let b = tb.as_dyn();
    let err = load_tiny(b, &tiny_safetensors("F32")).unwrap_err();
    assert!(matches!(err, ModelError::Backend(_)), "{err}");
    assert_eq!(b.usage(), Usage::default());
}

#[test]
fn request_limits_are_typed_errors() {
    let mut tb = host();
    let b = tb.as_dyn();
    let mut e = load_tiny(b, &tiny_safetensors("F32")).unwrap();
    let many = vec!["hello"; MAX_TEXTS + 1];
    assert!(matches!(e.embed(b, &many), Err(ModelError::TooManyTexts { count: 65, .. })));
    let long = "a ".repeat(MAX_TEXT_BYTES / 2 + 1);
    assert!(matches!(e.embed(b, &["ok", &long]), Err(ModelError::TextTooLong { index: 1, .. })));
    let bad: &[u8] = &[b'h', 0xFF, b'i'];
    assert!(matches!(e.embed_bytes(b, &[b"fine", bad]), Err(ModelError::InvalidUtf8 { index: 1 })));
    // Exactly at the limits is fine (and gets truncated to max_tokens).
    let at_limit = "a ".repeat(MAX_TEXT_BYTES / 2);
    let out = e.embed(b, &vec![at_limit.as_str(); MAX_TEXTS]).unwrap();
    assert_eq!(out.len(), MAX_TEXTS);
    assert_eq!(e.token_ids(&at_limit).unwrap().len(), e.max_tokens());
    assert!(e.embed(b, &[]).unwrap().is_empty());
    e.unload(b).unwrap();
    assert_eq!(b.usage(), Usage::default());
}

#[test]
fn tiny_forward_matches_reference_on_every_backend() {
    let texts = [
        "hello world",
        "the gpu relays",
        "",
        "a b c . , hello the world gpu relay",
        "Hello, WORLD! unknown-word",
        "c",
    ];
    for dtype in ["F32", "F16", "BF16"] {
        // Reference with the values the device sees (f16/bf16-rounded for those dtypes) is close
        // enough: the rounding is far below the tolerance only for F32, so compare halves loosely.
        let st = tiny_safetensors(dtype);
        for name in BACKENDS {
            if dtype != "F32" && name != "host" {
                continue;
            }
            let Some(mut tb) = backend(name, 64 << 20, "tiny_forward") else { continue };
            let b = tb.as_dyn();
            let mut e = load_tiny(b, &st).unwrap();
            let out = match e.embed(b, &texts) {
                Err(err) if kernels_missing(name, "tiny_forward", &err) => {
                    e.unload(b).unwrap();
                    continue;
                }
                r => r.unwrap(),
            };
            for (text, got) in texts.iter().zip(&out) {
                let ids = e.token_ids(text).unwrap();
                let want = tiny_forward(&ids);
                let cos = cosine(got, &want);
                let min = if dtype == "F32" { 0.99999 } else { 0.99 };
                assert!(cos >= min, "{name} {dtype} {text:?} ids {ids:?}: cosine {cos}");
                if dtype == "F32" {
                    assert!(max_abs_diff(got, &want) < 1e-4, "{name} {text:?}");
                }
            }
            // One at a time gives the same as the batch (padding does not leak).
            for (text, batched) in texts.iter().zip(&out) {
                let single = e.embed(b, &[text]).unwrap();
                assert!(max_abs_diff(&single[0], batched) < 1e-5, "{name} {dtype} {text:?}");
            }
            e.unload(b).unwrap();
            assert_eq!(b.usage(), Usage::default(), "{name}");
            tb.check_validation();
        }
    }
}
