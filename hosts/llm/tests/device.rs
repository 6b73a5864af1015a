//! The llama forward pass on a `GpuBackend` (`rela_llm::DeviceLlm`) against the host forward
//! pass (`Model`) and the transformers fixture, on the host backend, Vulkan, wgpu (Vulkan) and
//! CUDA (where a GPU is present; skipped elsewhere).
//!
//! - A tiny llama with random weights (F32, F16, Q4_0, Q4_1, Q8_0 matrices; no file needed):
//!   device logits within [`TINY_TOL`] of `Model`'s, for a prompt run at once, in parts and
//!   token by token; every buffer freed afterwards.
//! - SmolLM2-135M-Instruct Q4_1 (skipped loudly without the file unless RELA_REQUIRE_GGUF=1):
//!   input ids equal the fixture's, greedy ids equal the fixture's up to its first near tie
//!   (margin < [`NEAR_TIE`], the rule of `generate.rs`), first-step logits within
//!   [`LOGIT_TOL`] of `Model`'s (relative to the logit range). The host backend (its
//!   single-threaded reference kernels) runs [`HOST_CASES`] for at most [`HOST_TOKENS`] tokens
//!   each; Vulkan and wgpu, which run on lavapipe (a CPU emulation) in CI, run
//!   [`DEVICE_CASES`] for at most [`DEVICE_TOKENS`] tokens. The other prompts (the long one
//!   included) are the host forward pass's, in `generate.rs`.
//! - A backend that cannot start prints a SKIPPED line (a failure when `RELA_REQUIRE_BACKENDS`
//!   names it, as in rela-conformance); one that answers `Unsupported` for a generation kernel
//!   prints a SKIPPED line naming the kernels it lacks (probed one by one,
//!   `rela_test_support::kernels`).
//! - Typed errors: a matrix type without a device kernel is refused by name before the backend
//!   is touched; a backend without a kernel gives `DeviceError::Backend(Unsupported)`; a
//!   backend too small leaves nothing allocated.

mod common;

use rela_core::backend::{BackendError, GpuBackend, KernelCall, WeightType};
use rela_llm::generate::argmax;
use rela_llm::gguf::{GgufBuilder, Value};
use rela_llm::{
    DeviceError, DeviceLlm, DeviceStream, GgmlType, GgufFile, GgufTokenizer, Model, SamplingParams, Step,
};
use rela_test_support::kernels::{Refusing, missing_generation_kernels};
use serde_json::Value as Json;

/// A fixture step whose top-1/top-2 margin is below this is a near tie (as in `generate.rs`).
const NEAR_TIE: f64 = 0.05;

/// Largest first-step logit difference between the device and `Model`, as a fraction of the
/// logit range. The two sum in different orders (the reference kernels dequantize whole rows;
/// `Model` uses fused SIMD products), so they differ by f32 rounding: measured at most 3.3e-6
/// of the range on the host backend (1.0e-4 absolute, ranges 31 to 42) and 4e-7 on Vulkan
/// (lavapipe); the bound is 30× the largest.
const LOGIT_TOL: f64 = 1e-4;

/// The tiny model's bound on |device − Model| (absolute; its logits are of order 1).
const TINY_TOL: f64 = 1e-4;

/// Fixture prompts Vulkan and wgpu run: lavapipe (the CI's Vulkan, a CPU emulation) takes
/// seconds per step, most of it the wait after each of a step's ~500 dispatches.
const DEVICE_CASES: [&str; 1] = ["raw_capital"];
/// Most generated tokens per prompt on Vulkan and wgpu.
const DEVICE_TOKENS: usize = 4;

/// Fixture prompts the host backend runs.
const HOST_CASES: [&str; 5] = ["raw_capital", "raw_story", "raw_code", "raw_unicode", "chat_capital"];
/// Most generated tokens per prompt on the host backend.
const HOST_TOKENS: usize = 16;

/// Bytes each test backend lends: SmolLM2's weights (98 MB) and a generation's buffers.
const CAPACITY: u64 = 256 << 20;

/// The host backend over `bytes` of memory, with room for 1024 buffers (SmolLM2 has 272
/// weight tensors).
fn host_backend(bytes: usize) -> rela_backend_host::OwnedHostBackend<1024> {
    rela_backend_host::OwnedHostBackend::with_block_table(vec![0u8; bytes].into_boxed_slice())
}

/// Backend `name` ("host", "vulkan", "wgpu-vulkan", "cuda"), or `None` with a SKIPPED line when it
/// cannot start here (a panic when `RELA_REQUIRE_BACKENDS` names it).
fn backend(name: &str, test: &str) -> Option<Box<dyn GpuBackend>> {
    let made: Result<Box<dyn GpuBackend>, String> = match name {
        "host" => Ok(Box::new(host_backend(CAPACITY as usize))),
        "vulkan" => rela_backend_vulkan::VulkanBackend::new(rela_backend_vulkan::VulkanConfig::new(CAPACITY))
            .map(|b| Box::new(b) as Box<dyn GpuBackend>)
            .map_err(|e| e.to_string()),
        "wgpu-vulkan" => rela_backend_wgpu::WgpuBackend::new(rela_backend_wgpu::WgpuConfig {
            capacity: CAPACITY,
            backends: rela_backend_wgpu::Api::Vulkan,
            adapter: None,
        })
        .map(|b| Box::new(b) as Box<dyn GpuBackend>)
        .map_err(|e| e.to_string()),
        "cuda" => rela_backend_cuda::CudaBackend::new(rela_backend_cuda::CudaConfig::new(CAPACITY))
            .map(|b| Box::new(b) as Box<dyn GpuBackend>)
            .map_err(|e| e.to_string()),
        other => Err(format!("unknown backend {other}")),
    };
    match made {
        Ok(b) => Some(b),
        Err(why) if rela_conformance::required(name) => {
            panic!("{test}: backend {name} is required by RELA_REQUIRE_BACKENDS but unavailable: {why}")
        }
        Err(why) => {
            eprintln!("\n*** SKIPPED rela-llm/{test} on {name}: {why} ***\n");
            None
        }
    }
}

/// Whether `err` is a backend lacking a kernel: prints the SKIPPED line naming the missing
/// kernels if so.
fn skipped_for_missing_kernels(
    err: &DeviceError,
    backend: &mut dyn GpuBackend,
    name: &str,
    test: &str,
    types: &[WeightType],
) -> bool {
    if *err != DeviceError::Backend(BackendError::Unsupported) {
        return false;
    }
    let missing = missing_generation_kernels(backend, types);
    eprintln!(
        "\n*** SKIPPED rela-llm/{test} on {name}: the backend lacks generation kernels {missing:?} (Unsupported) ***\n"
    );
    true
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).fold(0.0, f64::max)
}

// ---- A tiny llama with random weights ----

/// Deterministic pseudo-random values in [-0.5, 0.5).
fn noise(seed: u64, n: usize) -> Vec<f32> {
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

/// `n` random weights as `ty`'s blocks (scales small and finite; `n` whole blocks).
fn blocks(ty: GgmlType, seed: u64, n: usize) -> Vec<u8> {
    let v = noise(seed, n);
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let raw = |i: usize| (v[i] * 510.0) as i32 as u8;
    match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => v.iter().flat_map(|&x| f16(x)).collect(),
        GgmlType::Q8_0 => (0..n / 32)
            .flat_map(|b| {
                let mut out = f16(0.004 + v[b * 32].abs() * 0.004).to_vec();
                out.extend((0..32).map(|i| raw(b * 32 + i)));
                out
            })
            .collect(),
        GgmlType::Q4_0 | GgmlType::Q4_1 => (0..n / 32)
            .flat_map(|b| {
                let mut out = f16(0.02 + v[b * 32].abs() * 0.02).to_vec();
                if ty == GgmlType::Q4_1 {
                    out.extend(f16(-0.1 + v[b * 32 + 1] * 0.1));
                }
                out.extend((0..16).map(|i| raw(b * 32 + i) ^ raw(b * 32 + 16 + i).rotate_left(4)));
                out
            })
            .collect(),
        other => panic!("no test blocks for {other:?}"),
    }
}

/// A tiny llama GGUF: 2 layers, dim 64, 4 heads (2 KV heads), MLP 96, vocab 40, every matrix
/// type in use; the output matrix is its own (`tied`: false) or the embedding.
fn tiny_llama(tied: bool, attn_q: GgmlType) -> GgufFile {
    let mut seed = 1;
    let mut next = || {
        seed += 1;
        seed
    };
    let norm = |seed| noise(seed, 64).iter().flat_map(|x| (1.0 + x * 0.2).to_le_bytes()).collect::<Vec<u8>>();
    let mut b = GgufBuilder::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(2))
        .kv("llama.embedding_length", Value::U32(64))
        .kv("llama.feed_forward_length", Value::U32(96))
        .kv("llama.attention.head_count", Value::U32(4))
        .kv("llama.attention.head_count_kv", Value::U32(2))
        .kv("llama.context_length", Value::U32(64))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .tensor("token_embd.weight", &[64, 40], GgmlType::Q8_0, blocks(GgmlType::Q8_0, next(), 64 * 40))
        .tensor("output_norm.weight", &[64], GgmlType::F32, norm(next()));
    if !tied {
        b = b.tensor("output.weight", &[64, 40], GgmlType::F16, blocks(GgmlType::F16, next(), 64 * 40));
    }
    for i in 0..2 {
        for (name, cols, rows, ty) in [
            ("attn_q", 64, 64, attn_q),
            ("attn_k", 64, 32, GgmlType::Q4_0),
            ("attn_v", 64, 32, GgmlType::Q8_0),
            ("attn_output", 64, 64, GgmlType::F32),
            ("ffn_gate", 64, 96, GgmlType::Q4_1),
            ("ffn_up", 64, 96, GgmlType::Q4_0),
            ("ffn_down", 96, 64, GgmlType::Q8_0),
        ] {
            let data = match ty {
                GgmlType::BF16 => vec![0; (cols * rows * 2) as usize],
                _ => blocks(ty, next(), (cols * rows) as usize),
            };
            b = b.tensor(&format!("blk.{i}.{name}.weight"), &[cols, rows], ty, data);
        }
        b = b.tensor(&format!("blk.{i}.attn_norm.weight"), &[64], GgmlType::F32, norm(next())).tensor(
            &format!("blk.{i}.ffn_norm.weight"),
            &[64],
            GgmlType::F32,
            norm(next()),
        );
    }
    GgufFile::from_bytes(b.build()).expect("tiny llama parses")
}

const TINY_TYPES: [WeightType; 5] =
    [WeightType::F32, WeightType::F16, WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0];

fn tiny_matches_model(name: &str) {
    let test = "tiny_llama_matches_the_host_forward_pass";
    let Some(mut b) = backend(name, test) else { return };
    let backend = &mut *b;
    for tied in [true, false] {
        let file = tiny_llama(tied, GgmlType::F16);
        let model = Model::new(&file).expect("model");
        let tokens: Vec<u32> = vec![1, 7, 39, 0, 22, 5, 5, 13, 2, 30];
        let mut cache = model.new_cache(32);
        let want = model.prefill(&tokens, &mut cache).expect("host prefill");
        let mut next = vec![0f32; 40];
        model.forward(11, &mut cache, &mut next).expect("host forward");

        let dev = DeviceLlm::from_file(backend, &file).expect("upload");
        assert_eq!(dev.device_bytes(), dev.share().device_bytes());
        let mut kv = dev.new_kv(backend, 32).expect("kv");
        let mut got = Vec::new();
        match dev.prefill(backend, &tokens, &mut kv, &mut got) {
            Err(e) if skipped_for_missing_kernels(&e, backend, name, test, &TINY_TYPES) => {
                kv.free(backend).expect("free kv");
                dev.unload(backend).expect("unload");
                assert_eq!(backend.usage().buffers, 0);
                return;
            }
            r => r.expect("device prefill"),
        }
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TINY_TOL, "{name}, tied {tied}: prompt logits differ by {diff}");
        // The next token through a share of the weights, with the same cache.
        let share = dev.share();
        assert!(!share.owns_weights());
        share.forward(backend, 11, &mut kv, &mut got).expect("device forward");
        let diff = max_abs_diff(&got, &next);
        assert!(diff < TINY_TOL, "{name}, tied {tied}: next-token logits differ by {diff}");
        assert_eq!(kv.len(), tokens.len() + 1);
        share.unload(backend).expect("a share frees nothing");
        kv.free(backend).expect("free kv");

        // The prompt in parts, then token by token, gives the same logits.
        let mut kv = dev.new_kv(backend, 32).expect("kv");
        dev.prefill(backend, &tokens[..3], &mut kv, &mut got).expect("part 1");
        for &t in &tokens[3..] {
            dev.forward(backend, t, &mut kv, &mut got).expect("token");
        }
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TINY_TOL, "{name}, tied {tied}: stepwise logits differ by {diff}");
        let greedy = dev.greedy(backend, &[11], &mut kv).expect("greedy").expect("a token");
        assert_eq!(greedy as usize, argmax(&next), "{name}: device ARGMAX");
        // A full cache and a bad token are refused before any device work.
        assert_eq!(
            dev.forward(backend, 40, &mut kv, &mut got),
            Err(DeviceError::Forward(rela_llm::ForwardError::BadToken(40)))
        );
        let room = vec![1u32; kv.capacity() - kv.len() + 1];
        assert_eq!(
            dev.prefill(backend, &room, &mut kv, &mut got),
            Err(DeviceError::Forward(rela_llm::ForwardError::ContextFull(32)))
        );
        kv.free(backend).expect("free kv");
        dev.unload(backend).expect("unload");
        assert_eq!(backend.usage().buffers, 0, "{name}: every buffer freed");
        assert_eq!(backend.usage().used, 0, "{name}: every byte freed");
    }
}

#[test]
fn tiny_llama_matches_the_host_forward_pass_on_host() {
    tiny_matches_model("host");
}

#[test]
fn tiny_llama_matches_the_host_forward_pass_on_vulkan() {
    tiny_matches_model("vulkan");
}

#[test]
fn tiny_llama_matches_the_host_forward_pass_on_wgpu_vulkan() {
    tiny_matches_model("wgpu-vulkan");
}

#[test]
fn tiny_llama_matches_the_host_forward_pass_on_cuda() {
    tiny_matches_model("cuda");
}

/// Decode steps of several generations in one pass (`DeviceLlm::forward_batch`): each row of
/// logits is what `Model` gives that generation alone, for generations at different positions,
/// with one joining late and one leaving early; the batch's typed refusals; every buffer freed.
fn batched_steps_match_model(name: &str) {
    let test = "batched_decode_steps_match_each_generation_alone";
    let Some(mut b) = backend(name, test) else { return };
    let backend = &mut *b;
    let file = tiny_llama(false, GgmlType::Q8_0);
    let model = Model::new(&file).expect("model");
    let dev = DeviceLlm::from_file(backend, &file).expect("upload");
    let prompts: [&[u32]; 3] = [&[1, 7, 39], &[22, 5], &[13, 2, 30, 4, 9, 17, 0]];
    let mut caches = Vec::new();
    let mut kvs = Vec::new();
    for p in prompts {
        let mut cache = model.new_cache(16);
        model.prefill(p, &mut cache).expect("host prefill");
        caches.push(cache);
        let mut kv = dev.new_kv(backend, 16).expect("kv");
        match dev.prefill(backend, p, &mut kv, &mut Vec::new()) {
            Err(e) if skipped_for_missing_kernels(&e, backend, name, test, &TINY_TYPES) => {
                kv.free(backend).expect("free kv");
                kvs.into_iter().for_each(|kv: rela_llm::DeviceKv| kv.free(backend).expect("free kv"));
                dev.unload(backend).expect("unload");
                return;
            }
            r => r.expect("device prefill"),
        }
        kvs.push(kv);
    }
    let mut batch = dev.new_batch(backend, 4).expect("batch buffers");
    assert_eq!(batch.seqs(), 4);
    let vocab = 40;
    let mut got = Vec::new();
    let mut want = vec![0f32; vocab];
    // Rounds: all three; the first two (the third waits); the last two (the first has left).
    for (round, members) in [vec![0, 1, 2], vec![0, 1], vec![1, 2], vec![2]].into_iter().enumerate() {
        let views: Vec<_> = members.iter().map(|&i| kvs[i].view()).collect();
        let tokens: Vec<u32> = members.iter().map(|&i| (3 + 5 * i + round) as u32 % 40).collect();
        let steps: Vec<(u32, &rela_llm::KvView)> = tokens.iter().copied().zip(&views).collect();
        dev.forward_batch(backend, &mut batch, &steps, &mut got).expect("batched step");
        assert_eq!(got.len(), members.len() * vocab);
        for (row, (&i, &t)) in members.iter().zip(&tokens).enumerate() {
            model.forward(t, &mut caches[i], &mut want).expect("host step");
            let diff = max_abs_diff(&got[row * vocab..(row + 1) * vocab], &want);
            assert!(diff < TINY_TOL, "{name}, round {round}, generation {i}: logits differ by {diff}");
            kvs[i].accept(&views[row]).expect("the step's position taken in");
            // A view is good for one step: taking it in twice is refused.
            assert_eq!(kvs[i].accept(&views[row]), Err(rela_llm::ForwardError::CacheMismatch));
        }
    }
    assert_eq!(kvs.iter().map(|kv| kv.len()).collect::<Vec<_>>(), [5, 5, 10]);
    // A step on its own after batched ones continues the same generation.
    dev.forward(backend, 11, &mut kvs[2], &mut got).expect("single step");
    model.forward(11, &mut caches[2], &mut want).expect("host step");
    assert!(max_abs_diff(&got, &want) < TINY_TOL, "{name}: a single step after batched ones");

    // Refusals, before any device work.
    let views: Vec<_> = kvs.iter().map(|kv| kv.view()).collect();
    let one = [(1, &views[0])];
    let too_many: Vec<(u32, &rela_llm::KvView)> = (0..5).map(|i| (1, &views[i % 3])).collect();
    assert_eq!(
        dev.forward_batch(backend, &mut batch, &too_many, &mut got),
        Err(DeviceError::BatchTooLarge { steps: 5, max: 4 })
    );
    assert_eq!(
        dev.forward_batch(backend, &mut batch, &[(1, &views[0]), (2, &views[0])], &mut got),
        Err(DeviceError::DuplicateCache)
    );
    assert_eq!(
        dev.forward_batch(backend, &mut batch, &[(1, &views[1]), (40, &views[0])], &mut got),
        Err(DeviceError::Forward(rela_llm::ForwardError::BadToken(40)))
    );
    let mut small = dev.new_kv(backend, 2).expect("kv");
    dev.prefill(backend, &[1, 2], &mut small, &mut got).expect("fills it");
    assert_eq!(
        dev.forward_batch(backend, &mut batch, &[(1, &views[1]), (3, &small.view())], &mut got),
        Err(DeviceError::Forward(rela_llm::ForwardError::ContextFull(2)))
    );
    dev.forward_batch(backend, &mut batch, &[], &mut got).expect("no steps");
    assert!(got.is_empty());
    // A view of another cache, or of another length, is refused by the cache.
    assert_eq!(small.accept(&one[0].1.clone()), Err(rela_llm::ForwardError::CacheMismatch));

    small.free(backend).expect("free");
    batch.free(backend).expect("free batch");
    kvs.into_iter().for_each(|kv| kv.free(backend).expect("free kv"));
    dev.unload(backend).expect("unload");
    assert_eq!(backend.usage().buffers, 0, "{name}: every buffer freed");
}

#[test]
fn batched_decode_steps_match_each_generation_alone_on_host() {
    batched_steps_match_model("host");
}

#[test]
fn batched_decode_steps_match_each_generation_alone_on_vulkan() {
    batched_steps_match_model("vulkan");
}

#[test]
fn batched_decode_steps_match_each_generation_alone_on_wgpu_vulkan() {
    batched_steps_match_model("wgpu-vulkan");
}

#[test]
fn batched_decode_steps_match_each_generation_alone_on_cuda() {
    batched_steps_match_model("cuda");
}

#[test]
fn a_matrix_type_without_a_kernel_is_refused_by_name_before_any_device_work() {
    let mut b = backend("host", "matrix_type_refused").expect("host backend");
    let file = tiny_llama(true, GgmlType::BF16);
    // The host forward pass reads BF16; no device kernel does.
    Model::new(&file).expect("host model");
    let err = DeviceLlm::from_file(&mut *b, &file).expect_err("BF16 matrix");
    assert_eq!(
        err,
        DeviceError::UnsupportedTensorType { name: "blk.0.attn_q.weight".into(), ty: GgmlType::BF16 }
    );
    assert!(err.to_string().contains("BF16"), "{err}");
    assert_eq!(b.usage().buffers, 0, "nothing allocated");
}

#[test]
fn a_backend_too_small_is_left_with_nothing_allocated() {
    let file = tiny_llama(false, GgmlType::F16);
    let mut b = host_backend(48 << 10);
    let err = DeviceLlm::from_file(&mut b, &file).expect_err("does not fit");
    assert_eq!(err, DeviceError::Backend(BackendError::OutOfMemory));
    assert_eq!(b.usage().buffers, 0);
    // Weights fit, but not a cache of 64 positions and the scratch: the same.
    let mut b = host_backend(200 << 10);
    let dev = DeviceLlm::from_file(&mut b, &file).expect("weights fit");
    let weights = b.usage();
    let kv = dev.new_kv(&mut b, 64).and_then(|mut kv| {
        let r = dev.prefill(&mut b, &[1; 60], &mut kv, &mut Vec::new());
        kv.free(&mut b)?;
        r
    });
    assert_eq!(kv, Err(DeviceError::Backend(BackendError::OutOfMemory)));
    assert_eq!(b.usage(), weights, "the failed generation left nothing");
    dev.unload(&mut b).expect("unload");
    assert_eq!(b.usage().buffers, 0);
}

#[test]
fn a_missing_kernel_is_a_typed_error_and_is_named() {
    let file = tiny_llama(true, GgmlType::F16);
    // The host backend without one kernel, as a backend whose ROPE has not landed.
    let mut b = Refusing { inner: host_backend(8 << 20), refuse: |c| matches!(c, KernelCall::Rope { .. }) };
    let dev = DeviceLlm::from_file(&mut b, &file).expect("upload");
    let mut kv = dev.new_kv(&mut b, 16).expect("kv");
    let err = dev.prefill(&mut b, &[1, 2, 3], &mut kv, &mut Vec::new()).expect_err("no ROPE");
    assert_eq!(err, DeviceError::Backend(BackendError::Unsupported));
    assert_eq!(kv.len(), 0, "the failed pass did not count");
    assert_eq!(missing_generation_kernels(&mut b, &TINY_TYPES), vec!["ROPE".to_owned()]);
    kv.free(&mut b).expect("free");
    dev.unload(&mut b).expect("unload");
    assert_eq!(b.usage().buffers, 0);
}

// ---- SmolLM2-135M-Instruct against the fixture ----

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The fixture's greedy steps before its first near tie.
fn before_near_tie(case: &Json) -> usize {
    let margins = case["margins"].as_array().expect("margins");
    margins.iter().position(|m| m.as_f64().expect("margin") < NEAR_TIE).unwrap_or(margins.len())
}

/// Runs fixture prompts `cases` for at most `max_tokens` greedy tokens each on backend `name`.
fn fixture_on(name: &str, cases: &[&str], max_tokens: usize) {
    let test = format!("greedy_generation_matches_transformers_on_{name}");
    let Some(file) = common::model(&test) else { return };
    let Some(mut b) = backend(name, &test) else { return };
    let backend = &mut *b;
    let model = Model::new(file).expect("model");
    let tok = GgufTokenizer::from_gguf(&file.gguf).expect("tokenizer");
    let dev = DeviceLlm::from_file(backend, file).expect("upload");
    let fx = common::fixture("generation_fixture.json");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in fx["cases"].as_array().expect("cases") {
        let case_name = case["name"].as_str().expect("name");
        if !cases.contains(&case_name) {
            continue;
        }
        let input = ids(&case["input_ids"]);
        let want = ids(&case["generated_ids"]);
        let checked = before_near_tie(case).min(max_tokens);
        let steps = checked.max(1);
        let mut stream = DeviceStream::new(
            &dev,
            &tok,
            input.clone(),
            steps,
            input.len() + steps,
            SamplingParams::GREEDY,
            vec![],
        )
        .expect("stream");
        assert_eq!(stream.input_ids(), &input[..]);
        let mut got = Vec::new();
        let started = std::time::Instant::now();
        let mut prompt_done = None;
        let result = loop {
            match stream.step(backend) {
                Ok(Step::Prefill { .. }) => {}
                Ok(Step::Token { id, finish, .. }) => {
                    prompt_done.get_or_insert_with(std::time::Instant::now);
                    got.push(id);
                    if finish.is_some() {
                        break Ok(());
                    }
                }
                Ok(Step::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            let skip =
                skipped_for_missing_kernels(&e, backend, name, &test, &[WeightType::Q4_1, WeightType::Q8_0]);
            stream.free(backend).expect("free the stream");
            dev.unload(backend).expect("unload");
            assert!(skip, "{case_name}: {e}");
            return;
        }
        stream.free(backend).expect("free the stream");
        ran += 1;
        // For the record (docs/BENCHMARKS.md), not checked: the prompt's time and the decode
        // rate (the first token comes with the prompt's logits).
        let end = std::time::Instant::now();
        let prompt_done = prompt_done.unwrap_or(end);
        let decode_s = end.duration_since(prompt_done).as_secs_f64();
        eprintln!(
            "{name}/{case_name}: prompt {} ms, {:.2} tok/s decode ({} tokens)",
            prompt_done.duration_since(started).as_millis(),
            (got.len().saturating_sub(1)) as f64 / decode_s.max(1e-9),
            got.len()
        );
        // The prompt's logits again (the stream moved on), to compare with `Model`'s.
        let mut kv = dev.new_kv(backend, input.len()).expect("kv");
        let mut dev_logits = Vec::new();
        dev.prefill(backend, &input, &mut kv, &mut dev_logits).expect("prefill");
        kv.free(backend).expect("free kv");
        let mut cache = model.new_cache(input.len());
        let host_logits = model.prefill(&input, &mut cache).expect("host prefill");
        let range = f64::from(host_logits.iter().copied().fold(f32::MIN, f32::max))
            - f64::from(host_logits.iter().copied().fold(f32::MAX, f32::min));
        let diff = max_abs_diff(&dev_logits, &host_logits);
        let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{name}/{case_name}: {} prompt ids, {agree}/{checked} greedy ids equal, first-step logits \
             max |device - host| {diff:.2e} = {:.2e} of range {range:.2}",
            input.len(),
            diff / range
        );
        if agree < checked {
            failures.push(format!(
                "{case_name}: ids differ at step {agree} (checked up to {checked}): got {got:?}, want {:?}",
                &want[..checked]
            ));
        }
        if diff / range > LOGIT_TOL {
            failures.push(format!(
                "{case_name}: first-step logits differ from Model's by {diff} (range {range})"
            ));
        }
    }
    dev.unload(backend).expect("unload");
    assert_eq!(backend.usage().buffers, 0, "every buffer freed");
    assert!(ran > 0, "no fixture case ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn greedy_generation_matches_transformers_on_host() {
    fixture_on("host", &HOST_CASES, HOST_TOKENS);
}

#[test]
fn greedy_generation_matches_transformers_on_vulkan() {
    fixture_on("vulkan", &DEVICE_CASES, DEVICE_TOKENS);
}

#[test]
fn greedy_generation_matches_transformers_on_wgpu_vulkan() {
    fixture_on("wgpu-vulkan", &DEVICE_CASES, DEVICE_TOKENS);
}

/// On a GPU machine (`scripts/gpu/run.sh`): the host backend's prompts and tokens.
#[test]
fn greedy_generation_matches_transformers_on_cuda() {
    fixture_on("cuda", &HOST_CASES, HOST_TOKENS);
}
