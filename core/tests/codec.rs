//! Message codecs: a round trip for every message, every malformed case, and property tests
//! (encode then decode round-trips; arbitrary bytes never panic a decoder).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use proptest::prelude::*;
use rela_core::auth::AuthKey;
use rela_core::backend::{BackendKind, KernelId};
use rela_core::crc32::{Crc32, SoftCrc32};
use rela_core::discovery::{Announce, Discover, DiscoveryError};
use rela_core::wire::msg::*;
use rela_core::wire::{
    DecodeError, ErrorCode, Flags, Frame, FrameError, HeaderError, HeaderRepr, Kind, RawHeader, encode_frame,
};

fn roundtrip<'a, M: Message<'a> + PartialEq + std::fmt::Debug>(msg: &M, buf: &'a mut Vec<u8>) {
    buf.resize(msg.buffer_len(), 0);
    let n = msg.emit(buf).expect("emit");
    assert_eq!(n, msg.buffer_len());
    let back = M::parse(&buf[..n]).expect("parse");
    assert_eq!(&back, msg);
}

fn roundtrip_fixed<M>(msg: M)
where
    M: for<'a> Message<'a> + PartialEq + std::fmt::Debug,
{
    let mut buf = Vec::new();
    roundtrip(&msg, &mut buf);
    // Every strict prefix is truncated, one extra byte is trailing.
    for cut in 0..buf.len() {
        assert_eq!(M::parse(&buf[..cut]), Err(DecodeError::Truncated), "prefix {cut} must fail");
    }
    let mut long = vec![0u8; msg.buffer_len() + 1];
    msg.emit(&mut long).unwrap();
    assert_eq!(M::parse(&long), Err(DecodeError::TrailingBytes));
    // A too-small output buffer is a typed error.
    let mut short = vec![0u8; msg.buffer_len() - 1];
    assert!(matches!(msg.emit(&mut short), Err(rela_core::wire::EncodeError::BufferTooSmall { .. })));
}

#[test]
fn every_fixed_message_roundtrips() {
    // Sizes pinned by docs/PROTOCOL.md.
    assert_eq!(
        [
            Hello::LEN,
            Welcome::LEN,
            Auth::LEN,
            Alloc::LEN,
            Allocated::LEN,
            Free::LEN,
            Read::LEN,
            Copy::LEN,
            Fill::LEN,
            Dispatch::LEN,
            Stats::LEN
        ],
        [8, 64, 32, 8, 12, 4, 16, 32, 21, 32, 48]
    );
    assert_eq!([ModelUnload::LEN, ModelLoaded::LEN], [4, 16]);
    roundtrip_fixed(ModelUnload { model: 7 });
    roundtrip_fixed(ModelLoaded { model: 7, dim: 384, bytes: 90_000_000 });
    roundtrip_fixed(Hello { min_version: 1, max_version: 3, caps: Caps(5) });
    roundtrip_fixed(Welcome {
        version: 1,
        flags: WELCOME_AUTH_REQUIRED,
        caps: Caps::DISPATCH,
        max_payload: 1 << 24,
        max_buffers: 64,
        quota: 1 << 30,
        handshake_timeout_ms: 10_000,
        idle_timeout_ms: 300_000,
        nonce: [0xA5; 32],
    });
    roundtrip_fixed(Auth { mac: [7; 32] });
    roundtrip_fixed(Alloc { size: u64::MAX });
    roundtrip_fixed(Allocated { handle: 0xDEAD_BEEF, size: 4096 });
    roundtrip_fixed(Free { handle: 9 });
    roundtrip_fixed(Read { handle: 1, offset: u64::MAX, len: u32::MAX });
    roundtrip_fixed(Copy { src: 1, src_offset: 2, dst: 3, dst_offset: 4, len: 5 });
    roundtrip_fixed(Fill { handle: 1, offset: 2, len: 3, value: 0xFF });
    roundtrip_fixed(Dispatch {
        kernel: KernelId::MATMUL,
        reserved: 0,
        a: 1,
        b: 2,
        out: 3,
        m: 4,
        k: 5,
        n: 6,
        alpha: 0.0,
    });
    // STATS: 48 bytes, and an optional trailing shared_models (an older node's 48 bytes parse).
    let stats = Stats {
        buffers: 1,
        max_buffers: 2,
        used: 3,
        quota: 4,
        frames_in: 5,
        bytes_in: 6,
        bytes_out: 7,
        shared_models: Some(8),
    };
    let mut buf = Vec::new();
    roundtrip(&stats, &mut buf);
    assert_eq!(buf.len(), 56);
    assert_eq!(Stats::parse(&buf[..48]), Ok(Stats { shared_models: None, ..stats }));
    roundtrip(&Stats { shared_models: None, ..stats }, &mut Vec::new());
    for cut in (0..48).chain(49..56) {
        assert_eq!(Stats::parse(&buf[..cut]), Err(DecodeError::Truncated), "prefix {cut} must fail");
    }
    buf.push(0);
    assert_eq!(Stats::parse(&buf), Err(DecodeError::TrailingBytes));
}

#[test]
fn borrowing_messages_roundtrip_zero_copy() {
    let mut buf = Vec::new();
    let data = [1u8, 2, 3, 4, 5];
    let w = Write { handle: 42, offset: 7, data: &data };
    roundtrip(&w, &mut buf);
    let parsed = Write::parse(&buf).unwrap();
    // The data borrows the frame buffer.
    assert!(std::ptr::eq(parsed.data.as_ptr(), buf[12..].as_ptr()));

    let mut buf = Vec::new();
    roundtrip(&Ping { data: b"ping" }, &mut buf);
    assert!(Ping::parse(&[0; 257]).is_err());
    let mut big = [0u8; 300];
    assert!(Ping { data: &[0; 257] }.emit(&mut big).is_err());

    let mut buf = Vec::new();
    let info = DeviceInfoMsg {
        backend: BackendKind::VULKAN,
        total: 10,
        free: 5,
        max_alloc: 8,
        name: "llvmpipe (LLVM 19.1.7, 256 bits)",
        vendor: "Mesa",
        shared_models: Some(90 << 20),
    };
    roundtrip(&info, &mut buf);
    // A node that does not send the trailing shared_models field: it reads as `None` and
    // re-encodes to the same bytes; any other trailing length is malformed.
    let mut full = vec![0u8; info.buffer_len()];
    let n = info.emit(&mut full).unwrap();
    let old = DeviceInfoMsg::parse(&full[..n - 8]).unwrap();
    assert_eq!(old, DeviceInfoMsg { shared_models: None, ..info });
    let mut buf = Vec::new();
    roundtrip(&old, &mut buf);
    assert!(DeviceInfoMsg::parse(&full[..n - 3]).is_err());

    let mut buf = Vec::new();
    roundtrip(&ModelLoad { name: "all-MiniLM-L6-v2" }, &mut buf);
    assert!(ModelLoad::parse(b"\x05../ab").is_err(), "path-like names are malformed");
    assert!(ModelLoad::parse(b"\x00").is_err(), "empty names are malformed");

    let texts = ["héllo wörld", "", "third"];
    let mut buf = vec![0u8; Infer::encoded_len(&texts)];
    let n = Infer::emit_texts(9, &texts, &mut buf).unwrap();
    let parsed = Infer::parse(&buf[..n]).unwrap();
    assert_eq!((parsed.model, parsed.count()), (9, 3));
    assert_eq!(parsed.texts().collect::<Vec<_>>(), texts);
    let mut again = vec![0u8; parsed.buffer_len()];
    assert_eq!(parsed.emit(&mut again).unwrap(), n);
    assert_eq!(again, buf[..n]);
    assert_eq!(Infer::parse(&buf[..n - 1]), Err(DecodeError::Truncated));
    let mut bad = buf[..n].to_vec();
    bad[8] = 0xFF; // first byte of the first text
    assert_eq!(Infer::parse(&bad), Err(DecodeError::InvalidUtf8));

    let floats: Vec<u8> = [1.0f32, -2.0, 0.5, 0.25].iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut buf = Vec::new();
    roundtrip(&Embeddings { count: 2, dim: 2, data: &floats }, &mut buf);
    assert_eq!(Embeddings::parse(&buf).unwrap().get(1), Some(-2.0));
    assert!(Embeddings::parse(&buf[..buf.len() - 4]).is_err());

    let mut buf = Vec::new();
    let e = ErrorMsg { code: ErrorCode(4242), request_kind: Kind(0x99), reason: "unknown codes round-trip" };
    roundtrip(&e, &mut buf);
}

#[test]
fn malformed_strings_are_typed_errors() {
    // DEVICE_INFO with a non-UTF-8 name.
    let mut p = vec![1, 0, 0, 0];
    p.extend_from_slice(&[0; 24]);
    p.extend_from_slice(&[2, 0xFF, 0xFE, 0]);
    assert_eq!(DeviceInfoMsg::parse(&p), Err(DecodeError::InvalidUtf8));
    // A name longer than the limit.
    let mut p = vec![1, 0, 0, 0];
    p.extend_from_slice(&[0; 24]);
    p.push(65);
    p.extend_from_slice(&[b'a'; 65]);
    p.push(0);
    assert_eq!(DeviceInfoMsg::parse(&p), Err(DecodeError::InvalidField("device_info.name")));
    // Reserved bytes must be zero.
    let mut p = vec![1, 0, 1, 0];
    p.extend_from_slice(&[0; 26]);
    assert_eq!(DeviceInfoMsg::parse(&p), Err(DecodeError::InvalidField("device_info.reserved")));
    // ERROR reason above 128 bytes.
    let mut p = vec![1, 0, 2, 129];
    p.extend_from_slice(&[b'x'; 129]);
    assert_eq!(ErrorMsg::parse(&p), Err(DecodeError::InvalidField("error.reason")));
}

#[test]
fn request_and_response_dispatch_every_kind() {
    for kind in (0..=255u8).map(Kind) {
        // Empty payloads decode or fail with a typed error; unknown kinds are kept.
        match Request::parse(kind, &[]) {
            Ok(Request::Unknown(k)) => assert!(k.name().is_none() || !matches!(k, Kind::HELLO | Kind::PING)),
            Ok(r) => assert_eq!(r.kind(), kind),
            Err(_) => {}
        }
        let _ = Response::parse(kind, Flags::RESPONSE, &[]);
    }
    assert_eq!(Request::parse(Kind(0xEE), b"abc"), Ok(Request::Unknown(Kind(0xEE))));
    assert_eq!(
        Response::parse(Kind(0xEE), Flags::RESPONSE, b"abc"),
        Ok(Response::Unknown(Kind(0xEE), b"abc"))
    );
    assert!(Response::parse(Kind::PING, Flags::NONE, &[]).is_err(), "responses need the response flag");
    assert_eq!(Request::parse(Kind::BYE, &[0]), Err(DecodeError::TrailingBytes));
}

#[test]
fn header_validation_rejects_before_payload() {
    let mut buf = [0u8; 64];
    let frame = encode_frame::<SoftCrc32>(&mut buf, Kind::PING, Flags::NONE, 0x1234, b"hi").unwrap().to_vec();
    let h = HeaderRepr::parse_bytes(&frame, 1 << 24).unwrap();
    assert_eq!((h.kind, h.seq, h.len), (Kind::PING, 0x1234, 2));

    let mut bad = frame.clone();
    bad[0] = b'X';
    assert!(matches!(HeaderRepr::parse_bytes(&bad, 1 << 24), Err(HeaderError::BadMagic(_))));
    let mut bad = frame.clone();
    bad[5] = 0x08;
    assert_eq!(HeaderRepr::parse_bytes(&bad, 1 << 24), Err(HeaderError::ReservedFlags(0x08)));
    let mut bad = frame.clone();
    bad[5] = Flags::ERROR.0;
    assert_eq!(HeaderRepr::parse_bytes(&bad, 1 << 24), Err(HeaderError::ErrorFlagMismatch));
    let mut bad = frame.clone();
    bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        HeaderRepr::parse_bytes(&bad, u32::MAX),
        Err(HeaderError::PayloadTooLarge { len: u32::MAX, max: 1 << 24 }),
        "the cap can be lowered, never raised above 16 MiB"
    );
    bad[8..12].copy_from_slice(&(1u32 << 24).to_le_bytes());
    assert!(HeaderRepr::parse_bytes(&bad, u32::MAX).is_ok(), "exactly 16 MiB is allowed");
    bad[8..12].copy_from_slice(&1025u32.to_le_bytes());
    assert!(HeaderRepr::parse_bytes(&bad, 1024).is_err(), "a lower configured cap holds");
    assert_eq!(HeaderRepr::parse_bytes(&frame[..15], 1 << 24), Err(HeaderError::Truncated));
    assert_eq!(RawHeader::view(&frame).unwrap().crc_prefix(), &frame[..12]);
}

#[test]
fn frame_crc_and_lengths() {
    let mut buf = [0u8; 64];
    let frame =
        encode_frame::<SoftCrc32>(&mut buf, Kind::WRITE, Flags::NONE, 1, b"payload!").unwrap().to_vec();
    assert!(Frame::parse::<SoftCrc32>(&frame, 1 << 24).is_ok());
    // CRC covers header bytes 0..12 and the payload.
    let mut crc = SoftCrc32::new();
    crc.update(&frame[..12]);
    crc.update(&frame[16..]);
    assert_eq!(crc.finish().to_le_bytes(), frame[12..16]);
    for i in (0..12).chain(16..frame.len()) {
        let mut bad = frame.clone();
        bad[i] ^= 0x01;
        // A flip in magic or flags may be caught by the header first; anything else is a CRC error.
        assert!(Frame::parse::<SoftCrc32>(&bad, 1 << 24).is_err(), "bit flip at {i} detected");
    }
    let mut bad = frame.clone();
    bad[20] ^= 0x80;
    assert!(matches!(Frame::parse::<SoftCrc32>(&bad, 1 << 24), Err(FrameError::BadCrc { .. })));
    assert!(matches!(
        Frame::parse::<SoftCrc32>(&frame[..frame.len() - 1], 1 << 24),
        Err(FrameError::TruncatedPayload { .. })
    ));
    let mut long = frame.clone();
    long.push(0);
    assert_eq!(Frame::parse::<SoftCrc32>(&long, 1 << 24), Err(FrameError::TrailingBytes));
}

#[test]
fn discovery_roundtrip_signed_and_spoofed() {
    let key = AuthKey::new(b"lan token");
    let mut buf = [0u8; 256];
    let n = Discover { nonce: [1; 16] }.emit::<SoftCrc32>(&mut buf).unwrap();
    assert_eq!(Discover::parse::<SoftCrc32>(&buf[..n]).unwrap().nonce, [1; 16]);

    let a = Announce::new([1; 16], [2; 16], 8765, BackendKind::VULKAN, true, 1 << 30, 1 << 29, "llvmpipe");
    let n = a.emit::<SoftCrc32>(Some(&key), &mut buf).unwrap();
    let parsed = Announce::parse::<SoftCrc32>(&buf[..n]).unwrap();
    assert_eq!((parsed.port, parsed.device, parsed.free), (8765, "llvmpipe", 1 << 29));
    assert!(parsed.auth_required());
    assert!(parsed.verify(&[1; 16], Some(&key)).is_ok());
    assert!(parsed.verify(&[1; 16], None).is_ok());
    assert_eq!(parsed.verify(&[9; 16], Some(&key)), Err(DiscoveryError::NonceMismatch));
    assert_eq!(parsed.verify(&[1; 16], Some(&AuthKey::new(b"other"))), Err(DiscoveryError::BadSignature));

    // A spoofer without the token: unsigned, or signed with a guessed key.
    let n = a.emit::<SoftCrc32>(None, &mut buf).unwrap();
    let unsigned = Announce::parse::<SoftCrc32>(&buf[..n]).unwrap();
    assert_eq!(unsigned.verify(&[1; 16], Some(&key)), Err(DiscoveryError::Unsigned));
    // A tampered body (free VRAM changed) with the CRC fixed up still fails the HMAC.
    let n = a.emit::<SoftCrc32>(Some(&key), &mut buf).unwrap();
    let mut tampered = buf[..n].to_vec();
    tampered[16 + 36 + 8] ^= 0xFF;
    let len = tampered.len();
    let mut crc = SoftCrc32::new();
    crc.update(&tampered[..12]);
    crc.update(&tampered[16..len]);
    tampered[12..16].copy_from_slice(&crc.finish().to_le_bytes());
    let t = Announce::parse::<SoftCrc32>(&tampered).unwrap();
    assert_eq!(t.verify(&[1; 16], Some(&key)), Err(DiscoveryError::BadSignature));
    // Discovery datagrams carry seq 0.
    let mut f = [0u8; 64];
    let bytes = encode_frame::<SoftCrc32>(&mut f, Kind::DISCOVER, Flags::NONE, 5, &[1; 16]).unwrap().to_vec();
    assert_eq!(
        Discover::parse::<SoftCrc32>(&bytes),
        Err(DiscoveryError::Decode(DecodeError::InvalidField("seq")))
    );
    // Kinds are checked.
    let n = Discover { nonce: [1; 16] }.emit::<SoftCrc32>(&mut buf).unwrap();
    assert!(matches!(Announce::parse::<SoftCrc32>(&buf[..n]), Err(DiscoveryError::WrongKind(_))));
}

#[test]
fn open_enums_keep_unknown_values() {
    assert_eq!(Kind(0x99).name(), None);
    assert_eq!(format!("{:?}", Kind(0x99)), "Unknown(0x99)");
    assert_eq!(ErrorCode(999).name(), None);
    assert!(!ErrorCode(999).closes_session());
    assert_eq!(u16::from(ErrorCode::from(999u16)), 999);
    assert_eq!(u8::from(Kind::from(0x99u8)), 0x99);
    assert!(Kind::KNOWN.windows(2).all(|w| w[0] < w[1]));
    assert!(ErrorCode::KNOWN.windows(2).all(|w| w[0] < w[1]));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(kind in any::<u8>(), flags in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Request::parse(Kind(kind), &bytes);
        let _ = Response::parse(Kind(kind), Flags(flags), &bytes);
        let _ = HeaderRepr::parse_bytes(&bytes, u32::MAX);
        let _ = Frame::parse::<SoftCrc32>(&bytes, u32::MAX);
        let _ = Discover::parse::<SoftCrc32>(&bytes);
        if let Ok(a) = Announce::parse::<SoftCrc32>(&bytes) {
            let _ = a.verify(&[0; 16], Some(&AuthKey::new(b"k")));
        }
        let _ = DeviceInfoMsg::parse(&bytes);
        let _ = ErrorMsg::parse(&bytes);
    }

    #[test]
    fn requests_roundtrip(
        h in any::<u32>(), o in any::<u64>(), l in any::<u64>(), v in any::<u8>(),
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let reqs = [
            Request::Alloc(Alloc { size: o }),
            Request::Free(Free { handle: h }),
            Request::Write(Write { handle: h, offset: o, data: &data }),
            Request::Read(Read { handle: h, offset: o, len: l as u32 }),
            Request::Copy(Copy { src: h, src_offset: o, dst: h ^ 1, dst_offset: l, len: o ^ l }),
            Request::Fill(Fill { handle: h, offset: o, len: l, value: v }),
            Request::Dispatch(Dispatch { kernel: KernelId(h as u16), reserved: 0, a: h, b: 1, out: 2, m: 3, k: 4, n: l as u32, alpha: v as f32 }),
            Request::Hello(Hello { min_version: h as u16, max_version: v as u16, caps: Caps(h) }),
            Request::Auth(Auth { mac: [v; 32] }),
        ];
        for r in reqs {
            let mut buf = vec![0u8; 400];
            let n = r.emit(&mut buf).unwrap();
            prop_assert_eq!(Request::parse(r.kind(), &buf[..n]).unwrap(), r);
            // And as a whole frame.
            let mut fbuf = vec![0u8; n + 16];
            let f = encode_frame::<SoftCrc32>(&mut fbuf, r.kind(), Flags::NONE, h as u16, &buf[..n]).unwrap().to_vec();
            let parsed = Frame::parse::<SoftCrc32>(&f, u32::MAX).unwrap();
            prop_assert_eq!(parsed.payload, &buf[..n]);
            prop_assert_eq!(parsed.seq(), h as u16);
        }
    }

    #[test]
    fn crc_split_anywhere(data in proptest::collection::vec(any::<u8>(), 0..2000), split in any::<usize>()) {
        let split = split % (data.len() + 1);
        let mut d = SoftCrc32::new();
        d.update(&data[..split]);
        d.update(&data[split..]);
        prop_assert_eq!(d.finish(), SoftCrc32::checksum(&data));
    }
}
