//! Every call of the C ABI against a live node: buffers, kernels, device info and stats,
//! discovery, and (with the model files present) embeddings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use common::{TestNode, connected, last_message};
use rela_ffi::*;
use rela_test_support::{f32_bytes, f32_values, pattern, small_floats};

fn alloc(client: RelaClient, size: u64) -> RelaBuffer {
    let mut b = 0;
    // SAFETY: `b` is writable.
    assert_eq!(unsafe { rela_alloc(client, size, &mut b) }, RELA_OK, "alloc: {}", last_message());
    b
}

fn write(client: RelaClient, b: RelaBuffer, offset: u64, data: &[u8]) {
    // SAFETY: `data` is valid for its length.
    let s = unsafe { rela_write(client, b, offset, data.as_ptr(), data.len()) };
    assert_eq!(s, RELA_OK, "write: {}", last_message());
}

fn read(client: RelaClient, b: RelaBuffer, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: `out` is valid for its length.
    let s = unsafe { rela_read(client, b, offset, out.as_mut_ptr(), out.len()) };
    assert_eq!(s, RELA_OK, "read: {}", last_message());
    out
}

#[test]
fn buffers_kernels_info_and_stats() {
    let node = TestNode::start(None);
    let client = connected(node.port, None);

    // Write and read back 3 MiB (several frames), at an offset.
    let data = pattern(1, 3 << 20);
    let big = alloc(client, 4 << 20);
    write(client, big, 4096, &data);
    assert_eq!(read(client, big, 4096, data.len()), data);
    // Fresh memory reads as zeros.
    assert!(read(client, big, 0, 4096).iter().all(|b| *b == 0));

    // Copy and fill on the node.
    let small = alloc(client, 1024);
    assert_eq!(rela_copy(client, big, 4096, small, 0, 1024), RELA_OK, "{}", last_message());
    assert_eq!(read(client, small, 0, 1024), data[..1024]);
    assert_eq!(rela_fill(client, small, 100, 50, 0xab), RELA_OK, "{}", last_message());
    let back = read(client, small, 0, 1024);
    assert!(back[100..150].iter().all(|b| *b == 0xab));
    assert_eq!(back[..100], data[..100]);
    assert_eq!(back[150..], data[150..1024]);

    // DISPATCH: ADD, SCALE and MATMUL on small whole floats compare exactly.
    let n = 64u32;
    let (xa, xb) = (small_floats(2, n as usize), small_floats(3, n as usize));
    let (a, b, out) = (alloc(client, 4 * 64), alloc(client, 4 * 64), alloc(client, 4 * 64));
    write(client, a, 0, &f32_bytes(&xa));
    write(client, b, 0, &f32_bytes(&xb));
    let add = RelaKernel { kernel: RELA_KERNEL_ADD, a, b, out, n, ..Default::default() };
    // SAFETY: `add` is a valid kernel description.
    assert_eq!(unsafe { rela_dispatch(client, &add) }, RELA_OK, "{}", last_message());
    let sum: Vec<f32> = xa.iter().zip(&xb).map(|(x, y)| x + y).collect();
    assert_eq!(f32_values(&read(client, out, 0, 4 * 64)), sum);
    let scale = RelaKernel { kernel: RELA_KERNEL_SCALE, a, out, n, alpha: -2.0, ..Default::default() };
    // SAFETY: as above.
    assert_eq!(unsafe { rela_dispatch(client, &scale) }, RELA_OK, "{}", last_message());
    assert_eq!(f32_values(&read(client, out, 0, 4 * 64)), xa.iter().map(|x| -2.0 * x).collect::<Vec<_>>());
    // 8×8 · 8×8.
    let mm = RelaKernel { kernel: RELA_KERNEL_MATMUL, a, b, out, m: 8, k: 8, n: 8, alpha: 0.0 };
    // SAFETY: as above.
    assert_eq!(unsafe { rela_dispatch(client, &mm) }, RELA_OK, "{}", last_message());
    let got = f32_values(&read(client, out, 0, 4 * 64));
    for i in 0..8 {
        for j in 0..8 {
            let want: f32 = (0..8).map(|k| xa[i * 8 + k] * xb[k * 8 + j]).sum();
            assert_eq!(got[i * 8 + j], want, "({i}, {j})");
        }
    }

    // Device info and stats.
    // SAFETY: zeroed bytes are a valid RelaDeviceInfo (integers and char arrays).
    let mut info: RelaDeviceInfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable.
    assert_eq!(unsafe { rela_device_info(client, &mut info) }, RELA_OK, "{}", last_message());
    assert_eq!(info.backend, 1, "host backend");
    assert_eq!(info.total, 16 << 20);
    assert!(info.free <= info.total && info.free < info.total, "buffers are held");
    // SAFETY: the library NUL-terminates the name.
    let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }.to_str().unwrap();
    assert!(!name.is_empty());
    let mut stats = RelaStats::default();
    // SAFETY: `stats` is writable.
    assert_eq!(unsafe { rela_stats(client, &mut stats) }, RELA_OK, "{}", last_message());
    assert_eq!(stats.buffers, 5);
    assert_eq!(stats.used, (4 << 20) + 1024 + 3 * 256);
    assert!(stats.bytes_in >= data.len() as u64 && stats.bytes_out >= data.len() as u64);

    for buffer in [big, small, a, b, out] {
        assert_eq!(rela_free(client, buffer), RELA_OK, "{}", last_message());
    }
    let mut after = RelaStats::default();
    // SAFETY: `after` is writable.
    assert_eq!(unsafe { rela_stats(client, &mut after) }, RELA_OK);
    assert_eq!((after.buffers, after.used), (0, 0));
    assert_eq!(rela_close(client), RELA_OK);
    node.wait_idle();
}

#[test]
fn discover_finds_the_node_and_the_list_is_freed() {
    let node = TestNode::start(None);
    let target = CString::new(format!("127.0.0.1:{}", node.discovery_port())).unwrap();
    let mut list = std::ptr::null_mut();
    // SAFETY: the pointers are valid; the list is freed below.
    unsafe {
        assert_eq!(
            rela_discover(target.as_ptr(), 5000, std::ptr::null(), 0, &mut list),
            RELA_OK,
            "{}",
            last_message()
        );
        assert_eq!(rela_node_list_len(list), 1);
        let n = &*rela_node_list_get(list, 0);
        assert_eq!(CStr::from_ptr(n.addr.as_ptr()).to_str().unwrap(), format!("127.0.0.1:{}", node.port));
        assert_eq!(n.port, node.port);
        assert_eq!(n.backend, 1);
        assert!(!n.auth_required && !n.verified);
        assert_eq!(n.total, 16 << 20);
        assert!(rela_node_list_get(list, 1).is_null());
        rela_node_list_free(list);
        rela_node_list_free(std::ptr::null_mut());
        assert_eq!(rela_node_list_len(std::ptr::null()), 0);
    }
}

/// The repository directory holding `all-MiniLM-L6-v2`, if its files are present.
fn repository() -> Option<PathBuf> {
    let model = std::env::var_os("RELA_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    if ["model.safetensors", "tokenizer.json", "config.json"].iter().all(|f| model.join(f).is_file()) {
        return model.parent().map(Path::to_path_buf);
    }
    let why = format!("model files not found in {} (run hosts/models/fetch-model.sh)", model.display());
    assert!(
        std::env::var_os("RELA_REQUIRE_MODEL").is_none_or(|v| v != "1"),
        "RELA_REQUIRE_MODEL=1 but {why}"
    );
    eprintln!("*** SKIPPED embeddings through the C ABI: {why} ***");
    None
}

#[test]
fn model_load_embed_and_unload() {
    let Some(repo) = repository() else { return };
    // The weights take about 90 MB of device memory.
    let node = TestNode::start_sized(256 << 20, None, |c| rela_node::NodeConfig { models: Some(repo), ..c });
    let client = connected(node.port, None);
    let mut model = RelaModel::default();
    // SAFETY: the pointers are valid for each call.
    unsafe {
        assert_eq!(
            rela_model_load(client, c"all-MiniLM-L6-v2".as_ptr(), &mut model),
            RELA_OK,
            "{}",
            last_message()
        );
        assert_eq!(model.dim, 384);
        let texts = [
            c"The cat sits on the mat.".as_ptr(),
            c"A feline rests on a rug.".as_ptr(),
            c"Tax law.".as_ptr(),
        ];
        let mut out = vec![0f32; 3 * 384];
        // Too little room is refused before anything is sent.
        assert_eq!(
            rela_embed(client, model.id, texts.as_ptr(), 3, out.as_mut_ptr(), 2 * 384),
            RELA_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(last_message(), "out holds 768 floats; 3 texts × 384 need more");
        assert_eq!(
            rela_embed(client, model.id, texts.as_ptr(), 3, out.as_mut_ptr(), out.len()),
            RELA_OK,
            "{}",
            last_message()
        );
        let v: Vec<&[f32]> = out.chunks(384).collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        for x in &v {
            assert!((dot(x, x) - 1.0).abs() < 1e-3, "L2-normalized");
        }
        assert!(dot(v[0], v[1]) > dot(v[0], v[2]) + 0.2, "the paraphrase is closer than the unrelated text");
        // An unknown repository model is the node's NO_SUCH_MODEL (20).
        let mut other = RelaModel::default();
        assert_eq!(rela_model_load(client, c"no-such-model".as_ptr(), &mut other), 20, "{}", last_message());
        assert_eq!(rela_model_unload(client, model.id), RELA_OK, "{}", last_message());
        assert_eq!(
            rela_embed(client, model.id, texts.as_ptr(), 3, out.as_mut_ptr(), out.len()),
            RELA_ERR_UNKNOWN_HANDLE
        );
    }
    assert_eq!(rela_close(client), RELA_OK);
    node.wait_idle();
}

/// The directory holding the SmolLM2 GGUF file, if present.
fn gguf_dir() -> Option<PathBuf> {
    let file = std::env::var_os("RELA_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if file.is_file() {
        return file.parent().map(Path::to_path_buf);
    }
    let why = format!("{} is absent (run hosts/models/fetch-model.sh)", file.display());
    assert!(std::env::var_os("RELA_REQUIRE_GGUF").is_none_or(|v| v != "1"), "RELA_REQUIRE_GGUF=1 but {why}");
    eprintln!("*** SKIPPED generation through the C ABI: {why} ***");
    None
}

/// What the token callback saw.
#[derive(Default)]
struct Seen {
    text: String,
    ids: Vec<u32>,
    calls: usize,
    /// Return non-zero (cancel) from this call on.
    cancel_after: Option<usize>,
}

unsafe extern "C" fn on_token(
    user: *mut std::ffi::c_void,
    text: *const std::ffi::c_char,
    text_len: usize,
    ids: *const u32,
    ids_len: usize,
) -> i32 {
    // SAFETY: `user` is the `Seen` the test passed; the library passes valid text and ids.
    let (seen, text, ids) = unsafe {
        (
            &mut *user.cast::<Seen>(),
            std::slice::from_raw_parts(text.cast::<u8>(), text_len),
            std::slice::from_raw_parts(ids, ids_len),
        )
    };
    seen.text.push_str(std::str::from_utf8(text).expect("whole UTF-8 characters"));
    seen.ids.extend_from_slice(ids);
    seen.calls += 1;
    i32::from(seen.cancel_after.is_some_and(|n| seen.calls >= n))
}

#[test]
fn generate_streams_tokens_and_cancels() {
    let Some(dir) = gguf_dir() else { return };
    let node = TestNode::start_sized(256 << 20, None, |c| rela_node::NodeConfig { models: Some(dir), ..c });
    let client = connected(node.port, None);
    let mut model = RelaModel::default();
    // SAFETY: the pointers are valid for each call; `seen` outlives the calls that use it.
    unsafe {
        assert_eq!(
            rela_model_load(client, c"SmolLM2-135M-Instruct.Q4_1".as_ptr(), &mut model),
            RELA_OK,
            "{}",
            last_message()
        );
        let options = RelaGenerateOptions { max_tokens: 12, ..Default::default() };
        let mut seen = Seen::default();
        let mut result = RelaGenerateResult::default();
        let s = rela_generate(
            client,
            model.id,
            c"The capital of France is".as_ptr(),
            &options,
            Some(on_token),
            (&raw mut seen).cast(),
            &mut result,
        );
        assert_eq!(s, RELA_OK, "{}", last_message());
        assert!(
            result.finish_reason == RELA_FINISH_LENGTH || result.finish_reason == RELA_FINISH_EOS,
            "finish reason {}",
            result.finish_reason
        );
        assert!(result.prompt_tokens > 0);
        assert_eq!(result.generated_tokens as usize, seen.ids.len(), "every id reached the callback");
        assert!(result.generated_tokens <= 12);
        assert!(seen.text.contains("Paris"), "greedy text: {:?}", seen.text);

        // A non-zero return cancels: the node stops, the call returns normally.
        let long = RelaGenerateOptions { max_tokens: 200, chat: true, ..Default::default() };
        let mut seen = Seen { cancel_after: Some(2), ..Default::default() };
        let s = rela_generate(
            client,
            model.id,
            c"Write a long story about a lighthouse.".as_ptr(),
            &long,
            Some(on_token),
            (&raw mut seen).cast(),
            &mut result,
        );
        assert_eq!(s, RELA_OK, "{}", last_message());
        assert_eq!(result.finish_reason, RELA_FINISH_CANCELLED);
        assert!(result.generated_tokens < 200, "stopped early: {}", result.generated_tokens);

        // The session goes on; bad arguments are refused with a status.
        assert_eq!(rela_ping(client, std::ptr::null_mut()), RELA_OK);
        let bad = RelaGenerateOptions { top_p: 0.0, ..Default::default() };
        let s = rela_generate(client, model.id, c"x".as_ptr(), &bad, None, std::ptr::null_mut(), &mut result);
        assert_eq!(s, RELA_ERR_INVALID_ARGUMENT);
        let s = rela_generate(
            client,
            model.id,
            std::ptr::null(),
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            &mut result,
        );
        assert_eq!(s, RELA_ERR_INVALID_ARGUMENT);
        // No callback and no result pointer: allowed.
        let s = rela_generate(
            client,
            model.id,
            c"Hello".as_ptr(),
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, RELA_OK, "{}", last_message());
        // A model id the node does not know is the node's NO_SUCH_MODEL (20).
        let s = rela_generate(
            client,
            77,
            c"Hello".as_ptr(),
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, 20, "{}", last_message());
    }
    assert_eq!(rela_close(client), RELA_OK);
    node.wait_idle();
}
