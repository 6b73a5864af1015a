//! The record layer against a rustls server: data both ways across KeyUpdates (ours, forced by
//! a tiny confidentiality limit, and the server's, which asks for one back), session tickets,
//! `close_notify`, truncation, altered and oversized records.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::tls::{Fingerprint, TlsOptions, connect_session};

/// A rustls server's side of a session, driven by hand so that tests can also write raw
/// bytes to the socket.
struct Server {
    io: TcpStream,
    conn: ServerConnection,
    /// Socket bytes not yet given to rustls, which takes them as its buffer allows.
    pending: Vec<u8>,
}

impl Server {
    /// Writes what rustls has to send.
    async fn flush(&mut self) {
        while self.conn.wants_write() {
            let mut out = Vec::new();
            self.conn.write_tls(&mut out).expect("write_tls");
            self.io.write_all(&out).await.expect("socket write");
        }
    }

    /// Seals `data` and sends it.
    async fn send(&mut self, data: &[u8]) {
        self.conn.writer().write_all(data).expect("plaintext in");
        self.flush().await;
    }

    /// Receives `n` bytes of plaintext (answering KeyUpdates on the way).
    async fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let mut chunk = vec![0u8; n - got.len()];
            match self.conn.reader().read(&mut chunk) {
                Ok(k) if k > 0 => {
                    got.extend_from_slice(&chunk[..k]);
                    continue;
                }
                Ok(_) => panic!("the client closed early"),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
            }
            self.feed().await;
            self.conn.process_new_packets().expect("the client's records open");
            self.flush().await;
        }
        got
    }

    /// Gives rustls some bytes: what is pending, else what the socket gives.
    async fn feed(&mut self) {
        if self.pending.is_empty() {
            let mut buf = vec![0u8; 64 * 1024];
            let k = self.io.read(&mut buf).await.expect("socket read");
            assert!(k > 0, "EOF");
            self.pending.extend_from_slice(&buf[..k]);
        }
        let mut bytes = &self.pending[..];
        let k = self.conn.read_tls(&mut bytes).expect("read_tls");
        self.pending.drain(..k);
    }
}

/// A node's TLS configuration with a fresh self-signed certificate, and its fingerprint.
fn server_config() -> (rustls::ServerConfig, Fingerprint) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = CertificateDer::from(key.cert.der().to_vec());
    let fingerprint = Fingerprint::of_der(cert.as_ref());
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .expect("server config");
    config.alpn_protocols = vec![rela_core::config::TLS_ALPN.to_vec()];
    (config, fingerprint)
}

/// A listening rustls server and a session's halves connected to it; `serve` runs on the
/// server's side once its handshake is done.
async fn session<F, Fut>(serve: F) -> (Reader, Writer, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Server) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (config, fingerprint) = server_config();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.expect("accept");
        let mut conn = ServerConnection::new(config).expect("connection");
        // Whole test messages sealed at once.
        conn.set_buffer_limit(None);
        let mut server = Server { io, conn, pending: Vec::new() };
        while server.conn.is_handshaking() {
            server.flush().await;
            server.feed().await;
            server.conn.process_new_packets().expect("handshake");
        }
        // Finishes the handshake's flight and sends the session tickets.
        server.flush().await;
        serve(server).await;
    });
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (rd, wr, seen) =
        connect_session(stream, addr, None, &TlsOptions::pinned(fingerprint)).await.expect("handshake");
    assert_eq!(seen, fingerprint);
    (rd, wr, server)
}

/// Bytes that differ from one position to the next.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn record_error(e: &io::Error) -> Option<RecordError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<RecordError>()).copied()
}

#[tokio::test]
async fn data_crosses_key_updates_both_ways() {
    const LEN: usize = 300_000;
    let (mut rd, mut wr, server) = session(|mut server| async move {
        let got = server.recv(LEN).await;
        // A KeyUpdate that asks the client for one back, in the middle of the echo.
        server.send(&got[..LEN / 2]).await;
        server.conn.refresh_traffic_keys().expect("key update");
        server.send(&got[LEN / 2..]).await;
        // The client answered the KeyUpdate before its next record: this opens only if it did.
        let more = server.recv(1000).await;
        server.send(&more).await;
        server.conn.send_close_notify();
        server.flush().await;
    })
    .await;
    // A KeyUpdate of the client's own every few records.
    wr.keys.suite.limit = 4;
    let data = pattern(LEN, 7);
    let (a, rest) = data.split_at(100);
    let (b, c) = rest.split_at(70_000);
    // Records that lie in one piece are sealed from there, the others gathered first; an
    // empty piece is skipped.
    let empty = &rest[..0];
    let mut sent = 0;
    while sent < LEN {
        let bufs: Vec<io::IoSlice<'_>> = [a, empty, b, c]
            .iter()
            .scan(0usize, |at, s| {
                let start = *at;
                *at += s.len();
                Some((start, s))
            })
            .filter(|(start, s)| start + s.len() > sent)
            .map(|(start, s)| io::IoSlice::new(&s[sent.saturating_sub(start)..]))
            .collect();
        sent += wr.write_vectored(&bufs).await.expect("write");
    }
    wr.flush().await.expect("flush");
    // Our keys moved on every few records.
    assert!(wr.keys.seq < 4, "sealed {} records under one key", wr.keys.seq);
    let mut echo = vec![0u8; LEN];
    rd.read_exact(&mut echo).await.expect("echo");
    assert!(echo == data, "the echo differs");
    // The server asked for a KeyUpdate back; the next write answers it.
    assert!(rd.rx.update_owed.load(Ordering::Acquire));
    let tail = pattern(1000, 11);
    wr.write_all(&tail).await.expect("write");
    wr.flush().await.expect("flush");
    assert!(!wr.update_owed.load(Ordering::Acquire));
    let mut back = vec![0u8; 1000];
    rd.read_exact(&mut back).await.expect("second echo");
    assert_eq!(back, tail);
    // close_notify: end of stream, not an error.
    assert_eq!(rd.read(&mut back).await.expect("clean end"), 0);
    server.await.expect("server");
}

#[tokio::test]
async fn an_altered_record_fails_and_stays_failed() {
    let (mut rd, _wr, server) = session(|mut server| async move {
        server.conn.writer().write_all(b"hello").expect("plaintext in");
        let mut out = Vec::new();
        server.conn.write_tls(&mut out).expect("write_tls");
        let last = out.len() - 1;
        out[last] ^= 1;
        server.io.write_all(&out).await.expect("socket write");
    })
    .await;
    let mut buf = [0u8; 16];
    let e = rd.read(&mut buf).await.expect_err("an altered record");
    assert_eq!(record_error(&e), Some(RecordError::Decrypt));
    let e = rd.read(&mut buf).await.expect_err("still failed");
    assert_eq!(record_error(&e), Some(RecordError::Decrypt));
    server.await.expect("server");
}

#[tokio::test]
async fn reads_of_every_size_take_the_records_in_order() {
    // Pieces of records, whole records, and reads that have room for only some of the records
    // the buffer holds (those left are taken by the next read, whatever its size).
    const LEN: usize = 400_000;
    let data = pattern(LEN, 3);
    let sent = data.clone();
    let (mut rd, _wr, server) = session(|mut server| async move {
        for piece in sent.chunks(50_000) {
            server.send(piece).await;
        }
    })
    .await;
    let sizes = [40_000usize, 100, 33_300, 70_001, 1, 16_385, 200_000];
    let mut got = Vec::with_capacity(LEN);
    for size in sizes.iter().cycle() {
        if got.len() == LEN {
            break;
        }
        let mut buf = vec![0u8; (*size).min(LEN - got.len())];
        rd.read_exact(&mut buf).await.expect("read");
        got.extend_from_slice(&buf);
    }
    assert!(got == data, "the data came back changed or out of order");
    server.await.expect("server");
}

#[tokio::test]
async fn an_altered_record_fails_a_large_read() {
    let (mut rd, _wr, server) = session(|mut server| async move {
        server.conn.writer().write_all(&pattern(100_000, 5)).expect("plaintext in");
        let mut out = Vec::new();
        while server.conn.wants_write() {
            server.conn.write_tls(&mut out).expect("write_tls");
        }
        // A byte of the fourth record's ciphertext.
        out[3 * (HEADER + MAX_PLAINTEXT + 1 + TAG) + HEADER + 7] ^= 0x40;
        server.io.write_all(&out).await.expect("socket write");
    })
    .await;
    let mut buf = vec![0u8; 100_000];
    let e = rd.read_exact(&mut buf).await.expect_err("an altered record");
    assert_eq!(record_error(&e), Some(RecordError::Decrypt));
    // The three records before it came through as data.
    assert!(buf[..3 * MAX_PLAINTEXT] == pattern(100_000, 5)[..3 * MAX_PLAINTEXT]);
    let e = rd.read(&mut buf).await.expect_err("still failed");
    assert_eq!(record_error(&e), Some(RecordError::Decrypt));
    server.await.expect("server");
}

#[tokio::test]
async fn an_oversized_record_is_refused() {
    let (mut rd, _wr, server) = session(|mut server| async move {
        let len = u16::try_from(MAX_CIPHERTEXT + 1).expect("u16");
        let [hi, lo] = len.to_be_bytes();
        server.io.write_all(&[CONTENT_APPLICATION_DATA, 3, 3, hi, lo]).await.expect("socket write");
    })
    .await;
    let e = rd.read(&mut [0u8; 16]).await.expect_err("an oversized record");
    assert_eq!(record_error(&e), Some(RecordError::Oversized(MAX_CIPHERTEXT + 1)));
    server.await.expect("server");
}

#[tokio::test]
async fn an_end_without_close_notify_is_truncation() {
    let (mut rd, _wr, server) = session(|mut server| async move {
        server.send(b"partial").await;
        server.io.shutdown().await.expect("shutdown");
    })
    .await;
    let mut buf = [0u8; 7];
    rd.read_exact(&mut buf).await.expect("the data before the end");
    assert_eq!(&buf, b"partial");
    let e = rd.read(&mut buf).await.expect_err("no close_notify");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(record_error(&e), Some(RecordError::Truncated));
    server.await.expect("server");
}

#[tokio::test]
async fn the_clients_close_notify_ends_the_servers_stream() {
    let (_rd, mut wr, server) = session(|mut server| async move {
        assert_eq!(server.recv(3).await, b"bye");
        while !server.conn.process_new_packets().expect("records open").peer_has_closed() {
            server.feed().await;
        }
    })
    .await;
    wr.write_all(b"bye").await.expect("write");
    wr.shutdown().await.expect("close_notify and shutdown");
    server.await.expect("server");
}

#[test]
fn keys_derive_as_rfc_8448_says() {
    // RFC 8448 §3 (simple 1-RTT handshake): the server's application traffic secret, and the
    // write key and IV derived from it.
    let hex = |s: &str| -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex")).collect()
    };
    let secret = hex(
        "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43",
    );
    let suite = Suite::of(rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256).expect("suite");
    let keys = Keys::new(suite, Zeroizing::new(secret), 0).expect("keys");
    assert!(keys.matches(
        &hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"),
        &hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")
    ));
    assert!(!keys.matches(&[0; 16], &hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")));
}

#[tokio::test]
async fn writes_under_backpressure_arrive_whole() {
    const LEN: usize = 8 << 20;
    let data = pattern(LEN, 3);
    let expected = data.clone();
    let (_rd, mut wr, server) = session(|mut server| async move {
        // Let the client fill the socket buffers before reading anything.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(server.recv(LEN).await == expected, "the data differs");
    })
    .await;
    let writer = tokio::spawn(async move {
        for piece in data.chunks(1 << 20) {
            wr.write_all(piece).await.expect("write");
        }
        wr.flush().await.expect("flush");
        wr
    });
    // (The send buffer is allocated once and cannot grow: bounded by its type.)
    writer.await.expect("writer");
    server.await.expect("server");
}

/// Two record layers on the two ends of a loopback TCP connection, with made-up secrets: a
/// writer whose records the other end's reader opens. `tickets`: whether the reader is a
/// client's (NewSessionTicket allowed).
async fn raw_pair(tickets: bool) -> (Writer, Reader) {
    let suite = Suite::of(rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256).expect("suite");
    let keys = |b: u8| Keys::new(suite, Zeroizing::new(vec![b; 32]), 0).expect("keys");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
    let (b, _) = listener.accept().await.expect("accept");
    let (_, wr) = split(a, keys(2), keys(1), &[], Vec::new(), true).expect("a");
    let (rd, _) = split(b, keys(1), keys(2), &[], Vec::new(), tickets).expect("b");
    (wr, rd)
}

/// Seals one record of inner type `kind` holding `body` and sends it.
async fn send_record(wr: &mut Writer, kind: u8, body: &[u8]) {
    wr.seal(kind, body).expect("sealed");
    wr.flush().await.expect("sent");
}

async fn read_error(rd: &mut Reader) -> Option<RecordError> {
    let e = rd.read(&mut [0u8; 64]).await.expect_err("refused");
    record_error(&e)
}

#[tokio::test]
async fn a_peer_may_not_send_what_tls_1_3_forbids_after_the_handshake() {
    // A ticket to the node (only servers send them).
    let (mut wr, mut rd) = raw_pair(false).await;
    send_record(&mut wr, CONTENT_HANDSHAKE, &[HANDSHAKE_NEW_SESSION_TICKET, 0, 0, 1, 0]).await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::Handshake(HANDSHAKE_NEW_SESSION_TICKET)));
    // Any other handshake message (a ClientHello).
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, CONTENT_HANDSHAKE, &[1, 0, 0, 2, 3, 3]).await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::Handshake(1)));
    // A handshake message announcing more than 64 KiB.
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, CONTENT_HANDSHAKE, &[HANDSHAKE_NEW_SESSION_TICKET, 1, 0, 0]).await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::Handshake(HANDSHAKE_NEW_SESSION_TICKET)));
    // A KeyUpdate with a request value that does not exist, or with data after it.
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 2]).await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::Handshake(HANDSHAKE_KEY_UPDATE)));
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 2, 0, 0]).await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::Handshake(HANDSHAKE_KEY_UPDATE)));
    // Application data in the middle of a handshake message.
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, CONTENT_HANDSHAKE, &[HANDSHAKE_NEW_SESSION_TICKET, 0, 0, 9]).await;
    send_record(&mut wr, CONTENT_APPLICATION_DATA, b"data").await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::UnexpectedType(CONTENT_APPLICATION_DATA)));
    // A record of padding only, an unknown content type, an alert other than close_notify.
    let (mut wr, mut rd) = raw_pair(true).await;
    wr.seal(0, &[0; 8]).expect("sealed");
    wr.flush().await.expect("sent");
    assert_eq!(read_error(&mut rd).await, Some(RecordError::UnexpectedType(0)));
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, 99, b"?").await;
    assert_eq!(read_error(&mut rd).await, Some(RecordError::UnexpectedType(99)));
    let (mut wr, mut rd) = raw_pair(true).await;
    send_record(&mut wr, CONTENT_ALERT, &[2, 40]).await;
    let e = rd.read(&mut [0u8; 8]).await.expect_err("a fatal alert");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(record_error(&e), Some(RecordError::Alert(40)));
}

#[tokio::test]
async fn key_updates_are_followed_but_not_without_end() {
    let (mut wr, mut rd) = raw_pair(true).await;
    // KeyUpdates between data: the reader moves on with the writer, as often as it comes.
    for round in 0..40u8 {
        wr.seal(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]).expect("sealed");
        wr.keys.update().expect("new keys");
        send_record(&mut wr, CONTENT_APPLICATION_DATA, &[round]).await;
        let mut got = [0u8; 1];
        rd.read_exact(&mut got).await.expect("data under the new keys");
        assert_eq!(got, [round]);
    }
    // 33 in a row without data are refused.
    for _ in 0..=MAX_KEY_UPDATES_IN_A_ROW {
        wr.seal(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]).expect("sealed");
        wr.keys.update().expect("new keys");
    }
    wr.flush().await.expect("sent");
    assert_eq!(read_error(&mut rd).await, Some(RecordError::Handshake(HANDSHAKE_KEY_UPDATE)));
}
