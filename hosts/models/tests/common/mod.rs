//! Shared test helpers: where the real model lives (or why a test skips), the reference fixture,
//! backends, and a tiny synthetic BERT (config, tokenizer, safetensors) for tests that must run
//! without the real weights.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rela_core::backend::GpuBackend;
use serde::Deserialize;

/// Bytes every test backend lends: the weights (87 MiB) plus the intermediates (≤ ~110 MiB).
pub const CAPACITY: u64 = 512 << 20;

/// The real model's directory: `$RELA_MODEL_DIR` or `<repo>/models/all-MiniLM-L6-v2`, when it
/// holds the three files. Otherwise prints a loud SKIPPED line and returns `None`, or panics if
/// `RELA_REQUIRE_MODEL=1`.
pub fn model_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RELA_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    let missing: Vec<&str> = ["model.safetensors", "tokenizer.json", "config.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let reason = format!(
        "model files {missing:?} not found in {} (run hosts/models/fetch-model.sh or set RELA_MODEL_DIR)",
        dir.display()
    );
    if std::env::var("RELA_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        panic!("RELA_REQUIRE_MODEL=1 but {reason}");
    }
    eprintln!("\n*** SKIPPED rela-models/{test}: {reason} ***\n");
    None
}

/// Whether `RELA_REQUIRE_BACKENDS` names `backend` (comma-separated, case-insensitive), as in
/// rela-conformance: then a backend that cannot start fails instead of skipping.
pub fn backend_required(backend: &str) -> bool {
    std::env::var("RELA_REQUIRE_BACKENDS")
        .is_ok_and(|l| l.split(',').map(str::trim).any(|n| n.eq_ignore_ascii_case(backend)))
}

/// Whether `RELA_VK_VALIDATION=1` asks for the Vulkan validation layer.
pub fn vk_validation() -> bool {
    std::env::var("RELA_VK_VALIDATION").is_ok_and(|v| v == "1")
}

/// Backends whose inference kernels (Gather, LayerNorm, Linear, Gelu, Attention, MeanPool,
/// L2Normalize) have landed: on these an `Unsupported` answer fails the test. On the others it
/// prints a loud SKIPPED line (the kernels are being implemented backend by backend). Add a
/// backend here when its kernels land.
pub const KERNELS_LANDED: [&str; 4] = ["host", "vulkan", "wgpu-vulkan", "wgpu-gl"];

/// Whether `err` is a backend answering `Unsupported` for an inference kernel it has not got
/// yet, on a backend not in [`KERNELS_LANDED`]; prints the SKIPPED line if so.
pub fn kernels_missing(name: &str, test: &str, err: &rela_models::ModelError) -> bool {
    let unsupported =
        matches!(err, rela_models::ModelError::Backend(rela_core::backend::BackendError::Unsupported));
    if unsupported && !KERNELS_LANDED.contains(&name) {
        eprintln!(
            "\n*** SKIPPED rela-models/{test} on {name}: the backend does not run the inference kernels yet (Unsupported) ***\n"
        );
        return true;
    }
    false
}

/// Backends the tests run on.
pub const BACKENDS: [&str; 4] = ["host", "vulkan", "wgpu-vulkan", "wgpu-gl"];

/// A backend under test, with what the end-of-test checks need.
pub enum TestBackend {
    Host(Box<rela_backend_host::OwnedHostBackend<1024>>),
    Vulkan(Box<rela_backend_vulkan::VulkanBackend>),
    Wgpu(Box<rela_backend_wgpu::WgpuBackend>),
}

impl TestBackend {
    pub fn as_dyn(&mut self) -> &mut dyn GpuBackend {
        match self {
            Self::Host(b) => &mut **b,
            Self::Vulkan(b) => &mut **b,
            Self::Wgpu(b) => &mut **b,
        }
    }

    /// Panics if the Vulkan validation layer reported anything.
    pub fn check_validation(&self) {
        if let Self::Vulkan(b) = self {
            assert_eq!(b.validation_messages(), 0, "the Vulkan validation layer reported messages");
        }
    }
}

/// Builds backend `name` (one of [`BACKENDS`]) lending `capacity` bytes; `None` (with a loud
/// SKIPPED line) if it cannot start here and is not required.
pub fn backend(name: &str, capacity: u64, test: &str) -> Option<TestBackend> {
    let made: Result<TestBackend, String> = match name {
        "host" => {
            let arena = vec![0u8; usize::try_from(capacity).unwrap()].into_boxed_slice();
            Ok(TestBackend::Host(Box::new(rela_backend_host::OwnedHostBackend::<1024>::with_block_table(
                arena,
            ))))
        }
        "vulkan" => {
            let mut cfg = rela_backend_vulkan::VulkanConfig::new(capacity);
            cfg.validation = vk_validation();
            rela_backend_vulkan::VulkanBackend::new(cfg)
                .map(|b| TestBackend::Vulkan(Box::new(b)))
                .map_err(|e| e.to_string())
        }
        "wgpu-vulkan" | "wgpu-gl" => {
            let api =
                if name == "wgpu-gl" { rela_backend_wgpu::Api::Gl } else { rela_backend_wgpu::Api::Vulkan };
            rela_backend_wgpu::WgpuBackend::new(rela_backend_wgpu::WgpuConfig {
                capacity,
                backends: api,
                adapter: None,
            })
            .map(|b| TestBackend::Wgpu(Box::new(b)))
            .map_err(|e| e.to_string())
        }
        other => Err(format!("unknown backend {other}")),
    };
    match made {
        Ok(b) => Some(b),
        Err(reason) if backend_required(name) => {
            panic!("backend {name} is required by RELA_REQUIRE_BACKENDS but unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("\n*** SKIPPED rela-models/{test} on {name}: {reason} ***\n");
            None
        }
    }
}

/// One fixture sentence.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

/// `tests/fixtures/reference.json`.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub generator: serde_json::Value,
    pub max_seq_length: usize,
    pub dim: usize,
    pub cases: Vec<Case>,
}

pub fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).fold(0.0, f64::max)
}

// ---- A tiny synthetic BERT: hidden 8, 2 heads, 2 layers, FFN 16, vocab 16. ----

pub const TINY_HIDDEN: usize = 8;
pub const TINY_FFN: usize = 16;
pub const TINY_LAYERS: usize = 2;
pub const TINY_VOCAB: usize = 16;
pub const TINY_POSITIONS: usize = 64;

pub fn tiny_config() -> String {
    format!(
        r#"{{"architectures":["BertModel"],"model_type":"bert","hidden_act":"gelu",
        "hidden_size":{TINY_HIDDEN},"num_attention_heads":2,"num_hidden_layers":{TINY_LAYERS},
        "intermediate_size":{TINY_FFN},"vocab_size":{TINY_VOCAB},
        "max_position_embeddings":{TINY_POSITIONS},"type_vocab_size":2,"layer_norm_eps":1e-12,
        "position_embedding_type":"absolute"}}"#
    )
}

pub const TINY_WORDS: [&str; 16] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "gpu", "relay", "##s", "a", "b",
    "c", ".", ",",
];

/// A BERT WordPiece tokenizer.json over [`TINY_WORDS`].
pub fn tiny_tokenizer() -> String {
    let vocab: Vec<String> = TINY_WORDS.iter().enumerate().map(|(i, w)| format!("{w:?}:{i}")).collect();
    let added: Vec<String> = [0, 1, 2, 3, 4]
        .iter()
        .map(|&i| {
            format!(
                r#"{{"id":{i},"content":{:?},"single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#,
                TINY_WORDS[i]
            )
        })
        .collect();
    format!(
        r###"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{}],
        "normalizer":{{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true}},
        "pre_tokenizer":{{"type":"BertPreTokenizer"}},
        "post_processor":{{"type":"TemplateProcessing",
          "single":[{{"SpecialToken":{{"id":"[CLS]","type_id":0}}}},{{"Sequence":{{"id":"A","type_id":0}}}},{{"SpecialToken":{{"id":"[SEP]","type_id":0}}}}],
          "pair":[{{"SpecialToken":{{"id":"[CLS]","type_id":0}}}},{{"Sequence":{{"id":"A","type_id":0}}}},{{"SpecialToken":{{"id":"[SEP]","type_id":0}}}},{{"Sequence":{{"id":"B","type_id":1}}}},{{"SpecialToken":{{"id":"[SEP]","type_id":1}}}}],
          "special_tokens":{{"[CLS]":{{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]}},"[SEP]":{{"id":"[SEP]","ids":[3],"tokens":["[SEP]"]}}}}}},
        "decoder":{{"type":"WordPiece","prefix":"##","cleanup":true}},
        "model":{{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
          "vocab":{{{}}}}}}}"###,
        added.join(","),
        vocab.join(",")
    )
}

/// A tensor for [`safetensors_bytes`]: name, dtype string, shape, raw little-endian data.
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Serializes tensors in the safetensors format (8-byte LE header length, JSON header, data).
pub fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    let mut header = Vec::new();
    let mut offset = 0;
    for t in tensors {
        header.push(format!(
            r#""{}":{{"dtype":"{}","shape":{:?},"data_offsets":[{},{}]}}"#,
            t.name,
            t.dtype,
            t.shape,
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    let mut json = format!("{{{}}}", header.join(",")).into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Deterministic pseudo-random weights in [-0.5, 0.5).
pub fn weights(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The tensors of the tiny BERT, as f32 (name, shape, values), plus a pooler and position_ids
/// (extra tensors the loader must ignore).
pub fn tiny_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (h, f) = (TINY_HIDDEN, TINY_FFN);
    let mut out = Vec::new();
    let mut seed = 1;
    let mut add = |name: String, shape: Vec<usize>, kind: &str| {
        let n = shape.iter().product();
        seed += 1;
        let values = match kind {
            "gamma" => weights(seed, n).iter().map(|x| 1.0 + x * 0.2).collect(),
            _ => weights(seed, n),
        };
        out.push((name, shape, values));
    };
    add("embeddings.word_embeddings.weight".into(), vec![TINY_VOCAB, h], "w");
    add("embeddings.position_embeddings.weight".into(), vec![TINY_POSITIONS, h], "w");
    add("embeddings.token_type_embeddings.weight".into(), vec![2, h], "w");
    add("embeddings.LayerNorm.weight".into(), vec![h], "gamma");
    add("embeddings.LayerNorm.bias".into(), vec![h], "w");
    for l in 0..TINY_LAYERS {
        let p = format!("encoder.layer.{l}.");
        for (n, shape, kind) in [
            ("attention.self.query.weight", vec![h, h], "w"),
            ("attention.self.query.bias", vec![h], "w"),
            ("attention.self.key.weight", vec![h, h], "w"),
            ("attention.self.key.bias", vec![h], "w"),
            ("attention.self.value.weight", vec![h, h], "w"),
            ("attention.self.value.bias", vec![h], "w"),
            ("attention.output.dense.weight", vec![h, h], "w"),
            ("attention.output.dense.bias", vec![h], "w"),
            ("attention.output.LayerNorm.weight", vec![h], "gamma"),
            ("attention.output.LayerNorm.bias", vec![h], "w"),
            ("intermediate.dense.weight", vec![f, h], "w"),
            ("intermediate.dense.bias", vec![f], "w"),
            ("output.dense.weight", vec![h, f], "w"),
            ("output.dense.bias", vec![h], "w"),
            ("output.LayerNorm.weight", vec![h], "gamma"),
            ("output.LayerNorm.bias", vec![h], "w"),
        ] {
            add(format!("{p}{n}"), shape, kind);
        }
    }
    add("pooler.dense.weight".into(), vec![h, h], "w");
    out
}

/// The tiny BERT's safetensors bytes with every tensor stored as `dtype` ("F32", "F16", "BF16").
pub fn tiny_safetensors(dtype: &'static str) -> Vec<u8> {
    let mut raw: Vec<RawTensor> = tiny_tensors()
        .into_iter()
        .map(|(name, shape, values)| {
            let data = match dtype {
                "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                "F16" => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                "BF16" => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
                _ => unreachable!(),
            };
            RawTensor { name, dtype, shape, data }
        })
        .collect();
    raw.push(RawTensor {
        name: "embeddings.position_ids".into(),
        dtype: "I64",
        shape: vec![1, TINY_POSITIONS],
        data: (0..TINY_POSITIONS as i64).flat_map(i64::to_le_bytes).collect(),
    });
    safetensors_bytes(&raw)
}

/// Plain-Rust forward pass of the tiny BERT (f64 accumulation) for one sequence of token ids,
/// with the tensors given as f32 values: mean-pooled, L2-normalized.
pub fn tiny_forward(ids: &[u32]) -> Vec<f32> {
    let tensors = tiny_tensors();
    let get = |name: &str| -> Vec<f64> {
        tensors.iter().find(|t| t.0 == name).unwrap().2.iter().map(|&x| f64::from(x)).collect()
    };
    let (h, f, heads) = (TINY_HIDDEN, TINY_FFN, 2);
    let hd = h / heads;
    let s = ids.len();
    let layer_norm = |x: &mut [f64], g: &[f64], b: &[f64]| {
        for row in x.chunks_mut(h) {
            let mean = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + 1e-12).sqrt() * g[i] + b[i];
            }
        }
    };
    let linear = |x: &[f64], w: &[f64], b: &[f64], k: usize, n: usize| -> Vec<f64> {
        x.chunks(k)
            .flat_map(|row| (0..n).map(move |j| b[j] + (0..k).map(|t| row[t] * w[j * k + t]).sum::<f64>()))
            .collect()
    };
    let (word, pos, typ) = (
        &get("embeddings.word_embeddings.weight"),
        &get("embeddings.position_embeddings.weight"),
        &get("embeddings.token_type_embeddings.weight"),
    );
    let mut x: Vec<f64> = (0..s)
        .flat_map(|i| {
            let id = ids[i] as usize;
            (0..h).map(move |d| word[id * h + d] + pos[i * h + d] + typ[d]).collect::<Vec<_>>()
        })
        .collect();
    layer_norm(&mut x, &get("embeddings.LayerNorm.weight"), &get("embeddings.LayerNorm.bias"));
    for l in 0..TINY_LAYERS {
        let p = |n: &str| get(&format!("encoder.layer.{l}.{n}"));
        let q = linear(&x, &p("attention.self.query.weight"), &p("attention.self.query.bias"), h, h);
        let k = linear(&x, &p("attention.self.key.weight"), &p("attention.self.key.bias"), h, h);
        let v = linear(&x, &p("attention.self.value.weight"), &p("attention.self.value.bias"), h, h);
        let mut ctx = vec![0.0; s * h];
        for head in 0..heads {
            for i in 0..s {
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        (0..hd).map(|d| q[i * h + head * hd + d] * k[j * h + head * hd + d]).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|sc| (sc - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    ctx[i * h + head * hd + d] = (0..s).map(|j| e[j] / z * v[j * h + head * hd + d]).sum();
                }
            }
        }
        let a = linear(&ctx, &p("attention.output.dense.weight"), &p("attention.output.dense.bias"), h, h);
        let mut h1: Vec<f64> = a.iter().zip(&x).map(|(a, b)| a + b).collect();
        layer_norm(&mut h1, &p("attention.output.LayerNorm.weight"), &p("attention.output.LayerNorm.bias"));
        let ff = linear(&h1, &p("intermediate.dense.weight"), &p("intermediate.dense.bias"), h, f);
        let g: Vec<f64> = ff.iter().map(|&v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))).collect();
        let o = linear(&g, &p("output.dense.weight"), &p("output.dense.bias"), f, h);
        x = o.iter().zip(&h1).map(|(a, b)| a + b).collect();
        layer_norm(&mut x, &p("output.LayerNorm.weight"), &p("output.LayerNorm.bias"));
    }
    let mut pooled = vec![0.0; h];
    for row in x.chunks(h) {
        for d in 0..h {
            pooled[d] += row[d] / s as f64;
        }
    }
    let norm = pooled.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    pooled.iter().map(|v| (v / norm) as f32).collect()
}

/// erf to ~1e-12 (Abramowitz–Stegun 7.1.26 is too coarse; use the series / continued fraction).
fn erf(x: f64) -> f64 {
    // Series for |x| < 3, asymptotic complement beyond.
    let ax = x.abs();
    let r = if ax < 3.0 {
        let mut sum = ax;
        let mut term = ax;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -ax * ax / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        1.0 - (-ax * ax).exp() / (ax * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}
