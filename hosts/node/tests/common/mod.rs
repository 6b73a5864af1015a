//! Test helpers: a node on an ephemeral loopback port over the host-memory backend.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rela_backend_host::OwnedHostBackend;
use rela_client::FastCrc32;
use rela_core::backend::{GpuBackend, Usage};
use rela_core::config::HEADER_LEN;
use rela_core::wire::msg::{ErrorMsg, Message};
use rela_core::wire::{ErrorCode, Frame, HeaderRepr, Kind};
use rela_node::{Node, NodeBackend, NodeConfig, NodeHandle};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The language model the generation tests serve (`hosts/models/fetch-model.sh`), by its name on
/// the node: its file name without `.gguf`.
pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// The directory holding [`MODEL`]'s GGUF file (or `RELA_GGUF`), if present. Without it, prints
/// a SKIPPED line for `test`, unless `RELA_REQUIRE_GGUF=1`, when it fails.
pub fn models_dir(test: &str) -> Option<PathBuf> {
    let file = std::env::var_os("RELA_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(format!("{MODEL}.gguf"))
    });
    if file.is_file() {
        return file.parent().map(Path::to_path_buf);
    }
    let why = format!("{} is absent (run hosts/models/fetch-model.sh)", file.display());
    assert!(std::env::var_os("RELA_REQUIRE_GGUF").is_none_or(|v| v != "1"), "RELA_REQUIRE_GGUF=1 but {why}");
    eprintln!("*** SKIPPED {test}: {why} ***");
    None
}

/// Upper bound for any single test step.
pub const STEP: Duration = Duration::from_secs(30);

/// Loopback config with ephemeral ports.
pub fn config() -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        discovery: Some("127.0.0.1:0".parse().expect("addr")),
        ..NodeConfig::default()
    }
}

/// [`config`] with small limits, so the wire suite's limit cases run for real: 4 MiB quota, 32
/// buffers, 1 MiB payloads; no discovery; a 10 ms AUTH back-off.
pub fn wire_suite_config() -> NodeConfig {
    let mut cfg = config();
    cfg.discovery = None;
    cfg.auth_backoff = Duration::from_millis(10);
    cfg.session = rela_core::session::SessionConfig {
        max_payload: 1 << 20,
        max_buffers: 32,
        quota: 4 << 20,
        ..rela_core::session::SessionConfig::default()
    };
    cfg
}

/// A host-memory backend with `bytes` of arena, shared with the node's readers (WRITE data
/// straight into place), as `vram-relay serve --backend host` runs it.
pub fn backend(bytes: usize) -> NodeBackend {
    NodeBackend::host::<{ rela_backend_host::MAX_BLOCKS }>(bytes).expect("arena")
}

/// A host-memory backend the node sees only through `GpuBackend` (WRITE data through a
/// staging buffer and `GpuBackend::write`, as for device backends).
pub fn boxed_backend(bytes: usize) -> Box<dyn GpuBackend + Send> {
    Box::new(OwnedHostBackend::with_capacity(bytes))
}

/// Starts a node.
pub async fn start(config: NodeConfig, arena: usize) -> NodeHandle {
    within(Node::start(config, backend(arena))).await.expect("node starts")
}

/// Runs `f`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("test step timed out")
}

/// Connects like [`rela_client::Client::connect`], waiting and trying again while the node
/// turns this address away for failed AUTHs (ERROR(BUSY) with a retry-after), at most 20 times.
pub async fn connect_retrying(
    addr: std::net::SocketAddr,
    token: Option<&[u8]>,
) -> Result<rela_client::Client, rela_client::ClientError> {
    for _ in 0..20 {
        match within(rela_client::Client::connect(addr, token)).await {
            Err(e) if e.retry_after().is_some() => {
                tokio::time::sleep(e.retry_after().unwrap_or_default()).await;
            }
            other => return other,
        }
    }
    panic!("still throttled after 20 tries");
}

/// Polls until the backend holds nothing (bounded).
pub async fn wait_idle(node: &NodeHandle) -> Usage {
    wait_idle_within(node, Duration::from_secs(10)).await
}

/// [`wait_idle`] for up to `limit` (a device backend frees a model's weights with hundreds of
/// device calls).
pub async fn wait_idle_within(node: &NodeHandle, limit: Duration) -> Usage {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = node.usage().await.expect("usage");
        if last.used == 0 && last.buffers == 0 && node.sessions() == 0 {
            return last;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("node did not become idle: {last:?}, {} sessions", node.sessions());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls until the backend's usage is `want` bytes and no session is left (bounded); returns the
/// last usage seen.
pub async fn wait_for_used(node: &NodeHandle, want: u64) -> u64 {
    let mut last = 0;
    for _ in 0..400 {
        last = node.usage().await.expect("usage").used;
        if last == want && node.sessions() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

/// Reads one whole frame from a raw stream; `None` on EOF.
pub async fn read_raw_frame(stream: &mut TcpStream) -> Option<(HeaderRepr, Vec<u8>)> {
    let mut header = [0u8; HEADER_LEN];
    within(stream.read_exact(&mut header)).await.ok()?;
    let h = HeaderRepr::parse_bytes(&header, u32::MAX).expect("valid header from node");
    let mut frame = header.to_vec();
    frame.resize(HEADER_LEN + h.len as usize, 0);
    within(stream.read_exact(&mut frame[HEADER_LEN..])).await.expect("payload");
    let f = Frame::parse::<FastCrc32>(&frame, u32::MAX).expect("valid frame from node");
    Some((f.header, f.payload.to_vec()))
}

/// Decodes an ERROR frame's code.
pub fn error_code(header: &HeaderRepr, payload: &[u8]) -> ErrorCode {
    assert_eq!(header.kind, Kind::ERROR, "expected an ERROR frame");
    ErrorMsg::parse(payload).expect("ERROR decodes").code
}

/// Asserts the node closes the stream (EOF or reset) within [`STEP`].
pub async fn assert_closed(stream: &mut TcpStream) {
    let mut b = [0u8; 64];
    if let Ok(n @ 1..) = within(stream.read(&mut b)).await {
        panic!("{n} unexpected bytes after the final frame");
    }
}

// Not every test file that includes this module uses both.
#[allow(unused_imports)]
pub use rela_test_support::{f32_bytes, pattern};
