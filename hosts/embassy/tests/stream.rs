//! `serve_session` over a real TCP stream (tokio, through `embedded-io-adapters`), against the
//! std client and against hand-made hostile frames. The session logic is the core's; this
//! checks the front-end's loop: frame sizes clamped to its buffers, every response written,
//! deadlines raced against reads, and nothing of a session left in the backend however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use rela_backend_host::HostBackend;
use rela_client::{Client, ClientError, FastCrc32};
use rela_core::backend::GpuBackend;
use rela_core::config::HEADER_LEN;
use rela_core::io::read_frame;
use rela_core::session::{CloseReason, SessionConfig};
use rela_core::time::Duration as CoreDuration;
use rela_core::wire::msg::{Caps, ErrorMsg, Hello, Message};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_embassy::{FrameBuffers, MIN_FRAME_BUFFER, SessionEnd, serve_session};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Frame buffers of a small device: 4 KiB payloads.
const FRAME: usize = HEADER_LEN + 4096;
const ARENA: usize = 256 * 1024;

/// What the node thread reports when its one session ends.
struct Ended {
    end: SessionEnd,
    used_after: u64,
    arena_zero: bool,
}

/// Serves exactly one session on a loopback port, on its own thread (the session future is
/// not `Send`: it borrows the backend through a `RefCell`), with `frame` bytes per buffer.
fn serve_one(config: SessionConfig, frame: usize) -> (SocketAddr, std::thread::JoinHandle<Ended>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let node = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let mut arena = vec![0u8; ARENA];
            let backend = RefCell::new(HostBackend::<16>::with_block_table(&mut arena[..]));
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = FromTokio::new(stream);
            let (mut rx, mut tx) = (vec![0u8; frame], vec![0u8; frame]);
            let bufs = FrameBuffers { rx: &mut rx, tx: &mut tx };
            let end = serve_session::<_, _, FastCrc32>(&mut stream, &backend, &config, [7; 32], bufs).await;
            let used_after = backend.borrow().usage().used;
            drop(backend);
            Ended { end, used_after, arena_zero: arena.iter().all(|&b| b == 0) }
        })
    });
    (addr, node)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test]
async fn std_client_round_trip_in_small_frames() {
    let (addr, node) = serve_one(SessionConfig::default(), FRAME);
    let mut client = Client::connect(addr, None).await.unwrap();
    // The WELCOME carries the front-end's limit, and the client frames to it.
    assert_eq!(client.welcome().max_payload, 4096);
    let info = client.device_info().await.unwrap();
    assert_eq!(info.total, ARENA as u64);
    client.ping().await.unwrap();

    let a = client.alloc(100_000).await.unwrap();
    let b = client.alloc(50_000).await.unwrap();
    let data = pattern(100_000, 3);
    client.write(a, 0, &data).await.unwrap();
    client.write(b, 1000, &data[..20_000]).await.unwrap();
    assert_eq!(client.read(a, 0, 100_000).await.unwrap(), data);
    assert_eq!(client.read(b, 1000, 20_000).await.unwrap(), data[..20_000]);
    // A bad request is a typed ERROR, and the session goes on.
    let err = client.read(a, 99_999, 2).await.unwrap_err();
    assert!(matches!(err, ClientError::Server { code: ErrorCode::OUT_OF_BOUNDS, .. }), "{err:?}");
    client.free(b).await.unwrap();
    assert_eq!(client.stats().await.unwrap().buffers, 1);
    // BYE with a buffer still held: the node frees and zeroes it.
    client.close().await.unwrap();

    let ended = tokio::task::spawn_blocking(move || node.join().unwrap()).await.unwrap();
    assert_eq!(ended.end, SessionEnd::Closed(CloseReason::Bye));
    assert_eq!(ended.used_after, 0);
    assert!(ended.arena_zero, "a session's bytes were left in the arena");
}

#[tokio::test]
async fn a_dropped_connection_leaves_nothing_behind() {
    let (addr, node) = serve_one(SessionConfig::default(), FRAME);
    let mut client = Client::connect(addr, None).await.unwrap();
    let h = client.alloc(64 * 1024).await.unwrap();
    client.write(h, 0, &pattern(64 * 1024, 9)).await.unwrap();
    drop(client); // no BYE: the stream just ends

    let ended = tokio::task::spawn_blocking(move || node.join().unwrap()).await.unwrap();
    assert_eq!(ended.end, SessionEnd::Disconnected);
    assert_eq!(ended.used_after, 0);
    assert!(ended.arena_zero, "a session's bytes were left in the arena");
}

/// Sends `bytes` on a raw connection and returns the node's one response (an ERROR) and how
/// the session ended.
async fn raw_exchange(config: SessionConfig, bytes: &[u8]) -> (ErrorCode, Kind, Ended) {
    let (addr, node) = serve_one(config, FRAME);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut stream = FromTokio::new(stream);
    let mut buf = vec![0u8; FRAME];
    let frame = read_frame::<_, FastCrc32>(&mut stream, &mut buf, 4096).await.unwrap();
    assert_eq!(frame.kind(), Kind::ERROR);
    assert!(frame.header.flags.contains(Flags::ERROR));
    let e = ErrorMsg::parse(frame.payload).unwrap();
    let (code, kind) = (e.code, e.request_kind);
    let ended = tokio::task::spawn_blocking(move || node.join().unwrap()).await.unwrap();
    (code, kind, ended)
}

#[tokio::test]
async fn garbage_gets_bad_frame_and_the_session_closes() {
    let (code, _, ended) = raw_exchange(SessionConfig::default(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code, ErrorCode::BAD_FRAME);
    assert_eq!(ended.end, SessionEnd::Closed(CloseReason::Error(ErrorCode::BAD_FRAME)));
}

#[tokio::test]
async fn a_payload_beyond_the_frame_buffer_is_refused_before_it_is_read() {
    // A HELLO header that announces 1 MiB: more than these buffers carry. The node answers
    // from the header alone; the payload is never sent.
    let mut payload = [0u8; Hello::LEN];
    let n = Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH }.emit(&mut payload).unwrap();
    let mut buf = [0u8; HEADER_LEN + Hello::LEN];
    let frame = encode_frame::<FastCrc32>(&mut buf, Kind::HELLO, Flags::NONE, 1, &payload[..n]).unwrap();
    let mut header = frame[..HEADER_LEN].to_vec();
    header[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let (code, _, ended) = raw_exchange(SessionConfig::default(), &header).await;
    assert_eq!(code, ErrorCode::PAYLOAD_TOO_LARGE);
    assert_eq!(ended.end, SessionEnd::Closed(CloseReason::Error(ErrorCode::PAYLOAD_TOO_LARGE)));
}

#[tokio::test]
async fn a_silent_peer_times_out_in_the_handshake() {
    let config =
        SessionConfig { handshake_timeout: CoreDuration::from_millis(200), ..SessionConfig::default() };
    let (code, _, ended) = tokio::time::timeout(Duration::from_secs(10), raw_exchange(config, b""))
        .await
        .expect("the handshake deadline fired");
    assert_eq!(code, ErrorCode::TIMEOUT);
    assert_eq!(ended.end, SessionEnd::Closed(CloseReason::Error(ErrorCode::TIMEOUT)));
}

#[tokio::test]
async fn an_idle_session_times_out_and_frees_its_buffers() {
    let config = SessionConfig { idle_timeout: CoreDuration::from_millis(300), ..SessionConfig::default() };
    let (addr, node) = serve_one(config, FRAME);
    let mut client = Client::connect(addr, None).await.unwrap();
    let h = client.alloc(8192).await.unwrap();
    client.write(h, 0, &pattern(8192, 1)).await.unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || node.join().unwrap()),
    )
    .await
    .expect("the idle deadline fired")
    .unwrap();
    assert_eq!(ended.end, SessionEnd::Closed(CloseReason::Error(ErrorCode::TIMEOUT)));
    assert_eq!(ended.used_after, 0);
    assert!(ended.arena_zero);
}

#[tokio::test]
async fn frame_buffers_below_the_minimum_are_refused() {
    let (addr, node) = serve_one(SessionConfig::default(), MIN_FRAME_BUFFER - 1);
    let _stream = TcpStream::connect(addr).await.unwrap();
    let ended = tokio::task::spawn_blocking(move || node.join().unwrap()).await.unwrap();
    assert_eq!(ended.end, SessionEnd::BuffersTooSmall);
}
