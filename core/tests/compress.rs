//! Compressed frames in the session (capability LZ4): what `Session::check_compressed` lets
//! through, what a compressed frame reaching `handle_frame` gets, and the host's flow (check,
//! inflate, hand over the plain frame) end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Driver, MockBackend};
use rela_core::session::SessionConfig;
use rela_core::wire::msg::*;
use rela_core::wire::{ErrorCode, Flags, HeaderRepr, Kind};

fn config(lz4: bool) -> SessionConfig {
    SessionConfig { quota: 1 << 20, max_buffers: 4, max_payload: 4096, lz4, ..SessionConfig::default() }
}

fn session(lz4: bool, caps: Caps, b: &mut MockBackend) -> (Driver, Caps) {
    let mut d = Driver::new(config(lz4), [7; 32]);
    let w = d.one(b, &Hello { min_version: 1, max_version: 1, caps });
    let Response::Welcome(w) = w.response() else { panic!("no WELCOME") };
    (d, w.caps)
}

fn alloc(d: &mut Driver, b: &mut MockBackend, size: u64) -> u32 {
    match d.one(b, &Alloc { size }).response() {
        Response::Allocated(a) => a.handle,
        other => panic!("alloc failed: {other:?}"),
    }
}

/// 64 zero bytes as an LZ4 block (as in PROTOCOL.md's example).
const BLOCK_64_ZEROS: [u8; 11] = [0x1f, 0x00, 0x01, 0x00, 39, 0x50, 0, 0, 0, 0, 0];

fn compressed_write(handle: u32, offset: u64, raw_len: u32) -> Vec<u8> {
    let mut p = handle.to_le_bytes().to_vec();
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&raw_len.to_le_bytes());
    p.extend_from_slice(&BLOCK_64_ZEROS);
    p
}

fn header(kind: Kind, flags: Flags, payload: &[u8]) -> HeaderRepr {
    HeaderRepr { kind, flags, seq: 9, len: payload.len() as u32, crc: 0 }
}

#[test]
fn the_capability_is_offered_and_used_only_when_both_sides_ask() {
    let mut b = MockBackend::new(1 << 20);
    let (d, caps) = session(true, Caps(Caps::DISPATCH.0 | Caps::LZ4.0), &mut b);
    assert!(caps.contains(Caps::LZ4));
    assert!(d.session.lz4());
    let (d, caps) = session(true, Caps::DISPATCH, &mut b);
    assert!(caps.contains(Caps::LZ4), "offered whatever the client asks");
    assert!(!d.session.lz4(), "not used unless the client asked");
    let (d, caps) = session(false, Caps::LZ4, &mut b);
    assert!(!caps.contains(Caps::LZ4));
    assert!(!d.session.lz4());
}

#[test]
fn check_compressed_decides_from_the_size_and_the_target() {
    let mut b = MockBackend::new(1 << 20);
    let (mut d, _) = session(true, Caps::LZ4, &mut b);
    let h = alloc(&mut d, &mut b, 100);
    let check =
        |d: &Driver, p: &[u8]| d.session.check_compressed(&header(Kind::WRITE, Flags::COMPRESSED, p), p);
    assert_eq!(check(&d, &compressed_write(h, 36, 64)), Ok(76));
    let code = |r: Result<usize, rela_core::session::Refusal>| r.unwrap_err().code;
    assert_eq!(code(check(&d, &compressed_write(h, 37, 64))), ErrorCode::OUT_OF_BOUNDS);
    assert_eq!(code(check(&d, &compressed_write(h, u64::MAX, 64))), ErrorCode::OUT_OF_BOUNDS);
    assert_eq!(code(check(&d, &compressed_write(h ^ 1, 0, 64))), ErrorCode::NO_SUCH_BUFFER);
    assert_eq!(
        code(check(&d, &compressed_write(h, 0, 4096 - 11))),
        ErrorCode::INVALID_ARGUMENT,
        "past the cap"
    );
    assert_eq!(code(check(&d, &compressed_write(h, 0, u32::MAX))), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(check(&d, &compressed_write(h, 0, 0))), ErrorCode::MALFORMED);
    assert_eq!(code(check(&d, &compressed_write(h, 0, 64)[..14])), ErrorCode::MALFORMED);
    let p = [0u8; 8];
    assert_eq!(
        code(d.session.check_compressed(&header(Kind::ALLOC, Flags::COMPRESSED, &p), &p)),
        ErrorCode::UNSUPPORTED
    );
    assert_eq!(
        code(d.session.check_compressed(&header(Kind::MODEL_CHUNK, Flags::COMPRESSED, &p), &p)),
        ErrorCode::MALFORMED,
        "too short for a chunk's prefix and raw_len"
    );

    // Not negotiated: UNSUPPORTED whatever the frame.
    let (mut plain, _) = session(true, Caps::DISPATCH, &mut b);
    let h = alloc(&mut plain, &mut b, 100);
    assert_eq!(code(check(&plain, &compressed_write(h, 0, 64))), ErrorCode::UNSUPPORTED);
}

#[test]
fn a_compressed_frame_reaching_the_session_is_refused_and_writes_nothing() {
    let mut b = MockBackend::new(1 << 20);
    let (mut d, _) = session(true, Caps::LZ4, &mut b);
    let h = alloc(&mut d, &mut b, 100);
    d.raw(&mut b, Kind::WRITE, Flags::NONE, &[&h.to_le_bytes()[..], &[0; 8], &[5u8; 100]].concat());
    let cases = [
        (compressed_write(h, 0, 64), ErrorCode::MALFORMED, "passes the check: the host did not inflate it"),
        (compressed_write(h, 50, 64), ErrorCode::OUT_OF_BOUNDS, "past the buffer"),
        (compressed_write(h, 0, 1 << 20), ErrorCode::INVALID_ARGUMENT, "past the cap"),
    ];
    for (p, code, what) in cases {
        let outs = d.raw(&mut b, Kind::WRITE, Flags::COMPRESSED, &p);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].error_code(), Some(code.0), "{what}");
        assert!(d.session.is_ready(), "{what}: the session goes on");
    }
    let read = Read { handle: h, offset: 0, len: 100 };
    let mut payload = [0u8; 16];
    read.emit(&mut payload).unwrap();
    // A READ asking for a compressed answer is served as a plain READ by the session.
    let outs = d.raw(&mut b, Kind::READ, Flags::COMPRESSED, &payload);
    assert_eq!(outs[0].flags, Flags::RESPONSE);
    assert_eq!(outs[0].payload, [5u8; 100], "nothing was written");

    // Without the capability: UNSUPPORTED, as for a node that serves none.
    let (mut plain, _) = session(false, Caps::LZ4, &mut b);
    let h = alloc(&mut plain, &mut b, 100);
    Read { handle: h, offset: 0, len: 100 }.emit(&mut payload).unwrap();
    let outs = plain.raw(&mut b, Kind::READ, Flags::COMPRESSED, &payload);
    assert_eq!(outs[0].error_code(), Some(ErrorCode::UNSUPPORTED.0));
}

#[cfg(feature = "lz4")]
#[test]
fn the_hosts_flow_lands_the_plain_data() {
    use rela_core::wire::compress::Compressed;
    let mut b = MockBackend::new(1 << 20);
    let (mut d, _) = session(true, Caps::LZ4, &mut b);
    let h = alloc(&mut d, &mut b, 100);
    d.raw(&mut b, Kind::WRITE, Flags::NONE, &[&h.to_le_bytes()[..], &[0; 8], &[5u8; 100]].concat());
    let wire = compressed_write(h, 20, 64);
    let plain_len =
        d.session.check_compressed(&header(Kind::WRITE, Flags::COMPRESSED, &wire), &wire).unwrap();
    let c = Compressed::parse(Kind::WRITE, false, &wire, d.session.max_payload()).unwrap();
    let mut plain = vec![0u8; plain_len];
    assert_eq!(c.inflate(&mut plain), Ok(plain_len));
    let outs = d.raw(&mut b, Kind::WRITE, Flags::NONE, &plain);
    assert_eq!(outs[0].kind, Kind::WRITE);
    let outs = d.one(&mut b, &Read { handle: h, offset: 0, len: 100 });
    let mut want = [5u8; 100];
    want[20..84].fill(0);
    assert_eq!(outs.payload, want);
}
