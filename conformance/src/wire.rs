//! The wire suite: checks any running node, by address, against `docs/PROTOCOL.md`.
//!
//! [`run`] connects to a node (ours or anyone's), and runs [`case_names`] one after another,
//! each on its own connection(s) and under its own time limit ([`CASE_TIMEOUT`]; every single
//! read is bounded by [`STEP`]). Frames are built and checked byte by byte with `rela-core`'s
//! codecs and its table-driven [`SoftCrc32`], not with the client library, so the suite sees
//! exactly what the node sends: every response must carry the magic, the RESPONSE flag, a
//! valid CRC and its request's `seq` (0 for unsolicited errors).
//!
//! What is covered:
//!
//! - the handshake (WELCOME fields, version negotiation, fresh nonces), AUTH with the right and a
//!   wrong token, and `WRONG_STATE` for requests before HELLO and before AUTH;
//! - every request kind, with checked results (kernels on small exact inputs);
//! - every error a node must produce: `MALFORMED`, `BAD_FRAME` (bad CRC, magic, flags; closes),
//!   `UNKNOWN_KIND`, `UNSUPPORTED`, `NO_SUCH_BUFFER`, `OUT_OF_BOUNDS` (including ranges that wrap
//!   `u64`), `INVALID_ARGUMENT`, `QUOTA_EXCEEDED`, `TOO_MANY_BUFFERS`, `PAYLOAD_TOO_LARGE`
//!   (refused from the header alone: the suite never sends the payload);
//! - that the limits WELCOME advertises are the limits the node enforces;
//! - pipelining: requests written back to back are answered in order.
//!
//! [`run`] speaks plain TCP; [`run_with`] takes a [`Dialer`] that opens each connection some
//! other way, for example over TLS (`vram-relay conformance --node ADDR --tls`): the suite then
//! checks the same bytes inside the TLS session.
//!
//! Cases that need what the node cannot give are [`Outcome::Skipped`] with the reason: AUTH
//! cases when the node requires a token and none was given, limit cases when the node has too
//! little free memory to reach the limit.
//!
//! ```no_run
//! # async fn demo() {
//! let report = rela_conformance::wire::run("127.0.0.1:8765".parse().unwrap(), None).await;
//! print!("{}", rela_conformance::render_table(std::slice::from_ref(&report)));
//! # }
//! ```

use rela_test_support::{f32_bytes, f32_values, pattern};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rela_core::auth::AuthKey;
use rela_core::backend::KernelId;
use rela_core::config::{HEADER_LEN, MAX_BUFFERS, MAX_PAYLOAD, MAX_PING_PAYLOAD, NONCE_LEN};
use rela_core::crc32::SoftCrc32;
use rela_core::wire::model_list::{ModelKind, ModelList, ModelListed};
use rela_core::wire::msg::{
    Alloc, Allocated, Caps, Copy, DeviceInfoMsg, Dispatch, ErrorMsg, Fill, Free, Hello, Message, ModelChunk,
    ModelUpload, Read, Stats, Welcome,
};
use rela_core::wire::{ErrorCode, Flags, FrameCrc, HeaderRepr, Kind, RawHeader, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{BackendReport, CaseResult, Outcome};

/// Longest wait for any single connect, read or write.
pub const STEP: Duration = Duration::from_secs(10);
/// Longest a whole case may take.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs every wire case against the node at `addr` and reports the results, in
/// [`case_names`] order. `token` is the node's shared token, if it has one.
///
/// The report is named `node <addr>`; its device is the node's DEVICE_INFO name and vendor
/// (absent when the node cannot be reached or requires a token that was not given).
pub async fn run(addr: SocketAddr, token: Option<&[u8]>) -> BackendReport {
    run_with(addr, token, tcp_dialer()).await
}

/// A byte stream to the node, as a [`Dialer`] opens it.
pub trait NodeStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> NodeStream for T {}

/// What [`Dialer`] returns: a connection to the node, or why there is none.
pub type Dialing = Pin<Box<dyn Future<Output = io::Result<Box<dyn NodeStream>>> + Send>>;

/// Opens one connection to the node at an address; every case's connections come from it.
/// The suite bounds each call by [`STEP`].
pub type Dialer = Arc<dyn Fn(SocketAddr) -> Dialing + Send + Sync>;

/// The [`Dialer`] of [`run`]: plain TCP, no-delay.
pub fn tcp_dialer() -> Dialer {
    Arc::new(|addr| {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            // Best effort: the cases pass with Nagle too, only slower.
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as Box<dyn NodeStream>)
        })
    })
}

/// [`run`] with each connection opened by `dial` (for example over TLS) instead of plain TCP.
/// The report is named after `addr` as in [`run`].
pub async fn run_with(addr: SocketAddr, token: Option<&[u8]>, dial: Dialer) -> BackendReport {
    let cx = Cx { addr, token: token.map(Arc::from), dial };
    let device = tokio::time::timeout(STEP * 2, probe_device(cx.clone())).await.ok().flatten();
    let mut results = Vec::with_capacity(CASES.len());
    for case in CASES {
        results.push(run_case(case, cx.clone()).await);
    }
    BackendReport { backend: format!("node {addr}"), device, results }
}

/// The names of the wire cases, in the order [`run`] runs them.
pub fn case_names() -> impl Iterator<Item = &'static str> {
    CASES.iter().map(|c| c.name)
}

// ---------------------------------------------------------------------------------------------
// Case plumbing

/// What a case knows: where the node is, its token, and how to connect.
#[derive(Clone)]
struct Cx {
    addr: SocketAddr,
    token: Option<Arc<[u8]>>,
    dial: Dialer,
}

/// Why a case stopped early.
#[derive(Debug)]
enum Stop {
    Fail(String),
    Skip(String),
}

type R<T> = Result<T, Stop>;
type CaseFuture = Pin<Box<dyn Future<Output = R<()>> + Send>>;

struct WireCase {
    name: &'static str,
    run: fn(Cx) -> CaseFuture,
}

macro_rules! fail {
    ($($t:tt)+) => { return Err(Stop::Fail(format!($($t)+))) };
}

macro_rules! check {
    ($c:expr, $($t:tt)+) => {
        if !$c {
            fail!($($t)+);
        }
    };
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        const CASES: &[WireCase] = &[$(WireCase { name: stringify!($name), run: |cx| Box::pin($name(cx)) }),*];
    };
}

cases!(
    handshake,
    hello_version_mismatch,
    handshake_not_repeatable,
    auth_right_token,
    auth_wrong_token,
    wrong_state_before_hello,
    wrong_state_before_auth,
    ping_echo,
    device_info,
    stats,
    buffer_ops,
    dispatch_kernels,
    bye_closes,
    malformed,
    bad_crc_closes,
    bad_magic_closes,
    bad_flags_close,
    unknown_kind,
    unsupported,
    model_upload_rules,
    model_list,
    no_such_buffer,
    out_of_bounds,
    invalid_argument,
    quota_enforced,
    max_buffers_enforced,
    max_payload_accepted,
    read_above_max_payload_refused,
    payload_too_large_closes,
    pipelining_in_order,
);

async fn run_case(case: &WireCase, cx: Cx) -> CaseResult {
    let start = Instant::now();
    let mut task = tokio::spawn((case.run)(cx));
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, &mut task).await {
        Ok(Ok(Ok(()))) => Outcome::Passed,
        Ok(Ok(Err(Stop::Fail(why)))) => Outcome::Failed(why),
        Ok(Ok(Err(Stop::Skip(why)))) => Outcome::Skipped(why),
        Ok(Err(join)) => match join.try_into_panic() {
            Ok(payload) => Outcome::Failed(format!("panicked: {}", crate::panic_message(&*payload))),
            Err(e) => Outcome::Failed(format!("case task failed: {e}")),
        },
        Err(_) => {
            task.abort();
            Outcome::Failed(format!("timed out after {} s", CASE_TIMEOUT.as_secs()))
        }
    };
    let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    CaseResult { name: case.name.to_owned(), outcome, millis }
}

async fn probe_device(cx: Cx) -> Option<String> {
    let (mut c, _) = Conn::ready(&cx).await.ok()?;
    let p = c.ok(Kind::DEVICE_INFO, &[]).await.ok()?;
    let info = DeviceInfoMsg::parse(&p).ok()?;
    Some(format!("{} ({})", info.name, info.vendor))
}

// ---------------------------------------------------------------------------------------------
// Frames on a raw connection

/// A frame received from the node, already checked: magic, flags, length cap and CRC.
#[derive(Debug)]
struct Resp {
    kind: Kind,
    seq: u16,
    payload: Vec<u8>,
}

impl Resp {
    fn error(&self) -> Option<ErrorMsg<'_>> {
        (self.kind == Kind::ERROR).then(|| ErrorMsg::parse(&self.payload).ok()).flatten()
    }

    fn describe(&self) -> String {
        match self.error() {
            Some(e) => format!("ERROR {} ({:?}: {})", e.code, e.request_kind, e.reason),
            None if self.kind == Kind::ERROR => "an undecodable ERROR".to_owned(),
            None => format!("{:?} response with {} payload bytes", self.kind, self.payload.len()),
        }
    }
}

/// Encodes a message payload.
fn enc<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    // The buffer has exactly the message's length.
    let n = m.emit(&mut v).unwrap_or(0);
    v.truncate(n);
    v
}

/// Builds a whole frame; `payload` may be up to 16 MiB.
fn frame(kind: Kind, flags: Flags, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    match encode_frame::<SoftCrc32>(&mut buf, kind, flags, seq, payload) {
        Ok(f) => f.to_vec(),
        // Only for payloads above 16 MiB, which the suite never builds.
        Err(_) => Vec::new(),
    }
}

/// A bare 16-byte header with a correct CRC for an empty payload but any `len`.
fn header_only(kind: Kind, flags: u8, seq: u16, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(b"RELA");
    h[4] = kind.0;
    h[5] = flags;
    h[6..8].copy_from_slice(&seq.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = <SoftCrc32 as rela_core::crc32::Crc32>::checksum(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn io_fail(what: &str, e: &io::Error) -> Stop {
    Stop::Fail(format!("{what}: {e}"))
}

/// One raw connection to the node.
struct Conn {
    stream: Box<dyn NodeStream>,
    seq: u16,
}

impl Conn {
    async fn open(cx: &Cx) -> R<Self> {
        let stream = match tokio::time::timeout(STEP, (cx.dial)(cx.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(io_fail("connect", &e)),
            Err(_) => fail!("connect timed out"),
        };
        Ok(Self { stream, seq: 0 })
    }

    /// HELLO (and AUTH when required): a ready session and its WELCOME. Skips when the node
    /// requires AUTH and no token was given.
    async fn ready(cx: &Cx) -> R<(Self, Welcome)> {
        let mut c = Self::open(cx).await?;
        let w = c.hello().await?;
        if w.auth_required() {
            let Some(token) = &cx.token else {
                return Err(Stop::Skip("the node requires AUTH and no token was given".into()));
            };
            let tag = AuthKey::new(token).auth_tag(&w.nonce);
            let p = c.ok(Kind::AUTH, &tag).await?;
            check!(p.is_empty(), "AUTH response has {} payload bytes, expected none", p.len());
        }
        Ok((c, w))
    }

    /// HELLO for versions 1..=1 with DISPATCH; checks and returns the WELCOME.
    async fn hello(&mut self) -> R<Welcome> {
        self.hello_range(1, 1).await
    }

    async fn hello_range(&mut self, min: u16, max: u16) -> R<Welcome> {
        let p = self
            .ok(Kind::HELLO, &enc(&Hello { min_version: min, max_version: max, caps: Caps::DISPATCH }))
            .await?;
        let w = match Welcome::parse(&p) {
            Ok(w) => w,
            Err(e) => fail!("WELCOME does not decode ({} bytes): {e}", p.len()),
        };
        check_welcome(&w)?;
        Ok(w)
    }

    fn next_seq(&mut self) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    async fn send_bytes(&mut self, bytes: &[u8]) -> R<()> {
        // Flushed: a TLS stream may keep written bytes until then (plain TCP keeps none).
        let send = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(STEP, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_fail("send", &e)),
            Err(_) => fail!("send timed out"),
        }
    }

    /// Reads one frame; `None` if the node closed the connection before a header started.
    async fn recv_opt(&mut self) -> R<Option<Resp>> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match tokio::time::timeout(STEP, self.stream.read(&mut header[got..])).await {
                Ok(Ok(0)) if got == 0 => return Ok(None),
                Ok(Ok(0)) => fail!("the node closed the connection inside a frame header"),
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) if got == 0 && is_reset(&e) => return Ok(None),
                Ok(Err(e)) => return Err(io_fail("receive", &e)),
                Err(_) => fail!("no frame from the node within {} s", STEP.as_secs()),
            }
        }
        let raw = match RawHeader::view(&header) {
            Ok(r) => r,
            Err(e) => fail!("bad header from the node: {e}"),
        };
        let h = match HeaderRepr::parse(raw, MAX_PAYLOAD) {
            Ok(h) => h,
            Err(e) => fail!("invalid frame header from the node: {e}"),
        };
        check!(h.flags.is_response(), "the node sent a {:?} frame without the RESPONSE flag", h.kind);
        check!(!h.flags.contains(Flags::COMPRESSED), "the node sent a COMPRESSED frame");
        let mut payload = vec![0u8; h.len as usize];
        match tokio::time::timeout(STEP, self.stream.read_exact(&mut payload)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(io_fail("receive payload", &e)),
            Err(_) => fail!("payload of {} bytes did not arrive within {} s", h.len, STEP.as_secs()),
        }
        let mut crc = FrameCrc::<SoftCrc32>::new(raw);
        crc.update(&payload);
        if let Err(e) = crc.verify(&h) {
            fail!("{:?} frame from the node: {e}", h.kind);
        }
        Ok(Some(Resp { kind: h.kind, seq: h.seq, payload }))
    }

    async fn recv(&mut self) -> R<Resp> {
        match self.recv_opt().await? {
            Some(r) => Ok(r),
            None => fail!("the node closed the connection instead of answering"),
        }
    }

    /// Sends a request with the next seq and returns the answer, checking the seq echo.
    async fn call_flags(&mut self, kind: Kind, flags: Flags, payload: &[u8]) -> R<Resp> {
        let seq = self.next_seq();
        self.send_bytes(&frame(kind, flags, seq, payload)).await?;
        let r = self.recv().await?;
        check!(r.seq == seq, "{kind:?} (seq {seq}) answered with seq {} ({})", r.seq, r.describe());
        Ok(r)
    }

    async fn call(&mut self, kind: Kind, payload: &[u8]) -> R<Resp> {
        self.call_flags(kind, Flags::NONE, payload).await
    }

    /// A request that must succeed: returns the response payload.
    async fn ok(&mut self, kind: Kind, payload: &[u8]) -> R<Vec<u8>> {
        let r = self.call(kind, payload).await?;
        check!(r.kind == kind, "{kind:?} answered with {}", r.describe());
        Ok(r.payload)
    }

    /// A request that must fail with `code`.
    async fn err(&mut self, kind: Kind, payload: &[u8], code: ErrorCode) -> R<()> {
        self.err_flags(kind, Flags::NONE, payload, code).await
    }

    async fn err_flags(&mut self, kind: Kind, flags: Flags, payload: &[u8], code: ErrorCode) -> R<()> {
        let r = self.call_flags(kind, flags, payload).await?;
        check_error(&r, kind, code, &format!("{kind:?} ({} payload bytes)", payload.len()))
    }

    /// Expects an unsolicited ERROR (seq 0) with `code`, then the connection closed.
    async fn fatal(&mut self, code: ErrorCode, what: &str) -> R<()> {
        let r = self.recv().await?;
        let Some(e) = r.error() else { fail!("{what}: expected ERROR {code}, got {}", r.describe()) };
        check!(e.code == code, "{what}: expected ERROR {code}, got {}", r.describe());
        check!(r.seq == 0, "{what}: the ERROR {code} has seq {}, expected 0", r.seq);
        self.closed(what).await
    }

    /// Expects the node to close the connection (EOF or reset) with nothing more sent.
    async fn closed(&mut self, what: &str) -> R<()> {
        let mut b = [0u8; 256];
        match tokio::time::timeout(STEP, self.stream.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
            Ok(Ok(n)) => fail!("{what}: {n} more bytes arrived where the node should have closed"),
            Err(_) => fail!("{what}: the node did not close the connection within {} s", STEP.as_secs()),
        }
    }

    // Buffer helpers for a ready session.

    async fn alloc(&mut self, size: u64) -> R<u32> {
        let p = self.ok(Kind::ALLOC, &enc(&Alloc { size })).await?;
        let a = match Allocated::parse(&p) {
            Ok(a) => a,
            Err(e) => fail!("Allocated does not decode: {e}"),
        };
        check!(a.handle != 0, "ALLOC({size}) returned handle 0");
        check!(a.size == size, "ALLOC({size}) reports size {}", a.size);
        Ok(a.handle)
    }

    async fn free(&mut self, handle: u32) -> R<()> {
        let p = self.ok(Kind::FREE, &enc(&Free { handle })).await?;
        check!(p.is_empty(), "FREE response has a payload");
        Ok(())
    }

    async fn write(&mut self, handle: u32, offset: u64, data: &[u8]) -> R<()> {
        let p = self.ok(Kind::WRITE, &write_payload(handle, offset, data)).await?;
        check!(p.is_empty(), "WRITE response has a payload");
        Ok(())
    }

    async fn read(&mut self, handle: u32, offset: u64, len: u32) -> R<Vec<u8>> {
        let p = self.ok(Kind::READ, &enc(&Read { handle, offset, len })).await?;
        check!(p.len() == len as usize, "READ of {len} bytes returned {}", p.len());
        Ok(p)
    }

    async fn empty_ok(&mut self, kind: Kind, payload: &[u8]) -> R<()> {
        let p = self.ok(kind, payload).await?;
        check!(p.is_empty(), "{kind:?} response has {} payload bytes, expected none", p.len());
        Ok(())
    }

    async fn stats(&mut self) -> R<Stats> {
        let p = self.ok(Kind::STATS, &[]).await?;
        match Stats::parse(&p) {
            Ok(s) => Ok(s),
            Err(e) => fail!("STATS does not decode ({} bytes): {e}", p.len()),
        }
    }

    async fn device_info(&mut self) -> R<(u64, u64, u64)> {
        let p = self.ok(Kind::DEVICE_INFO, &[]).await?;
        match DeviceInfoMsg::parse(&p) {
            Ok(d) => Ok((d.total, d.free, d.max_alloc)),
            Err(e) => fail!("DEVICE_INFO does not decode ({} bytes): {e}", p.len()),
        }
    }

    async fn bye(&mut self) -> R<()> {
        self.empty_ok(Kind::BYE, &[]).await?;
        self.closed("after BYE").await
    }
}

/// A connection the node ended abruptly; over TLS, one closed without a close_notify alert
/// reads as an unexpected end (plain TCP reads that as a clean end, 0 bytes).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn check_error(r: &Resp, kind: Kind, code: ErrorCode, what: &str) -> R<()> {
    let Some(e) = r.error() else { fail!("{what}: expected ERROR {code}, got {}", r.describe()) };
    check!(e.code == code, "{what}: expected ERROR {code}, got {}", r.describe());
    check!(
        e.request_kind == kind,
        "{what}: ERROR names request kind {:?}, expected {kind:?}",
        e.request_kind
    );
    Ok(())
}

fn check_welcome(w: &Welcome) -> R<()> {
    check!(w.version == 1, "WELCOME chose version {}, expected 1", w.version);
    check!(w.flags & !1 == 0, "WELCOME flags 0x{:04x} have reserved bits set", w.flags);
    // The capabilities version 1 defines (PROTOCOL.md §4); PROGRESS goes with MODELS.
    check!(
        w.caps.0 & !(Caps::DISPATCH.0 | Caps::MODELS.0 | Caps::LZ4.0 | Caps::PROGRESS.0) == 0,
        "WELCOME advertises capabilities 0x{:08x}; only DISPATCH, MODELS, LZ4 and PROGRESS are defined",
        w.caps.0
    );
    check!(
        !w.caps.contains(Caps::PROGRESS) || w.caps.contains(Caps::MODELS),
        "WELCOME advertises PROGRESS without MODELS (caps 0x{:08x})",
        w.caps.0
    );
    check!(
        (MAX_PING_PAYLOAD as u32..=MAX_PAYLOAD).contains(&w.max_payload),
        "WELCOME max_payload {} outside {MAX_PING_PAYLOAD}..=16 MiB",
        w.max_payload
    );
    check!(
        (1..=MAX_BUFFERS as u32).contains(&w.max_buffers),
        "WELCOME max_buffers {} outside 1..={MAX_BUFFERS}",
        w.max_buffers
    );
    check!(w.quota > 0, "WELCOME quota is 0");
    check!(w.handshake_timeout_ms > 0, "WELCOME handshake timeout is 0");
    check!(w.nonce != [0u8; NONCE_LEN], "WELCOME nonce is all zeros");
    Ok(())
}

fn write_payload(handle: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + data.len());
    v.extend_from_slice(&handle.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn copy_payload(src: u32, src_offset: u64, dst: u32, dst_offset: u64, len: u64) -> Vec<u8> {
    enc(&Copy { src, src_offset, dst, dst_offset, len })
}

fn fill_payload(handle: u32, offset: u64, len: u64, value: u8) -> Vec<u8> {
    enc(&Fill { handle, offset, len, value })
}

fn read_payload(handle: u32, offset: u64, len: u32) -> Vec<u8> {
    enc(&Read { handle, offset, len })
}

#[allow(clippy::too_many_arguments)]
fn dispatch_payload(
    kernel: KernelId,
    a: u32,
    b: u32,
    out: u32,
    m: u32,
    k: u32,
    n: u32,
    alpha: f32,
) -> Vec<u8> {
    enc(&Dispatch { kernel, reserved: 0, a, b, out, m, k, n, alpha })
}

/// Every request kind with a well-formed payload (for the state checks).
fn every_request() -> Vec<(Kind, Vec<u8>)> {
    vec![
        (Kind::AUTH, vec![0u8; 32]),
        (Kind::PING, b"ping".to_vec()),
        (Kind::DEVICE_INFO, Vec::new()),
        (Kind::STATS, Vec::new()),
        (Kind::ALLOC, enc(&Alloc { size: 64 })),
        (Kind::FREE, enc(&Free { handle: 1 })),
        (Kind::WRITE, write_payload(1, 0, b"data")),
        (Kind::READ, read_payload(1, 0, 4)),
        (Kind::COPY, copy_payload(1, 0, 2, 0, 4)),
        (Kind::FILL, fill_payload(1, 0, 4, 7)),
        (Kind::DISPATCH, dispatch_payload(KernelId::ADD, 1, 2, 3, 0, 0, 1, 0.0)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn handshake(cx: Cx) -> R<()> {
    let mut a = Conn::open(&cx).await?;
    let wa = a.hello().await?;
    // A wider range than the node speaks: it picks version 1.
    let mut b = Conn::open(&cx).await?;
    let wb = b.hello_range(0, 0xFFFF).await?;
    check!(wa.nonce != wb.nonce, "two sessions got the same nonce");
    check!(
        (wa.max_payload, wa.max_buffers, wa.quota, wa.flags)
            == (wb.max_payload, wb.max_buffers, wb.quota, wb.flags),
        "two sessions were offered different limits: {wa:?} vs {wb:?}"
    );
    Ok(())
}

async fn hello_version_mismatch(cx: Cx) -> R<()> {
    for (min, max) in [(2u16, 9u16), (0, 0), (5, 2)] {
        let mut c = Conn::open(&cx).await?;
        let p = enc(&Hello { min_version: min, max_version: max, caps: Caps::DISPATCH });
        c.err(Kind::HELLO, &p, ErrorCode::VERSION_MISMATCH).await?;
        c.closed(&format!("after VERSION_MISMATCH for versions {min}..={max}")).await?;
    }
    Ok(())
}

async fn handshake_not_repeatable(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let hello = enc(&Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
    c.err(Kind::HELLO, &hello, ErrorCode::WRONG_STATE).await?;
    c.err(Kind::AUTH, &[0u8; 32], ErrorCode::WRONG_STATE).await?;
    if let Some(token) = &cx.token {
        // Even the right tag is out of place once ready.
        c.err(Kind::AUTH, &AuthKey::new(token).auth_tag(&w.nonce), ErrorCode::WRONG_STATE).await?;
    }
    c.ok(Kind::PING, b"still here").await?;
    Ok(())
}

async fn auth_right_token(cx: Cx) -> R<()> {
    let mut c = Conn::open(&cx).await?;
    let w = c.hello().await?;
    if !w.auth_required() {
        return Err(Stop::Skip("the node does not require AUTH".into()));
    }
    let Some(token) = &cx.token else {
        return Err(Stop::Skip("the node requires AUTH and no token was given".into()));
    };
    c.empty_ok(Kind::AUTH, &AuthKey::new(token).auth_tag(&w.nonce)).await?;
    let echo = c.ok(Kind::PING, b"authenticated").await?;
    check!(echo == b"authenticated", "PING after AUTH echoed {echo:?}");
    c.stats().await?;
    c.bye().await
}

async fn auth_wrong_token(cx: Cx) -> R<()> {
    let mut c = Conn::open(&cx).await?;
    let w = c.hello().await?;
    if !w.auth_required() {
        return Err(Stop::Skip("the node does not require AUTH".into()));
    }
    let Some(token) = &cx.token else {
        return Err(Stop::Skip("the node requires AUTH and no token was given".into()));
    };
    let mut wrong = token.to_vec();
    wrong.extend_from_slice(b"-but-wrong");
    c.err(Kind::AUTH, &AuthKey::new(&wrong).auth_tag(&w.nonce), ErrorCode::AUTH_FAILED).await?;
    c.closed("after AUTH_FAILED").await?;
    wait_out_throttle(&cx).await
}

/// After a failed AUTH a node may turn this address away for a while, telling each connection
/// at once with ERROR(BUSY) and `retry after N ms` (PROTOCOL.md §5): waits that out (at most 20
/// tries), so the cases after this one find the node serving again.
async fn wait_out_throttle(cx: &Cx) -> R<()> {
    for _ in 0..20 {
        let mut c = Conn::open(cx).await?;
        let seq = c.next_seq();
        let hello = enc(&Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
        c.send_bytes(&frame(Kind::HELLO, Flags::NONE, seq, &hello)).await?;
        let r = c.recv().await?;
        let wait = match r.error() {
            None => return Ok(()),
            Some(e) if e.code == ErrorCode::BUSY && r.seq == 0 => e
                .reason
                .rsplit_once("retry after ")
                .and_then(|(_, t)| t.strip_suffix(" ms")?.parse::<u64>().ok()),
            Some(_) => fail!("HELLO after a failed AUTH got {}", r.describe()),
        };
        let Some(ms) = wait else {
            fail!("BUSY after a failed AUTH without a retry-after: {}", r.describe())
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    fail!("the node still turned this address away after 20 waits")
}

async fn wrong_state_before_hello(cx: Cx) -> R<()> {
    let mut c = Conn::open(&cx).await?;
    for (kind, payload) in every_request() {
        c.err(kind, &payload, ErrorCode::WRONG_STATE).await?;
    }
    // The state did not change: HELLO still works.
    c.hello().await?;
    Ok(())
}

async fn wrong_state_before_auth(cx: Cx) -> R<()> {
    let mut c = Conn::open(&cx).await?;
    let w = c.hello().await?;
    if !w.auth_required() {
        return Err(Stop::Skip("the node does not require AUTH".into()));
    }
    for (kind, payload) in every_request().into_iter().filter(|(k, _)| *k != Kind::AUTH) {
        c.err(kind, &payload, ErrorCode::WRONG_STATE).await?;
    }
    let hello = enc(&Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
    c.err(Kind::HELLO, &hello, ErrorCode::WRONG_STATE).await?;
    match &cx.token {
        Some(token) => {
            c.empty_ok(Kind::AUTH, &AuthKey::new(token).auth_tag(&w.nonce)).await?;
            c.ok(Kind::PING, b"").await?;
            c.bye().await
        }
        // BYE is allowed in every state.
        None => c.bye().await,
    }
}

async fn ping_echo(cx: Cx) -> R<()> {
    let (mut c, _) = Conn::ready(&cx).await?;
    for len in [0, 1, 100, MAX_PING_PAYLOAD] {
        let data = pattern(len as u32, len);
        let echo = c.ok(Kind::PING, &data).await?;
        check!(echo == data, "PING of {len} bytes echoed {} different bytes", echo.len());
    }
    c.err(Kind::PING, &vec![1u8; MAX_PING_PAYLOAD + 1], ErrorCode::MALFORMED).await?;
    c.ok(Kind::PING, b"after").await?;
    Ok(())
}

async fn device_info(cx: Cx) -> R<()> {
    let (mut c, _) = Conn::ready(&cx).await?;
    let p = c.ok(Kind::DEVICE_INFO, &[]).await?;
    let d = match DeviceInfoMsg::parse(&p) {
        Ok(d) => d,
        Err(e) => fail!("DEVICE_INFO does not decode ({} bytes): {e}", p.len()),
    };
    check!(d.free <= d.total, "DEVICE_INFO free {} above total {}", d.free, d.total);
    check!(d.max_alloc > 0, "DEVICE_INFO max_alloc is 0");
    check!(!d.name.is_empty(), "DEVICE_INFO has an empty device name");
    Ok(())
}

async fn stats(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let s0 = c.stats().await?;
    check!(
        s0.max_buffers == w.max_buffers,
        "STATS max_buffers {} != WELCOME {}",
        s0.max_buffers,
        w.max_buffers
    );
    check!(s0.quota == w.quota, "STATS quota {} != WELCOME {}", s0.quota, w.quota);
    check!(
        s0.buffers == 0 && s0.used == 0,
        "a fresh session holds {} buffers, {} bytes",
        s0.buffers,
        s0.used
    );
    check!(s0.frames_in >= 1, "STATS counted {} request frames", s0.frames_in);
    let size = 1000.min(w.quota);
    let h = c.alloc(size).await?;
    c.write(h, 0, &[5u8; 10]).await?;
    let s1 = c.stats().await?;
    check!(
        s1.buffers == 1 && s1.used == size,
        "after ALLOC({size}) STATS says {} buffers, {} bytes",
        s1.buffers,
        s1.used
    );
    check!(s1.frames_in >= s0.frames_in + 3, "frames_in went from {} to {}", s0.frames_in, s1.frames_in);
    check!(s1.bytes_in >= s0.bytes_in + 8 + 22, "bytes_in went from {} to {}", s0.bytes_in, s1.bytes_in);
    check!(
        s1.bytes_out >= s0.bytes_out + 48 + 12,
        "bytes_out went from {} to {}",
        s0.bytes_out,
        s1.bytes_out
    );
    c.free(h).await?;
    let s2 = c.stats().await?;
    check!(
        s2.buffers == 0 && s2.used == 0,
        "after FREE STATS says {} buffers, {} bytes",
        s2.buffers,
        s2.used
    );
    Ok(())
}

async fn buffer_ops(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    if w.quota < 8192 {
        return Err(Stop::Skip(format!("quota {} is below the 8 KiB this case needs", w.quota)));
    }
    let a = c.alloc(4096).await?;
    let b = c.alloc(4096).await?;
    check!(a != b, "two buffers got the same handle {a:#x}");
    check!(c.read(a, 0, 4096).await?.iter().all(|x| *x == 0), "a fresh buffer does not read as zeros");

    let data = pattern(7, 4096);
    c.write(a, 0, &data).await?;
    check!(c.read(a, 0, 4096).await? == data, "READ does not return what WRITE wrote");
    check!(c.read(a, 1000, 100).await? == data[1000..1100], "READ at an offset returns other bytes");
    c.write(a, 4093, b"xyz").await?;
    let mut want_a = data.clone();
    want_a[4093..].copy_from_slice(b"xyz");
    check!(c.read(a, 4090, 6).await? == want_a[4090..], "WRITE at the end of the buffer did not land");

    // Zero-length operations inside the bounds succeed.
    c.write(a, 4096, &[]).await?;
    check!(c.read(a, 4096, 0).await?.is_empty(), "READ of 0 bytes returned data");
    c.empty_ok(Kind::FILL, &fill_payload(a, 4096, 0, 1)).await?;
    c.empty_ok(Kind::COPY, &copy_payload(a, 0, b, 4096, 0)).await?;

    c.empty_ok(Kind::FILL, &fill_payload(a, 10, 20, 0xAB)).await?;
    want_a[10..30].fill(0xAB);
    c.empty_ok(Kind::COPY, &copy_payload(a, 0, b, 100, 64)).await?;
    let mut want_b = vec![0u8; 4096];
    want_b[100..164].copy_from_slice(&want_a[..64]);
    check!(c.read(b, 0, 4096).await? == want_b, "COPY between buffers produced other bytes");
    // Within one buffer, ranges not overlapping.
    c.empty_ok(Kind::COPY, &copy_payload(a, 0, a, 2048, 1024)).await?;
    want_a.copy_within(0..1024, 2048);
    check!(c.read(a, 0, 4096).await? == want_a, "COPY within a buffer produced other bytes");

    c.free(b).await?;
    c.err(Kind::READ, &read_payload(b, 0, 1), ErrorCode::NO_SUCH_BUFFER).await?;
    c.err(Kind::FREE, &enc(&Free { handle: b }), ErrorCode::NO_SUCH_BUFFER).await?;
    // A new buffer after a free reads as zeros.
    let d = c.alloc(4096).await?;
    check!(d != b, "a freed handle was reissued at once");
    check!(c.read(d, 0, 4096).await?.iter().all(|x| *x == 0), "a buffer reused after FREE is not zeroed");
    c.free(a).await?;
    c.free(d).await?;
    Ok(())
}

async fn dispatch_kernels(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    if !w.caps.contains(Caps::DISPATCH) {
        return Err(Stop::Skip("the node does not advertise DISPATCH".into()));
    }
    let n = 8usize;
    let xs: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
    let ys: Vec<f32> = (0..n).map(|i| 3.0 - i as f32 * 0.25).collect();
    let a = c.alloc(4 * n as u64).await?;
    let b = c.alloc(4 * n as u64).await?;
    let out = c.alloc(4 * n as u64).await?;
    c.write(a, 0, &f32_bytes(&xs)).await?;
    c.write(b, 0, &f32_bytes(&ys)).await?;

    let checks: [(&str, KernelId, u32, f32, Vec<f32>); 3] = [
        ("ADD", KernelId::ADD, b, 0.0, xs.iter().zip(&ys).map(|(x, y)| x + y).collect()),
        ("MUL", KernelId::MUL, b, 0.0, xs.iter().zip(&ys).map(|(x, y)| x * y).collect()),
        ("SCALE", KernelId::SCALE, 0, 2.5, xs.iter().map(|x| 2.5 * x).collect()),
    ];
    for (name, kernel, rhs, alpha, want) in checks {
        c.empty_ok(Kind::DISPATCH, &dispatch_payload(kernel, a, rhs, out, 0, 0, n as u32, alpha)).await?;
        let got = f32_values(&c.read(out, 0, 4 * n as u32).await?);
        check!(got == want, "{name}: got {got:?}, expected {want:?}");
    }

    // MATMUL: (2×3) · (3×2).
    let ma = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mb = [7.0f32, 8.0, 9.0, 10.0, 11.0, 12.0];
    let want = [58.0f32, 64.0, 139.0, 154.0];
    let (x, y, z) = (c.alloc(24).await?, c.alloc(24).await?, c.alloc(16).await?);
    c.write(x, 0, &f32_bytes(&ma)).await?;
    c.write(y, 0, &f32_bytes(&mb)).await?;
    c.empty_ok(Kind::DISPATCH, &dispatch_payload(KernelId::MATMUL, x, y, z, 2, 3, 2, 0.0)).await?;
    let got = f32_values(&c.read(z, 0, 16).await?);
    check!(got == want, "MATMUL: got {got:?}, expected {want:?}");
    Ok(())
}

async fn bye_closes(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    c.alloc(64.min(w.quota)).await?;
    c.bye().await?;
    // BYE is allowed before HELLO too.
    let mut d = Conn::open(&cx).await?;
    d.bye().await
}

async fn malformed(cx: Cx) -> R<()> {
    let mut c = Conn::open(&cx).await?;
    // A short HELLO: MALFORMED, and the session still takes a good one.
    c.err(Kind::HELLO, &[1, 0, 1], ErrorCode::MALFORMED).await?;
    let w = c.hello().await?;
    if w.auth_required() {
        let Some(token) = &cx.token else {
            return Err(Stop::Skip("the node requires AUTH and no token was given".into()));
        };
        c.err(Kind::AUTH, &[0u8; 31], ErrorCode::MALFORMED).await?;
        c.empty_ok(Kind::AUTH, &AuthKey::new(token).auth_tag(&w.nonce)).await?;
    }
    let h = c.alloc(64.min(w.quota)).await?;
    let cases: Vec<(Kind, Vec<u8>, &str)> = vec![
        (Kind::ALLOC, vec![1, 0, 0, 0, 0, 0, 0], "ALLOC of 7 bytes"),
        (Kind::ALLOC, vec![1, 0, 0, 0, 0, 0, 0, 0, 0], "ALLOC with a trailing byte"),
        (Kind::FREE, vec![1, 2, 3], "short FREE"),
        (Kind::WRITE, vec![1, 2, 3, 4, 5], "WRITE shorter than its prefix"),
        (Kind::READ, vec![0u8; 17], "READ with a trailing byte"),
        (Kind::COPY, vec![0u8; 31], "short COPY"),
        (Kind::FILL, vec![0u8; 22], "FILL with a trailing byte"),
        (Kind::DISPATCH, vec![0u8; 28], "short DISPATCH"),
        (Kind::DEVICE_INFO, vec![0], "DEVICE_INFO with a payload"),
        (Kind::STATS, vec![0, 0], "STATS with a payload"),
    ];
    for (kind, payload, what) in cases {
        let r = c.call(kind, &payload).await?;
        check_error(&r, kind, ErrorCode::MALFORMED, what)?;
    }
    // DISPATCH with its reserved field set.
    let mut d = dispatch_payload(KernelId::ADD, h, h, h, 0, 0, 1, 0.0);
    d[2] = 1;
    let r = c.call(Kind::DISPATCH, &d).await?;
    check_error(&r, Kind::DISPATCH, ErrorCode::MALFORMED, "DISPATCH with reserved bits")?;
    // A request carrying the RESPONSE flag.
    c.err_flags(Kind::PING, Flags::RESPONSE, b"x", ErrorCode::MALFORMED).await?;
    c.ok(Kind::PING, b"usable").await?;
    c.stats().await?;
    Ok(())
}

async fn bad_crc_closes(cx: Cx) -> R<()> {
    let (mut c, _) = Conn::ready(&cx).await?;
    let mut f = frame(Kind::PING, Flags::NONE, 9, b"checksum me");
    f[HEADER_LEN + 3] ^= 0x40;
    c.send_bytes(&f).await?;
    c.fatal(ErrorCode::BAD_FRAME, "bad payload CRC").await?;
    // A corrupted CRC field on an empty frame, before HELLO.
    let mut d = Conn::open(&cx).await?;
    let mut f =
        frame(Kind::HELLO, Flags::NONE, 1, &enc(&Hello { min_version: 1, max_version: 1, caps: Caps(0) }));
    f[12] ^= 1;
    d.send_bytes(&f).await?;
    d.fatal(ErrorCode::BAD_FRAME, "bad header CRC before HELLO").await
}

async fn bad_magic_closes(cx: Cx) -> R<()> {
    let mut c = Conn::open(&cx).await?;
    let mut f =
        frame(Kind::HELLO, Flags::NONE, 1, &enc(&Hello { min_version: 1, max_version: 1, caps: Caps(0) }));
    f[3] = b'B';
    c.send_bytes(&f).await?;
    c.fatal(ErrorCode::BAD_FRAME, "bad magic before HELLO").await?;
    let (mut d, _) = Conn::ready(&cx).await?;
    d.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await?;
    d.fatal(ErrorCode::BAD_FRAME, "HTTP request on a ready session").await
}

async fn bad_flags_close(cx: Cx) -> R<()> {
    for (kind, flags, what) in [
        (Kind::PING, 0x08u8, "reserved flag bit 3"),
        (Kind::PING, 0x80, "reserved flag bit 7"),
        (Kind::PING, 0x02, "ERROR flag on PING"),
        (Kind::ERROR, 0x00, "ERROR kind without the ERROR flag"),
    ] {
        let (mut c, _) = Conn::ready(&cx).await?;
        c.send_bytes(&frame(kind, Flags(flags), 3, b"")).await?;
        c.fatal(ErrorCode::BAD_FRAME, what).await?;
    }
    Ok(())
}

async fn unknown_kind(cx: Cx) -> R<()> {
    let (mut c, _) = Conn::ready(&cx).await?;
    // 0x07 is PROGRESS and 0x37 TOKEN, which only a node sends.
    for k in [0x00u8, 0x07, 0x0F, 0x16, 0x21, 0x37, 0x3F, 0x50, 0x7E, 0x80, 0xC3, 0xFF] {
        c.err(Kind(k), &[], ErrorCode::UNKNOWN_KIND).await?;
        c.err(Kind(k), &pattern(u32::from(k), 40), ErrorCode::UNKNOWN_KIND).await?;
    }
    c.ok(Kind::PING, b"still usable").await?;
    Ok(())
}

async fn unsupported(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    // The model kinds are not served unless the node advertises MODELS. A node that knows
    // their payloads may refuse one that does not decode as MALFORMED before it gets to
    // UNSUPPORTED; either way the request is refused, typed, and the session stays usable.
    if !w.caps.contains(Caps::MODELS) {
        for k in [
            Kind::MODEL_LOAD,
            Kind::MODEL_UNLOAD,
            Kind::INFER,
            Kind::MODEL_UPLOAD,
            Kind::MODEL_CHUNK,
            Kind::MODEL_COMMIT,
            Kind::GENERATE,
            Kind::MODEL_LIST,
        ] {
            for payload in [&b""[..], b"some model bytes"] {
                let what = format!("{k:?} on a node without MODELS ({} payload bytes)", payload.len());
                let r = c.call(k, payload).await?;
                if check_error(&r, k, ErrorCode::UNSUPPORTED, &what).is_err() {
                    check_error(&r, k, ErrorCode::MALFORMED, &what)?;
                }
            }
        }
    }
    c.err_flags(Kind::PING, Flags::COMPRESSED, b"lz4?", ErrorCode::UNSUPPORTED).await?;
    if w.caps.contains(Caps::DISPATCH) && w.max_buffers >= 3 && w.quota >= 3 * 256 {
        let (a, b, out) = (c.alloc(256).await?, c.alloc(256).await?, c.alloc(256).await?);
        for kernel in [0u16, 0x7FFF, 0xFFFF] {
            let p = dispatch_payload(KernelId(kernel), a, b, out, 0, 0, 4, 0.0);
            let r = c.call(Kind::DISPATCH, &p).await?;
            check_error(&r, Kind::DISPATCH, ErrorCode::UNSUPPORTED, &format!("kernel id {kernel}"))?;
        }
    }
    c.ok(Kind::PING, b"still usable").await?;
    Ok(())
}

/// The order and limits of an upload (MODEL_UPLOAD, MODEL_CHUNK, MODEL_COMMIT), checked without
/// knowing any model's name: every refusal is typed and leaves the session usable and empty.
async fn model_upload_rules(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    if !w.caps.contains(Caps::MODELS) {
        return Err(Stop::Skip("the node does not advertise MODELS".into()));
    }
    c.err(Kind::MODEL_COMMIT, &[], ErrorCode::WRONG_STATE).await?;
    c.err(Kind::MODEL_CHUNK, &enc(&ModelChunk { offset: 0, data: b"data" }), ErrorCode::WRONG_STATE).await?;
    let base = "no-such-model.rela-conformance";
    c.err(Kind::MODEL_UPLOAD, &enc(&ModelUpload { size: 0, base }), ErrorCode::INVALID_ARGUMENT).await?;
    let over = w.quota.saturating_add(1);
    c.err(Kind::MODEL_UPLOAD, &enc(&ModelUpload { size: over, base }), ErrorCode::QUOTA_EXCEEDED).await?;
    c.err(Kind::MODEL_UPLOAD, &enc(&ModelUpload { size: 64.min(w.quota), base }), ErrorCode::NO_SUCH_MODEL)
        .await?;
    // Nothing was staged by the refused uploads.
    c.err(Kind::MODEL_COMMIT, &[], ErrorCode::WRONG_STATE).await?;
    for bad in [&b"\x08\0\0\0\0\0\0\0\x03../x"[..], b"\x01\0\0\0\0\0\0\0\x00", b"\x01\0\0"] {
        c.err(Kind::MODEL_UPLOAD, bad, ErrorCode::MALFORMED).await?;
    }
    c.err(Kind::MODEL_COMMIT, b"x", ErrorCode::MALFORMED).await?;
    let s = c.stats().await?;
    check!(s.used == 0 && s.buffers == 0, "refused uploads left {} bytes in {} buffers", s.used, s.buffers);
    c.ok(Kind::PING, b"still usable").await?;
    Ok(())
}

/// MODEL_LIST: every entry by index, each a name MODEL_LOAD takes, sorted, none twice, the same
/// count throughout; past the end an empty entry; a payload that is not an index is MALFORMED.
async fn model_list(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    if !w.caps.contains(Caps::MODELS) {
        return Err(Stop::Skip("the node does not advertise MODELS".into()));
    }
    let mut names: Vec<String> = Vec::new();
    let mut count = None;
    for index in 0..=u16::MAX {
        let p = c.ok(Kind::MODEL_LIST, &enc(&ModelList { index })).await?;
        let m = match ModelListed::parse(&p) {
            Ok(m) => m,
            Err(e) => fail!("MODEL_LIST {index} answer does not decode ({} bytes): {e}", p.len()),
        };
        check!(*count.get_or_insert(m.count) == m.count, "the count changed from {count:?} to {}", m.count);
        if index >= m.count {
            check!(m.kind == ModelKind::NONE && m.name.is_empty(), "entry {index} past the end: {m:?}");
            break;
        }
        check!(m.kind != ModelKind::NONE, "entry {index} of {} has no kind", m.count);
        check!(
            names.last().is_none_or(|last| last.as_str() < m.name),
            "entry {index} {:?} is out of order",
            m.name
        );
        names.push(m.name.to_owned());
    }
    for bad in [&b""[..], b"\x01", b"\x01\x00\x00"] {
        c.err(Kind::MODEL_LIST, bad, ErrorCode::MALFORMED).await?;
    }
    c.ok(Kind::PING, b"still usable").await?;
    Ok(())
}

async fn no_such_buffer(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let h = c.alloc(64.min(w.quota)).await?;
    let freed = c.alloc(1).await?;
    c.free(freed).await?;
    let mut bogus = vec![0u32, 1, 0xFFFF_FFFF, h ^ 1, h.wrapping_add(1), h.wrapping_add(0x9E37_79B9), freed];
    bogus.retain(|b| *b != h);
    for x in bogus {
        let cases: Vec<(Kind, Vec<u8>)> = vec![
            (Kind::FREE, enc(&Free { handle: x })),
            (Kind::WRITE, write_payload(x, 0, b"data")),
            (Kind::READ, read_payload(x, 0, 4)),
            (Kind::FILL, fill_payload(x, 0, 4, 1)),
            (Kind::COPY, copy_payload(x, 0, h, 0, 4)),
            (Kind::COPY, copy_payload(h, 0, x, 0, 4)),
        ];
        for (kind, p) in cases {
            let r = c.call(kind, &p).await?;
            check_error(&r, kind, ErrorCode::NO_SUCH_BUFFER, &format!("{kind:?} on handle {x:#x}"))?;
        }
        if w.caps.contains(Caps::DISPATCH) {
            for (a, b, out) in [(x, h, h), (h, x, h), (h, h, x)] {
                let p = dispatch_payload(KernelId::ADD, a, b, out, 0, 0, 1, 0.0);
                let r = c.call(Kind::DISPATCH, &p).await?;
                check_error(&r, Kind::DISPATCH, ErrorCode::NO_SUCH_BUFFER, &format!("ADD naming {x:#x}"))?;
            }
        }
    }
    check!(c.read(h, 0, 4).await? == [0; 4], "the real buffer changed");
    Ok(())
}

async fn out_of_bounds(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    if w.quota < 3 * 64 || w.max_buffers < 3 {
        return Err(Stop::Skip("quota or buffer limit below what the case needs (3 × 64 bytes)".into()));
    }
    let h = c.alloc(64).await?;
    let g = c.alloc(64).await?;
    let o = c.alloc(64).await?;
    let m = u64::MAX;
    let cases: Vec<(Kind, Vec<u8>, &str)> = vec![
        (Kind::WRITE, write_payload(h, 60, &[1; 8]), "WRITE past the end"),
        (Kind::WRITE, write_payload(h, 65, &[]), "empty WRITE past the end"),
        (Kind::WRITE, write_payload(h, m - 3, &[1; 8]), "WRITE whose range wraps u64"),
        (Kind::WRITE, write_payload(h, m, &[1]), "WRITE at offset u64::MAX"),
        (Kind::READ, read_payload(h, 0, 65), "READ past the end"),
        (Kind::READ, read_payload(h, 64, 1), "READ at the end"),
        (Kind::READ, read_payload(h, m, 2), "READ whose range wraps u64"),
        (Kind::FILL, fill_payload(h, 1, m, 9), "FILL of u64::MAX bytes"),
        (Kind::FILL, fill_payload(h, m, 2, 9), "FILL whose range wraps u64"),
        (Kind::FILL, fill_payload(h, 64, 1, 9), "FILL at the end"),
        (Kind::COPY, copy_payload(g, 60, h, 0, 8), "COPY from past the end"),
        (Kind::COPY, copy_payload(g, 0, h, 60, 8), "COPY to past the end"),
        (Kind::COPY, copy_payload(g, 0, h, 0, m), "COPY of u64::MAX bytes"),
        (Kind::COPY, copy_payload(g, m - 1, h, 0, 4), "COPY whose source range wraps"),
        (Kind::COPY, copy_payload(g, 0, h, m - 1, 4), "COPY whose destination range wraps"),
    ];
    for (kind, p, what) in cases {
        let r = c.call(kind, &p).await?;
        check_error(&r, kind, ErrorCode::OUT_OF_BOUNDS, what)?;
    }
    if w.caps.contains(Caps::DISPATCH) {
        let kernels = [
            (
                dispatch_payload(KernelId::ADD, h, g, o, 0, 0, 17, 0.0),
                "ADD of 17 elements on 16-element buffers",
            ),
            (dispatch_payload(KernelId::SCALE, h, 0, o, 0, 0, u32::MAX, 1.0), "SCALE of u32::MAX elements"),
            (dispatch_payload(KernelId::MATMUL, h, g, o, 5, 4, 4, 0.0), "MATMUL with a too-small a"),
            (
                dispatch_payload(KernelId::MATMUL, h, g, o, u32::MAX, u32::MAX, u32::MAX, 0.0),
                "MATMUL whose sizes overflow",
            ),
        ];
        for (p, what) in kernels {
            let r = c.call(Kind::DISPATCH, &p).await?;
            check_error(&r, Kind::DISPATCH, ErrorCode::OUT_OF_BOUNDS, what)?;
        }
    }
    for b in [h, g, o] {
        check!(c.read(b, 0, 64).await?.iter().all(|x| *x == 0), "a refused request changed a buffer");
    }
    Ok(())
}

async fn invalid_argument(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    if w.quota < 3 * 64 || w.max_buffers < 3 {
        return Err(Stop::Skip("quota or buffer limit below what the case needs (3 × 64 bytes)".into()));
    }
    c.err(Kind::ALLOC, &enc(&Alloc { size: 0 }), ErrorCode::INVALID_ARGUMENT).await?;
    let h = c.alloc(64).await?;
    let g = c.alloc(64).await?;
    let o = c.alloc(64).await?;
    c.write(h, 0, &pattern(3, 64)).await?;
    for (src, dst, len) in [(0u64, 8u64, 16u64), (8, 0, 16), (0, 0, 1), (10, 20, 40)] {
        let r = c.call(Kind::COPY, &copy_payload(h, src, h, dst, len)).await?;
        check_error(
            &r,
            Kind::COPY,
            ErrorCode::INVALID_ARGUMENT,
            &format!("overlapping COPY {src}→{dst} × {len}"),
        )?;
    }
    check!(c.read(h, 0, 64).await? == pattern(3, 64), "a refused COPY changed the buffer");
    if w.caps.contains(Caps::DISPATCH) {
        let kernels = [
            (dispatch_payload(KernelId::ADD, h, g, h, 0, 0, 16, 0.0), "ADD with out = a"),
            (dispatch_payload(KernelId::MUL, h, g, g, 0, 0, 16, 0.0), "MUL with out = b"),
            (dispatch_payload(KernelId::SCALE, h, 0, h, 0, 0, 16, 2.0), "SCALE with out = x"),
            (dispatch_payload(KernelId::MATMUL, h, g, g, 4, 4, 4, 0.0), "MATMUL with out = b"),
            (dispatch_payload(KernelId::ADD, h, g, o, 1, 0, 16, 0.0), "ADD with m set"),
            (dispatch_payload(KernelId::ADD, h, g, o, 0, 0, 16, 1.0), "ADD with alpha set"),
            (dispatch_payload(KernelId::SCALE, h, g, o, 0, 0, 16, 1.0), "SCALE with b set"),
            (dispatch_payload(KernelId::SCALE, h, 0, o, 0, 0, 16, f32::NAN), "SCALE by NaN"),
            (dispatch_payload(KernelId::SCALE, h, 0, o, 0, 0, 16, f32::INFINITY), "SCALE by infinity"),
            (dispatch_payload(KernelId::MATMUL, h, g, o, 2, 2, 2, 1.0), "MATMUL with alpha set"),
        ];
        for (p, what) in kernels {
            let r = c.call(Kind::DISPATCH, &p).await?;
            check_error(&r, Kind::DISPATCH, ErrorCode::INVALID_ARGUMENT, what)?;
        }
        check!(c.read(o, 0, 64).await?.iter().all(|x| *x == 0), "a refused DISPATCH wrote its output");
    }
    Ok(())
}

/// How much of the quota this node can really back: skips unless the device has room.
async fn need_room(c: &mut Conn, bytes: u64) -> R<u64> {
    let (_, free, max_alloc) = c.device_info().await?;
    if free < bytes {
        return Err(Stop::Skip(format!("the node has {free} bytes free, the case needs {bytes}")));
    }
    Ok(max_alloc)
}

async fn quota_enforced(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let max_alloc = need_room(&mut c, w.quota).await?;
    let piece = w.quota.min(max_alloc).max(1);
    let pieces = w.quota.div_ceil(piece);
    if pieces >= u64::from(w.max_buffers) {
        return Err(Stop::Skip(format!(
            "filling the quota ({} bytes) takes {pieces} buffers of at most {max_alloc} bytes; the limit is {}",
            w.quota, w.max_buffers
        )));
    }
    let mut left = w.quota;
    let mut handles = Vec::new();
    while left > 0 {
        let size = left.min(piece);
        handles.push(c.alloc(size).await?);
        left -= size;
    }
    let s = c.stats().await?;
    check!(s.used == w.quota, "holding the whole quota, STATS says {} bytes (quota {})", s.used, w.quota);
    c.err(Kind::ALLOC, &enc(&Alloc { size: 1 }), ErrorCode::QUOTA_EXCEEDED).await?;
    c.ok(Kind::PING, b"still usable").await?;
    for h in handles {
        c.free(h).await?;
    }
    for size in [w.quota + 1, u64::MAX] {
        c.err(Kind::ALLOC, &enc(&Alloc { size }), ErrorCode::QUOTA_EXCEEDED).await?;
    }
    let h = c.alloc(1).await?;
    c.free(h).await
}

async fn max_buffers_enforced(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let n = u64::from(w.max_buffers);
    if w.quota < n {
        return Err(Stop::Skip(format!("quota {} is below {n} one-byte buffers", w.quota)));
    }
    need_room(&mut c, n).await?;
    let mut handles = Vec::new();
    for i in 0..n {
        let r = c.call(Kind::ALLOC, &enc(&Alloc { size: 1 })).await?;
        if let Some(e) = r.error()
            && e.code == ErrorCode::OUT_OF_MEMORY
        {
            return Err(Stop::Skip(format!("the node ran out of device memory after {i} buffers")));
        }
        check!(r.kind == Kind::ALLOC, "ALLOC #{} of {n} answered {}", i + 1, r.describe());
        let a = match Allocated::parse(&r.payload) {
            Ok(a) => a,
            Err(e) => fail!("Allocated does not decode: {e}"),
        };
        check!(
            a.handle != 0 && !handles.contains(&a.handle),
            "ALLOC #{} returned handle {:#x} again",
            i + 1,
            a.handle
        );
        handles.push(a.handle);
    }
    let s = c.stats().await?;
    check!(u64::from(s.buffers) == n, "holding {n} buffers, STATS says {}", s.buffers);
    c.err(Kind::ALLOC, &enc(&Alloc { size: 1 }), ErrorCode::TOO_MANY_BUFFERS).await?;
    let last = handles.pop().unwrap_or_default();
    c.free(last).await?;
    handles.push(c.alloc(1).await?);
    c.err(Kind::ALLOC, &enc(&Alloc { size: 1 }), ErrorCode::TOO_MANY_BUFFERS).await?;
    for h in handles {
        c.free(h).await?;
    }
    Ok(())
}

async fn max_payload_accepted(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let size = u64::from(w.max_payload);
    if w.quota < size {
        return Err(Stop::Skip(format!("quota {} is below max_payload {size}", w.quota)));
    }
    let max_alloc = need_room(&mut c, size).await?;
    if max_alloc < size {
        return Err(Stop::Skip(format!("max_alloc {max_alloc} is below max_payload {size}")));
    }
    let h = c.alloc(size).await?;
    // A WRITE frame whose payload is exactly max_payload.
    let data = pattern(11, w.max_payload as usize - 12);
    c.write(h, 12, &data).await?;
    let back = c.read(h, 0, w.max_payload).await?;
    check!(back[..12].iter().all(|x| *x == 0), "bytes before the WRITE changed");
    check!(back[12..] == data[..], "READ of max_payload bytes returned other data");
    c.free(h).await
}

async fn read_above_max_payload_refused(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let over = u64::from(w.max_payload) + 1;
    let (_, free, max_alloc) = c.device_info().await?;
    // With a buffer big enough, the only thing wrong is the length: INVALID_ARGUMENT. With a
    // smaller one, the range is out of bounds too, and either code is a refusal.
    let big = over <= w.quota && over <= max_alloc && over <= free;
    let size = if big { over } else { 4096.min(w.quota).min(max_alloc) };
    let h = c.alloc(size).await?;
    let r = c.call(Kind::READ, &read_payload(h, 0, over as u32)).await?;
    if big {
        check_error(&r, Kind::READ, ErrorCode::INVALID_ARGUMENT, "READ of max_payload + 1 bytes")?;
    } else if check_error(&r, Kind::READ, ErrorCode::INVALID_ARGUMENT, "READ of max_payload + 1").is_err() {
        check_error(&r, Kind::READ, ErrorCode::OUT_OF_BOUNDS, "READ of max_payload + 1 bytes")?;
    }
    let r = c.call(Kind::READ, &read_payload(h, 0, u32::MAX)).await?;
    if check_error(&r, Kind::READ, ErrorCode::INVALID_ARGUMENT, "READ of u32::MAX bytes").is_err() {
        check_error(&r, Kind::READ, ErrorCode::OUT_OF_BOUNDS, "READ of u32::MAX bytes")?;
    }
    c.ok(Kind::PING, b"still usable").await?;
    c.free(h).await
}

async fn payload_too_large_closes(cx: Cx) -> R<()> {
    // Only the header is sent: a node that waited for the payload would time out here.
    let (mut c, w) = Conn::ready(&cx).await?;
    c.send_bytes(&header_only(Kind::WRITE, 0, 5, w.max_payload + 1)).await?;
    c.fatal(ErrorCode::PAYLOAD_TOO_LARGE, "header len max_payload + 1").await?;
    let mut d = Conn::open(&cx).await?;
    d.send_bytes(&header_only(Kind::PING, 0, 1, u32::MAX)).await?;
    d.fatal(ErrorCode::PAYLOAD_TOO_LARGE, "header len 0xFFFFFFFF before HELLO").await?;
    let (mut e, _) = Conn::ready(&cx).await?;
    e.send_bytes(&header_only(Kind::HELLO, 0, 2, MAX_PAYLOAD + 1)).await?;
    e.fatal(ErrorCode::PAYLOAD_TOO_LARGE, "header len 16 MiB + 1").await
}

async fn pipelining_in_order(cx: Cx) -> R<()> {
    let (mut c, w) = Conn::ready(&cx).await?;
    let h = c.alloc(4096.min(w.quota)).await?;
    let len = 4096.min(w.quota) as usize;
    let data = pattern(21, len);
    // (seq, kind, payload, what the answer must be)
    enum Want {
        Echo(Vec<u8>),
        Empty,
        Data(Vec<u8>),
        Error(ErrorCode),
        Any,
    }
    let mut reqs: Vec<(u16, Kind, Vec<u8>, Want)> = vec![
        (100, Kind::PING, b"first".to_vec(), Want::Echo(b"first".to_vec())),
        (101, Kind::ALLOC, enc(&Alloc { size: 0 }), Want::Error(ErrorCode::INVALID_ARGUMENT)),
        (102, Kind::WRITE, write_payload(h, 0, &data), Want::Empty),
        (103, Kind::READ, read_payload(h, 0, len as u32), Want::Data(data.clone())),
        (0xFFFF, Kind::PING, b"max seq".to_vec(), Want::Echo(b"max seq".to_vec())),
        (0, Kind::PING, b"zero seq".to_vec(), Want::Echo(b"zero seq".to_vec())),
        (104, Kind::STATS, Vec::new(), Want::Any),
        (105, Kind::FREE, enc(&Free { handle: h ^ 0x5555 }), Want::Error(ErrorCode::NO_SUCH_BUFFER)),
        (106, Kind(0x99), Vec::new(), Want::Error(ErrorCode::UNKNOWN_KIND)),
        (107, Kind::FILL, fill_payload(h, 0, 16, 0xEE), Want::Empty),
        (108, Kind::READ, read_payload(h, 0, 16), Want::Data(vec![0xEE; 16])),
    ];
    for i in 0..16u16 {
        let p = pattern(u32::from(i), usize::from(i) * 7);
        reqs.push((200 + i, Kind::PING, p.clone(), Want::Echo(p)));
    }
    let mut bytes = Vec::new();
    for (seq, kind, payload, _) in &reqs {
        bytes.extend_from_slice(&frame(*kind, Flags::NONE, *seq, payload));
    }
    c.send_bytes(&bytes).await?;
    for (i, (seq, kind, _, want)) in reqs.iter().enumerate() {
        let r = c.recv().await?;
        check!(r.seq == *seq, "pipelined answer #{i} has seq {}, expected {seq} ({kind:?})", r.seq);
        match want {
            Want::Echo(p) | Want::Data(p) => {
                check!(
                    r.kind == *kind && r.payload == *p,
                    "pipelined {kind:?} #{i} answered {}",
                    r.describe()
                );
            }
            Want::Empty => {
                check!(
                    r.kind == *kind && r.payload.is_empty(),
                    "pipelined {kind:?} #{i} answered {}",
                    r.describe()
                );
            }
            Want::Error(code) => check_error(&r, *kind, *code, &format!("pipelined {kind:?} #{i}"))?,
            Want::Any => check!(r.kind == *kind, "pipelined {kind:?} #{i} answered {}", r.describe()),
        }
    }
    c.free(h).await
}
