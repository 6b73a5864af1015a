//! The session target's harness: two sessions, one host-memory backend, a shadow model.
//!
//! [`run`] decodes a [`Script`] and plays it against two [`Session`]s that share one
//! [`HostBackend`] (the reference backend, over a heap arena of at most [`MAX_ARENA`] bytes).
//! Frames take the host's path: encoded with the real CRC, header checked with
//! [`HeaderRepr::parse`] against the session's cap (a rejection goes to
//! [`Session::handle_frame_error`]), then [`Frame::parse`] and [`Session::handle_frame`].
//!
//! A shadow model keeps, per session, every live handle with the bytes its buffer must hold
//! (`None` where a kernel wrote). Every reply is checked against it, and after every step:
//!
//! 1. **Accounting:** the backend's `usage()` equals the sum of both sessions' `stats()`, and
//!    each session's stats equal its model (buffers, bytes).
//! 2. **Isolation:** every handle a session holds resolves to an id the backend knows with the
//!    model's size, no id belongs to both sessions, a request that names another session's (or
//!    a freed) handle never succeeds, READ returns exactly the model's bytes (so nothing leaks
//!    between sessions or survives a free), and nothing but HELLO/AUTH succeeds before the
//!    handshake.
//! 3. **Output:** `poll_transmit` drains within [`MAX_PENDING`] frames and never fails with a
//!    full-size buffer; every frame re-parses with [`Frame::parse`] and [`Response::parse`],
//!    carries the right CRC, echoes the request's seq and kind, and a request gets exactly one
//!    reply. A closed session has released everything.
//!
//! At the end both sessions are aborted: the backend must hold nothing and the whole arena
//! must be zero again (zero on free).

use rela_backend_host::HostBackend;
use rela_core::auth::AuthKey;
use rela_core::backend::{BufferId, GpuBackend, KernelId};
use rela_core::config::{HEADER_LEN, MAX_PAYLOAD, MAX_PENDING, NONCE_LEN, PROTOCOL_VERSION};
use rela_core::crc32::SoftCrc32;
use rela_core::fuzzing::{frame_crc, handle_table};
use rela_core::session::{ApiMisuse, Event, Session, SessionConfig, State};
use rela_core::time::{Duration, Instant};
use rela_core::wire::msg::{self, Caps, Message, Request, Response};
use rela_core::wire::{
    ErrorCode, Flags, Frame, FrameError, HeaderError, HeaderRepr, Kind, RawHeader, encode_frame,
};

use crate::AUTH_TOKEN;
use crate::script::{HandleRef, Op, Req, Script, Setup};

/// Largest backend arena a script can ask for.
pub const MAX_ARENA: u64 = 1 << 16;
/// Largest session payload cap a script can configure (the output buffer's payload room).
pub const MAX_SESSION_PAYLOAD: u32 = 1 << 16;

/// Whether to print every step and reply to stderr (`RELA_FUZZ_TRACE=1`), for reading a crash
/// input: `RELA_FUZZ_TRACE=1 fuzz/target/<triple>/release/session <crash-file>`.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("RELA_FUZZ_TRACE").is_some_and(|v| v != "0"))
}

thread_local! {
    /// The output buffer, kept between runs: allocating 64 KiB per input dominated the run time.
    static OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Plays one script; panics on any broken invariant.
pub fn run(data: &[u8]) {
    let Some(script) = Script::parse(data) else { return };
    let mut arena = vec![0u8; script.arena.min(MAX_ARENA) as usize];
    {
        let now = Instant::from_micros(1_000_000);
        let [s0, s1] = script.setups;
        let mut h = Harness {
            now,
            backend: HostBackend::new(&mut arena[..]),
            sides: [Side::new(s0, now), Side::new(s1, now)],
            out: OUT.take(),
        };
        h.out.resize(HEADER_LEN + MAX_SESSION_PAYLOAD as usize, 0);
        h.check_invariants();
        if trace() {
            eprintln!("arena {} setups {:?}", h.backend.info().total, script.setups);
        }
        for op in script {
            if trace() {
                eprintln!("> {op:?}");
            }
            h.step(op);
            h.check_invariants();
        }
        for who in 0..2 {
            h.abort(who);
        }
        h.check_invariants();
        let usage = h.backend.usage();
        assert_eq!((usage.used, usage.buffers), (0, 0), "backend holds memory after both sessions ended");
        OUT.set(h.out);
    }
    assert!(arena.iter().all(|&b| b == 0), "freed memory was not zeroed");
}

/// What a buffer must hold: one entry per byte, `None` where a kernel wrote.
#[derive(Debug)]
struct Shadow {
    handle: u32,
    bytes: Vec<Option<u8>>,
}

/// One session and its model.
#[derive(Debug)]
struct Side {
    session: Session,
    key: Option<AuthKey>,
    model: Vec<Shadow>,
    /// Handles this session instance freed or lost; it must never reissue or honour them.
    retired: Vec<u32>,
}

impl Side {
    fn new(setup: Setup, now: Instant) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        // The first four bytes seed the handle sequence; the rest only needs to vary.
        nonce[..4].copy_from_slice(&setup.nonce_seed);
        for (i, b) in nonce.iter_mut().enumerate().skip(4) {
            *b = setup.nonce_seed[i % 4] ^ (i as u8).wrapping_mul(37);
        }
        let key = setup.auth.then(|| AuthKey::new(AUTH_TOKEN));
        let config = SessionConfig {
            max_payload: setup.max_payload.min(u64::from(MAX_SESSION_PAYLOAD)) as u32,
            max_buffers: u16::from(setup.max_buffers),
            quota: setup.quota,
            handshake_timeout: Duration::from_millis(setup.handshake_ms),
            idle_timeout: Duration::from_millis(setup.idle_ms),
            auth: key.clone(),
            models: false,
        };
        Self { session: Session::new(config, nonce, now), key, model: Vec::new(), retired: Vec::new() }
    }

    fn is_open(&self) -> bool {
        !matches!(self.session.state(), State::Closing | State::Closed)
    }

    fn shadow(&mut self, handle: u32, what: &str) -> &mut Shadow {
        match self.model.iter_mut().find(|s| s.handle == handle) {
            Some(s) => s,
            None => panic!("{what} succeeded on handle {handle:#x}, which this session does not own"),
        }
    }

    fn used(&self) -> u64 {
        self.model.iter().map(|s| s.bytes.len() as u64).sum()
    }
}

/// One reply frame, copied out of the output buffer.
#[derive(Debug)]
struct Reply {
    kind: Kind,
    flags: Flags,
    seq: u16,
    payload: Vec<u8>,
}

impl Reply {
    fn response(&self) -> Response<'_> {
        // `drain` checked that this decodes.
        Response::parse(self.kind, self.flags, &self.payload).expect("checked in drain")
    }
}

struct Harness<'a> {
    now: Instant,
    backend: HostBackend<'a>,
    sides: [Side; 2],
    out: Vec<u8>,
}

impl Harness<'_> {
    fn step(&mut self, op: Op<'_>) {
        match op {
            Op::Request { who, seq, req } => {
                let who = usize::from(who & 1);
                let (kind, payload) = self.encode_request(who, req);
                self.deliver(who, kind.0, Flags::NONE.0, seq, &payload);
            }
            Op::Raw { who, kind, flags, seq, payload } => self.deliver(usize::from(who & 1), kind, flags, seq, payload),
            Op::FrameError { who, variant } => {
                let (error, code) = match variant % 8 {
                    0 => (FrameError::Header(HeaderError::BadMagic(*b"RELB")), ErrorCode::BAD_FRAME),
                    1 => (FrameError::Header(HeaderError::ReservedFlags(0x80)), ErrorCode::BAD_FRAME),
                    2 => (FrameError::Header(HeaderError::ErrorFlagMismatch), ErrorCode::BAD_FRAME),
                    3 => (
                        FrameError::Header(HeaderError::PayloadTooLarge { len: u32::MAX, max: MAX_PAYLOAD }),
                        ErrorCode::PAYLOAD_TOO_LARGE,
                    ),
                    4 => (FrameError::Header(HeaderError::Truncated), ErrorCode::BAD_FRAME),
                    5 => (FrameError::TruncatedPayload { expected: 9, actual: 3 }, ErrorCode::BAD_FRAME),
                    6 => (FrameError::TrailingBytes, ErrorCode::BAD_FRAME),
                    _ => (FrameError::BadCrc { expected: 1, actual: 2 }, ErrorCode::BAD_FRAME),
                };
                self.frame_error(usize::from(who & 1), error, code);
            }
            Op::Advance { who, ms } => {
                self.now = self.now + Duration::from_millis(ms);
                match who % 3 {
                    2 => (0..2).for_each(|w| self.fire(w)),
                    w => self.fire(usize::from(w)),
                }
            }
            Op::Deadline { who } => {
                if let Some(deadline) = self.sides[usize::from(who & 1)].session.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                (0..2).for_each(|w| self.fire(w));
            }
            Op::Abort { who } => self.abort(usize::from(who & 1)),
            Op::CloseWith { who, code } => {
                let who = usize::from(who & 1);
                let open = self.sides[who].is_open();
                let code = ErrorCode(code);
                self.sides[who].session.close_with(code, "closed by the fuzz harness", &mut self.backend);
                let replies = self.drain(who);
                if open {
                    self.expect_unsolicited_close(who, &replies, code);
                } else {
                    assert!(replies.is_empty(), "a closed session sent a frame");
                }
            }
            Op::Reopen { who, setup } => {
                let who = usize::from(who & 1);
                if self.sides[who].session.is_closed() {
                    self.sides[who] = Side::new(setup, self.now);
                }
            }
        }
    }

    fn resolve(&self, who: usize, h: HandleRef) -> u32 {
        let pick = |list: &mut dyn Iterator<Item = u32>, i: u8| {
            let v: Vec<u32> = list.collect();
            if v.is_empty() { 0 } else { v[usize::from(i) % v.len()] }
        };
        match h {
            HandleRef::Own(i) => pick(&mut self.sides[who].model.iter().map(|s| s.handle), i),
            HandleRef::Other(i) => pick(&mut self.sides[1 - who].model.iter().map(|s| s.handle), i),
            HandleRef::Retired(i) => pick(&mut self.sides[who].retired.iter().copied(), i),
            HandleRef::Raw(v) => v,
        }
    }

    /// The kind and payload of a script request, encoded with the core's own encoders.
    fn encode_request(&self, who: usize, req: Req<'_>) -> (Kind, Vec<u8>) {
        let h = |r| self.resolve(who, r);
        let mut buf = vec![0u8; 64];
        let n = match req {
            Req::Hello { min, max, caps } => {
                msg::Hello { min_version: min, max_version: max, caps: Caps(caps) }.emit(&mut buf)
            }
            Req::AuthGood => {
                let side = &self.sides[who];
                let nonce = side.session.nonce();
                let mac = match &side.key {
                    Some(k) => k.auth_tag(nonce),
                    None => AuthKey::new(AUTH_TOKEN).auth_tag(nonce),
                };
                msg::Auth { mac }.emit(&mut buf)
            }
            Req::AuthBad(b) => msg::Auth { mac: [b; 32] }.emit(&mut buf),
            Req::Ping(data) => return (Kind::PING, data.to_vec()),
            Req::DeviceInfo => return (Kind::DEVICE_INFO, Vec::new()),
            Req::Stats => return (Kind::STATS, Vec::new()),
            Req::Bye => return (Kind::BYE, Vec::new()),
            Req::Alloc(size) => msg::Alloc { size }.emit(&mut buf),
            Req::Free(r) => msg::Free { handle: h(r) }.emit(&mut buf),
            Req::Write { h: r, offset, data } => {
                let m = msg::Write { handle: h(r), offset, data };
                buf.resize(m.buffer_len(), 0);
                m.emit(&mut buf)
            }
            Req::Read { h: r, offset, len } => msg::Read { handle: h(r), offset, len: len as u32 }.emit(&mut buf),
            Req::Copy { src, src_offset, dst, dst_offset, len } => {
                msg::Copy { src: h(src), src_offset, dst: h(dst), dst_offset, len }.emit(&mut buf)
            }
            Req::Fill { h: r, offset, len, value } => msg::Fill { handle: h(r), offset, len, value }.emit(&mut buf),
            Req::Dispatch { kernel, reserved, a, b, out, m, k, n, alpha_bits } => msg::Dispatch {
                kernel: KernelId(kernel),
                reserved,
                a: h(a),
                b: h(b),
                out: h(out),
                m: m as u32,
                k: k as u32,
                n: n as u32,
                alpha: f32::from_bits(alpha_bits),
            }
            .emit(&mut buf),
        };
        let n = n.expect("the scratch buffer fits every request");
        buf.truncate(n);
        let kind = Request::parse(kind_of(req), &buf).map(|r| r.kind()).expect("our own encoding decodes");
        (kind, buf)
    }

    /// Sends one frame to session `who` the way a host does, and checks the reply.
    fn deliver(&mut self, who: usize, kind: u8, flags: u8, seq: u16, payload: &[u8]) {
        let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
        let frame = encode_frame::<SoftCrc32>(&mut bytes, Kind(kind), Flags(flags), seq, payload)
            .expect("the buffer is sized for the frame");
        let raw = RawHeader::view(frame).expect("16 header bytes");
        let side = &mut self.sides[who];
        let max = side.session.max_payload();
        let header = match HeaderRepr::parse(raw, max) {
            Ok(h) => h,
            Err(e) => {
                let code = match e {
                    HeaderError::PayloadTooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
                    _ => ErrorCode::BAD_FRAME,
                };
                return self.frame_error(who, FrameError::Header(e), code);
            }
        };
        let f = Frame::parse::<SoftCrc32>(frame, max).expect("a frame whose header passed parses");
        assert_eq!(f.header, header);
        assert_eq!(frame_crc::<SoftCrc32>(raw, f.payload), header.crc, "encode_frame wrote a bad CRC");
        let pre = side.session.state();
        let open = side.is_open();
        let r = side.session.handle_frame(self.now, f, &mut self.backend);
        if open {
            assert_eq!(r, Ok(()), "handle_frame refused input after output was drained");
        } else {
            assert_eq!(r, Err(ApiMisuse::Closed));
        }
        let replies = self.drain(who);
        if !open {
            assert!(replies.is_empty(), "a closed session sent a frame");
            return;
        }
        let request = if flags == 0 { Request::parse(Kind(kind), payload).ok() } else { None };
        self.check_reply(who, pre, Kind(kind), seq, request, &replies);
    }

    fn frame_error(&mut self, who: usize, error: FrameError, code: ErrorCode) {
        let open = self.sides[who].is_open();
        let r = self.sides[who].session.handle_frame_error(self.now, error, &mut self.backend);
        let replies = self.drain(who);
        if open {
            assert_eq!(r, Ok(()));
            self.expect_unsolicited_close(who, &replies, code);
        } else {
            assert_eq!(r, Err(ApiMisuse::Closed));
            assert!(replies.is_empty(), "a closed session sent a frame");
        }
    }

    fn fire(&mut self, who: usize) {
        let side = &mut self.sides[who];
        let pre = side.session.state();
        let due = side.is_open() && side.session.poll_timeout().is_some_and(|d| self.now >= d);
        side.session.handle_timeout(self.now, &mut self.backend);
        let replies = self.drain(who);
        if due {
            self.expect_unsolicited_close(who, &replies, ErrorCode::TIMEOUT);
        } else {
            assert!(replies.is_empty(), "handle_timeout sent a frame before the deadline");
            assert_eq!(self.sides[who].session.state(), pre, "handle_timeout changed state early");
        }
    }

    fn abort(&mut self, who: usize) {
        self.sides[who].session.abort(&mut self.backend);
        assert!(self.sides[who].session.is_closed());
        let replies = self.drain(who);
        assert!(replies.is_empty(), "abort sent a frame");
    }

    /// A session closed by the node side: exactly one ERROR(code) with seq 0, then closed.
    fn expect_unsolicited_close(&self, who: usize, replies: &[Reply], code: ErrorCode) {
        assert!(self.sides[who].session.is_closed(), "session still open after a fatal error");
        assert_eq!(replies.len(), 1, "expected exactly one closing ERROR");
        let r = &replies[0];
        assert_eq!(r.seq, 0);
        match r.response() {
            Response::Error(e) => {
                assert_eq!(e.code, code);
                assert_eq!(e.request_kind, Kind(0));
            }
            other => panic!("expected ERROR({code}), got {other:?}"),
        }
    }

    /// Drains `poll_transmit` and `poll_event`, checking every frame. Clears the model when the
    /// session has closed.
    fn drain(&mut self, who: usize) -> Vec<Reply> {
        let side = &mut self.sides[who];
        let pre_open = side.is_open() || matches!(side.session.state(), State::Closing);
        let mut replies = Vec::new();
        loop {
            let t = side
                .session
                .poll_transmit::<SoftCrc32, _>(&mut self.backend, &mut self.out)
                .expect("poll_transmit failed with a full-size buffer");
            let Some(t) = t else { break };
            assert!(replies.len() < MAX_PENDING, "more than MAX_PENDING frames for one input");
            let bytes = &self.out[..t.len];
            let frame = Frame::parse::<SoftCrc32>(bytes, MAX_PAYLOAD).expect("emitted frame re-parses");
            let raw = RawHeader::view(bytes).expect("16 header bytes");
            assert_eq!(frame_crc::<SoftCrc32>(raw, frame.payload), frame.header.crc, "emitted frame has a bad CRC");
            assert!(frame.header.flags.is_response(), "emitted frame lacks the response flag");
            if let Err(e) = Response::parse(frame.kind(), frame.header.flags, frame.payload) {
                panic!("emitted {:?} frame does not decode as a response: {e}", frame.kind());
            }
            if trace() {
                eprintln!("  < session {who} {:?}", Response::parse(frame.kind(), frame.header.flags, frame.payload));
            }
            replies.push(Reply {
                kind: frame.kind(),
                flags: frame.header.flags,
                seq: frame.seq(),
                payload: frame.payload.to_vec(),
            });
        }
        assert_eq!(
            side.session.poll_transmit::<SoftCrc32, _>(&mut self.backend, &mut self.out),
            Ok(None),
            "poll_transmit did not stay drained"
        );
        assert_ne!(side.session.state(), State::Closing, "session still Closing after its output drained");
        let mut events = Vec::new();
        while let Some(e) = side.session.poll_event() {
            events.push(e);
            assert!(events.len() <= 4, "poll_event does not drain");
        }
        if side.session.is_closed() {
            if pre_open && !replies.is_empty() {
                assert!(
                    events.iter().any(|e| matches!(e, Event::Closed(_))),
                    "closed without an Event::Closed: {events:?}"
                );
            }
            let gone: Vec<u32> = side.model.drain(..).map(|s| s.handle).collect();
            side.retired.extend(gone);
            let s = side.session.stats();
            assert_eq!((s.buffers, s.used), (0, 0), "closed session still holds buffers");
        }
        if events.contains(&Event::Ready) {
            assert!(side.session.is_ready() || side.session.is_closed());
        }
        replies
    }

    /// Checks the reply to a request the session accepted as input, and updates the model.
    fn check_reply(
        &mut self,
        who: usize,
        pre: State,
        kind: Kind,
        seq: u16,
        request: Option<Request<'_>>,
        replies: &[Reply],
    ) {
        let used_by_backend = self.backend.usage().used;
        let total = self.backend.info().total;
        let side = &mut self.sides[who];
        assert_eq!(replies.len(), 1, "a request must get exactly one reply");
        let reply = &replies[0];
        assert_eq!(reply.seq, seq, "reply does not echo the request's seq");
        let response = reply.response();
        if side.session.is_closed() {
            match response {
                Response::Ack(Kind::BYE) => assert!(matches!(request, Some(Request::Bye))),
                Response::Error(e) => {
                    assert!(e.code.closes_session(), "closed on non-fatal {}", e.code);
                    assert_eq!(e.request_kind, kind);
                }
                other => panic!("session closed after replying {other:?}"),
            }
            return;
        }
        if let Response::Error(e) = response {
            assert!(!e.code.closes_session(), "fatal {} but the session stayed open", e.code);
            assert_eq!(e.request_kind, kind);
            assert_eq!(side.session.state(), pre, "a rejected request changed the state");
            return;
        }
        assert_eq!(reply.kind, kind, "reply kind differs from the request's");
        let Some(request) = request else {
            panic!("a frame that is not a plain, well-formed request succeeded: {response:?}");
        };
        match (request, response) {
            (Request::Hello(h), Response::Welcome(w)) => {
                assert_eq!(pre, State::AwaitHello, "HELLO accepted twice");
                assert!(h.min_version <= PROTOCOL_VERSION && PROTOCOL_VERSION <= h.max_version);
                assert_eq!(w.version, PROTOCOL_VERSION);
                assert_eq!(&w.nonce, side.session.nonce());
                assert_eq!(w.auth_required(), side.key.is_some());
                let next = if side.key.is_some() { State::AwaitAuth } else { State::Ready };
                assert_eq!(side.session.state(), next);
            }
            (Request::Auth(a), Response::Ack(Kind::AUTH)) => {
                assert_eq!(pre, State::AwaitAuth, "AUTH accepted outside AwaitAuth");
                let key = side.key.as_ref().expect("AUTH accepted by a session without a token");
                assert!(key.verify_auth(side.session.nonce(), &a.mac), "AUTH accepted a wrong tag");
                assert!(side.session.is_ready());
            }
            (request, response) => {
                assert_eq!(pre, State::Ready, "{request:?} succeeded before the handshake finished");
                match (request, response) {
                    (Request::Ping(p), Response::Pong(d)) => assert_eq!(p.data, d),
                    (Request::DeviceInfo, Response::DeviceInfo(d)) => {
                        assert_eq!(d.total, total);
                        assert_eq!(d.free, total - used_by_backend);
                    }
                    (Request::Stats, Response::Stats(s)) => {
                        assert_eq!(s.buffers as usize, side.model.len());
                        assert_eq!(s.used, side.used());
                    }
                    (Request::Alloc(a), Response::Allocated(x)) => {
                        assert_eq!(x.size, a.size);
                        assert_ne!(x.handle, 0, "handle 0 issued");
                        assert!(side.model.iter().all(|s| s.handle != x.handle), "live handle reissued");
                        assert!(!side.retired.contains(&x.handle), "freed handle {:#x} reissued", x.handle);
                        assert!(side.used() + a.size <= side.session.config().quota, "quota exceeded");
                        let n = usize::try_from(a.size).expect("the arena bounds allocations");
                        side.model.push(Shadow { handle: x.handle, bytes: vec![Some(0); n] });
                    }
                    (Request::Free(f), Response::Ack(Kind::FREE)) => {
                        side.shadow(f.handle, "FREE");
                        side.model.retain(|s| s.handle != f.handle);
                        side.retired.push(f.handle);
                    }
                    (Request::Write(w), Response::Ack(Kind::WRITE)) => {
                        let s = side.shadow(w.handle, "WRITE");
                        let r = span(s, w.offset, w.data.len() as u64, "WRITE");
                        s.bytes[r].iter_mut().zip(w.data).for_each(|(d, b)| *d = Some(*b));
                    }
                    (Request::Read(rd), Response::Data(d)) => {
                        let s = side.shadow(rd.handle, "READ");
                        let r = span(s, rd.offset, u64::from(rd.len), "READ");
                        assert_eq!(d.len(), rd.len as usize);
                        for (i, (want, got)) in s.bytes[r].iter().zip(d).enumerate() {
                            if let Some(want) = want {
                                assert_eq!(want, got, "READ byte {i} differs from what this session wrote");
                            }
                        }
                    }
                    (Request::Copy(c), Response::Ack(Kind::COPY)) => {
                        let src = side.shadow(c.src, "COPY");
                        let bytes = src.bytes[span(src, c.src_offset, c.len, "COPY")].to_vec();
                        let dst = side.shadow(c.dst, "COPY");
                        let r = span(dst, c.dst_offset, c.len, "COPY");
                        dst.bytes[r].copy_from_slice(&bytes);
                    }
                    (Request::Fill(f), Response::Ack(Kind::FILL)) => {
                        let s = side.shadow(f.handle, "FILL");
                        let r = span(s, f.offset, f.len, "FILL");
                        s.bytes[r].fill(Some(f.value));
                    }
                    (Request::Dispatch(d), Response::Ack(Kind::DISPATCH)) => {
                        side.shadow(d.a, "DISPATCH");
                        if d.kernel != KernelId::SCALE {
                            side.shadow(d.b, "DISPATCH");
                        }
                        side.shadow(d.out, "DISPATCH").bytes.fill(None);
                    }
                    (request, response) => panic!("{request:?} answered with {response:?}"),
                }
            }
        }
    }

    fn check_invariants(&self) {
        let usage = self.backend.usage();
        let stats = [self.sides[0].session.stats(), self.sides[1].session.stats()];
        assert_eq!(usage.used, stats[0].used + stats[1].used, "backend bytes != sum of session bytes");
        assert_eq!(usage.buffers, stats[0].buffers + stats[1].buffers, "backend buffers != sum of sessions'");
        let mut ids: Vec<BufferId> = Vec::new();
        for (side, stats) in self.sides.iter().zip(stats) {
            assert_eq!(stats.buffers as usize, side.model.len(), "session buffer count drifted");
            assert_eq!(stats.used, side.used(), "session byte count drifted");
            for (handle, id) in handle_table(&side.session) {
                let Some(shadow) = side.model.iter().find(|s| s.handle == handle) else {
                    panic!("session holds handle {handle:#x} it never reported");
                };
                assert_eq!(self.backend.size(id), Ok(shadow.bytes.len() as u64), "handle resolves to a wrong buffer");
                ids.push(id);
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "one backend buffer is held twice (possibly by both sessions)");
    }
}

/// The request kind a script request encodes to.
fn kind_of(req: Req<'_>) -> Kind {
    match req {
        Req::Hello { .. } => Kind::HELLO,
        Req::AuthGood | Req::AuthBad(_) => Kind::AUTH,
        Req::Ping(_) => Kind::PING,
        Req::DeviceInfo => Kind::DEVICE_INFO,
        Req::Stats => Kind::STATS,
        Req::Bye => Kind::BYE,
        Req::Alloc(_) => Kind::ALLOC,
        Req::Free(_) => Kind::FREE,
        Req::Write { .. } => Kind::WRITE,
        Req::Read { .. } => Kind::READ,
        Req::Copy { .. } => Kind::COPY,
        Req::Fill { .. } => Kind::FILL,
        Req::Dispatch { .. } => Kind::DISPATCH,
    }
}

/// The model range a successful operation touched; panics if it lies outside the buffer.
fn span(s: &Shadow, offset: u64, len: u64, what: &str) -> core::ops::Range<usize> {
    match offset.checked_add(len) {
        Some(end) if end <= s.bytes.len() as u64 => offset as usize..end as usize,
        _ => panic!("{what} succeeded out of bounds: {offset}+{len} on {} bytes", s.bytes.len()),
    }
}
