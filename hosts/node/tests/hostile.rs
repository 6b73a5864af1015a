//! Hostile clients against a live node on loopback.
//!
//! Every test keeps a well-behaved *witness* session alive across the attack and checks it
//! afterwards (its data intact, its calls still served), checks that the offending session got
//! a typed ERROR and/or was closed, that a fresh client still gets in, and that once every
//! session has ended the backend holds zero bytes in zero buffers.

mod common;

use common::pattern;

use std::net::SocketAddr;
use std::time::Duration;

use common::{assert_closed, config, connect_retrying, error_code, read_raw_frame, start, wait_idle, within};
use rela_client::{Client, ClientError, FastCrc32, Handle};
use rela_core::auth::AuthKey;
use rela_core::backend::{KernelId, Usage};
use rela_core::config::HEADER_LEN;
use rela_core::session::SessionConfig;
use rela_core::time::Duration as CoreDuration;
use rela_core::wire::msg::{
    Alloc, Allocated, Caps, Copy, Dispatch, ErrorMsg, Fill, Free, Hello, Message, Read, Welcome,
};
use rela_core::wire::{ErrorCode, Flags, HeaderRepr, Kind, encode_frame};
use rela_node::{NodeConfig, NodeHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;
const TOKEN: &[u8] = b"hostile-suite-token";

fn node_config() -> NodeConfig {
    NodeConfig { discovery: None, auth_backoff: Duration::from_millis(10), ..config() }
}

fn enc<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut v).expect("encode");
    v.truncate(n);
    v
}

fn write_payload(handle: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = handle.to_le_bytes().to_vec();
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn frame(kind: Kind, flags: Flags, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    encode_frame::<FastCrc32>(&mut buf, kind, flags, seq, payload).expect("frame").to_vec()
}

/// Resident set size of this process (the node runs in it), from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
    kb * 1024
}

/// A raw connection that speaks frames built by hand.
struct Raw {
    s: TcpStream,
    seq: u16,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let s = within(TcpStream::connect(addr)).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Self { s, seq: 0 }
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        within(self.s.write_all(b)).await.expect("send");
    }

    async fn recv(&mut self) -> (HeaderRepr, Vec<u8>) {
        read_raw_frame(&mut self.s).await.expect("a frame, not EOF")
    }

    async fn call(&mut self, kind: Kind, payload: &[u8]) -> (HeaderRepr, Vec<u8>) {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        self.send_bytes(&frame(kind, Flags::NONE, seq, payload)).await;
        let (h, p) = self.recv().await;
        assert_eq!(h.seq, seq, "{kind:?} answered with another seq");
        assert!(h.flags.is_response());
        (h, p)
    }

    async fn ok(&mut self, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let (h, p) = self.call(kind, payload).await;
        assert_eq!(
            h.kind,
            kind,
            "{kind:?} failed: {:?}",
            (h.kind == Kind::ERROR).then(|| error_code(&h, &p))
        );
        p
    }

    async fn err(&mut self, kind: Kind, payload: &[u8], code: ErrorCode) {
        let (h, p) = self.call(kind, payload).await;
        assert_eq!(error_code(&h, &p), code, "{kind:?} ({} payload bytes)", payload.len());
        assert_eq!(p[2], kind.0, "ERROR names the failed request's kind");
    }

    async fn hello(&mut self) -> Welcome {
        let p =
            self.ok(Kind::HELLO, &enc(&Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH })).await;
        Welcome::parse(&p).expect("WELCOME")
    }

    async fn ready(addr: SocketAddr, token: Option<&[u8]>) -> (Self, Welcome) {
        let mut r = Self::connect(addr).await;
        let w = r.hello().await;
        if w.auth_required() {
            let tag = AuthKey::new(token.expect("token")).auth_tag(&w.nonce);
            assert!(r.ok(Kind::AUTH, &tag).await.is_empty());
        }
        (r, w)
    }

    async fn alloc(&mut self, size: u64) -> u32 {
        let p = self.ok(Kind::ALLOC, &enc(&Alloc { size })).await;
        Allocated::parse(&p).expect("Allocated").handle
    }

    async fn read(&mut self, handle: u32, offset: u64, len: u32) -> Vec<u8> {
        self.ok(Kind::READ, &enc(&Read { handle, offset, len })).await
    }

    /// An unsolicited ERROR (seq 0) with `code`, then the connection closed.
    async fn fatal(&mut self, code: ErrorCode) {
        let (h, p) = self.recv().await;
        assert_eq!(error_code(&h, &p), code);
        assert_eq!(h.seq, 0, "framing and timeout errors carry seq 0");
        assert_closed(&mut self.s).await;
    }
}

/// A well-behaved session holding data, checked before and after each attack.
struct Witness {
    c: Client,
    h: Handle,
    data: Vec<u8>,
}

impl Witness {
    async fn new(addr: SocketAddr, token: Option<&[u8]>) -> Self {
        let mut c = within(Client::connect(addr, token)).await.expect("witness connects");
        let data = pattern(0xC0FFEE, 64 * 1024);
        let h = within(c.alloc(data.len() as u64)).await.expect("witness alloc");
        within(c.write(h, 0, &data)).await.expect("witness write");
        Self { c, h, data }
    }

    async fn check(&mut self) {
        within(self.c.ping()).await.expect("witness ping");
        let back = within(self.c.read(self.h, 0, self.data.len() as u64)).await.expect("witness read");
        assert!(back == self.data, "the witness's data changed");
        let t = within(self.c.alloc(4096)).await.expect("witness temp alloc");
        within(self.c.fill(t, 0, 4096, 9)).await.expect("witness fill");
        within(self.c.free(t)).await.expect("witness free");
    }

    fn usage(&self) -> Usage {
        Usage { used: self.data.len() as u64, buffers: 1 }
    }

    async fn close(self) {
        within(self.c.close()).await.expect("witness close");
    }
}

/// Polls until the backend holds exactly `want` (bounded).
async fn wait_usage(node: &NodeHandle, want: Usage) {
    let mut last = Usage::default();
    for _ in 0..400 {
        last = node.usage().await.expect("usage");
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("usage stayed {last:?}, expected {want:?}");
}

/// The end of every test: the witness is intact, a newcomer gets in, and after everyone leaves
/// the node holds nothing.
async fn finish(node: NodeHandle, mut witness: Witness, token: Option<&[u8]>) {
    witness.check().await;
    let mut fresh = connect_retrying(node.local_addr(), token).await.expect("a newcomer still gets in");
    within(fresh.ping()).await.expect("newcomer ping");
    within(fresh.close()).await.expect("newcomer close");
    wait_usage(&node, witness.usage()).await;
    witness.close().await;
    let usage = wait_idle(&node).await;
    assert_eq!(usage, Usage::default());
    let last = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(last, Usage::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_magic_is_refused_and_closed() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let mut w = Witness::new(addr, None).await;
    // Before HELLO.
    let mut r = Raw::connect(addr).await;
    let mut f =
        frame(Kind::HELLO, Flags::NONE, 1, &enc(&Hello { min_version: 1, max_version: 1, caps: Caps(0) }));
    f[..4].copy_from_slice(b"ALER");
    r.send_bytes(&f).await;
    r.fatal(ErrorCode::BAD_FRAME).await;
    // On a ready session holding a buffer: the buffer is released.
    let (mut r, _) = Raw::ready(addr, None).await;
    r.alloc(4096).await;
    r.send_bytes(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    r.fatal(ErrorCode::BAD_FRAME).await;
    w.check().await;
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_is_refused_and_closed() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let mut w = Witness::new(addr, None).await;
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(4096).await;
    let mut f = frame(Kind::WRITE, Flags::NONE, 7, &write_payload(h, 0, &[0xAA; 100]));
    let last = f.len() - 1;
    f[last] ^= 0xFF;
    r.send_bytes(&f).await;
    r.fatal(ErrorCode::BAD_FRAME).await;
    w.check().await;
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_header_then_close() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    for cut in [1usize, 7, 15] {
        let (mut r, _) = Raw::ready(addr, None).await;
        r.alloc(8192).await;
        let f = frame(Kind::PING, Flags::NONE, 9, b"never finished");
        r.send_bytes(&f[..cut]).await;
        drop(r);
        // The dropped session's buffer is released; the witness's stays.
        wait_usage(&node, w.usage()).await;
    }
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_payload_then_close() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    for (announced, sent) in [(1000usize, 0usize), (1000, 10), (512 * 1024, 300 * 1024)] {
        let (mut r, _) = Raw::ready(addr, None).await;
        let h = r.alloc(MIB as u64).await;
        let f = frame(Kind::WRITE, Flags::NONE, 9, &write_payload(h, 0, &vec![0x5A; announced - 12]));
        r.send_bytes(&f[..HEADER_LEN + sent]).await;
        // Half-close first (the node sees EOF inside the payload), then drop.
        within(r.s.shutdown()).await.expect("shutdown");
        drop(r);
        wait_usage(&node, w.usage()).await;
    }
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_0xffffffff_allocates_nothing() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let mut w = Witness::new(addr, None).await;
    let before = rss_bytes();
    for round in 0..32u16 {
        let mut r = Raw::connect(addr).await;
        if round % 2 == 1 {
            r.hello().await;
        }
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(b"RELA");
        h[4] = if round % 4 < 2 { Kind::WRITE.0 } else { Kind::PING.0 };
        h[6..8].copy_from_slice(&round.to_le_bytes());
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        r.send_bytes(&h).await;
        // A few payload bytes follow; the node must not wait for (or reserve) the rest.
        r.send_bytes(&[0u8; 64]).await;
        r.fatal(ErrorCode::PAYLOAD_TOO_LARGE).await;
    }
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    eprintln!("RSS before {before} B, after 32 oversized headers {after} B (growth {growth} B)");
    assert!(growth < 64 * MIB as u64, "RSS grew by {growth} bytes");
    w.check().await;
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_get_typed_errors() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let (mut r, _) = Raw::ready(addr, None).await;
    for k in (0u8..=255).filter(|k| Kind(*k).name().is_none()) {
        r.err(Kind(k), &pattern(u32::from(k), usize::from(k) % 50), ErrorCode::UNKNOWN_KIND).await;
    }
    // The session survived all of it.
    assert_eq!(r.ok(Kind::PING, b"alive").await, b"alive");
    drop(r);
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_before_hello_or_auth_is_wrong_state() {
    let node = start(node_config().with_token(TOKEN), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, Some(TOKEN)).await;
    let requests: Vec<(Kind, Vec<u8>)> = vec![
        (Kind::AUTH, vec![0u8; 32]),
        (Kind::PING, b"x".to_vec()),
        (Kind::DEVICE_INFO, Vec::new()),
        (Kind::STATS, Vec::new()),
        (Kind::ALLOC, enc(&Alloc { size: 4096 })),
        (Kind::FREE, enc(&Free { handle: 1 })),
        (Kind::WRITE, write_payload(1, 0, b"data")),
        (Kind::READ, enc(&Read { handle: 1, offset: 0, len: 4 })),
        (Kind::COPY, enc(&Copy { src: 1, src_offset: 0, dst: 2, dst_offset: 0, len: 4 })),
        (Kind::FILL, enc(&Fill { handle: 1, offset: 0, len: 4, value: 1 })),
        (Kind::DISPATCH, enc(&dispatch(KernelId::ADD, 1, 2, 3, 0, 0, 1, 0.0))),
    ];
    let mut r = Raw::connect(addr).await;
    for (kind, p) in &requests {
        r.err(*kind, p, ErrorCode::WRONG_STATE).await;
    }
    let w1 = r.hello().await;
    assert!(w1.auth_required());
    for (kind, p) in requests.iter().filter(|(k, _)| *k != Kind::AUTH) {
        r.err(*kind, p, ErrorCode::WRONG_STATE).await;
    }
    r.err(
        Kind::HELLO,
        &enc(&Hello { min_version: 1, max_version: 1, caps: Caps(0) }),
        ErrorCode::WRONG_STATE,
    )
    .await;
    // Nothing was allocated by any of it.
    assert_eq!(node.usage().await.expect("usage"), w.usage());
    // And the state did not move: the right AUTH still works.
    assert!(r.ok(Kind::AUTH, &AuthKey::new(TOKEN).auth_tag(&w1.nonce)).await.is_empty());
    drop(r);
    finish(node, w, Some(TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_and_closed() {
    let node = start(node_config().with_token(TOKEN), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, Some(TOKEN)).await;
    let e = within(Client::connect(addr, Some(b"hunter2"))).await.expect_err("wrong token");
    assert!(matches!(e, ClientError::AuthRejected), "{e:?}");
    drop(connect_retrying(addr, Some(TOKEN)).await.expect("in once the wait is over"));
    let mut r = Raw::connect(addr).await;
    let welcome = r.hello().await;
    r.err(Kind::AUTH, &AuthKey::new(b"guess").auth_tag(&welcome.nonce), ErrorCode::AUTH_FAILED).await;
    assert_closed(&mut r.s).await;
    finish(node, w, Some(TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replayed_from_another_session_fails() {
    let node = start(node_config().with_token(TOKEN), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, Some(TOKEN)).await;
    // Session A authenticates; its tag is captured.
    let mut a = Raw::connect(addr).await;
    let wa = a.hello().await;
    let captured = AuthKey::new(TOKEN).auth_tag(&wa.nonce);
    // Replayed in B before A uses it, and again after.
    let mut b = Raw::connect(addr).await;
    let wb = b.hello().await;
    assert_ne!(wa.nonce, wb.nonce);
    b.err(Kind::AUTH, &captured, ErrorCode::AUTH_FAILED).await;
    assert_closed(&mut b.s).await;
    assert!(a.ok(Kind::AUTH, &captured).await.is_empty(), "A's own tag works in A");
    // A's success forgot the address's failure.
    let mut c = Raw::connect(addr).await;
    c.hello().await;
    c.err(Kind::AUTH, &captured, ErrorCode::AUTH_FAILED).await;
    assert_closed(&mut c.s).await;
    // Replayed inside A once ready: out of place.
    a.err(Kind::AUTH, &captured, ErrorCode::WRONG_STATE).await;
    assert_eq!(a.ok(Kind::PING, b"a").await, b"a");
    drop(a);
    finish(node, w, Some(TOKEN)).await;
}

#[allow(clippy::too_many_arguments)]
fn dispatch(kernel: KernelId, a: u32, b: u32, out: u32, m: u32, k: u32, n: u32, alpha: f32) -> Dispatch {
    Dispatch { kernel, reserved: 0, a, b, out, m, k, n, alpha }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_another_sessions_handles_finds_nothing() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    // The victim holds three buffers with known contents.
    let (mut victim, _) = Raw::ready(addr, None).await;
    let mut victims = Vec::new();
    for i in 0..3u32 {
        let h = victim.alloc(256).await;
        let data = pattern(i + 100, 256);
        victim.ok(Kind::WRITE, &write_payload(h, 0, &data)).await;
        victims.push((h, data));
    }
    let (mut thief, _) = Raw::ready(addr, None).await;
    let own = thief.alloc(256).await;
    let mut guesses: Vec<u32> = victims.iter().map(|(h, _)| *h).collect();
    guesses.push(w.h.raw());
    let mut x = 0x1234_5678u32;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        guesses.push(x);
    }
    guesses.extend([0, 1, 2, u32::MAX, own.wrapping_add(0x9E37_79B9), own.wrapping_sub(0x9E37_79B9)]);
    guesses.retain(|g| *g != own);
    for g in guesses {
        let attempts: Vec<(Kind, Vec<u8>)> = vec![
            (Kind::READ, enc(&Read { handle: g, offset: 0, len: 16 })),
            (Kind::WRITE, write_payload(g, 0, b"overwritten!")),
            (Kind::FILL, enc(&Fill { handle: g, offset: 0, len: 16, value: 0 })),
            (Kind::COPY, enc(&Copy { src: g, src_offset: 0, dst: own, dst_offset: 0, len: 16 })),
            (Kind::COPY, enc(&Copy { src: own, src_offset: 0, dst: g, dst_offset: 0, len: 16 })),
            (Kind::DISPATCH, enc(&dispatch(KernelId::ADD, g, g, own, 0, 0, 4, 0.0))),
            (Kind::DISPATCH, enc(&dispatch(KernelId::SCALE, own, 0, g, 0, 0, 4, 2.0))),
            (Kind::FREE, enc(&Free { handle: g })),
        ];
        for (kind, p) in attempts {
            r_err(&mut thief, kind, &p, ErrorCode::NO_SUCH_BUFFER, g).await;
        }
    }
    assert!(thief.read(own, 0, 256).await.iter().all(|b| *b == 0), "the thief's buffer got foreign bytes");
    for (h, data) in &victims {
        assert_eq!(&victim.read(*h, 0, 256).await, data, "the victim's data changed");
    }
    drop((victim, thief));
    finish(node, w, None).await;
}

async fn r_err(r: &mut Raw, kind: Kind, p: &[u8], code: ErrorCode, handle: u32) {
    let (h, payload) = r.call(kind, p).await;
    assert_eq!(error_code(&h, &payload), code, "{kind:?} on guessed handle {handle:#x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapping_ranges_and_reads_past_the_end() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(64).await;
    let g = r.alloc(64).await;
    let o = r.alloc(64).await;
    let m = u64::MAX;
    let attacks: Vec<(Kind, Vec<u8>)> = vec![
        (Kind::WRITE, write_payload(h, m - 3, &[1; 8])),
        (Kind::WRITE, write_payload(h, m, &[1])),
        (Kind::WRITE, write_payload(h, 1 << 63, &[1; 4])),
        (Kind::WRITE, write_payload(h, 57, &[1; 8])),
        (Kind::READ, enc(&Read { handle: h, offset: m, len: 2 })),
        (Kind::READ, enc(&Read { handle: h, offset: m - 1, len: 1 << 20 })),
        (Kind::READ, enc(&Read { handle: h, offset: 1, len: 64 })),
        (Kind::READ, enc(&Read { handle: h, offset: 65, len: 0 })),
        (Kind::FILL, enc(&Fill { handle: h, offset: 2, len: m - 1, value: 3 })),
        (Kind::FILL, enc(&Fill { handle: h, offset: m, len: 1, value: 3 })),
        (Kind::COPY, enc(&Copy { src: g, src_offset: m - 7, dst: h, dst_offset: 0, len: 16 })),
        (Kind::COPY, enc(&Copy { src: g, src_offset: 0, dst: h, dst_offset: m - 7, len: 16 })),
        (Kind::COPY, enc(&Copy { src: g, src_offset: 8, dst: h, dst_offset: 8, len: m - 7 })),
        (Kind::DISPATCH, enc(&dispatch(KernelId::MATMUL, h, g, o, 0x4000_0000, 4, 4, 0.0))),
        (Kind::DISPATCH, enc(&dispatch(KernelId::ADD, h, g, o, 0, 0, u32::MAX, 0.0))),
    ];
    for (kind, p) in attacks {
        let (hd, payload) = r.call(kind, &p).await;
        assert_eq!(error_code(&hd, &payload), ErrorCode::OUT_OF_BOUNDS, "{kind:?}");
    }
    for b in [h, g, o] {
        assert!(r.read(b, 0, 64).await.iter().all(|x| *x == 0), "a refused request wrote");
    }
    assert_eq!(r.ok(Kind::PING, b"ok").await, b"ok");
    drop(r);
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_exhausting_its_quota_does_not_starve_another() {
    let mut cfg = node_config();
    cfg.session = SessionConfig { quota: MIB as u64, ..SessionConfig::default() };
    // Room for the witness and two full quotas, not three.
    let node = start(cfg, 2 * MIB + 512 * 1024).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let mut hog = within(Client::connect(addr, None)).await.expect("hog");
    for _ in 0..4 {
        within(hog.alloc(256 * 1024)).await.expect("hog alloc within quota");
    }
    for size in [1u64, 4096, MIB as u64, u64::MAX] {
        let e = within(hog.alloc(size)).await.expect_err("over quota");
        assert_eq!(e.code(), Some(ErrorCode::QUOTA_EXCEEDED), "{e:?}");
    }
    within(hog.ping()).await.expect("the hog's session stays usable");
    let mut other = within(Client::connect(addr, None)).await.expect("other");
    let h = within(other.alloc(MIB as u64 / 2)).await.expect("another session still allocates");
    within(other.write(h, 0, &[1u8; 1024])).await.expect("write");
    // The device, not the quota, is what runs out next: a third full quota does not fit.
    let mut third = within(Client::connect(addr, None)).await.expect("third");
    let mut got = 0u64;
    let mut refused = None;
    for _ in 0..8 {
        match within(third.alloc(256 * 1024)).await {
            Ok(_) => got += 256 * 1024,
            Err(e) => {
                refused = e.code();
                break;
            }
        }
    }
    assert_eq!(refused, Some(ErrorCode::OUT_OF_MEMORY), "after {got} bytes");
    within(third.ping()).await.expect("usable after OUT_OF_MEMORY");
    drop((hog, third));
    within(other.close()).await.expect("close");
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_session_cap_extra_connections_get_busy() {
    let cfg = NodeConfig { max_sessions: 4, ..node_config() };
    let node = start(cfg, 8 * MIB).await;
    let addr = node.local_addr();
    let mut w = Witness::new(addr, None).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = within(Client::connect(addr, None)).await.expect("within the cap");
        within(c.alloc(4096)).await.expect("alloc");
        others.push(c);
    }
    for _ in 0..6 {
        let mut r = Raw::connect(addr).await;
        r.fatal(ErrorCode::BUSY).await;
    }
    let e = within(Client::connect(addr, None)).await.expect_err("past the cap");
    assert_eq!(e.code(), Some(ErrorCode::BUSY), "{e:?}");
    // Everyone inside carries on.
    w.check().await;
    for c in &mut others {
        within(c.ping()).await.expect("existing sessions keep working");
    }
    // A slot frees up when one leaves.
    let leaving = others.pop().expect("one");
    within(leaving.close()).await.expect("close");
    let mut joined = None;
    for _ in 0..200 {
        match within(Client::connect(addr, None)).await {
            Ok(c) => {
                joined = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::BUSY), "{e:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let mut joined = joined.expect("a freed slot is reused");
    within(joined.ping()).await.expect("ping");
    drop(joined);
    drop(others);
    // Wait for the slots to free before the newcomer in `finish`.
    for _ in 0..200 {
        if node.sessions() <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_header_is_cut_by_the_handshake_timeout() {
    let mut cfg = node_config();
    cfg.session.handshake_timeout = CoreDuration::from_secs(2);
    let node = start(cfg, 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let s = within(TcpStream::connect(addr)).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let hello =
        frame(Kind::HELLO, Flags::NONE, 1, &enc(&Hello { min_version: 1, max_version: 1, caps: Caps(0) }));
    // One byte per second: the whole HELLO would take 24 s.
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        for b in hello {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut header))
        .await
        .expect("the node answered within 10 s")
        .expect("an ERROR frame");
    let h = HeaderRepr::parse_bytes(&header, u32::MAX).expect("header");
    let mut payload = vec![0u8; h.len as usize];
    within(rd.read_exact(&mut payload)).await.expect("payload");
    assert_eq!(error_code(&h, &payload), ErrorCode::TIMEOUT);
    assert_eq!(h.seq, 0);
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut rest)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    trickle.abort();
    let _ = trickle.await;
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_payload_is_cut_by_the_idle_timeout() {
    let mut cfg = node_config();
    cfg.session.idle_timeout = CoreDuration::from_secs(2);
    let node = start(cfg, 8 * MIB).await;
    let addr = node.local_addr();
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(4096).await;
    let f = frame(Kind::WRITE, Flags::NONE, 2, &write_payload(h, 0, &[7u8; 1000]));
    let (mut rd, mut wr) = r.s.into_split();
    let trickle = tokio::spawn(async move {
        for b in f.iter().take(40) {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut header))
        .await
        .expect("the node answered within 10 s")
        .expect("an ERROR frame");
    let hd = HeaderRepr::parse_bytes(&header, u32::MAX).expect("header");
    let mut payload = vec![0u8; hd.len as usize];
    within(rd.read_exact(&mut payload)).await.expect("payload");
    assert_eq!(error_code(&hd, &payload), ErrorCode::TIMEOUT);
    trickle.abort();
    let _ = trickle.await;
    // The trickler's buffer is gone; with a 2 s idle timeout a witness would idle out too, so
    // the newcomer check runs here instead.
    wait_idle(&node).await;
    let mut fresh = within(Client::connect(addr, None)).await.expect("newcomer");
    let b = within(fresh.alloc(4096)).await.expect("alloc");
    within(fresh.write(b, 0, &[1; 4096])).await.expect("write");
    within(fresh.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_on_a_large_write_closes_and_leaves_nothing() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(MIB as u64).await;
    let before = node.direct_writes();
    // Large enough that the node reads the data straight into the buffer, then finds the CRC
    // wrong: the session closes, and the buffer (with the bytes already in it) is zeroed.
    let mut f = frame(Kind::WRITE, Flags::NONE, 7, &write_payload(h, 0, &pattern(3, 600 * 1024)));
    let last = f.len() - 1;
    f[last] ^= 0xFF;
    r.send_bytes(&f).await;
    r.fatal(ErrorCode::BAD_FRAME).await;
    wait_usage(&node, w.usage()).await;
    assert_eq!(node.direct_writes(), before, "a WRITE with a bad CRC is not counted");
    // The next session to get that memory finds zeroes.
    let (mut fresh, _) = Raw::ready(addr, None).await;
    let h = fresh.alloc(MIB as u64).await;
    let back = fresh.read(h, 0, MIB as u32).await;
    assert!(back.iter().all(|&b| b == 0), "bytes of the rejected WRITE survived");
    drop(fresh);
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_the_session_refuses_get_their_errors_and_the_session_goes_on() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(64 * 1024).await;
    let data = pattern(5, 64 * 1024);
    // Refused before any data is placed: the node reads them the usual way and answers.
    r.err(Kind::WRITE, &write_payload(h ^ 0x5A5A, 0, &data), ErrorCode::NO_SUCH_BUFFER).await;
    r.err(Kind::WRITE, &write_payload(h, 1, &data), ErrorCode::OUT_OF_BOUNDS).await;
    r.err(Kind::WRITE, &write_payload(h, u64::MAX - 8, &data[..4096]), ErrorCode::OUT_OF_BOUNDS).await;
    assert!(r.read(h, 0, 4096).await.iter().all(|&b| b == 0), "a refused WRITE changed the buffer");
    // A good one goes straight into the buffer.
    let before = node.direct_writes();
    assert!(r.ok(Kind::WRITE, &write_payload(h, 0, &data)).await.is_empty());
    assert_eq!(node.direct_writes(), before + 1);
    assert_eq!(r.read(h, 0, data.len() as u32).await, data);
    drop(r);
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_stalled_large_write_finishes_and_frees_everything() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(MIB as u64).await;
    let f = frame(Kind::WRITE, Flags::NONE, 3, &write_payload(h, 0, &pattern(9, 512 * 1024)));
    // Header, prefix and part of the data, then nothing: the node is waiting inside the WRITE.
    r.send_bytes(&f[..HEADER_LEN + 12 + 100 * 1024]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(last, Usage::default(), "the stalled session's buffer was freed");
    r.fatal(ErrorCode::SHUTTING_DOWN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_behind_the_trait_takes_writes_through_staging() {
    let node = within(rela_node::Node::start(node_config(), common::boxed_backend(8 * MIB)))
        .await
        .expect("node starts");
    let addr = node.local_addr();
    let mut c = within(Client::connect(addr, None)).await.expect("connect");
    let data = pattern(11, 3 * MIB);
    let h = within(c.alloc(data.len() as u64)).await.expect("alloc");
    within(c.write(h, 0, &data)).await.expect("write");
    assert_eq!(within(c.read(h, 0, data.len() as u64)).await.expect("read"), data);
    assert_eq!(node.direct_writes(), 0);
    within(c.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_and_writes_of_one_buffer_keep_their_order() {
    let node = start(node_config(), 16 * MIB).await;
    let addr = node.local_addr();
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(2 * MIB as u64).await;
    let old = pattern(21, 2 * MIB);
    let new = pattern(22, 2 * MIB);
    assert!(r.ok(Kind::WRITE, &write_payload(h, 0, &old)).await.is_empty());
    // READ, WRITE, READ, FILL, READ of the same bytes in one burst, before any answer is read:
    // READ data goes out straight from the buffer, so the WRITE and the FILL must wait for it.
    let read = enc(&Read { handle: h, offset: 0, len: 2 * MIB as u32 });
    let fill = enc(&Fill { handle: h, offset: MIB as u64, len: 4096, value: 0xEE });
    let mut burst = frame(Kind::READ, Flags::NONE, 101, &read);
    burst.extend(frame(Kind::WRITE, Flags::NONE, 102, &write_payload(h, 0, &new)));
    burst.extend(frame(Kind::READ, Flags::NONE, 103, &read));
    burst.extend(frame(Kind::FILL, Flags::NONE, 104, &fill));
    burst.extend(frame(Kind::READ, Flags::NONE, 105, &read));
    let (mut rd, mut wr) = r.s.into_split();
    let sender = tokio::spawn(async move { wr.write_all(&burst).await.map(|()| wr) });
    let mut answers = Vec::new();
    for _ in 0..5 {
        let mut header = [0u8; HEADER_LEN];
        within(rd.read_exact(&mut header)).await.expect("header");
        let h = HeaderRepr::parse_bytes(&header, u32::MAX).expect("header parses");
        let mut payload = vec![0u8; h.len as usize];
        within(rd.read_exact(&mut payload)).await.expect("payload");
        answers.push((h, payload));
    }
    let wr = within(sender).await.expect("sender").expect("burst sent");
    let seqs: Vec<u16> = answers.iter().map(|(h, _)| h.seq).collect();
    assert_eq!(seqs, [101, 102, 103, 104, 105]);
    assert!(answers[0].1 == old, "the first READ saw the WRITE that came after it");
    assert!(answers[2].1 == new, "the second READ missed the WRITE before it");
    let mut filled = new.clone();
    filled[MIB..MIB + 4096].fill(0xEE);
    assert!(answers[4].1 == filled, "the last READ missed the FILL before it");
    drop((rd, wr));
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

/// A session that asks for READ data and never takes it: `reads` READs of `len` bytes.
async fn reader_that_never_reads(addr: SocketAddr, len: usize, reads: u16) -> TcpStream {
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(len as u64).await;
    let read = enc(&Read { handle: h, offset: 0, len: len as u32 });
    let mut burst = Vec::new();
    for seq in 0..reads {
        burst.extend(frame(Kind::READ, Flags::NONE, 200 + seq, &read));
    }
    r.send_bytes(&burst).await;
    r.s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_takes_its_read_data_is_cut_by_the_idle_timeout() {
    let mut cfg = node_config();
    cfg.session.idle_timeout = CoreDuration::from_secs(2);
    let node = start(cfg, 64 * MIB).await;
    let addr = node.local_addr();
    // 8 × 16 MiB of READ data, far beyond what the sockets buffer: the node's writer blocks.
    let stuck = reader_that_never_reads(addr, 16 * MIB, 8).await;
    // The idle timer takes the READ data back from the blocked writer and ends the session
    // (well before the writer's own 60 s stall limit).
    tokio::time::timeout(Duration::from_secs(15), async {
        while node.sessions() > 0 || node.usage().await.expect("usage").used > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the stuck session ended within 15 s");
    drop(stuck);
    let mut fresh = within(Client::connect(addr, None)).await.expect("newcomer");
    within(fresh.ping()).await.expect("ping");
    within(fresh.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_read_data_nobody_takes_finishes_and_frees_everything() {
    let node = start(node_config(), 64 * MIB).await;
    let addr = node.local_addr();
    let mut w = Witness::new(addr, None).await;
    let stuck = reader_that_never_reads(addr, 16 * MIB, 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.check().await;
    let started = std::time::Instant::now();
    let last = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(last, Usage::default());
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown waited {:?}", started.elapsed());
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_idle_after_large_writes_still_times_out() {
    let mut cfg = node_config();
    cfg.session.idle_timeout = CoreDuration::from_secs(2);
    let node = start(cfg, 8 * MIB).await;
    let addr = node.local_addr();
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(MIB as u64).await;
    // The node keeps the buffer lent to the connection's reader for more WRITEs into it.
    assert!(r.ok(Kind::WRITE, &write_payload(h, 0, &pattern(1, 256 * 1024))).await.is_empty());
    assert_eq!(node.direct_writes(), 1);
    // Then nothing: the idle timer still ends the session, with its ERROR.
    let started = std::time::Instant::now();
    r.fatal(ErrorCode::TIMEOUT).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_alternating_between_buffers_and_other_requests_land_where_they_should() {
    let node = start(node_config(), 16 * MIB).await;
    let addr = node.local_addr();
    let (mut r, _) = Raw::ready(addr, None).await;
    let (a, b) = (r.alloc(MIB as u64).await, r.alloc(MIB as u64).await);
    let (da, db) = (pattern(31, MIB), pattern(32, MIB));
    let piece = 64 * 1024;
    for (i, at) in (0..MIB).step_by(piece).enumerate() {
        // a, a, b, PING, a, b, b, ... : the lease follows the buffer, other frames end it.
        assert!(r.ok(Kind::WRITE, &write_payload(a, at as u64, &da[at..at + piece])).await.is_empty());
        if i % 3 == 0 {
            assert_eq!(r.ok(Kind::PING, b"between").await, b"between");
        }
        assert!(r.ok(Kind::WRITE, &write_payload(b, at as u64, &db[at..at + piece])).await.is_empty());
    }
    assert_eq!(node.direct_writes(), 2 * (MIB / piece) as u64);
    assert!(r.read(a, 0, MIB as u32).await == da, "buffer a differs");
    assert!(r.read(b, 0, MIB as u32).await == db, "buffer b differs");
    // A WRITE running past the end of the held buffer is refused, and the session goes on.
    assert!(r.ok(Kind::WRITE, &write_payload(b, 0, &db[..piece])).await.is_empty());
    r.err(Kind::WRITE, &write_payload(b, (MIB - 100) as u64, &db[..piece]), ErrorCode::OUT_OF_BOUNDS).await;
    assert!(r.read(b, 0, MIB as u32).await == db, "buffer b changed");
    drop(r);
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_peer_streams_writes_and_takes_no_replies_finishes() {
    let node = start(node_config(), 64 * MIB).await;
    let addr = node.local_addr();
    let (mut r, _) = Raw::ready(addr, None).await;
    let h = r.alloc(16 * MIB as u64).await;
    // READ data the peer never takes fills the socket and blocks the node's writer; then a
    // stream of WRITEs into the same buffer fills the pipeline behind it.
    let read = enc(&Read { handle: h, offset: 0, len: 4 * MIB as u32 });
    let mut burst = Vec::new();
    for seq in 0..4u16 {
        burst.extend(frame(Kind::READ, Flags::NONE, 300 + seq, &read));
    }
    let data = pattern(41, 256 * 1024);
    for (i, seq) in (400..464u16).enumerate() {
        let at = (i * data.len()) % (16 * MIB);
        burst.extend(frame(Kind::WRITE, Flags::NONE, seq, &write_payload(h, at as u64, &data)));
    }
    let (rd, mut wr) = r.s.into_split();
    let sender = tokio::spawn(async move {
        let _ = wr.write_all(&burst).await;
        wr
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let last = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(last, Usage::default());
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown waited {:?}", started.elapsed());
    drop(rd);
    sender.abort();
}

/// The first frame on a fresh connection, sent unprompted (nothing is written to it): an
/// ERROR(BUSY) with seq 0, then the connection is closed. Returns the ERROR's reason. A node
/// that kept the connection waiting in silence fails the 5 s deadline.
async fn turned_away(addr: SocketAddr) -> String {
    let mut r = Raw::connect(addr).await;
    let (h, p) =
        tokio::time::timeout(Duration::from_secs(5), r.recv()).await.expect("told at once, not kept waiting");
    assert_eq!(error_code(&h, &p), ErrorCode::BUSY);
    assert_eq!(h.seq, 0);
    assert_closed(&mut r.s).await;
    ErrorMsg::parse(&p).expect("ERROR").reason.to_owned()
}

/// The `N` of `retry after N ms` in a BUSY reason.
fn retry_after(reason: &str) -> Duration {
    let e = ClientError::Server { code: ErrorCode::BUSY, reason: reason.to_owned(), request: Kind(0) };
    e.retry_after().unwrap_or_else(|| panic!("no 'retry after N ms' in {reason:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_address_is_told_at_once_and_holds_no_slot() {
    let backoff = Duration::from_millis(1500);
    let cfg =
        NodeConfig { max_sessions: 2, auth_backoff: backoff, auth_backoff_max: backoff, ..node_config() }
            .with_token(TOKEN);
    let node = start(cfg, 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, Some(TOKEN)).await;
    // One wrong AUTH: the address is throttled for 1.5 s.
    let mut r = Raw::connect(addr).await;
    let welcome = r.hello().await;
    r.err(Kind::AUTH, &AuthKey::new(b"guess").auth_tag(&welcome.nonce), ErrorCode::AUTH_FAILED).await;
    assert_closed(&mut r.s).await;
    // More connections than the node has slots: each is told at once, with the wait, and
    // none of them takes a slot (the witness holds the only one in use).
    drop(r);
    for _ in 0..200 {
        if node.sessions() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut longest = Duration::ZERO;
    for _ in 0..4 {
        let reason = turned_away(addr).await;
        let wait = retry_after(&reason);
        assert!(wait <= backoff, "{reason}");
        longest = longest.max(wait);
        assert_eq!(node.sessions(), 1, "a throttled connection holds a session slot");
    }
    // Once the wait has passed, the right token gets in at once.
    tokio::time::sleep(longest + Duration::from_millis(50)).await;
    let mut c = within(Client::connect(addr, Some(TOKEN))).await.expect("in after the wait");
    within(c.ping()).await.expect("ping");
    within(c.close()).await.expect("close");
    finish(node, w, Some(TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot() {
    let cfg =
        NodeConfig { max_sessions: 8, max_sessions_per_address: 3, cap_loopback: true, ..node_config() };
    let node = start(cfg, 8 * MIB).await;
    let addr = node.local_addr();
    let w = Witness::new(addr, None).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(within(Client::connect(addr, None)).await.expect("within the per-address cap"));
    }
    for _ in 0..3 {
        let reason = turned_away(addr).await;
        assert!(reason.contains("from this address"), "{reason}");
    }
    assert_eq!(node.sessions(), 3);
    // Another address still gets in (127.0.0.2 is loopback too on Linux).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
    let s = within(socket.connect(addr)).await.expect("connect from 127.0.0.2");
    let mut elsewhere = Raw { s, seq: 0 };
    elsewhere.hello().await;
    assert_eq!(elsewhere.ok(Kind::PING, b"hi").await, b"hi");
    drop(elsewhere);
    // A slot of this address frees up when one of its sessions leaves.
    within(others.pop().expect("one").close()).await.expect("close");
    let mut joined = None;
    for _ in 0..200 {
        match within(Client::connect(addr, None)).await {
            Ok(c) => {
                joined = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::BUSY), "{e:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let joined = joined.expect("the freed slot is reused");
    drop((joined, others));
    for _ in 0..200 {
        if node.sessions() <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    finish(node, w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_before_the_handshake_reserve_nothing() {
    // Over a backend behind the trait, every large payload and READ response would come from
    // the node's pool; the budget holds exactly one largest frame.
    let cfg = NodeConfig { buffer_budget: 17 * MIB, ..node_config() }.with_token(TOKEN);
    let node =
        within(rela_node::Node::start(cfg, common::boxed_backend(8 * MIB))).await.expect("node starts");
    let addr = node.local_addr();
    let mut stalled = Vec::new();
    for round in 0..4u16 {
        let mut r = Raw::connect(addr).await;
        if round % 2 == 1 {
            // After HELLO, before AUTH: still not ready.
            r.hello().await;
        }
        // A READ of 16 MiB is refused (WRONG_STATE) without a response buffer reserved.
        r.err(Kind::READ, &enc(&Read { handle: 1, offset: 0, len: 16 * MIB as u32 }), ErrorCode::WRONG_STATE)
            .await;
        // A 16 MiB WRITE header, then nothing: refused at once, nothing reserved for it.
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(b"RELA");
        h[4] = Kind::WRITE.0;
        h[8..12].copy_from_slice(&(16 * MIB as u32).to_le_bytes());
        r.send_bytes(&h).await;
        let (hd, p) = tokio::time::timeout(Duration::from_secs(5), r.recv()).await.expect("refused at once");
        assert_eq!(error_code(&hd, &p), ErrorCode::PAYLOAD_TOO_LARGE);
        stalled.push(r);
    }
    assert_eq!(node.peak_buffer_bytes(), 0, "a peer before its handshake reserved pool memory");
    // A client that authenticates moves 1 MiB each way at once.
    let mut c = within(Client::connect(addr, Some(TOKEN))).await.expect("connect");
    let data = pattern(21, MIB);
    let b = within(c.alloc(MIB as u64)).await.expect("alloc");
    within(c.write(b, 0, &data)).await.expect("write");
    assert_eq!(within(c.read(b, 0, MIB as u64)).await.expect("read"), data);
    within(c.close()).await.expect("close");
    drop(stalled);
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_pipelined_behind_hello_gets_the_full_cap() {
    let node = start(node_config(), 8 * MIB).await;
    let addr = node.local_addr();
    let mut r = Raw::connect(addr).await;
    // HELLO and a 64 KiB WRITE in one send: the WRITE is read once HELLO made the session
    // ready, so it is judged by the full cap (the handle names nothing: NO_SUCH_BUFFER).
    let mut bytes =
        frame(Kind::HELLO, Flags::NONE, 1, &enc(&Hello { min_version: 1, max_version: 1, caps: Caps(0) }));
    bytes.extend(frame(Kind::WRITE, Flags::NONE, 2, &write_payload(1, 0, &pattern(4, 64 * 1024))));
    r.send_bytes(&bytes).await;
    let (h, _) = r.recv().await;
    assert_eq!(h.kind, Kind::HELLO);
    let (h, p) = r.recv().await;
    assert_eq!((h.seq, error_code(&h, &p)), (2, ErrorCode::NO_SUCH_BUFFER));
    r.seq = 2;
    assert_eq!(r.ok(Kind::PING, b"on").await, b"on");
    drop(r);
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_never_amplifies_and_is_rate_limited() {
    use rela_core::config::MAX_DATAGRAM;
    use rela_core::discovery::{Announce, Discover};
    let node = start(config(), MIB).await;
    let target = node.discovery_addr().expect("discovery on");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    // An unpadded 16-byte probe (32-byte datagram) gets no answer at all.
    let short = frame(Kind::DISCOVER, Flags::NONE, 0, &[3; 16]);
    socket.send_to(&short, target).await.expect("send");
    // Ten padded probes at once: at most four answers (per source and second), each smaller
    // than its probe and answering it.
    let mut probe = [0u8; MAX_DATAGRAM];
    let n = Discover { nonce: [9; 16] }.emit::<FastCrc32>(&mut probe).expect("DISCOVER");
    for _ in 0..10 {
        socket.send_to(&probe[..n], target).await.expect("send");
    }
    let mut answers = 0;
    let mut buf = [0u8; 2048];
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
    {
        assert!(len < n, "an answer of {len} bytes to a probe of {n}");
        let a = Announce::parse::<FastCrc32>(&buf[..len]).expect("ANNOUNCE");
        assert_eq!(a.nonce, [9; 16], "only the padded probe is answered");
        answers += 1;
    }
    assert!((1..=4).contains(&answers), "{answers} answers to 10 probes from one source");
    within(node.shutdown()).await.expect("shutdown");
}
