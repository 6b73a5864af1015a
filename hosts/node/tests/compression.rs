//! LZ4-compressed payloads through a live node (capability LZ4, header flag COMPRESSED):
//! round trips with the client and with frames made by hand, over the shared host arena and a
//! backend seen only through `GpuBackend`, and hostile compressed frames (a lying size,
//! truncated data, a bomb, a size past the cap or past the buffer), each answered with a typed
//! ERROR, the session going on, the target untouched and nothing reserved or left behind.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{backend, boxed_backend, config, error_code, pattern, read_raw_frame, wait_idle, within};
use rela_client::{Client, ClientError, ClientOptions, FastCrc32};
use rela_core::config::HEADER_LEN;
use rela_core::session::SessionConfig;
use rela_core::wire::compress::Compressed;
use rela_core::wire::msg::{Alloc, Allocated, Caps, Hello, Message, Read};
use rela_core::wire::{ErrorCode, Flags, HeaderRepr, Kind, encode_frame};
use rela_node::{Node, NodeBackend, NodeConfig, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

fn node_config(models: Option<&Path>) -> NodeConfig {
    let mut cfg = NodeConfig { discovery: None, models: models.map(Path::to_path_buf), ..config() };
    cfg.session = SessionConfig {
        max_payload: MIB as u32,
        quota: 16 * MIB as u64,
        lz4: true,
        ..SessionConfig::default()
    };
    cfg
}

async fn start_with(backend: impl Into<NodeBackend>, models: Option<&Path>) -> NodeHandle {
    within(Node::start(node_config(models), backend)).await.expect("node starts")
}

/// Half zeros, half a short repeating text: what compresses well.
fn compressible(len: usize) -> Vec<u8> {
    let text = b"the quick brown fox jumps over the lazy dog; ";
    (0..len).map(|i| if (i / 4096) % 2 == 0 { 0 } else { text[i % text.len()] }).collect()
}

/// The data part of a compressed payload: `raw_len`, then the LZ4 block of `data`.
fn lz4(prefix: &[u8], raw_len: u32, data: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(&raw_len.to_le_bytes());
    v.extend_from_slice(&lz4_flex::block::compress(data));
    v
}

fn write_prefix(handle: u32, offset: u64) -> Vec<u8> {
    let mut v = handle.to_le_bytes().to_vec();
    v.extend_from_slice(&offset.to_le_bytes());
    v
}

fn enc<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut v).expect("encode");
    v.truncate(n);
    v
}

/// A session driven frame by frame.
struct Raw {
    s: TcpStream,
    seq: u16,
}

impl Raw {
    async fn open(addr: SocketAddr, caps: Caps) -> (Self, Caps) {
        let s = within(TcpStream::connect(addr)).await.expect("connect");
        let mut r = Self { s, seq: 0 };
        let (h, p) =
            r.call(Kind::HELLO, Flags::NONE, &enc(&Hello { min_version: 1, max_version: 1, caps })).await;
        assert_eq!(h.kind, Kind::HELLO);
        let welcome = rela_core::wire::msg::Welcome::parse(&p).expect("welcome");
        (r, welcome.caps)
    }

    async fn call(&mut self, kind: Kind, flags: Flags, payload: &[u8]) -> (HeaderRepr, Vec<u8>) {
        self.seq += 1;
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        let frame = encode_frame::<FastCrc32>(&mut buf, kind, flags, self.seq, payload).expect("frame");
        within(self.s.write_all(frame)).await.expect("send");
        let (h, p) = read_raw_frame(&mut self.s).await.expect("an answer");
        assert_eq!(h.seq, self.seq, "answer to another request");
        (h, p)
    }

    async fn ok(&mut self, kind: Kind, flags: Flags, payload: &[u8]) -> Vec<u8> {
        let (h, p) = self.call(kind, flags, payload).await;
        assert_eq!(
            h.kind,
            kind,
            "{kind:?} refused: {:?}",
            (h.kind == Kind::ERROR).then(|| error_code(&h, &p))
        );
        p
    }

    async fn refused(&mut self, kind: Kind, flags: Flags, payload: &[u8], code: ErrorCode, what: &str) {
        let (h, p) = self.call(kind, flags, payload).await;
        assert_eq!(h.kind, Kind::ERROR, "{what}: not refused");
        assert_eq!(error_code(&h, &p), code, "{what}");
        // The session goes on.
        assert_eq!(self.call(Kind::PING, Flags::NONE, b"still here").await.1, b"still here", "{what}");
    }

    async fn alloc(&mut self, size: u64) -> u32 {
        let p = self.ok(Kind::ALLOC, Flags::NONE, &enc(&Alloc { size })).await;
        Allocated::parse(&p).expect("allocated").handle
    }

    async fn read(&mut self, handle: u32, offset: u64, len: u32) -> Vec<u8> {
        self.ok(Kind::READ, Flags::NONE, &enc(&Read { handle, offset, len })).await
    }
}

/// Compressible and random data through the client both ways, with compression on, against
/// both kinds of backend; with compression off the same client interoperates too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_round_trips_through_both_backends() {
    let backends: [(&str, NodeBackend); 2] =
        [("shared host arena", backend(64 * MIB)), ("GpuBackend only", boxed_backend(64 * MIB).into())];
    for (name, b) in backends {
        let node = start_with(b, None).await;
        for compress in [true, false] {
            let options = ClientOptions { compress, ..ClientOptions::default() };
            let mut c =
                within(Client::connect_with(node.local_addr(), None, options)).await.expect("connect");
            assert_eq!(c.compressing(), compress, "{name}");
            for (what, data) in
                [("compressible", compressible(3 * MIB + 77)), ("random", pattern(7, 2 * MIB + 5))]
            {
                let h = c.alloc(data.len() as u64 + 100).await.expect("alloc");
                within(c.write(h, 100, &data)).await.expect("write");
                let back = within(c.read(h, 100, data.len() as u64)).await.expect("read");
                assert!(back == data, "{name}, {what}, compress {compress}: data differs");
                // Pipelined with its ALLOC: the compressed WRITE waits for the buffer to exist.
                let small = compressible(8192);
                let h2 = c.alloc(8192).await.expect("alloc");
                within(c.write(h2, 0, &small)).await.expect("write");
                assert_eq!(within(c.read(h2, 0, 8192)).await.expect("read"), small);
                c.free(h).await.expect("free");
                c.free(h2).await.expect("free");
            }
            c.close().await.expect("bye");
        }
        wait_idle(&node).await;
        node.shutdown().await.expect("shutdown");
    }
}

/// Frames made by hand: a compressed WRITE lands as its plain data, a READ asked for
/// compressed comes back compressed (CRC over the bytes on the wire) when that pays and plain
/// when it does not, and a READ not asked for compressed comes back plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_round_trips() {
    let node = start_with(backend(16 * MIB), None).await;
    let (mut r, caps) = Raw::open(node.local_addr(), Caps::LZ4).await;
    assert!(caps.contains(Caps::LZ4), "the node offers LZ4");
    let data = compressible(256 * 1024);
    let h = r.alloc(data.len() as u64 + 16).await;
    r.ok(Kind::WRITE, Flags::COMPRESSED, &lz4(&write_prefix(h, 16), data.len() as u32, &data)).await;
    assert_eq!(r.read(h, 16, data.len() as u32).await, data);
    // Small enough to travel inline in the node.
    r.ok(Kind::WRITE, Flags::COMPRESSED, &lz4(&write_prefix(h, 0), 16, &[9u8; 16])).await;
    assert_eq!(r.read(h, 0, 16).await, [9u8; 16]);

    let read = enc(&Read { handle: h, offset: 16, len: data.len() as u32 });
    let (hd, p) = r.call(Kind::READ, Flags::COMPRESSED, &read).await;
    assert_eq!(hd.flags, Flags::RESPONSE.union(Flags::COMPRESSED));
    assert!(p.len() < data.len() / 4, "{} bytes on the wire", p.len());
    let c = Compressed::parse(Kind::READ, true, &p, MIB as u32).expect("layout");
    let mut back = vec![0u8; c.plain_len()];
    c.inflate(&mut back).expect("decodes");
    assert_eq!(back, data);

    let noise = pattern(3, 128 * 1024);
    let n = r.alloc(noise.len() as u64).await;
    r.ok(Kind::WRITE, Flags::NONE, &[write_prefix(n, 0), noise.clone()].concat()).await;
    let (hd, p) =
        r.call(Kind::READ, Flags::COMPRESSED, &enc(&Read { handle: n, offset: 0, len: 131072 })).await;
    assert_eq!(hd.flags, Flags::RESPONSE, "random data comes back plain");
    assert_eq!(p, noise);
    drop(r);
    wait_idle(&node).await;
    node.shutdown().await.expect("shutdown");
}

/// Hostile compressed frames: each gets its typed ERROR, the session goes on, the target
/// buffer keeps its bytes, and the bombs make the node reserve nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_compressed_frames_are_refused() {
    for (name, b) in
        [("shared host arena", backend(16 * MIB)), ("GpuBackend only", boxed_backend(16 * MIB).into())]
    {
        let node = start_with(b, None).await;
        let (mut r, _) = Raw::open(node.local_addr(), Caps::LZ4).await;
        let h = r.alloc(64 * 1024).await;
        let before = pattern(11, 64 * 1024);
        r.ok(Kind::WRITE, Flags::NONE, &[write_prefix(h, 0), before.clone()].concat()).await;
        let zeros = vec![0u8; 60_000];

        // Bombs: a few bytes that claim 16 MiB, past the cap; a size within the cap but past
        // the buffer; u32::MAX. Refused from the size alone: nothing reserved.
        let tiny = |raw_len: u32| lz4(&write_prefix(h, 0), raw_len, &[0u8; 32]);
        let peak = node.peak_buffer_bytes();
        let cases: [(&str, Vec<u8>, ErrorCode); 4] = [
            ("16 MiB bomb past the cap", tiny(16 * MIB as u32), ErrorCode::INVALID_ARGUMENT),
            ("u32::MAX bomb", tiny(u32::MAX), ErrorCode::INVALID_ARGUMENT),
            ("just past the cap", tiny(MIB as u32 - 11), ErrorCode::INVALID_ARGUMENT),
            ("within the cap, past the buffer", tiny(64 * 1024 + 1), ErrorCode::OUT_OF_BOUNDS),
        ];
        for (what, payload, code) in cases {
            r.refused(Kind::WRITE, Flags::COMPRESSED, &payload, code, &format!("{name}: {what}")).await;
        }
        assert_eq!(node.peak_buffer_bytes(), peak, "{name}: a bomb made the node reserve memory");

        let good = lz4(&write_prefix(h, 0), 60_000, &zeros);
        let lying_small = [&good[..12], &59_999u32.to_le_bytes(), &good[16..]].concat();
        let lying_large = [&good[..12], &60_001u32.to_le_bytes(), &good[16..]].concat();
        let truncated = &good[..good.len() - 5];
        let mut corrupt = good.clone();
        let last = corrupt.len() - 1;
        corrupt[16..last].fill(0xff);
        let cases: [(&str, &[u8], ErrorCode); 8] = [
            ("a size smaller than the data", &lying_small, ErrorCode::MALFORMED),
            ("a size larger than the data", &lying_large, ErrorCode::MALFORMED),
            ("a truncated block", truncated, ErrorCode::MALFORMED),
            ("a corrupt block", &corrupt, ErrorCode::MALFORMED),
            ("no raw_len", &good[..14], ErrorCode::MALFORMED),
            ("raw_len 0", &lz4(&write_prefix(h, 0), 0, &[]), ErrorCode::MALFORMED),
            ("no such buffer", &lz4(&write_prefix(h ^ 1, 0), 60_000, &zeros), ErrorCode::NO_SUCH_BUFFER),
            (
                "an offset past the end",
                &lz4(&write_prefix(h, u64::MAX - 8), 60_000, &zeros),
                ErrorCode::OUT_OF_BOUNDS,
            ),
        ];
        for (what, payload, code) in cases {
            r.refused(Kind::WRITE, Flags::COMPRESSED, payload, code, &format!("{name}: {what}")).await;
        }
        // Kinds that carry no compressed data.
        r.refused(Kind::ALLOC, Flags::COMPRESSED, &enc(&Alloc { size: 64 }), ErrorCode::UNSUPPORTED, "ALLOC")
            .await;
        r.refused(Kind::PING, Flags::COMPRESSED, b"x", ErrorCode::UNSUPPORTED, "PING").await;
        assert_eq!(r.read(h, 0, 64 * 1024).await, before, "{name}: a refused frame changed the buffer");

        // Without the capability negotiated, the flag is UNSUPPORTED as ever.
        let (mut plain, _) = Raw::open(node.local_addr(), Caps(0)).await;
        let p = plain.alloc(64).await;
        let payload = lz4(&write_prefix(p, 0), 64, &[1u8; 64]);
        plain
            .refused(Kind::WRITE, Flags::COMPRESSED, &payload, ErrorCode::UNSUPPORTED, "not negotiated")
            .await;
        plain
            .refused(
                Kind::READ,
                Flags::COMPRESSED,
                &enc(&Read { handle: p, offset: 0, len: 8 }),
                ErrorCode::UNSUPPORTED,
                "READ not negotiated",
            )
            .await;
        drop((r, plain));
        wait_idle(&node).await;
        node.trim_buffers();
        assert_eq!(node.buffer_bytes(), 0, "{name}: frame buffers left behind");
        node.shutdown().await.expect("shutdown");
    }
}

/// The repository directory holding `all-MiniLM-L6-v2` (whose config and tokenizer an upload
/// names as its base), if present.
fn repository() -> Option<std::path::PathBuf> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    if ["tokenizer.json", "config.json"].iter().all(|f| model.join(f).is_file()) {
        return model.parent().map(Path::to_path_buf);
    }
    eprintln!("*** SKIPPED compressed MODEL_CHUNK: no model files in {} ***", model.display());
    None
}

/// MODEL_CHUNK data compressed: accepted chunks count their plain bytes, hostile ones are
/// refused with the upload left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_model_chunks() {
    let Some(repo) = repository() else { return };
    let node = start_with(backend(16 * MIB), Some(&repo)).await;
    let (mut r, caps) = Raw::open(node.local_addr(), Caps(Caps::LZ4.0 | Caps::MODELS.0)).await;
    assert!(caps.contains(Caps::MODELS) && caps.contains(Caps::LZ4));
    let size = 100_000u64;
    let mut upload = size.to_le_bytes().to_vec();
    upload.push(16);
    upload.extend_from_slice(b"all-MiniLM-L6-v2");
    r.ok(Kind::MODEL_UPLOAD, Flags::NONE, &upload).await;
    let zeros = vec![0u8; 60_000];
    let refusals: [(&str, Vec<u8>, ErrorCode); 3] = [
        (
            "past the upload's size",
            lz4(&0u64.to_le_bytes(), 100_001, &vec![0u8; 100_001]),
            ErrorCode::OUT_OF_BOUNDS,
        ),
        ("a gap", lz4(&5u64.to_le_bytes(), 60_000, &zeros), ErrorCode::INVALID_ARGUMENT),
        ("a lying size", lz4(&0u64.to_le_bytes(), 60_001, &zeros), ErrorCode::MALFORMED),
    ];
    for (what, payload, code) in refusals {
        r.refused(Kind::MODEL_CHUNK, Flags::COMPRESSED, &payload, code, what).await;
    }
    r.ok(Kind::MODEL_CHUNK, Flags::COMPRESSED, &lz4(&0u64.to_le_bytes(), 60_000, &zeros)).await;
    // The next chunk starts where the plain bytes ended.
    let rest = vec![0u8; 40_000];
    r.ok(Kind::MODEL_CHUNK, Flags::COMPRESSED, &lz4(&60_000u64.to_le_bytes(), 40_000, &rest)).await;
    // All 100,000 bytes are in: the commit parses them (zeros are no safetensors file).
    r.refused(Kind::MODEL_COMMIT, Flags::NONE, &[], ErrorCode::INVALID_INPUT, "zeros as weights").await;
    drop(r);
    wait_idle(&node).await;
    node.shutdown().await.expect("shutdown");
}

/// Frames of `chunk` bytes that alternate compressible and random data, then a short random
/// tail: with LZ4 on, the client sends every other frame compressed and the others plain.
/// Returns the data and how many of its bytes are random.
fn mixed_frames(chunk: usize, frames: usize) -> (Vec<u8>, usize) {
    let mut data = Vec::with_capacity(chunk * frames + 999);
    let mut random = 0;
    for i in 0..frames {
        if i % 2 == 0 {
            data.extend(compressible(chunk));
        } else {
            data.extend(pattern(i as u32, chunk));
            random += chunk;
        }
    }
    data.extend(pattern(99, 999));
    (data, random + 999)
}

/// A proxy to `node` that counts the bytes clients send through it (the frames as they are
/// on the wire, compressed or not; STATS counts data once decompressed).
async fn counting_proxy(node: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
    let addr = listener.local_addr().expect("proxy addr");
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(node).await else { return };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n @ 1..) = cr.read(&mut buf).await {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = uw.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
                let _ = cw.shutdown().await;
            });
        }
    });
    (addr, sent)
}

/// A pipelined WRITE (frames compressed on other threads while earlier ones are on the wire)
/// and a chunked model upload, of frames that alternate compressible and random data, land
/// byte for byte: the compressible frames went compressed (the node received far fewer bytes
/// than the data on the wire) and the random ones plain (it received at least those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_mixed_uploads_land_exactly() {
    let repo = repository();
    let node = start_with(backend(32 * MIB), repo.as_deref()).await;
    let (proxy, wire) = counting_proxy(node.local_addr()).await;
    let sent = || wire.load(Ordering::Relaxed);
    // A WRITE frame's data: max_payload less the handle and offset.
    let chunk = MIB - 12;
    let (data, random) = mixed_frames(chunk, 9);
    for window in [1, 8] {
        let options = ClientOptions { compress: true, window, ..ClientOptions::default() };
        let mut c = within(Client::connect_with(proxy, None, options)).await.expect("connect");
        assert!(c.compressing());
        let h = c.alloc(data.len() as u64 + 5).await.expect("alloc");
        let before = sent();
        within(c.write(h, 5, &data)).await.expect("write");
        // Every frame was acknowledged, so all of them went through the proxy.
        let received = sent() - before;
        assert!(received >= random as u64, "window {window}: {received} bytes received, {random} random");
        assert!(
            received < (random + (data.len() - random) / 4) as u64,
            "window {window}: {received} bytes received for {} bytes, {random} of them random",
            data.len()
        );
        let back = within(c.read(h, 5, data.len() as u64)).await.expect("read");
        assert!(back == data, "window {window}: the data came back changed");
        c.free(h).await.expect("free");
        if window == 1 && repo.is_some() {
            // The same data as weights: every chunk is accepted in order (a gap or a short
            // chunk would be refused), and the commit then finds no safetensors file in it.
            let before = sent();
            match within(c.model_upload("all-MiniLM-L6-v2", &data, None)).await {
                Err(ClientError::Server { code, request, .. }) => {
                    assert_eq!((code, request), (ErrorCode::INVALID_INPUT, Kind::MODEL_COMMIT));
                }
                other => panic!("mixed bytes as weights: {other:?}"),
            }
            let received = sent() - before;
            assert!(
                received >= random as u64 && received < (random + (data.len() - random) / 4) as u64,
                "upload: {received} bytes received for {} bytes, {random} of them random",
                data.len()
            );
        }
        c.close().await.expect("bye");
    }
    wait_idle(&node).await;
    node.shutdown().await.expect("shutdown");
}

/// A node that refuses frames in the middle of a pipelined compressed WRITE: the typed error
/// comes back (no hang: every step is bounded), the frames before it landed, and the session
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_mid_pipeline_is_a_typed_error() {
    let node = start_with(backend(32 * MIB), None).await;
    let options = ClientOptions { compress: true, ..ClientOptions::default() };
    let mut c = within(Client::connect_with(node.local_addr(), None, options)).await.expect("connect");
    let chunk = MIB - 12;
    let (data, _) = mixed_frames(chunk, 7);
    // Room for two and a half frames: the third frame on is out of bounds.
    let size = (2 * chunk + chunk / 2) as u64;
    let h = c.alloc(size).await.expect("alloc");
    match within(c.write(h, 0, &data)).await {
        Err(ClientError::Server { code, request, .. }) => {
            assert_eq!((code, request), (ErrorCode::OUT_OF_BOUNDS, Kind::WRITE));
        }
        other => panic!("a WRITE past the buffer: {other:?}"),
    }
    assert!(!c.is_closed());
    let back = within(c.read(h, 0, 2 * chunk as u64)).await.expect("read");
    assert!(back == data[..2 * chunk], "the frames before the refusal did not land");
    // A refusal of every frame (the buffer is gone), then a full pipelined WRITE elsewhere.
    c.free(h).await.expect("free");
    match within(c.write(h, 0, &data)).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NO_SUCH_BUFFER),
        other => panic!("a WRITE to a freed buffer: {other:?}"),
    }
    let h = c.alloc(data.len() as u64).await.expect("alloc");
    within(c.write(h, 0, &data)).await.expect("write after the refusals");
    assert!(within(c.read(h, 0, data.len() as u64)).await.expect("read") == data);
    c.close().await.expect("bye");
    wait_idle(&node).await;
    node.shutdown().await.expect("shutdown");
}
