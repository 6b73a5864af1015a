//! Whole sessions driven in memory: handshake, auth, every out-of-state request, quotas,
//! isolation between sessions, timeouts, and release of everything on close.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Driver, MockBackend};
use rela_core::auth::AuthKey;
use rela_core::backend::{GpuBackend, KernelId};
use rela_core::session::{ApiMisuse, CloseReason, Event, SessionConfig, State};
use rela_core::time::{Duration, Instant};
use rela_core::wire::msg::*;
use rela_core::wire::{ErrorCode, Flags, FrameError, HeaderError, Kind};

const TOKEN: &[u8] = b"correct horse battery staple";

fn hello() -> Hello {
    Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH }
}

fn config() -> SessionConfig {
    SessionConfig { quota: 1 << 20, max_buffers: 4, ..SessionConfig::default() }
}

fn ready(b: &mut MockBackend) -> Driver {
    let mut d = Driver::new(config(), [3; 32]);
    let w = d.one(b, &hello());
    assert!(matches!(w.response(), Response::Welcome(_)));
    assert!(d.session.is_ready());
    d
}

fn alloc(d: &mut Driver, b: &mut MockBackend, size: u64) -> u32 {
    match d.one(b, &Alloc { size }).response() {
        Response::Allocated(a) => {
            assert_eq!(a.size, size);
            a.handle
        }
        other => panic!("alloc failed: {other:?}"),
    }
}

fn code(o: &common::Out) -> ErrorCode {
    ErrorCode(o.error_code().unwrap_or_else(|| panic!("expected ERROR, got {:?}", o.response())))
}

#[test]
fn handshake_without_auth() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = Driver::new(config(), [9; 32]);
    assert_eq!(d.session.state(), State::AwaitHello);
    let w = d.one(&mut b, &hello());
    let Response::Welcome(w) = w.response() else { panic!() };
    assert_eq!(w.version, 1);
    assert!(!w.auth_required());
    assert_eq!(w.nonce, [9; 32]);
    assert_eq!(w.quota, 1 << 20);
    assert_eq!(w.max_buffers, 4);
    assert!(w.caps.contains(Caps::DISPATCH));
    assert!(!w.caps.contains(Caps::MODELS), "models are not advertised yet");
    assert_eq!(d.session.poll_event(), Some(Event::Ready));
    assert!(matches!(d.one(&mut b, &Ping { data: b"abc" }).response(), Response::Pong(b"abc")));
}

#[test]
fn version_mismatch_closes() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = Driver::new(config(), [0; 32]);
    let o = d.one(&mut b, &Hello { min_version: 2, max_version: 9, caps: Caps(0) });
    assert_eq!(code(&o), ErrorCode::VERSION_MISMATCH);
    assert!(d.session.is_closed());
}

#[test]
fn auth_success() {
    let mut b = MockBackend::new(1 << 24);
    let key = AuthKey::new(TOKEN);
    let mut d = Driver::new(SessionConfig { auth: Some(key.clone()), ..config() }, [5; 32]);
    let Response::Welcome(w) = d.one(&mut b, &hello()).response() else { panic!() };
    assert!(w.auth_required());
    assert_eq!(d.session.state(), State::AwaitAuth);
    // Before AUTH, everything but AUTH and BYE is refused, and the session stays put.
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 8 })), ErrorCode::WRONG_STATE);
    assert_eq!(d.session.state(), State::AwaitAuth);
    let o = d.one(&mut b, &Auth { mac: key.auth_tag(&w.nonce) });
    assert!(matches!(o.response(), Response::Ack(Kind::AUTH)));
    assert!(d.session.is_ready());
    alloc(&mut d, &mut b, 8);
}

#[test]
fn the_payload_cap_is_small_until_the_session_is_ready() {
    use rela_core::config::{HANDSHAKE_MAX_PAYLOAD, MAX_PAYLOAD};
    let mut b = MockBackend::new(1 << 24);
    let key = AuthKey::new(TOKEN);
    let mut d = Driver::new(SessionConfig { auth: Some(key.clone()), ..config() }, [5; 32]);
    assert_eq!(d.session.max_payload(), HANDSHAKE_MAX_PAYLOAD);
    let Response::Welcome(w) = d.one(&mut b, &hello()).response() else { panic!() };
    // WELCOME announces the cap that applies once ready; until AUTH the small one holds.
    assert_eq!(w.max_payload, MAX_PAYLOAD);
    assert_eq!(d.session.max_payload(), HANDSHAKE_MAX_PAYLOAD);
    d.one(&mut b, &Auth { mac: key.auth_tag(&w.nonce) });
    assert!(d.session.is_ready());
    assert_eq!(d.session.max_payload(), MAX_PAYLOAD);
    // A node configured below the handshake cap keeps its own cap throughout.
    let small = Driver::new(SessionConfig { max_payload: 300, ..config() }, [5; 32]);
    assert_eq!(small.session.max_payload(), 300);
}

#[test]
fn auth_failure_closes_and_wrong_nonce_fails() {
    let mut b = MockBackend::new(1 << 24);
    let key = AuthKey::new(TOKEN);
    // A wrong token.
    let mut d = Driver::new(SessionConfig { auth: Some(key.clone()), ..config() }, [5; 32]);
    let _ = d.one(&mut b, &hello());
    let o = d.one(&mut b, &Auth { mac: AuthKey::new(b"wrong").auth_tag(&[5; 32]) });
    assert_eq!(code(&o), ErrorCode::AUTH_FAILED);
    assert!(d.session.is_closed());
    assert_eq!(d.session.poll_event(), Some(Event::AuthFailed));
    // A tag replayed from another session (other nonce) fails too.
    let mut d2 = Driver::new(SessionConfig { auth: Some(key.clone()), ..config() }, [6; 32]);
    let _ = d2.one(&mut b, &hello());
    let o = d2.one(&mut b, &Auth { mac: key.auth_tag(&[5; 32]) });
    assert_eq!(code(&o), ErrorCode::AUTH_FAILED);
}

#[test]
fn every_request_before_hello_is_refused() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = Driver::new(config(), [1; 32]);
    let requests: Vec<(Kind, Vec<u8>)> = vec![
        (Kind::AUTH, vec![0; 32]),
        (Kind::PING, vec![]),
        (Kind::DEVICE_INFO, vec![]),
        (Kind::STATS, vec![]),
        (Kind::ALLOC, 8u64.to_le_bytes().to_vec()),
        (Kind::FREE, 1u32.to_le_bytes().to_vec()),
        (Kind::WRITE, vec![0; 13]),
        (Kind::READ, vec![0; 16]),
        (Kind::COPY, vec![0; 32]),
        (Kind::FILL, vec![0; 21]),
        (Kind::DISPATCH, vec![0; 32]),
    ];
    for (kind, payload) in requests {
        let outs = d.raw(&mut b, kind, Flags::NONE, &payload);
        assert_eq!(outs.len(), 1);
        assert_eq!(code(&outs[0]), ErrorCode::WRONG_STATE, "{kind}");
        assert_eq!(outs[0].seq, d.last_seq());
        assert_eq!(d.session.state(), State::AwaitHello);
    }
    assert!(b.bufs.is_empty());
    // The session is still usable.
    let _ = d.one(&mut b, &hello());
    assert!(d.session.is_ready());
}

#[test]
fn out_of_state_after_ready() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    assert_eq!(code(&d.one(&mut b, &hello())), ErrorCode::WRONG_STATE);
    assert_eq!(code(&d.one(&mut b, &Auth { mac: [0; 32] })), ErrorCode::WRONG_STATE);
    assert!(d.session.is_ready());
}

#[test]
fn unknown_reserved_malformed_and_flags() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let o = d.raw(&mut b, Kind(0x55), Flags::NONE, b"xyz");
    assert_eq!(code(&o[0]), ErrorCode::UNKNOWN_KIND);
    let Response::Error(e) = o[0].response() else { panic!() };
    assert_eq!(e.request_kind, Kind(0x55), "unknown kinds round-trip");
    // A node without models answers the model kinds UNSUPPORTED.
    assert_eq!(code(&d.one(&mut b, &ModelLoad { name: "all-MiniLM-L6-v2" })), ErrorCode::UNSUPPORTED);
    assert_eq!(code(&d.one(&mut b, &ModelUnload { model: 1 })), ErrorCode::UNSUPPORTED);
    assert_eq!(
        code(&d.raw(&mut b, Kind::INFER, Flags::NONE, &[1, 0, 0, 0, 0, 0])[0]),
        ErrorCode::UNSUPPORTED
    );
    assert_eq!(
        code(&d.raw(&mut b, Kind::MODEL_LOAD, Flags::NONE, &[3, b'.', b'.', b'/'])[0]),
        ErrorCode::MALFORMED
    );
    assert_eq!(code(&d.raw(&mut b, Kind::ALLOC, Flags::NONE, &[1, 2, 3])[0]), ErrorCode::MALFORMED);
    assert_eq!(code(&d.raw(&mut b, Kind::ALLOC, Flags::NONE, &[0; 9])[0]), ErrorCode::MALFORMED);
    assert_eq!(code(&d.raw(&mut b, Kind::PING, Flags::RESPONSE, &[])[0]), ErrorCode::MALFORMED);
    assert_eq!(code(&d.raw(&mut b, Kind::PING, Flags::COMPRESSED, &[])[0]), ErrorCode::UNSUPPORTED);
    assert_eq!(code(&d.raw(&mut b, Kind::PING, Flags::NONE, &[0; 257])[0]), ErrorCode::MALFORMED);
    assert!(d.session.is_ready(), "none of these is fatal");
}

#[test]
fn buffer_lifecycle_and_errors() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let h = alloc(&mut d, &mut b, 100);
    assert_ne!(h, 0);
    assert!(matches!(
        d.one(&mut b, &Write { handle: h, offset: 10, data: b"hello" }).response(),
        Response::Ack(Kind::WRITE)
    ));
    let o = d.one(&mut b, &Read { handle: h, offset: 8, len: 9 });
    assert_eq!(o.response(), Response::Data(b"\0\0hello\0\0"));
    // Copy within the buffer (disjoint), then fill.
    assert!(matches!(
        d.one(&mut b, &Copy { src: h, src_offset: 10, dst: h, dst_offset: 50, len: 5 }).response(),
        Response::Ack(Kind::COPY)
    ));
    assert!(matches!(
        d.one(&mut b, &Fill { handle: h, offset: 0, len: 2, value: 7 }).response(),
        Response::Ack(Kind::FILL)
    ));
    assert_eq!(d.one(&mut b, &Read { handle: h, offset: 50, len: 5 }).response(), Response::Data(b"hello"));
    assert_eq!(d.one(&mut b, &Read { handle: h, offset: 0, len: 3 }).response(), Response::Data(&[7, 7, 0]));
    // Bounds and overflow.
    let oob = [
        d.one(&mut b, &Write { handle: h, offset: 96, data: b"12345" }),
        d.one(&mut b, &Write { handle: h, offset: u64::MAX, data: b"1" }),
        d.one(&mut b, &Read { handle: h, offset: 101, len: 0 }),
        d.one(&mut b, &Read { handle: h, offset: u64::MAX - 1, len: 4 }),
        d.one(&mut b, &Fill { handle: h, offset: 1, len: u64::MAX, value: 0 }),
        d.one(&mut b, &Copy { src: h, src_offset: u64::MAX, dst: h, dst_offset: 0, len: 2 }),
        d.one(&mut b, &Copy { src: h, src_offset: 0, dst: h, dst_offset: 99, len: 2 }),
    ];
    for o in &oob {
        assert_eq!(code(o), ErrorCode::OUT_OF_BOUNDS);
    }
    // Overlapping copy within a buffer.
    assert_eq!(
        code(&d.one(&mut b, &Copy { src: h, src_offset: 0, dst: h, dst_offset: 5, len: 10 })),
        ErrorCode::INVALID_ARGUMENT
    );
    // Zero-size alloc.
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 0 })), ErrorCode::INVALID_ARGUMENT);
    // Free, then the handle is gone.
    assert!(matches!(d.one(&mut b, &Free { handle: h }).response(), Response::Ack(Kind::FREE)));
    assert_eq!(code(&d.one(&mut b, &Free { handle: h })), ErrorCode::NO_SUCH_BUFFER);
    assert_eq!(code(&d.one(&mut b, &Read { handle: h, offset: 0, len: 1 })), ErrorCode::NO_SUCH_BUFFER);
    assert!(b.bufs.is_empty());
    assert_eq!(b.freed.len(), 1);
    assert!(b.freed[0].1, "freed buffers are zeroed");
}

#[test]
fn read_larger_than_max_payload_is_refused() {
    let mut b = MockBackend::new(1 << 26);
    let mut d = Driver::new(SessionConfig { max_payload: 1024, quota: 1 << 24, ..config() }, [0; 32]);
    let _ = d.one(&mut b, &hello());
    let h = alloc(&mut d, &mut b, 4096);
    assert_eq!(code(&d.one(&mut b, &Read { handle: h, offset: 0, len: 1025 })), ErrorCode::INVALID_ARGUMENT);
    assert!(matches!(d.one(&mut b, &Read { handle: h, offset: 0, len: 1024 }).response(), Response::Data(_)));
}

#[test]
fn quota_and_buffer_cap_keep_session_usable() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let big = alloc(&mut d, &mut b, (1 << 20) - 10);
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 11 })), ErrorCode::QUOTA_EXCEEDED);
    assert_eq!(code(&d.one(&mut b, &Alloc { size: u64::MAX })), ErrorCode::QUOTA_EXCEEDED);
    let small = alloc(&mut d, &mut b, 10);
    assert_eq!(d.session.stats().used, 1 << 20);
    let _ = d.one(&mut b, &Free { handle: big });
    let _ = d.one(&mut b, &Free { handle: small });
    for _ in 0..4 {
        alloc(&mut d, &mut b, 1);
    }
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 1 })), ErrorCode::TOO_MANY_BUFFERS);
    assert!(d.session.is_ready());
    let Response::Stats(s) = d.empty(&mut b, Kind::STATS).response() else { panic!() };
    assert_eq!((s.buffers, s.used, s.max_buffers, s.quota), (4, 4, 4, 1 << 20));
}

#[test]
fn backend_out_of_memory_is_typed() {
    let mut b = MockBackend::new(100);
    let mut d = ready(&mut b);
    alloc(&mut d, &mut b, 60);
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 60 })), ErrorCode::OUT_OF_MEMORY);
    alloc(&mut d, &mut b, 40);
}

#[test]
fn handles_are_isolated_between_sessions() {
    let mut b = MockBackend::new(1 << 24);
    let mut a = ready(&mut b);
    let mut c = Driver::new(config(), [4; 32]);
    let _ = c.one(&mut b, &hello());
    let ha = alloc(&mut a, &mut b, 16);
    let _ = a.one(&mut b, &Write { handle: ha, offset: 0, data: b"secret of a" });
    let hc = alloc(&mut c, &mut b, 16);
    // c guesses a's handle: nothing is reachable.
    assert_eq!(code(&c.one(&mut b, &Read { handle: ha, offset: 0, len: 11 })), ErrorCode::NO_SUCH_BUFFER);
    assert_eq!(code(&c.one(&mut b, &Write { handle: ha, offset: 0, data: b"x" })), ErrorCode::NO_SUCH_BUFFER);
    assert_eq!(code(&c.one(&mut b, &Free { handle: ha })), ErrorCode::NO_SUCH_BUFFER);
    assert_eq!(
        code(&c.one(&mut b, &Copy { src: ha, src_offset: 0, dst: hc, dst_offset: 0, len: 11 })),
        ErrorCode::NO_SUCH_BUFFER
    );
    // Handles are not small sequential integers.
    assert!(ha > 4 && hc > 4);
    assert_eq!(
        a.one(&mut b, &Read { handle: ha, offset: 0, len: 11 }).response(),
        Response::Data(b"secret of a")
    );
    // Closing c releases only c's buffer.
    c.session.abort(&mut b);
    assert_eq!(b.bufs.len(), 1);
    assert_eq!(a.session.stats().buffers, 1);
}

#[test]
fn dispatch_validates_shapes() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let x = alloc(&mut d, &mut b, 40);
    let y = alloc(&mut d, &mut b, 40);
    let z = alloc(&mut d, &mut b, 40);
    let add =
        |n| Dispatch { kernel: KernelId::ADD, reserved: 0, a: x, b: y, out: z, m: 0, k: 0, n, alpha: 0.0 };
    assert!(matches!(d.one(&mut b, &add(10)).response(), Response::Ack(Kind::DISPATCH)));
    assert_eq!(code(&d.one(&mut b, &add(11))), ErrorCode::OUT_OF_BOUNDS);
    assert_eq!(code(&d.one(&mut b, &Dispatch { out: x, ..add(10) })), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(&d.one(&mut b, &Dispatch { m: 1, ..add(10) })), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(&d.one(&mut b, &Dispatch { reserved: 1, ..add(10) })), ErrorCode::MALFORMED);
    assert_eq!(code(&d.one(&mut b, &Dispatch { kernel: KernelId(99), ..add(10) })), ErrorCode::UNSUPPORTED);
    assert_eq!(code(&d.one(&mut b, &Dispatch { a: 12345, ..add(10) })), ErrorCode::NO_SUCH_BUFFER);
    let mm =
        |m, k, n| Dispatch { kernel: KernelId::MATMUL, reserved: 0, a: x, b: y, out: z, m, k, n, alpha: 0.0 };
    assert!(matches!(d.one(&mut b, &mm(2, 5, 2)).response(), Response::Ack(Kind::DISPATCH)));
    assert_eq!(code(&d.one(&mut b, &mm(u32::MAX, u32::MAX, 2))), ErrorCode::OUT_OF_BOUNDS);
    let sc =
        Dispatch { kernel: KernelId::SCALE, reserved: 0, a: x, b: 0, out: z, m: 0, k: 0, n: 10, alpha: 2.0 };
    assert!(matches!(d.one(&mut b, &sc).response(), Response::Ack(Kind::DISPATCH)));
    assert_eq!(code(&d.one(&mut b, &Dispatch { alpha: f32::NAN, ..sc })), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(b.dispatched.len(), 3, "only validated calls reach the backend");
}

#[test]
fn bye_releases_and_zeroes_everything() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    for _ in 0..3 {
        let h = alloc(&mut d, &mut b, 64);
        let _ = d.one(&mut b, &Fill { handle: h, offset: 0, len: 64, value: 0xAB });
    }
    let o = d.empty(&mut b, Kind::BYE);
    assert!(matches!(o.response(), Response::Ack(Kind::BYE)));
    assert!(d.session.is_closed());
    assert!(b.bufs.is_empty());
    assert_eq!(b.freed.len(), 3);
    assert!(b.freed.iter().all(|(_, zeroed)| *zeroed));
    assert_eq!(d.session.poll_event(), Some(Event::Ready));
    assert_eq!(d.session.poll_event(), Some(Event::Closed(CloseReason::Bye)));
    // Input after close is an API misuse, not a panic.
    let frame_bytes = {
        let mut buf = [0u8; 16];
        rela_core::wire::encode_frame::<rela_core::crc32::SoftCrc32>(
            &mut buf,
            Kind::PING,
            Flags::NONE,
            1,
            &[],
        )
        .unwrap()
        .to_vec()
    };
    let f = rela_core::wire::Frame::parse::<rela_core::crc32::SoftCrc32>(&frame_bytes, 16).unwrap();
    assert_eq!(d.session.handle_frame(d.now, f, &mut b), Err(ApiMisuse::Closed));
}

#[test]
fn framing_error_closes_and_releases() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    alloc(&mut d, &mut b, 64);
    let now = d.now;
    d.session.handle_frame_error(now, FrameError::BadCrc { expected: 1, actual: 2 }, &mut b).unwrap();
    let outs = d.drain(&mut b);
    assert_eq!(outs.len(), 1);
    assert_eq!(code(&outs[0]), ErrorCode::BAD_FRAME);
    assert!(d.session.is_closed());
    assert!(b.bufs.is_empty());

    let mut d = ready(&mut b);
    let now = d.now;
    d.session
        .handle_frame_error(now, HeaderError::PayloadTooLarge { len: u32::MAX, max: 1 << 24 }.into(), &mut b)
        .unwrap();
    assert_eq!(code(&d.drain(&mut b)[0]), ErrorCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn output_must_be_drained_before_more_input() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let mut buf = [0u8; 16];
    let bytes = rela_core::wire::encode_frame::<rela_core::crc32::SoftCrc32>(
        &mut buf,
        Kind::PING,
        Flags::NONE,
        1,
        &[],
    )
    .unwrap()
    .to_vec();
    let f = rela_core::wire::Frame::parse::<rela_core::crc32::SoftCrc32>(&bytes, 16).unwrap();
    d.session.handle_frame(d.now, f, &mut b).unwrap();
    assert_eq!(d.session.handle_frame(d.now, f, &mut b), Err(ApiMisuse::OutputPending));
    // A too-small output buffer keeps the frame queued.
    let mut tiny = [0u8; 8];
    assert!(d.session.poll_transmit::<rela_core::crc32::SoftCrc32, _>(&mut b, &mut tiny).is_err());
    assert_eq!(d.drain(&mut b).len(), 1);
}

#[test]
fn handshake_and_idle_timeouts() {
    let mut b = MockBackend::new(1 << 24);
    let cfg = SessionConfig {
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        ..config()
    };
    let mut d = Driver::new(cfg.clone(), [0; 32]);
    assert_eq!(d.session.poll_timeout(), Some(Instant::from_millis(2000)));
    d.session.handle_timeout(Instant::from_millis(1999), &mut b);
    assert!(d.drain(&mut b).is_empty());
    d.session.handle_timeout(Instant::from_millis(2000), &mut b);
    let outs = d.drain(&mut b);
    assert_eq!(code(&outs[0]), ErrorCode::TIMEOUT);
    assert_eq!(outs[0].seq, 0, "unsolicited errors carry seq 0");
    assert!(d.session.is_closed());

    let mut d = Driver::new(cfg, [0; 32]);
    let _ = d.one(&mut b, &hello());
    alloc(&mut d, &mut b, 32);
    d.now = Instant::from_millis(1000);
    let _ = d.one(&mut b, &Ping { data: &[] });
    assert_eq!(
        d.session.poll_timeout(),
        Some(Instant::from_millis(6000)),
        "activity pushes the idle deadline"
    );
    d.session.handle_timeout(Instant::from_millis(6000), &mut b);
    assert_eq!(code(&d.drain(&mut b)[0]), ErrorCode::TIMEOUT);
    assert!(b.bufs.is_empty(), "timeout releases buffers");
    assert_eq!(d.session.poll_timeout(), None);
}

#[test]
fn device_info_reports_backend() {
    let mut b = MockBackend::new(1000);
    let mut d = ready(&mut b);
    alloc(&mut d, &mut b, 100);
    let o = d.empty(&mut b, Kind::DEVICE_INFO);
    let Response::DeviceInfo(i) = o.response() else { panic!() };
    assert_eq!((i.total, i.free, i.name), (1000, 900, "mock"));
    assert_eq!(b.usage().used, 100);
}

/// A WRITE header for `data_len` bytes of data after the 12-byte prefix.
fn write_header(seq: u16, data_len: usize) -> rela_core::wire::HeaderRepr {
    rela_core::wire::HeaderRepr {
        kind: Kind::WRITE,
        flags: Flags::NONE,
        seq,
        len: (WRITE_PREFIX_LEN + data_len) as u32,
        crc: 0,
    }
}

fn write_prefix(handle: u32, offset: u64) -> [u8; WRITE_PREFIX_LEN] {
    let mut p = [0u8; WRITE_PREFIX_LEN];
    Write::emit_prefix(handle, offset, &mut p).unwrap();
    p
}

#[test]
fn begin_write_accepts_exactly_the_writes_handle_frame_would_carry_out() {
    let mut b = MockBackend::new(1 << 20);
    // Not ready yet: nothing is lent.
    let d = Driver::new(config(), [3; 32]);
    assert_eq!(d.session.begin_write(&write_header(1, 100), &write_prefix(1, 0), &b), None);
    let mut d = ready(&mut b);
    let h = alloc(&mut d, &mut b, 4096);
    let ok = d.session.begin_write(&write_header(9, 4096), &write_prefix(h, 0), &b).expect("lent");
    assert_eq!((ok.handle, ok.offset, ok.len, ok.seq), (h, 0, 4096, 9));
    assert_eq!(b.size(ok.id), Ok(4096));
    // Everything handle_frame would refuse is not lent.
    let refused = [
        (write_header(2, 4097), write_prefix(h, 0)),
        (write_header(2, 1), write_prefix(h, 4096)),
        (write_header(2, 16), write_prefix(h, u64::MAX - 4)),
        (write_header(2, 16), write_prefix(h ^ 1, 0)),
        (rela_core::wire::HeaderRepr { kind: Kind::READ, ..write_header(2, 16) }, write_prefix(h, 0)),
        (rela_core::wire::HeaderRepr { flags: Flags::COMPRESSED, ..write_header(2, 16) }, write_prefix(h, 0)),
    ];
    for (header, prefix) in &refused {
        assert_eq!(d.session.begin_write(header, prefix, &b), None, "{header:?} {prefix:?}");
    }
    // A payload shorter than the prefix, or a prefix cut short.
    let short = rela_core::wire::HeaderRepr { len: 11, ..write_header(2, 0) };
    assert_eq!(d.session.begin_write(&short, &write_prefix(h, 0), &b), None);
    assert_eq!(d.session.begin_write(&write_header(2, 16), &write_prefix(h, 0)[..8], &b), None);
}

#[test]
fn finish_write_acknowledges_and_counts_like_handle_frame() {
    let mut b = MockBackend::new(1 << 20);
    let mut d = ready(&mut b);
    let h = alloc(&mut d, &mut b, 4096);
    let before = d.session.stats();
    let w = d.session.begin_write(&write_header(77, 1000), &write_prefix(h, 8), &b).expect("lent");
    // The host places the data itself, then finishes.
    b.write(w.id, w.offset, &[5u8; 1000]).unwrap();
    d.now = Instant::from_micros(1234);
    d.session.finish_write(d.now, &w).unwrap();
    let outs = d.drain(&mut b);
    assert_eq!(outs.len(), 1);
    assert_eq!((outs[0].kind, outs[0].seq, outs[0].payload.len()), (Kind::WRITE, 77, 0));
    assert!(outs[0].flags.is_response());
    let after = d.session.stats();
    assert_eq!(after.frames_in, before.frames_in + 1);
    assert_eq!(after.bytes_in, before.bytes_in + 1012);
    // The data is where the WRITE said.
    let r = d.one(&mut b, &Read { handle: h, offset: 8, len: 1000 });
    assert!(matches!(r.response(), Response::Data(x) if x.iter().all(|&v| v == 5)));
}

#[test]
fn finish_write_after_the_session_changed_is_refused() {
    let mut b = MockBackend::new(1 << 20);
    let mut d = ready(&mut b);
    let h = alloc(&mut d, &mut b, 4096);
    let w = d.session.begin_write(&write_header(5, 100), &write_prefix(h, 0), &b).expect("lent");
    // The host broke the contract: it freed the buffer in between.
    let freed = d.one(&mut b, &Free { handle: h });
    assert!(matches!(freed.response(), Response::Ack(Kind::FREE)));
    assert_eq!(d.session.finish_write(d.now, &w), Err(ApiMisuse::StaleWrite));
    assert!(d.drain(&mut b).is_empty(), "nothing acknowledged");
    // Output pending is refused too, and a closed session.
    let h = alloc(&mut d, &mut b, 4096);
    let w = d.session.begin_write(&write_header(6, 100), &write_prefix(h, 0), &b).expect("lent");
    let _ = d.raw(&mut b, Kind::BYE, Flags::NONE, &[]);
    assert_eq!(d.session.finish_write(d.now, &w), Err(ApiMisuse::Closed));
}

#[test]
fn read_data_can_be_sent_from_the_backend_behind_a_header_with_the_same_crc() {
    use rela_core::crc32::SoftCrc32;
    use rela_core::session::{PendingRead, PollError};
    use rela_core::wire::Frame;
    let mut b = MockBackend::new(1 << 20);
    let mut d = ready(&mut b);
    let h = alloc(&mut d, &mut b, 4096);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let _ =
        d.raw(&mut b, Kind::WRITE, Flags::NONE, &[&h.to_le_bytes()[..], &8u64.to_le_bytes(), &data].concat());
    assert!(d.session.peek_read().is_none(), "nothing queued");
    // Queue a READ without draining it.
    let mut frame = vec![0u8; 64];
    let payload = {
        let mut p = vec![0u8; Read { handle: h, offset: 8, len: 1000 }.buffer_len()];
        Read { handle: h, offset: 8, len: 1000 }.emit(&mut p).unwrap();
        p
    };
    let bytes = rela_core::wire::encode_frame::<SoftCrc32>(&mut frame, Kind::READ, Flags::NONE, 42, &payload)
        .unwrap()
        .to_vec();
    let f = Frame::parse::<SoftCrc32>(&bytes, u32::MAX).unwrap();
    d.session.handle_frame(d.now, f, &mut b).unwrap();
    let pending = d.session.peek_read().expect("READ data queued");
    assert_eq!((pending.offset, pending.len), (8, 1000));
    let PendingRead { id, .. } = pending;
    // The host reads the bytes where they lie and sends them behind the header.
    let mut lying = vec![0u8; 1000];
    b.read(id, 8, &mut lying).unwrap();
    let mut header = [0u8; 16];
    assert_eq!(
        d.session.transmit_read_header::<SoftCrc32>(&lying[..999], &mut header),
        Err(PollError::NotReadData),
        "a length that does not match is refused"
    );
    let before = d.session.stats().bytes_out;
    let t = d.session.transmit_read_header::<SoftCrc32>(&lying, &mut header).unwrap();
    assert_eq!(t.len, 16);
    let wire = [&header[..], &lying].concat();
    let parsed = Frame::parse::<SoftCrc32>(&wire, u32::MAX).expect("header and data form a valid frame");
    assert_eq!((parsed.kind(), parsed.seq(), parsed.payload), (Kind::READ, 42, &data[..]));
    assert!(parsed.header.flags.is_response());
    assert_eq!(d.session.stats().bytes_out, before + 1000);
    assert!(d.session.peek_read().is_none());
    assert!(d.drain(&mut b).is_empty(), "the response was dequeued");
    assert_eq!(d.session.transmit_read_header::<SoftCrc32>(&lying, &mut header), Err(PollError::NotReadData));
}

/// A frame with the given seq, handed to the session as a host would; returns its output.
fn with_seq(
    d: &mut Driver,
    b: &mut MockBackend,
    kind: Kind,
    flags: Flags,
    seq: u16,
    payload: &[u8],
) -> common::Out {
    let mut buf = vec![0u8; payload.len() + 16];
    let bytes =
        rela_core::wire::encode_frame::<rela_core::crc32::SoftCrc32>(&mut buf, kind, flags, seq, payload)
            .unwrap()
            .to_vec();
    let f = rela_core::wire::Frame::parse::<rela_core::crc32::SoftCrc32>(&bytes, u32::MAX).unwrap();
    let now = d.now;
    d.session.handle_frame(now, f, b).unwrap();
    let mut outs = d.drain(b);
    assert_eq!(outs.len(), 1);
    outs.remove(0)
}

#[test]
fn handles_start_from_the_handle_seed_not_from_the_nonce() {
    let mut b = MockBackend::new(1 << 24);
    let first = |nonce: [u8; 32], seed: u32, b: &mut MockBackend| {
        let mut d = Driver::with_handle_seed(config(), nonce, seed);
        let _ = d.one(b, &hello());
        let h = alloc(&mut d, b, 8);
        d.session.abort(b);
        h
    };
    // The same nonce (sent in WELCOME) with other seeds: other handles.
    let a = first([7; 32], 1, &mut b);
    let c = first([7; 32], 0x8000_0001, &mut b);
    assert_ne!(a, c);
    // Other nonces with the same seed: the same handles. Nothing of the nonce is in them.
    assert_eq!(first([0; 32], 0x1234_5678, &mut b), first([0xff; 32], 0x1234_5678, &mut b));
}

/// Before HELLO, the earliest failing check answers: framing (fatal, see
/// `framing_error_closes_and_releases`), then the flags, then the kind and the payload's
/// decoding, then the state. None of these closes the session.
#[test]
fn precedence_of_errors_before_hello() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = Driver::new(config(), [1; 32]);
    let cases: &[(Kind, Flags, Vec<u8>, ErrorCode)] = &[
        // The RESPONSE flag and COMPRESSED come first, whatever the kind and payload.
        (Kind(0x55), Flags::RESPONSE, vec![], ErrorCode::MALFORMED),
        (Kind::PING, Flags::COMPRESSED, vec![0; 300], ErrorCode::UNSUPPORTED),
        // Then the kind: unknown kinds, and kinds that are not requests (UDP-only and
        // node-to-client ones), are UNKNOWN_KIND in any state.
        (Kind(0x55), Flags::NONE, vec![1, 2, 3], ErrorCode::UNKNOWN_KIND),
        (Kind::DISCOVER, Flags::NONE, vec![0; 240], ErrorCode::UNKNOWN_KIND),
        (Kind::ANNOUNCE, Flags::NONE, vec![], ErrorCode::UNKNOWN_KIND),
        (Kind::PROGRESS, Flags::NONE, vec![0; 16], ErrorCode::UNKNOWN_KIND),
        (Kind::ERROR, Flags::ERROR, vec![], ErrorCode::UNKNOWN_KIND),
        // Then the payload of a known kind: MALFORMED before WRONG_STATE.
        (Kind::PING, Flags::NONE, vec![0; 257], ErrorCode::MALFORMED),
        (Kind::WRITE, Flags::NONE, vec![0; 3], ErrorCode::MALFORMED),
        (Kind::MODEL_LOAD, Flags::NONE, vec![3, b'.', b'.', b'/'], ErrorCode::MALFORMED),
        // A well-formed request in the wrong state.
        (Kind::PING, Flags::NONE, vec![0; 256], ErrorCode::WRONG_STATE),
        (Kind::MODEL_LOAD, Flags::NONE, vec![1, b'm'], ErrorCode::WRONG_STATE),
    ];
    for (kind, flags, payload, want) in cases {
        let outs = d.raw(&mut b, *kind, *flags, payload);
        assert_eq!(outs.len(), 1);
        assert_eq!(code(&outs[0]), *want, "{kind} {flags:?} with {} bytes", payload.len());
        assert_eq!(d.session.state(), State::AwaitHello);
    }
    let _ = d.one(&mut b, &hello());
    assert!(d.session.is_ready());
}

#[test]
fn a_request_with_seq_zero_is_served_and_answered_with_seq_zero() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let o = with_seq(&mut d, &mut b, Kind::PING, Flags::NONE, 0, b"zero");
    assert_eq!((o.kind, o.seq, o.response()), (Kind::PING, 0, Response::Pong(b"zero")));
    // An ERROR answering it carries seq 0 and the request's kind (an unsolicited one has kind 0).
    let o = with_seq(&mut d, &mut b, Kind::FREE, Flags::NONE, 0, &77u32.to_le_bytes());
    let Response::Error(e) = o.response() else { panic!("no ERROR") };
    assert_eq!((o.seq, e.code, e.request_kind), (0, ErrorCode::NO_SUCH_BUFFER, Kind::FREE));
}

#[test]
fn stats_count_every_handled_request_and_the_payload_bytes_before_the_stats_answer() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = Driver::new(config(), [3; 32]);
    let mut out_bytes = 0;
    let sent = |outs: Vec<common::Out>| outs.iter().map(|o| o.payload.len() as u64).sum::<u64>();
    out_bytes += sent(d.send(&mut b, &hello()));
    out_bytes += sent(d.raw(&mut b, Kind::PING, Flags::NONE, b"12345"));
    let h = match d.one(&mut b, &Alloc { size: 100 }).response() {
        Response::Allocated(a) => a.handle,
        other => panic!("{other:?}"),
    };
    out_bytes += 12;
    // Refused requests count too.
    out_bytes += sent(d.raw(&mut b, Kind(0x55), Flags::NONE, b"xyz"));
    out_bytes += sent(d.send(&mut b, &Write { handle: h, offset: 0, data: b"abcd" }));
    let Response::Stats(s) = d.empty(&mut b, Kind::STATS).response() else { panic!("no STATS") };
    assert_eq!((s.buffers, s.max_buffers, s.used, s.quota), (1, 4, 100, 1 << 20));
    // HELLO, PING, ALLOC, the unknown kind, WRITE and this STATS.
    assert_eq!(s.frames_in, 6);
    assert_eq!(s.bytes_in, 8 + 5 + 8 + 3 + (12 + 4));
    // Every response payload before this one; its own is not counted.
    assert_eq!(s.bytes_out, out_bytes);
    assert_eq!(s.bytes_out, 64 + 5 + 12 + 4 + "unknown message kind".len() as u64);
}

#[test]
fn zero_length_operations_check_their_range_and_succeed() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let x = alloc(&mut d, &mut b, 16);
    let y = alloc(&mut d, &mut b, 16);
    let ack = |o: common::Out, kind| assert_eq!(o.response(), Response::Ack(kind));
    ack(d.one(&mut b, &Write { handle: x, offset: 16, data: b"" }), Kind::WRITE);
    assert_eq!(d.one(&mut b, &Read { handle: x, offset: 16, len: 0 }).response(), Response::Data(b""));
    ack(d.one(&mut b, &Copy { src: x, src_offset: 4, dst: x, dst_offset: 4, len: 0 }), Kind::COPY);
    ack(d.one(&mut b, &Fill { handle: x, offset: 16, len: 0, value: 1 }), Kind::FILL);
    let add =
        Dispatch { kernel: KernelId::ADD, reserved: 0, a: x, b: y, out: y, m: 0, k: 0, n: 0, alpha: 0.0 };
    // Aliasing is refused even with nothing to compute.
    assert_eq!(code(&d.one(&mut b, &add)), ErrorCode::INVALID_ARGUMENT);
    let z = alloc(&mut d, &mut b, 4);
    ack(d.one(&mut b, &Dispatch { out: z, ..add }), Kind::DISPATCH);
    // Past the end, even by zero bytes: OUT_OF_BOUNDS.
    assert_eq!(code(&d.one(&mut b, &Write { handle: x, offset: 17, data: b"" })), ErrorCode::OUT_OF_BOUNDS);
    assert_eq!(code(&d.one(&mut b, &Read { handle: x, offset: 17, len: 0 })), ErrorCode::OUT_OF_BOUNDS);
    assert_eq!(
        code(&d.one(&mut b, &Copy { src: x, src_offset: 17, dst: y, dst_offset: 0, len: 0 })),
        ErrorCode::OUT_OF_BOUNDS
    );
    assert_eq!(
        code(&d.one(&mut b, &Fill { handle: x, offset: 17, len: 0, value: 1 })),
        ErrorCode::OUT_OF_BOUNDS
    );
    // The mock's buffers are untouched.
    assert!(b.bufs.values().all(|v| v.iter().all(|&v| v == 0)));
}

/// DISPATCH answers the first failing check, in the order PROTOCOL.md §4 gives: the payload,
/// `reserved`, the kernel id, unused fields, the handles, the sizes, aliasing and alpha.
#[test]
fn dispatch_checks_its_arguments_in_the_documented_order() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = ready(&mut b);
    let x = alloc(&mut d, &mut b, 40);
    let y = alloc(&mut d, &mut b, 40);
    let small = alloc(&mut d, &mut b, 4);
    let ok =
        Dispatch { kernel: KernelId::ADD, reserved: 0, a: x, b: y, out: small, m: 0, k: 0, n: 1, alpha: 0.0 };
    let cases = [
        // reserved beats an unknown kernel
        (Dispatch { reserved: 1, kernel: KernelId(99), ..ok }, ErrorCode::MALFORMED),
        // an unknown kernel beats unused fields and handles
        (Dispatch { kernel: KernelId(99), m: 5, a: 0xdead, ..ok }, ErrorCode::UNSUPPORTED),
        // unused fields beat handles
        (Dispatch { m: 5, a: 0xdead, ..ok }, ErrorCode::INVALID_ARGUMENT),
        // handles beat sizes
        (Dispatch { out: 0xdead, n: 10, ..ok }, ErrorCode::NO_SUCH_BUFFER),
        // sizes beat aliasing
        (Dispatch { out: x, n: 2, a: small, ..ok }, ErrorCode::OUT_OF_BOUNDS),
        // aliasing last
        (Dispatch { out: x, ..ok }, ErrorCode::INVALID_ARGUMENT),
    ];
    for (call, want) in cases {
        assert_eq!(code(&d.one(&mut b, &call)), want, "{call:?}");
    }
    assert_eq!(code(&d.raw(&mut b, Kind::DISPATCH, Flags::NONE, &[0; 31])[0]), ErrorCode::MALFORMED);
    assert!(b.dispatched.is_empty(), "no refused call reaches the backend");
    assert!(matches!(d.one(&mut b, &ok).response(), Response::Ack(Kind::DISPATCH)));
}

/// ALLOC checks the size, the session's quota, its buffer count, and only then asks the
/// backend, whose `max_alloc` and free memory answer OUT_OF_MEMORY: a request above both the
/// quota and `max_alloc` is QUOTA_EXCEEDED.
#[test]
fn alloc_checks_quota_before_the_backend() {
    let mut b = MockBackend::new(1 << 10);
    let mut d = ready(&mut b);
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 0 })), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(&d.one(&mut b, &Alloc { size: (1 << 20) + 1 })), ErrorCode::QUOTA_EXCEEDED);
    // Within the quota, beyond what the backend has.
    assert_eq!(code(&d.one(&mut b, &Alloc { size: 1 << 11 })), ErrorCode::OUT_OF_MEMORY);
}

#[test]
fn hello_caps_gate_only_progress() {
    let mut b = MockBackend::new(1 << 24);
    let mut d = Driver::new(config(), [3; 32]);
    // A client that announces no capability may still DISPATCH.
    let _ = d.one(&mut b, &Hello { caps: Caps(0), ..hello() });
    let x = alloc(&mut d, &mut b, 4);
    let y = alloc(&mut d, &mut b, 4);
    let z = alloc(&mut d, &mut b, 4);
    let add =
        Dispatch { kernel: KernelId::ADD, reserved: 0, a: x, b: y, out: z, m: 0, k: 0, n: 1, alpha: 0.0 };
    assert!(matches!(d.one(&mut b, &add).response(), Response::Ack(Kind::DISPATCH)));
}
