//! `serve_session` over a real TCP stream (tokio, through `embedded-io-adapters`), against the
//! std client and against hand-made hostile frames. The session logic is the core's; this
//! checks the front-end's loop: frame sizes clamped to its buffers, every response written,
//! deadlines raced against reads, and nothing of a session left in the backend however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::Node;
use embedded_io_adapters::tokio_1::FromTokio;
use rela_client::{Client, ClientError, FastCrc32};
use rela_core::config::HEADER_LEN;
use rela_core::io::read_frame;
use rela_core::session::{CloseReason, SessionConfig};
use rela_core::time::Duration as CoreDuration;
use rela_core::wire::msg::{Caps, ErrorMsg, Hello, Message};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_embassy::{MIN_FRAME_BUFFER, SessionEnd};
use rela_test_support::pattern;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Frame buffers of a small device: 4 KiB payloads.
const FRAME: usize = HEADER_LEN + 4096;
const ARENA: usize = 256 * 1024;

/// A node for one session with device-sized frame buffers (`frame` bytes).
fn serve_one(config: SessionConfig, frame: usize) -> Node {
    Node::spawn(config, frame, ARENA)
}

/// How the one session ended, after checking that it left nothing in the backend.
async fn ended(node: Node) -> SessionEnd {
    let report = node.finish(1).await;
    assert_eq!(report.used, 0, "the session left memory in the backend");
    assert!(report.arena_zero, "a session's bytes were left in the arena");
    let [end] = report.ends[..] else { panic!("one session, ended once: {:?}", report.ends) };
    end
}

#[tokio::test]
async fn std_client_round_trip_in_small_frames() {
    let node = serve_one(SessionConfig::default(), FRAME);
    let mut client = Client::connect(node.addr, None).await.unwrap();
    // The WELCOME carries the front-end's limit, and the client frames to it.
    assert_eq!(client.welcome().max_payload, 4096);
    let info = client.device_info().await.unwrap();
    assert_eq!(info.total, ARENA as u64);
    client.ping().await.unwrap();

    let a = client.alloc(100_000).await.unwrap();
    let b = client.alloc(50_000).await.unwrap();
    let data = pattern(3, 100_000);
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

    assert_eq!(ended(node).await, SessionEnd::Closed(CloseReason::Bye));
}

#[tokio::test]
async fn a_dropped_connection_leaves_nothing_behind() {
    let node = serve_one(SessionConfig::default(), FRAME);
    let mut client = Client::connect(node.addr, None).await.unwrap();
    let h = client.alloc(64 * 1024).await.unwrap();
    client.write(h, 0, &pattern(9, 64 * 1024)).await.unwrap();
    drop(client); // no BYE: the stream just ends

    assert_eq!(ended(node).await, SessionEnd::Disconnected);
}

/// Sends `bytes` on a raw connection and returns the node's one response (an ERROR) and how
/// the session ended.
async fn raw_exchange(config: SessionConfig, bytes: &[u8]) -> (ErrorCode, Kind, SessionEnd) {
    let node = serve_one(config, FRAME);
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut stream = FromTokio::new(stream);
    let mut buf = vec![0u8; FRAME];
    let frame = read_frame::<_, FastCrc32>(&mut stream, &mut buf, 4096).await.unwrap();
    assert_eq!(frame.kind(), Kind::ERROR);
    assert!(frame.header.flags.contains(Flags::ERROR));
    let e = ErrorMsg::parse(frame.payload).unwrap();
    let (code, kind) = (e.code, e.request_kind);
    (code, kind, ended(node).await)
}

#[tokio::test]
async fn garbage_gets_bad_frame_and_the_session_closes() {
    let (code, _, end) = raw_exchange(SessionConfig::default(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code, ErrorCode::BAD_FRAME);
    assert_eq!(end, SessionEnd::Closed(CloseReason::Error(ErrorCode::BAD_FRAME)));
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
    let (code, _, end) = raw_exchange(SessionConfig::default(), &header).await;
    assert_eq!(code, ErrorCode::PAYLOAD_TOO_LARGE);
    assert_eq!(end, SessionEnd::Closed(CloseReason::Error(ErrorCode::PAYLOAD_TOO_LARGE)));
}

#[tokio::test]
async fn a_silent_peer_times_out_in_the_handshake() {
    let config =
        SessionConfig { handshake_timeout: CoreDuration::from_millis(200), ..SessionConfig::default() };
    let (code, _, end) = tokio::time::timeout(Duration::from_secs(10), raw_exchange(config, b""))
        .await
        .expect("the handshake deadline fired");
    assert_eq!(code, ErrorCode::TIMEOUT);
    assert_eq!(end, SessionEnd::Closed(CloseReason::Error(ErrorCode::TIMEOUT)));
}

#[tokio::test]
async fn an_idle_session_times_out_and_frees_its_buffers() {
    let config = SessionConfig { idle_timeout: CoreDuration::from_millis(300), ..SessionConfig::default() };
    let node = serve_one(config, FRAME);
    let mut client = Client::connect(node.addr, None).await.unwrap();
    let h = client.alloc(8192).await.unwrap();
    client.write(h, 0, &pattern(1, 8192)).await.unwrap();
    let end =
        tokio::time::timeout(Duration::from_secs(10), ended(node)).await.expect("the idle deadline fired");
    assert_eq!(end, SessionEnd::Closed(CloseReason::Error(ErrorCode::TIMEOUT)));
}

#[tokio::test]
async fn frame_buffers_below_the_minimum_are_refused() {
    let node = serve_one(SessionConfig::default(), MIN_FRAME_BUFFER - 1);
    let _stream = TcpStream::connect(node.addr).await.unwrap();
    assert_eq!(ended(node).await, SessionEnd::BuffersTooSmall);
}
