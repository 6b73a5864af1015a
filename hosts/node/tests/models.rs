//! MODEL_LOAD / INFER / MODEL_UNLOAD through a live node (host backend): embeddings match the
//! sentence-transformers fixture, a repository model is held once for every session that loads
//! it (uploaded weights are private and charged to the session's quota), and once the model is
//! unloaded (or the session ends) the node holds nothing.
//!
//! Needs the weights (`hosts/models/fetch-model.sh`, or `RELA_MODEL_DIR`). Without them the
//! test prints a SKIPPED line — unless `RELA_REQUIRE_MODEL=1`, when it fails.

mod common;

use std::path::{Path, PathBuf};

use common::{config, start, within};
use rela_client::{Client, ClientError};
use rela_core::wire::ErrorCode;

/// The repository directory holding `all-MiniLM-L6-v2`, if its files are present.
fn repository() -> Option<PathBuf> {
    let model = std::env::var_os("RELA_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    let ok = ["model.safetensors", "tokenizer.json", "config.json"].iter().all(|f| model.join(f).is_file());
    if ok {
        return model.parent().map(Path::to_path_buf);
    }
    let why = format!("model files not found in {} (run hosts/models/fetch-model.sh)", model.display());
    assert!(
        std::env::var_os("RELA_REQUIRE_MODEL").is_none_or(|v| v != "1"),
        "RELA_REQUIRE_MODEL=1 but {why}"
    );
    eprintln!("*** SKIPPED models through the node: {why} ***");
    None
}

/// The test node's configuration, serving the models in `dir`.
fn model_config(dir: PathBuf) -> rela_node::NodeConfig {
    let mut cfg = config();
    cfg.models = Some(dir);
    cfg
}

/// The first `n` fixture sentences and their reference embeddings.
fn fixture(n: usize) -> Vec<(String, Vec<f32>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/reference.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .take(n)
        .map(|c| {
            let text = c["text"].as_str().expect("text").to_owned();
            let v =
                c["embedding"].as_array().expect("embedding").iter().map(|x| x.as_f64().expect("f") as f32);
            (text, v.collect())
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_through_the_node_match_the_reference_and_leave_nothing() {
    let Some(dir) = repository() else { return };
    let mut cfg = model_config(dir);
    cfg.session.quota = 256 << 20;
    let node = start(cfg, 512 << 20).await;
    let addr = node.local_addr();

    let mut c = within(Client::connect(addr, None)).await.expect("connect");
    assert!(c.serves_models());
    let m = within(c.model_load("all-MiniLM-L6-v2")).await.expect("load");
    assert_eq!(m.dim, 384);
    let stats = within(c.stats()).await.expect("stats");
    assert_eq!(m.bytes, 0, "a repository model's weights are shared, charged to no session");
    assert_eq!(stats.used, 0);

    let cases = fixture(6);
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    let got = within(c.infer(m, &texts)).await.expect("infer");
    let mut worst = 1.0f64;
    for ((text, want), v) in cases.iter().zip(&got) {
        let cos = cosine(v, want);
        worst = worst.min(cos);
        assert!(cos >= 0.9999, "{text:?}: cosine {cos}");
    }
    eprintln!("through the node (host backend): {} texts, min cosine {worst:.9}", cases.len());

    // Errors are typed and the session survives them.
    let err = within(c.model_load("no-such-model")).await.expect_err("unknown model");
    assert_eq!(err.code(), Some(ErrorCode::NO_SUCH_MODEL));
    let too_many = vec!["x"; 65];
    let err = within(c.infer(m, &too_many)).await.expect_err("too many texts");
    assert_eq!(err.code(), Some(ErrorCode::INVALID_INPUT));

    within(c.model_unload(m)).await.expect("unload");
    assert!(matches!(
        within(c.infer(m, &["x"])).await,
        Err(ClientError::Server { code: ErrorCode::NO_SUCH_MODEL, .. })
    ));
    let usage = within(node.usage()).await.expect("usage");
    // Only the small INFER staging buffer may remain while the session lives.
    assert!(usage.used <= 64 * 384 * 4, "after unload the node holds {} bytes", usage.used);

    // A second session loads the model and disconnects without unloading: everything goes.
    let mut d = within(Client::connect(addr, None)).await.expect("connect");
    let m2 = within(d.model_load("all-MiniLM-L6-v2")).await.expect("load");
    let _ = within(d.infer(m2, &["hello"])).await.expect("infer");
    drop(d);
    within(c.close()).await.expect("close");
    let mut usage = within(node.usage()).await.expect("usage");
    for _ in 0..100 {
        if usage.used == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        usage = within(node.usage()).await.expect("usage");
    }
    assert_eq!((usage.used, usage.buffers), (0, 0), "every model and buffer released");
    let end = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(end.used, 0);
}

/// `file` (a safetensors file) with the data of `tensor` (with or without a `bert.` prefix)
/// set to zero.
fn with_zeroed(file: &[u8], tensor: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).expect("header json");
    let entry = if header[tensor].is_object() { &header[tensor] } else { &header[format!("bert.{tensor}")] };
    let offsets = entry["data_offsets"].as_array().expect("data_offsets");
    let (a, b) = (offsets[0].as_u64().expect("u64") as usize, offsets[1].as_u64().expect("u64") as usize);
    let mut out = file.to_vec();
    out[8 + n + a..8 + n + b].fill(0);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_weights_are_checked_loaded_and_report_progress() {
    use rela_client::LoadStage;

    let Some(dir) = repository() else { return };
    let weights = std::fs::read(dir.join("all-MiniLM-L6-v2/model.safetensors")).expect("weights");
    let mut cfg = model_config(dir);
    cfg.session.quota = 256 << 20;
    let node = start(cfg, 512 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let cases = fixture(4);
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();

    // The repository's own file, uploaded: the same embeddings as loading it by name.
    let mut reports = Vec::new();
    let mut record = |stage, done, total| reports.push((stage, done, total));
    let m = within(c.model_upload("all-MiniLM-L6-v2", &weights, Some(&mut record))).await.expect("upload");
    assert_eq!(m.dim, 384);
    let total = weights.len() as u64;
    let sent: Vec<_> = reports.iter().filter(|r| r.0 == LoadStage::Upload).collect();
    assert_eq!(sent.first().map(|r| (r.1, r.2)), Some((0, total)));
    assert_eq!(sent.last().map(|r| (r.1, r.2)), Some((total, total)));
    assert!(sent.len() >= 3, "{} MiB in 8 MiB chunks: {sent:?}", total >> 20);
    let device: Vec<_> = reports.iter().filter(|r| r.0 == LoadStage::Device).collect();
    assert!(device.len() >= 3, "PROGRESS frames from the node: {device:?}");
    assert!(device.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].2 == w[1].2), "{device:?}");
    assert_eq!(device.last().map(|r| (r.1, r.2)), Some((m.bytes, m.bytes)));
    let got = within(c.infer(m, &texts)).await.expect("infer");
    for ((text, want), v) in cases.iter().zip(&got) {
        let cos = cosine(v, want);
        assert!(cos >= 0.9999, "{text:?}: cosine {cos}");
    }
    within(c.model_unload(m)).await.expect("unload");

    // Changed weights: the node runs what the client sent, not the repository's file.
    let changed = with_zeroed(&weights, "encoder.layer.5.output.dense.weight");
    let m = within(c.model_upload("all-MiniLM-L6-v2", &changed, None)).await.expect("upload changed");
    let got = within(c.infer(m, &texts)).await.expect("infer");
    let worst = cases.iter().zip(&got).map(|((_, want), v)| cosine(v, want)).fold(1.0, f64::min);
    assert!(worst < 0.999, "zeroing a layer must change the embeddings (min cosine {worst})");
    within(c.model_unload(m)).await.expect("unload");

    // A load by name reports progress too.
    let mut device = Vec::new();
    let mut record = |stage, done, total| {
        assert_eq!(stage, LoadStage::Device);
        device.push((done, total));
    };
    let m = within(c.model_load_with_progress("all-MiniLM-L6-v2", Some(&mut record))).await.expect("load");
    // Shared weights are charged to no session (m.bytes is 0); progress counts all of them.
    assert_eq!(m.bytes, 0);
    assert!(matches!(device.last(), Some(&(done, total)) if done == total && total > 20 << 20), "{device:?}");
    within(c.model_unload(m)).await.expect("unload");

    // Bad files are typed errors, checked before the device is touched; the session goes on.
    let before = within(node.usage()).await.expect("usage").used;
    for (what, bad) in [
        ("not safetensors", b"definitely not a safetensors file".to_vec()),
        ("truncated", weights[..weights.len() / 2].to_vec()),
        ("header only", weights[..4096].to_vec()),
    ] {
        let err = within(c.model_upload("all-MiniLM-L6-v2", &bad, None)).await.expect_err(what);
        assert_eq!(err.code(), Some(ErrorCode::INVALID_INPUT), "{what}: {err}");
        assert_eq!(
            within(node.usage()).await.expect("usage").used,
            before,
            "{what}: nothing reached the device"
        );
    }
    let err = within(c.model_upload("no-such-base", &weights, None)).await.expect_err("unknown base");
    assert_eq!(err.code(), Some(ErrorCode::NO_SUCH_MODEL));
    let huge = vec![0u8; (256 << 20) + 1];
    let err = within(c.model_upload("all-MiniLM-L6-v2", &huge, None)).await.expect_err("over quota");
    assert_eq!(err.code(), Some(ErrorCode::QUOTA_EXCEEDED));
    let stats = within(c.stats()).await.expect("stats");
    assert_eq!(stats.used, 0, "no staged bytes or weights left in the session");
    within(c.close()).await.expect("close");
    let end = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(end.used, 0);
}

#[test]
fn blocking_client_loads_uploads_and_infers() {
    let Some(dir) = repository() else { return };
    let weights = std::fs::read(dir.join("all-MiniLM-L6-v2/model.safetensors")).expect("weights");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut cfg = model_config(dir);
    cfg.session.quota = 256 << 20;
    let node = rt.block_on(start(cfg, 512 << 20));
    let addr = node.local_addr();
    let worker = std::thread::spawn(move || {
        let mut c = rela_client::BlockingClient::connect(addr, None).expect("connect");
        assert!(c.serves_models());
        let by_name = c.model_load("all-MiniLM-L6-v2", None).expect("load");
        let mut device = 0u64;
        let mut report = |stage, done, _| {
            if stage == rela_client::LoadStage::Device {
                device = device.max(done);
            }
        };
        let uploaded = c.model_upload("all-MiniLM-L6-v2", &weights, Some(&mut report)).expect("upload");
        assert_eq!(device, uploaded.bytes, "progress reached the whole model");
        let a = c.infer(by_name, &["blocking clients embed too"]).expect("infer");
        let b = c.infer(uploaded, &["blocking clients embed too"]).expect("infer");
        assert_eq!(a, b, "the same weights, loaded two ways, give the same floats");
        c.model_unload(by_name).expect("unload");
        c.model_unload(uploaded).expect("unload");
        c.close().expect("bye");
    });
    worker.join().expect("worker");
    rt.block_on(async {
        let end = within(node.shutdown()).await.expect("shutdown");
        assert_eq!(end.used, 0);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_hold_one_copy_of_a_repository_model() {
    let Some(dir) = repository() else { return };
    let node = start(model_config(dir), 512 << 20).await;
    let addr = node.local_addr();
    let mut a = within(Client::connect(addr, None)).await.expect("connect a");
    let mut b = within(Client::connect(addr, None)).await.expect("connect b");
    assert_eq!(within(a.device_info()).await.expect("info").shared_models, 0);

    let ma = within(a.model_load("all-MiniLM-L6-v2")).await.expect("load a");
    let one = within(node.usage()).await.expect("usage").used;
    let shared = within(a.device_info()).await.expect("info").shared_models;
    assert!(shared > 20 << 20, "DEVICE_INFO reports the shared weights: {shared}");
    assert!(one >= shared, "the weights are in the backend's usage: {one} < {shared}");

    let mb = within(b.model_load("all-MiniLM-L6-v2")).await.expect("load b");
    let two = within(node.usage()).await.expect("usage").used;
    assert_eq!(two, one, "the second session's load adds no weights");
    assert_eq!(within(b.device_info()).await.expect("info").shared_models, shared);
    // STATS says the same, and charges none of it to either session.
    for c in [&mut a, &mut b] {
        let s = within(c.stats()).await.expect("stats");
        assert_eq!(s.shared_models, Some(shared));
        assert!(s.used < shared, "the shared weights are not charged to the session: {}", s.used);
    }

    let text = ["two sessions, one copy of the weights"];
    let ea = within(a.infer(ma, &text)).await.expect("infer a");
    let eb = within(b.infer(mb, &text)).await.expect("infer b");
    assert_eq!(ea, eb, "the same weights give the same floats");

    // The first session lets go: the second still embeds with the shared weights.
    within(a.model_unload(ma)).await.expect("unload a");
    assert_eq!(within(b.device_info()).await.expect("info").shared_models, shared);
    assert_eq!(within(b.infer(mb, &text)).await.expect("infer b again"), eb);
    // The last one lets go: the weights are freed (and zeroed).
    within(b.model_unload(mb)).await.expect("unload b");
    assert_eq!(within(b.device_info()).await.expect("info").shared_models, 0);
    assert_eq!(within(b.stats()).await.expect("stats").shared_models, Some(0));
    let left = within(node.usage()).await.expect("usage").used;
    assert!(left <= 2 * 64 * 384 * 4, "after both unloads the node holds {left} bytes");
    within(a.close()).await.expect("close a");
    within(b.close()).await.expect("close b");
    common::wait_idle(&node).await;
    assert_eq!(within(node.shutdown()).await.expect("shutdown").used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_model_stays_until_the_node_stops() {
    let Some(dir) = repository() else { return };
    let mut cfg = model_config(dir);
    cfg.preload = vec!["all-MiniLM-L6-v2".to_owned()];
    let node = start(cfg, 512 << 20).await;
    let before = within(node.usage()).await.expect("usage").used;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let shared = within(c.device_info()).await.expect("info").shared_models;
    assert!(shared > 20 << 20 && before >= shared, "preloaded at start: {shared} shared, {before} used");
    let m = within(c.model_load("all-MiniLM-L6-v2")).await.expect("load");
    assert_eq!(
        within(node.usage()).await.expect("usage").used,
        before,
        "the load reuses the preloaded weights"
    );
    within(c.infer(m, &["preloaded"])).await.expect("infer");
    within(c.model_unload(m)).await.expect("unload");
    within(c.close()).await.expect("close");
    assert_eq!(common::wait_for_used(&node, before).await, before, "the preloaded weights stay");
    assert_eq!(within(node.shutdown()).await.expect("shutdown").used, 0, "freed when the node stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_working_memory_is_charged_to_the_session() {
    let Some(dir) = repository() else { return };
    let mut cfg = model_config(dir);
    cfg.session.quota = 4 << 20;
    let node = start(cfg, 512 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load("all-MiniLM-L6-v2")).await.expect("load (shared weights cost nothing)");
    assert_eq!(within(c.stats()).await.expect("stats").used, 0);

    within(c.infer(m, &["a short text"])).await.expect("a small INFER fits");
    let after_small = within(c.stats()).await.expect("stats").used;
    assert!(after_small > 0 && after_small <= 4 << 20, "intermediates are charged: {after_small}");
    eprintln!("working memory after one short text: {after_small} bytes");

    // Intermediates for 16 texts of 80 tokens are beyond 4 MiB: refused, and given back.
    let long = "a long passage about relay nodes and their sessions ".repeat(8);
    let texts = vec![long.as_str(); 16];
    let err = within(c.infer(m, &texts)).await.expect_err("over the quota");
    assert_eq!(err.code(), Some(ErrorCode::QUOTA_EXCEEDED), "{err}");
    let after_refusal = within(c.stats()).await.expect("stats").used;
    assert!(after_refusal <= 4 << 20, "the session holds {after_refusal} bytes after the refusal");

    // The session goes on.
    within(c.infer(m, &["a short text"])).await.expect("a small INFER still fits");
    within(c.model_unload(m)).await.expect("unload");
    within(c.close()).await.expect("close");
    common::wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infer_over_the_token_limit_is_refused_and_the_session_goes_on() {
    let Some(dir) = repository() else { return };
    let mut cfg = model_config(dir);
    cfg.max_infer_tokens = 32;
    let node = start(cfg, 512 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load("all-MiniLM-L6-v2")).await.expect("load");
    // "[CLS] … [SEP]": three short texts of a few tokens each fit in 32.
    within(c.infer(m, &["one", "two words", "three small words"])).await.expect("under the limit");
    // About 90 tokens.
    let long =
        "every word here is a token, and the node counts them before it touches the device. ".repeat(5);
    let err = within(c.infer(m, &[long.as_str()])).await.expect_err("over the limit");
    assert_eq!(err.code(), Some(ErrorCode::LIMIT_EXCEEDED), "{err}");
    within(c.infer(m, &["still fine"])).await.expect("the session goes on");
    within(c.close()).await.expect("close");
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_repository_model_names_the_file_at_fault() {
    let Some(dir) = repository() else { return };
    let src = dir.join("all-MiniLM-L6-v2");
    let repo = std::env::temp_dir().join(format!("rela-bad-config-{}", std::process::id()));
    let model = repo.join("broken");
    std::fs::create_dir_all(&model).expect("mkdir");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), model.join(f)).expect("copy");
    }
    // A config.json without hidden_size.
    std::fs::write(model.join("config.json"), br#"{"num_hidden_layers": 6}"#).expect("config");
    let mut cfg = config();
    cfg.models = Some(repo.clone());
    let node = start(cfg, 512 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let err = within(c.model_load("broken")).await.expect_err("unusable");
    assert!(err.to_string().contains("config.json"), "the client is told which file: {err}");
    within(c.ping()).await.expect("the session goes on");
    within(c.close()).await.expect("close");
    within(node.shutdown()).await.expect("shutdown");
    let _ = std::fs::remove_dir_all(repo);
}

/// Lets `task` (a session's requests) run for `wait_ms`, then drops it mid-request, as a
/// client that vanishes does, and waits until it is gone.
async fn vanish_after(task: tokio::task::JoinHandle<()>, wait_ms: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
    task.abort();
    let _ = task.await;
}

/// A session that vanishes while its MODEL_LOAD or its INFER runs (the job is cancelled between
/// two steps) leaves nothing behind: the half-loaded weights and the working memory are freed,
/// and the next session loads the model again as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gone_mid_load_or_mid_infer_leaves_nothing() {
    let Some(dir) = repository() else { return };
    let node = start(model_config(dir), 512 << 20).await;
    let addr = node.local_addr();
    let texts: Vec<String> =
        (0..64).map(|i| format!("a long passage of text number {i}, ").repeat(12)).collect();
    for wait_ms in [0u64, 3, 10, 30, 80] {
        // Gone during the load.
        let mut c = within(Client::connect(addr, None)).await.expect("connect");
        let load = tokio::spawn(async move {
            let _ = c.model_load("all-MiniLM-L6-v2").await;
        });
        vanish_after(load, wait_ms).await;
        common::wait_idle(&node).await;
        // Gone during an INFER of 64 long texts.
        let mut c = within(Client::connect(addr, None)).await.expect("connect");
        let m = within(c.model_load("all-MiniLM-L6-v2")).await.expect("load");
        let texts = texts.clone();
        let infer = tokio::spawn(async move {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let _ = c.infer(m, &refs).await;
        });
        vanish_after(infer, wait_ms).await;
        common::wait_idle(&node).await;
    }
    // The model still loads and embeds afterwards.
    let mut c = within(Client::connect(addr, None)).await.expect("connect");
    let m = within(c.model_load("all-MiniLM-L6-v2")).await.expect("load after");
    assert_eq!(within(c.infer(m, &["still here"])).await.expect("infer after").len(), 1);
    within(c.close()).await.expect("close");
    common::wait_idle(&node).await;
    assert_eq!(within(node.shutdown()).await.expect("shutdown").used, 0);
}

/// Two sessions load the same repository model; the first, whose load the second waits for,
/// vanishes mid-load. The second still gets a working model, and nothing is left once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_loader_gets_the_model_when_the_first_loader_vanishes() {
    let Some(dir) = repository() else { return };
    let node = start(model_config(dir), 512 << 20).await;
    let addr = node.local_addr();
    for wait_ms in [2u64, 10, 40] {
        let mut first = within(Client::connect(addr, None)).await.expect("connect first");
        let mut second = within(Client::connect(addr, None)).await.expect("connect second");
        let load = tokio::spawn(async move {
            let _ = first.model_load("all-MiniLM-L6-v2").await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let waiting = tokio::spawn(async move {
            let m = second.model_load("all-MiniLM-L6-v2").await.expect("the second load");
            let e = second.infer(m, &["still served"]).await.expect("infer");
            (second, e)
        });
        vanish_after(load, wait_ms).await;
        let (second, e) = within(waiting).await.expect("second task");
        assert_eq!(e.len(), 1);
        within(second.close()).await.expect("close");
        common::wait_idle(&node).await;
    }
    assert_eq!(within(node.shutdown()).await.expect("shutdown").used, 0);
}
