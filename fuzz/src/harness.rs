//! The session target's harness: two sessions, one host-memory backend, a shadow model.
//!
//! [`run`] decodes a [`Script`] and plays it against two [`Session`]s that share one
//! [`HostBackend`] (the reference backend, over a heap arena of at most [`MAX_ARENA`] bytes).
//! Frames take the host's path: encoded with the real CRC, header checked with
//! [`HeaderRepr::parse`] against the session's cap (a rejection goes to
//! [`Session::handle_frame_error`]), then [`Frame::parse`] and [`Session::handle_frame_with`]
//! with the session's own [`ScriptedHost`] (see [`host`]), also for sessions whose node serves
//! no models (the host must then never be called).
//!
//! A shadow model keeps, per session, every live handle with the bytes its buffer must hold
//! (`None` where a kernel wrote), every loaded model, and the staged upload (size and bytes).
//! Every reply is checked against it, and after every step:
//!
//! 1. **Accounting:** the backend's `usage()` equals both sessions' buffers plus what both
//!    model hosts hold (weights and INFER output buffers); each session's `stats()` equal its
//!    model: buffers, and bytes = live buffers + model weights + the staged upload's size; the
//!    session's model list, the host's and the shadow's agree, and so do the host's staged
//!    bytes and the shadow's. After an unload or a close the model's buffers are gone.
//! 2. **Isolation:** every handle a session holds resolves to an id the backend knows with the
//!    model's size, no id belongs to both sessions or to a model host as well, a request that
//!    names another session's (or a freed) handle or model never succeeds, READ returns
//!    exactly the model's bytes (so nothing leaks between sessions or survives a free), and
//!    nothing but HELLO/AUTH succeeds before the handshake.
//! 3. **Models:** the outcome of every MODEL_LOAD, MODEL_UNLOAD, INFER, MODEL_UPLOAD,
//!    MODEL_CHUNK and MODEL_COMMIT in the Ready state is predicted from the shadow (limits,
//!    quota, chunk order, commit rules, the host's answers) and must match the reply exactly,
//!    code included; the host sees exactly the calls and arguments (budget, progress target)
//!    the rules imply. A progress target is passed only when the client's HELLO asked for
//!    PROGRESS (the node has models whenever the host is called), and every PROGRESS frame
//!    the host builds from it decodes and echoes the request's seq.
//! 4. **Output:** `poll_transmit` drains within [`MAX_PENDING`] frames and never fails with a
//!    full-size buffer; every frame re-parses with [`Frame::parse`] and [`Response::parse`],
//!    carries the right CRC, echoes the request's seq and kind, and a request gets exactly one
//!    reply. A closed session has released everything, and its host's `release_all` empties
//!    the host.
//!
//! At the end both sessions are aborted: the backend must hold nothing and the whole arena
//! must be zero again (zero on free, model weights included).

pub mod host;

use rela_backend_host::HostBackend;
use rela_core::auth::AuthKey;
use rela_core::backend::{BufferId, GpuBackend, KernelId};
use rela_core::config::{HEADER_LEN, MAX_MODELS, MAX_PAYLOAD, MAX_PENDING, NONCE_LEN, PROTOCOL_VERSION};
use rela_core::crc32::SoftCrc32;
use rela_core::fuzzing::{frame_crc, handle_table};
use rela_core::model::{ModelHost, ProgressTarget};
use rela_core::session::{ApiMisuse, Event, Session, SessionConfig, State, Transmit};
use rela_core::time::{Duration, Instant};
use rela_core::wire::model_list::ModelKind;
use rela_core::wire::msg::{self, Caps, Message, Request, Response};
use rela_core::wire::{
    ErrorCode, Flags, Frame, FrameError, HeaderError, HeaderRepr, Kind, RawHeader, encode_frame,
};

use crate::AUTH_TOKEN;
use crate::script::{ChunkAt, HandleRef, MODEL_NAMES, ModelRef, Op, Req, Script, Setup};
use host::{HostCall, MAX_STAGED, MAX_TEXTS, ScriptedHost, Spec, UPLOAD_MAGIC, embedding, spec};

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
            sides: [Side::new(s0, now, 0), Side::new(s1, now, 1)],
            out: OUT.take(),
            generation: 1,
            turn: 0,
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
    // One slice comparison rather than a compare per byte, which coverage instrumentation
    // would trace one by one.
    static ZERO: [u8; MAX_ARENA as usize] = [0; MAX_ARENA as usize];
    assert!(arena[..] == ZERO[..arena.len()], "freed memory was not zeroed");
}

/// What a buffer must hold: one entry per byte, `None` where a kernel wrote.
#[derive(Debug)]
struct Shadow {
    handle: u32,
    bytes: Vec<Option<u8>>,
}

/// A model the session has loaded, as the shadow sees it.
#[derive(Debug)]
struct ShadowModel {
    id: u32,
    spec: Spec,
}

/// The staged upload, as the shadow sees it.
#[derive(Debug)]
struct ShadowUpload {
    base: Spec,
    size: u64,
    bytes: Vec<u8>,
}

/// One session, its model host, and its model.
#[derive(Debug)]
struct Side {
    session: Session,
    key: Option<AuthKey>,
    host: ScriptedHost,
    model: Vec<Shadow>,
    /// Handles this session instance freed or lost; it must never reissue or honour them.
    retired: Vec<u32>,
    /// Loaded models.
    models: Vec<ShadowModel>,
    /// Model ids this session instance unloaded or lost.
    retired_models: Vec<u32>,
    upload: Option<ShadowUpload>,
    /// The capabilities of the HELLO the session accepted.
    client_caps: Caps,
}

impl Side {
    /// A fresh session; `generation` (distinct for every session of a run) picks the range of
    /// its host's model ids.
    fn new(setup: Setup, now: Instant, generation: u32) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = setup.nonce_seed[i % 4] ^ (i as u8).wrapping_mul(37);
        }
        // The handle sequence has its own seed, as a host draws it apart from the nonce; the
        // fuzzer still picks it, so handles near 0 and u32::MAX are reached.
        let handle_seed = u32::from_le_bytes(setup.nonce_seed) ^ 0x5bd1_e995;
        let key = setup.auth.then(|| AuthKey::new(AUTH_TOKEN));
        let config = SessionConfig {
            max_payload: setup.max_payload.min(u64::from(MAX_SESSION_PAYLOAD)) as u32,
            max_buffers: u16::from(setup.max_buffers),
            quota: setup.quota,
            handshake_timeout: Duration::from_millis(setup.handshake_ms),
            idle_timeout: Duration::from_millis(setup.idle_ms),
            auth: key.clone(),
            models: setup.models,
            // Compressed frames reach the session's checks when the HELLO asks for LZ4.
            lz4: true,
        };
        Self {
            session: Session::new(config, nonce, handle_seed, now),
            key,
            host: ScriptedHost::new(generation << 20),
            model: Vec::new(),
            retired: Vec::new(),
            models: Vec::new(),
            retired_models: Vec::new(),
            upload: None,
            client_caps: Caps(0),
        }
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

    /// Bytes of live buffers.
    fn buffer_bytes(&self) -> u64 {
        self.model.iter().map(|s| s.bytes.len() as u64).sum()
    }

    /// Bytes charged to the quota: buffers, model weights and the staged upload.
    fn used(&self) -> u64 {
        self.buffer_bytes()
            + self.models.iter().map(|m| m.spec.bytes()).sum::<u64>()
            + self.upload.as_ref().map_or(0, |u| u.size)
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
    /// Sessions created so far, less one.
    generation: u32,
    /// Steps so far; every other WRITE and READ takes the direct path (below).
    turn: u32,
}

impl Harness<'_> {
    fn step(&mut self, op: Op<'_>) {
        match op {
            Op::Request { who, seq, req } => {
                let who = usize::from(who & 1);
                let (kind, payload) = self.encode_request(who, req);
                self.deliver(who, kind.0, Flags::NONE.0, seq, &payload);
            }
            Op::Raw { who, kind, flags, seq, payload } => {
                self.deliver(usize::from(who & 1), kind, flags, seq, payload)
            }
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
                    self.generation += 1;
                    self.sides[who] = Side::new(setup, self.now, self.generation);
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

    fn resolve_model(&self, who: usize, m: ModelRef) -> u32 {
        let pick = |v: Vec<u32>, i: u8| if v.is_empty() { 0 } else { v[usize::from(i) % v.len()] };
        let ids = |side: &Side| side.models.iter().map(|m| m.id).collect();
        match m {
            ModelRef::Own(i) => pick(ids(&self.sides[who]), i),
            ModelRef::Other(i) => pick(ids(&self.sides[1 - who]), i),
            ModelRef::Retired(i) => pick(self.sides[who].retired_models.clone(), i),
            ModelRef::Raw(v) => v,
        }
    }

    /// The kind and payload of a script request, encoded with the core's own encoders (INFER
    /// by hand, as its texts need not be UTF-8).
    fn encode_request(&self, who: usize, req: Req<'_>) -> (Kind, Vec<u8>) {
        let h = |r| self.resolve(who, r);
        let payload = match req {
            Req::Hello { min, max, caps } => {
                emit(&msg::Hello { min_version: min, max_version: max, caps: Caps(caps) })
            }
            Req::AuthGood => {
                let side = &self.sides[who];
                let nonce = side.session.nonce();
                let mac = match &side.key {
                    Some(k) => k.auth_tag(nonce),
                    None => AuthKey::new(AUTH_TOKEN).auth_tag(nonce),
                };
                emit(&msg::Auth { mac })
            }
            Req::AuthBad(b) => emit(&msg::Auth { mac: [b; 32] }),
            Req::Ping(data) => data.to_vec(),
            Req::DeviceInfo | Req::Stats | Req::Bye | Req::ModelCommit => Vec::new(),
            Req::Alloc(size) => emit(&msg::Alloc { size }),
            Req::Free(r) => emit(&msg::Free { handle: h(r) }),
            Req::Write { h: r, offset, data } => emit(&msg::Write { handle: h(r), offset, data }),
            Req::Read { h: r, offset, len } => emit(&msg::Read { handle: h(r), offset, len: len as u32 }),
            Req::Copy { src, src_offset, dst, dst_offset, len } => {
                emit(&msg::Copy { src: h(src), src_offset, dst: h(dst), dst_offset, len })
            }
            Req::Fill { h: r, offset, len, value } => emit(&msg::Fill { handle: h(r), offset, len, value }),
            Req::Dispatch { kernel, reserved, a, b, out, m, k, n, alpha_bits } => emit(&msg::Dispatch {
                kernel: KernelId(kernel),
                reserved,
                a: h(a),
                b: h(b),
                out: h(out),
                m: m as u32,
                k: k as u32,
                n: n as u32,
                alpha: f32::from_bits(alpha_bits),
            }),
            Req::ModelLoad { name } => emit(&msg::ModelLoad { name: model_name(name) }),
            Req::ModelUnload(m) => emit(&msg::ModelUnload { model: self.resolve_model(who, m) }),
            Req::Infer { m, texts } => {
                let mut p = self.resolve_model(who, m).to_le_bytes().to_vec();
                p.extend((texts.iter().count() as u16).to_le_bytes());
                for t in texts.iter() {
                    p.extend((t.len() as u16).to_le_bytes());
                    p.extend(t);
                }
                p
            }
            Req::ModelUpload { size, base } => emit(&msg::ModelUpload { size, base: model_name(base) }),
            Req::ModelChunk { at, data } => {
                let received = self.sides[who].upload.as_ref().map_or(0, |u| u.bytes.len() as u64);
                let offset = match at {
                    ChunkAt::Next => received,
                    ChunkAt::Ahead(d) => received.saturating_add(d).saturating_add(1),
                    ChunkAt::Behind(d) => received.wrapping_sub(d).wrapping_sub(1),
                    ChunkAt::Raw(v) => v,
                };
                emit(&msg::ModelChunk { offset, data })
            }
        };
        let kind = kind_of(req);
        let decoded = Request::parse(kind, &payload);
        assert_eq!(
            decoded.is_ok(),
            !rejected_by_wire(req),
            "our own encoding of {req:?} decodes: {decoded:?}"
        );
        if let Ok(r) = decoded {
            assert_eq!(r.kind(), kind);
        }
        (kind, payload)
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
        side.host.log.clear();
        side.host.progress_frames.clear();
        self.turn = self.turn.wrapping_add(1);
        // Every other WRITE takes a node's direct path: `begin_write` decides from the header
        // and prefix, the data goes into the buffer by its id, `finish_write` acknowledges.
        // The reply must be what `handle_frame` gives; a WRITE `begin_write` refuses goes
        // through `handle_frame` and must then be refused there too (checked below).
        let direct = Kind(kind) == Kind::WRITE && self.turn % 2 == 0;
        let lent = if direct { side.session.begin_write(&header, payload, &self.backend) } else { None };
        let r = match lent {
            Some(w) => {
                assert!(open, "begin_write lent a buffer of a closed session");
                let data = &payload[msg::WRITE_PREFIX_LEN..];
                assert_eq!(w.len, data.len() as u64);
                self.backend
                    .write(w.id, w.offset, data)
                    .expect("begin_write lent a range the backend refuses");
                side.session.finish_write(self.now, &w)
            }
            None => side.session.handle_frame_with(self.now, f, &mut self.backend, &mut side.host),
        };
        let calls = std::mem::take(&mut side.host.log);
        let progress = std::mem::take(&mut side.host.progress_frames);
        if open {
            assert_eq!(r, Ok(()), "handle_frame refused input after output was drained");
        } else {
            assert_eq!(r, Err(ApiMisuse::Closed));
        }
        let replies = self.drain(who);
        if !open {
            assert!(replies.is_empty(), "a closed session sent a frame");
            assert!(calls.is_empty(), "a closed session called its model host: {calls:?}");
            return;
        }
        for bytes in &progress {
            check_progress_frame(bytes, seq);
        }
        if direct && lent.is_none() && pre == State::Ready {
            assert!(
                replies.iter().all(|r| r.kind != Kind::WRITE),
                "begin_write refused a WRITE that handle_frame carried out"
            );
        }
        let request = if flags == 0 { Request::parse(Kind(kind), payload).ok() } else { None };
        self.check_reply(who, pre, Kind(kind), seq, request, &replies, &calls);
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
            // READ data the node may send from the buffer itself: the header from
            // `transmit_read_header`, then the bytes where they lie; the same checks follow.
            let direct = match side.session.peek_read() {
                Some(p) if self.turn % 2 == 0 => {
                    let len = p.len as usize;
                    self.backend
                        .read(p.id, p.offset, &mut self.out[HEADER_LEN..HEADER_LEN + len])
                        .expect("peek_read named a range the backend refuses");
                    let (head, data) = self.out.split_at_mut(HEADER_LEN);
                    let t = side
                        .session
                        .transmit_read_header::<SoftCrc32>(&data[..len], head)
                        .expect("transmit_read_header refused what peek_read reported");
                    assert_eq!(t.len, HEADER_LEN);
                    Some(HEADER_LEN + len)
                }
                _ => None,
            };
            let t = match direct {
                Some(len) => Some(Transmit { len }),
                None => side
                    .session
                    .poll_transmit::<SoftCrc32, _>(&mut self.backend, &mut self.out)
                    .expect("poll_transmit failed with a full-size buffer"),
            };
            let Some(t) = t else { break };
            assert!(replies.len() < MAX_PENDING, "more than MAX_PENDING frames for one input");
            let bytes = &self.out[..t.len];
            let frame = Frame::parse::<SoftCrc32>(bytes, MAX_PAYLOAD).expect("emitted frame re-parses");
            let raw = RawHeader::view(bytes).expect("16 header bytes");
            assert_eq!(
                frame_crc::<SoftCrc32>(raw, frame.payload),
                frame.header.crc,
                "emitted frame has a bad CRC"
            );
            assert!(frame.header.flags.is_response(), "emitted frame lacks the response flag");
            if let Err(e) = Response::parse(frame.kind(), frame.header.flags, frame.payload) {
                panic!("emitted {:?} frame does not decode as a response: {e}", frame.kind());
            }
            if trace() {
                eprintln!(
                    "  < session {who} {:?}",
                    Response::parse(frame.kind(), frame.header.flags, frame.payload)
                );
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
            let gone: Vec<u32> = side.models.drain(..).map(|m| m.id).collect();
            side.retired_models.extend(gone);
            side.upload = None;
            let s = side.session.stats();
            assert_eq!((s.buffers, s.used), (0, 0), "closed session still holds buffers");
            assert!(side.session.models().is_empty(), "closed session still lists models");
            side.host.release_all(&mut self.backend);
            assert!(side.host.is_empty(), "release_all left the host holding something");
        }
        if events.contains(&Event::Ready) {
            assert!(side.session.is_ready() || side.session.is_closed());
        }
        replies
    }

    /// Checks the reply to a request the session accepted as input (and the calls it made on
    /// its model host), and updates the model.
    #[allow(clippy::too_many_arguments)]
    fn check_reply(
        &mut self,
        who: usize,
        pre: State,
        kind: Kind,
        seq: u16,
        request: Option<Request<'_>>,
        replies: &[Reply],
        calls: &[HostCall],
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
            assert!(calls.is_empty(), "a request that closed the session called the model host: {calls:?}");
            return;
        }
        if let Some(request) = request.filter(|r| pre == State::Ready && is_model_request(r)) {
            return self.check_model_reply(who, seq, request, reply.response(), calls);
        }
        assert!(calls.is_empty(), "{request:?} in {pre:?} called the model host: {calls:?}");
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
                // DISPATCH always; MODELS and PROGRESS with models; LZ4 where configured.
                let models = if side.session.config().models { 0b1011 } else { 0b0001 };
                let caps = if side.session.config().lz4 { models | 0b0100 } else { models };
                assert_eq!(w.caps, Caps(caps), "WELCOME advertises the wrong capabilities");
                side.client_caps = h.caps;
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
                    (Request::Cancel, Response::Ack(Kind::CANCEL)) => {}
                    (request, response) => panic!("{request:?} answered with {response:?}"),
                }
            }
        }
    }

    /// Predicts the outcome of a model request in the Ready state from the shadow and the
    /// host's log, checks the reply and the host calls against it, and updates the shadow.
    fn check_model_reply(
        &mut self,
        who: usize,
        seq: u16,
        request: Request<'_>,
        response: Response<'_>,
        calls: &[HostCall],
    ) {
        let kind = request.kind();
        let side = &mut self.sides[who];
        let config = side.session.config();
        let (quota, max_payload) = (config.quota, u64::from(config.effective_max_payload()));
        if !config.models {
            assert!(calls.is_empty(), "a node without models called its model host: {calls:?}");
            return expect_error(&request, response, ErrorCode::UNSUPPORTED);
        }
        let asked = side.client_caps.contains(Caps::PROGRESS);
        let target = |kind| asked.then_some(ProgressTarget { kind, seq });
        let failed = calls.iter().find_map(|c| match c {
            HostCall::BackendFailed(e) => Some(ErrorCode::from(*e)),
            _ => None,
        });
        let used = side.used();
        let full = side.models.len() >= MAX_MODELS;
        let untouched =
            || assert!(calls.is_empty(), "{request:?} was refused but called the host: {calls:?}");
        match request {
            Request::ModelLoad(m) => {
                if full {
                    untouched();
                    return expect_error(&request, response, ErrorCode::TOO_MANY_BUFFERS);
                }
                let budget = quota.saturating_sub(used);
                let call = HostCall::Load { name: m.name.into(), budget, progress: target(kind) };
                assert_eq!(calls.first(), Some(&call), "MODEL_LOAD reached the host wrongly");
                let want = placed(spec(m.name), budget, failed);
                side.expect_loaded(&request, want, response);
            }
            Request::ModelUnload(u) => {
                let Some(i) = side.models.iter().position(|m| m.id == u.model) else {
                    untouched();
                    return expect_error(&request, response, ErrorCode::NO_SUCH_MODEL);
                };
                assert_eq!(calls, [HostCall::Unload { id: u.model }]);
                expect_ack(&request, response);
                side.models.remove(i);
                side.retired_models.push(u.model);
            }
            Request::Infer(inf) => {
                let Some(m) = side.models.iter().find(|m| m.id == inf.model) else {
                    untouched();
                    return expect_error(&request, response, ErrorCode::NO_SUCH_MODEL);
                };
                assert_eq!(calls.first(), Some(&HostCall::Infer { id: m.id, count: inf.count() }));
                let dim = usize::from(m.spec.dim);
                let payload = 4 + (inf.count() * dim * 4) as u64;
                let want = if inf.count() > MAX_TEXTS {
                    Err(ErrorCode::INVALID_INPUT)
                } else if let Some(code) = failed {
                    Err(code)
                } else if payload > max_payload || !m.spec.honest {
                    // Too large for one frame, or a host answering with the wrong count.
                    Err(ErrorCode::INVALID_INPUT)
                } else {
                    Ok(())
                };
                match (want, response) {
                    (Ok(()), Response::Embeddings(e)) => {
                        assert_eq!((usize::from(e.count), usize::from(e.dim)), (inf.count(), dim));
                        for (i, text) in inf.texts().enumerate() {
                            for j in 0..dim {
                                let got = e.get(i * dim + j).expect("Embeddings::parse checked the length");
                                let want = embedding(m.id, i, text.len(), j);
                                assert_eq!(got.to_bits(), want.to_bits(), "INFER returned the wrong floats");
                            }
                        }
                    }
                    (Err(code), Response::Error(e)) => check_error(&request, e, code),
                    (want, got) => panic!("{request:?}: expected {want:?}, got {got:?}"),
                }
            }
            Request::ModelUpload(u) => {
                let staged = side.upload.as_ref().map_or(0, |up| up.size);
                let refused = if u.size == 0 {
                    Some(ErrorCode::INVALID_ARGUMENT)
                } else if full {
                    Some(ErrorCode::TOO_MANY_BUFFERS)
                } else if u.size > quota.saturating_sub(used - staged) {
                    Some(ErrorCode::QUOTA_EXCEEDED)
                } else {
                    None
                };
                if let Some(code) = refused {
                    untouched();
                    return expect_error(&request, response, code);
                }
                assert_eq!(calls, [HostCall::UploadBegin { base: u.base.into(), size: u.size }]);
                // The staged upload is replaced even if the host refuses the new one.
                side.upload = None;
                match spec(u.base) {
                    None => expect_error(&request, response, ErrorCode::NO_SUCH_MODEL),
                    Some(_) if u.size > MAX_STAGED => {
                        expect_error(&request, response, ErrorCode::OUT_OF_MEMORY)
                    }
                    Some(base) => {
                        expect_ack(&request, response);
                        side.upload = Some(ShadowUpload { base, size: u.size, bytes: Vec::new() });
                    }
                }
            }
            Request::ModelChunk(c) => {
                let refused = match &side.upload {
                    None => Some(ErrorCode::WRONG_STATE),
                    Some(up) if c.offset != up.bytes.len() as u64 => Some(ErrorCode::INVALID_ARGUMENT),
                    Some(up) if c.data.len() as u64 > up.size - up.bytes.len() as u64 => {
                        Some(ErrorCode::OUT_OF_BOUNDS)
                    }
                    Some(_) => None,
                };
                if let Some(code) = refused {
                    untouched();
                    return expect_error(&request, response, code);
                }
                assert_eq!(calls, [HostCall::UploadChunk { len: c.data.len() }]);
                expect_ack(&request, response);
                side.upload.as_mut().expect("checked above").bytes.extend_from_slice(c.data);
            }
            Request::ModelCommit => {
                let refused = match &side.upload {
                    None => Some(ErrorCode::WRONG_STATE),
                    Some(up) if up.bytes.len() as u64 != up.size => Some(ErrorCode::INVALID_ARGUMENT),
                    Some(_) if full => Some(ErrorCode::TOO_MANY_BUFFERS),
                    Some(_) => None,
                };
                if let Some(code) = refused {
                    // The upload stays staged.
                    untouched();
                    return expect_error(&request, response, code);
                }
                let up = side.upload.take().expect("checked above");
                let budget = quota.saturating_sub(used - up.size);
                let call = HostCall::Commit { budget, progress: target(kind) };
                assert_eq!(calls.first(), Some(&call), "MODEL_COMMIT reached the host wrongly");
                let want = if up.bytes.starts_with(UPLOAD_MAGIC) {
                    placed(Some(up.base), budget, failed)
                } else {
                    Err(ErrorCode::INVALID_INPUT)
                };
                side.expect_loaded(&request, want, response);
            }
            Request::Generate(g) => {
                // The harness's host generates nothing (the trait's default): every GENERATE
                // is refused, by the session's checks first, then as UNSUPPORTED.
                untouched();
                let code = if !side.models.iter().any(|m| m.id == g.model) {
                    ErrorCode::NO_SUCH_MODEL
                } else if g.max_tokens == 0 || !g.sampling.is_valid() {
                    ErrorCode::INVALID_ARGUMENT
                } else {
                    ErrorCode::UNSUPPORTED
                };
                expect_error(&request, response, code);
            }
            Request::ModelList(_) => {
                // The harness's host lists nothing (the trait's default): no entry, count 0.
                untouched();
                match response {
                    Response::ModelListed(m) => {
                        assert_eq!((m.count, m.kind, m.name), (0, ModelKind::NONE, ""), "MODEL_LIST");
                    }
                    other => panic!("{request:?} answered with {other:?}"),
                }
            }
            other => panic!("{other:?} is not a model request"),
        }
    }

    fn check_invariants(&self) {
        let usage = self.backend.usage();
        let stats = [self.sides[0].session.stats(), self.sides[1].session.stats()];
        let held: u64 = self.sides.iter().map(|s| s.buffer_bytes() + s.host.device_bytes()).sum();
        assert_eq!(usage.used, held, "backend bytes != sessions' buffers + model hosts' buffers");
        let buffers: usize = self.sides.iter().map(|s| s.model.len() + s.host.buffers().count()).sum();
        assert_eq!(usage.buffers as usize, buffers, "backend buffers != sessions' + model hosts'");
        let mut ids: Vec<BufferId> = Vec::new();
        for (side, stats) in self.sides.iter().zip(stats) {
            assert_eq!(stats.buffers as usize, side.model.len(), "session buffer count drifted");
            assert_eq!(stats.used, side.used(), "session byte count drifted");
            for (handle, id) in handle_table(&side.session) {
                let Some(shadow) = side.model.iter().find(|s| s.handle == handle) else {
                    panic!("session holds handle {handle:#x} it never reported");
                };
                assert_eq!(
                    self.backend.size(id),
                    Ok(shadow.bytes.len() as u64),
                    "handle resolves to a wrong buffer"
                );
                ids.push(id);
            }
            let mut listed: Vec<(u32, u32, u64)> =
                side.session.models().iter().map(|m| (m.id, m.dim, m.bytes)).collect();
            let mut shadow: Vec<(u32, u32, u64)> =
                side.models.iter().map(|m| (m.id, u32::from(m.spec.dim), m.spec.bytes())).collect();
            let mut hosted: Vec<(u32, u32, u64)> =
                side.host.loaded.iter().map(|m| (m.id, u32::from(m.spec.dim), m.spec.bytes())).collect();
            listed.sort_unstable();
            shadow.sort_unstable();
            hosted.sort_unstable();
            assert_eq!(listed, shadow, "the session's model list drifted from the replies");
            assert_eq!(hosted, shadow, "the host holds other models than the session lists");
            match (&side.host.staged, &side.upload) {
                (None, None) => {}
                (Some(h), Some(s)) => {
                    assert_eq!((h.base, h.size), (s.base, s.size), "the host stages another upload");
                    assert_eq!(h.bytes, s.bytes, "the host staged other bytes than the chunks carried");
                }
                (h, s) => panic!("host staging {h:?} but the session's upload is {s:?}"),
            }
            for (id, size) in side.host.buffers() {
                assert_eq!(self.backend.size(id), Ok(size), "a model host buffer changed size");
                ids.push(id);
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            n,
            "one backend buffer is held twice (by both sessions, or a session and a host)"
        );
    }
}

impl Side {
    /// Checks the answer to MODEL_LOAD or MODEL_COMMIT against the predicted outcome and
    /// records a loaded model.
    fn expect_loaded(
        &mut self,
        request: &Request<'_>,
        want: Result<Spec, ErrorCode>,
        response: Response<'_>,
    ) {
        match (want, response) {
            (Ok(s), Response::ModelLoaded(x)) => {
                assert_eq!(
                    (x.dim, x.bytes),
                    (u32::from(s.dim), s.bytes()),
                    "{request:?} loaded the wrong model"
                );
                assert!(self.models.iter().all(|m| m.id != x.model), "model id {} issued twice", x.model);
                assert!(!self.retired_models.contains(&x.model), "unloaded model id {} reissued", x.model);
                self.models.push(ShadowModel { id: x.model, spec: s });
            }
            (Err(code), Response::Error(e)) => check_error(request, e, code),
            (want, got) => panic!("{request:?}: expected {want:?}, got {got:?}"),
        }
    }
}

/// Whether the session routes this request to its model host.
fn is_model_request(r: &Request<'_>) -> bool {
    matches!(
        r,
        Request::ModelLoad(_)
            | Request::ModelUnload(_)
            | Request::Infer(_)
            | Request::ModelUpload(_)
            | Request::ModelChunk(_)
            | Request::ModelCommit
            | Request::Generate(_)
            | Request::ModelList(_)
    )
}

/// The outcome of placing the weights of `spec` (`None`: not in the repository) within
/// `budget`, given the backend failure the host logged, if any.
fn placed(spec: Option<Spec>, budget: u64, failed: Option<ErrorCode>) -> Result<Spec, ErrorCode> {
    let spec = spec.ok_or(ErrorCode::NO_SUCH_MODEL)?;
    if spec.honest && spec.bytes() > budget {
        return Err(ErrorCode::QUOTA_EXCEEDED);
    }
    if let Some(code) = failed {
        return Err(code);
    }
    if spec.bytes() > budget {
        // A host that ignored the budget: the session must refuse and unload the model.
        return Err(ErrorCode::QUOTA_EXCEEDED);
    }
    Ok(spec)
}

fn check_error(request: &Request<'_>, e: msg::ErrorMsg<'_>, code: ErrorCode) {
    assert_eq!(e.code, code, "{request:?} failed with {} ({}), expected {code}", e.code, e.reason);
    assert_eq!(e.request_kind, request.kind());
}

fn expect_error(request: &Request<'_>, response: Response<'_>, code: ErrorCode) {
    match response {
        Response::Error(e) => check_error(request, e, code),
        other => panic!("{request:?} answered {other:?}, expected ERROR({code})"),
    }
}

fn expect_ack(request: &Request<'_>, response: Response<'_>) {
    assert_eq!(response, Response::Ack(request.kind()), "{request:?} not acknowledged");
}

/// A PROGRESS frame a model host built: valid, a response, and echoing the request's seq.
fn check_progress_frame(bytes: &[u8], seq: u16) {
    let f = Frame::parse::<SoftCrc32>(bytes, MAX_PAYLOAD).expect("a PROGRESS frame parses");
    let raw = RawHeader::view(bytes).expect("16 header bytes");
    assert_eq!(frame_crc::<SoftCrc32>(raw, f.payload), f.header.crc, "PROGRESS frame has a bad CRC");
    assert_eq!((f.kind(), f.seq()), (Kind::PROGRESS, seq), "PROGRESS frame does not echo the request");
    match Response::parse(f.kind(), f.header.flags, f.payload) {
        Ok(Response::Progress(p)) => assert!(p.done <= p.total, "PROGRESS past its total: {p:?}"),
        other => panic!("PROGRESS frame decodes as {other:?}"),
    }
}

/// Encodes one message into a buffer of its own length.
fn emit<'m, M: Message<'m>>(m: &M) -> Vec<u8> {
    let mut buf = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut buf).expect("a message encodes into its buffer_len");
    buf.truncate(n);
    buf
}

/// The model name a script byte picks.
fn model_name(n: u8) -> &'static str {
    MODEL_NAMES[usize::from(n) % MODEL_NAMES.len()]
}

/// Whether a script request encodes to a payload the wire format rejects (an invalid model
/// name, or INFER texts that are not UTF-8).
fn rejected_by_wire(req: Req<'_>) -> bool {
    match req {
        Req::ModelLoad { name: n } | Req::ModelUpload { base: n, .. } => {
            !msg::valid_model_name(model_name(n))
        }
        Req::Infer { texts, .. } => texts.iter().any(|t| core::str::from_utf8(t).is_err()),
        _ => false,
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
        Req::ModelLoad { .. } => Kind::MODEL_LOAD,
        Req::ModelUnload(_) => Kind::MODEL_UNLOAD,
        Req::Infer { .. } => Kind::INFER,
        Req::ModelUpload { .. } => Kind::MODEL_UPLOAD,
        Req::ModelChunk { .. } => Kind::MODEL_CHUNK,
        Req::ModelCommit => Kind::MODEL_COMMIT,
    }
}

/// The model range a successful operation touched; panics if it lies outside the buffer.
fn span(s: &Shadow, offset: u64, len: u64, what: &str) -> core::ops::Range<usize> {
    match offset.checked_add(len) {
        Some(end) if end <= s.bytes.len() as u64 => offset as usize..end as usize,
        _ => panic!("{what} succeeded out of bounds: {offset}+{len} on {} bytes", s.bytes.len()),
    }
}
