//! The client's deadlines against servers that misbehave: one that accepts and says nothing,
//! one that answers HELLO and then goes silent, and one that sends an unsolicited error.
//! Every call must return an error of the right kind; a hang would run into the outer
//! deadline of each test (far above the configured timeouts).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use rela_client::{BlockingClient, Client, ClientError, ClientOptions, TimeoutPhase};
use rela_core::config::{HEADER_LEN, MAX_PAYLOAD};
use rela_core::crc32::SoftCrc32;
use rela_core::wire::msg::{Caps, ErrorMsg, Message, Welcome};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The configured deadline: short, so the tests are quick.
const SHORT: Duration = Duration::from_millis(300);
/// The outer bound a hang would run into.
const HANG: Duration = Duration::from_secs(30);

/// What the fake node does with each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Accepts and never writes a byte (reads and discards what it gets).
    Silent,
    /// Answers HELLO with a WELCOME (no AUTH), then reads and never answers.
    WelcomeThenSilent,
    /// Answers HELLO, then sends an unsolicited ERROR SHUTTING_DOWN (request kind 0).
    WelcomeThenShutdown,
}

async fn fake_node(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(serve(stream, behaviour));
        }
    });
    addr
}

fn frame(kind: Kind, seq: u16, payload: &[u8]) -> Vec<u8> {
    let flags = if kind == Kind::ERROR { Flags(Flags::RESPONSE.0 | Flags::ERROR.0) } else { Flags::RESPONSE };
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    encode_frame::<SoftCrc32>(&mut buf, kind, flags, seq, payload).unwrap().to_vec()
}

fn encode<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut v).unwrap();
    v.truncate(n);
    v
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    let mut sink = [0u8; 4096];
    if !matches!(behaviour, Behaviour::Silent) {
        // The HELLO: a header and an 8-byte payload.
        let mut hello = [0u8; HEADER_LEN + 8];
        if stream.read_exact(&mut hello).await.is_err() {
            return;
        }
        let seq = u16::from_le_bytes([hello[6], hello[7]]);
        let welcome = Welcome {
            version: 1,
            flags: 0,
            caps: Caps::DISPATCH,
            max_payload: MAX_PAYLOAD,
            max_buffers: 64,
            quota: 1 << 20,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 0,
            nonce: [7; 32],
        };
        stream.write_all(&frame(Kind::HELLO, seq, &encode(&welcome))).await.unwrap();
    }
    if matches!(behaviour, Behaviour::WelcomeThenShutdown) {
        let e = ErrorMsg { code: ErrorCode::SHUTTING_DOWN, request_kind: Kind(0), reason: "node stopping" };
        stream.write_all(&frame(Kind::ERROR, 0, &encode(&e))).await.unwrap();
    }
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

fn short() -> ClientOptions {
    ClientOptions::default().with_timeout(SHORT)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f).await.expect("the client hung past its deadline")
}

#[tokio::test]
async fn silent_server_times_out_the_handshake() {
    let addr = fake_node(Behaviour::Silent).await;
    let err = bounded(Client::connect_with(addr, None, short())).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { phase: TimeoutPhase::Handshake, after } if after == SHORT),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out after 300 ms"), "{err}");
}

#[tokio::test]
async fn host_names_resolve_and_are_timed_too() {
    let addr = fake_node(Behaviour::Silent).await;
    let host = format!("localhost:{}", addr.port());
    let err = bounded(Client::connect_host(&host, None, short())).await.unwrap_err();
    // `localhost` may resolve to ::1 first, where nothing listens: the next address is tried.
    assert!(matches!(err, ClientError::Timeout { phase: TimeoutPhase::Handshake, .. }), "{err:?}");
    let err = bounded(Client::connect_host("no-such-host.invalid:8765", None, short())).await.unwrap_err();
    assert!(matches!(err, ClientError::Resolve(_)), "{err:?}");
}

#[tokio::test]
async fn silent_after_welcome_times_out_each_request_and_closes() {
    let addr = fake_node(Behaviour::WelcomeThenSilent).await;
    let mut c = bounded(Client::connect_with(addr, None, short())).await.expect("the handshake completes");
    let err = bounded(c.ping()).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { phase: TimeoutPhase::Request, .. }), "{err:?}");
    // The session's state is unknown after a timeout: it is closed.
    assert!(matches!(bounded(c.device_info()).await, Err(ClientError::Closed)));

    // A bulk read times out the same way rather than waiting for data that never comes.
    let mut c = bounded(Client::connect_with(addr, None, short())).await.unwrap();
    let h = rela_client::Handle::from_raw(1, 1 << 20);
    let err = bounded(c.read(h, 0, 1 << 20)).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { phase: TimeoutPhase::Request, .. }), "{err:?}");
}

#[test]
fn blocking_client_times_out_too() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(fake_node(Behaviour::Silent));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(BlockingClient::connect_with(addr, None, short()).map(|_| ()));
    });
    let result = rx.recv_timeout(HANG).expect("the blocking client hung past its deadline");
    assert!(matches!(result, Err(ClientError::Timeout { phase: TimeoutPhase::Handshake, .. })), "{result:?}");

    let addr = rt.block_on(fake_node(Behaviour::WelcomeThenSilent));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut c = BlockingClient::connect_with(addr, None, short()).unwrap();
        let _ = tx.send(c.stats().map(|_| ()));
    });
    let result = rx.recv_timeout(HANG).expect("the blocking client hung past its deadline");
    assert!(matches!(result, Err(ClientError::Timeout { phase: TimeoutPhase::Request, .. })), "{result:?}");
}

#[tokio::test]
async fn unsolicited_errors_name_no_request() {
    let addr = fake_node(Behaviour::WelcomeThenShutdown).await;
    let mut c = bounded(Client::connect_with(addr, None, short())).await.unwrap();
    let err = bounded(c.ping()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SHUTTING_DOWN), "{err:?}");
    let text = err.to_string();
    assert_eq!(text, "node error SHUTTING_DOWN: node stopping");
}
