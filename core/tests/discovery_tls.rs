//! The ANNOUNCE extensions: the TLS fingerprint travels inside the signed body, unknown
//! extensions are skipped, malformed ones are refused, and the largest announcement still fits
//! under its padded DISCOVER.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use rela_core::auth::AuthKey;
use rela_core::backend::BackendKind;
use rela_core::config::{HEADER_LEN, MAC_LEN, MAX_DATAGRAM, MAX_DEVICE_NAME};
use rela_core::crc32::SoftCrc32;
use rela_core::discovery::{ANNOUNCE_EXT_TLS_FINGERPRINT, Announce, Discover, DiscoveryError};
use rela_core::wire::{DecodeError, Flags, Kind, encode_frame};

const NONCE: [u8; 16] = [3; 16];
const FP: [u8; 32] = [0xab; 32];

fn announce(device: &str) -> Announce<'_> {
    Announce::new(NONCE, [9; 16], 8765, BackendKind::HOST, true, 1 << 30, 1 << 29, device)
}

/// The payload of an unsigned announce without extensions.
fn plain_body() -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = announce("gpu").emit::<SoftCrc32>(None, &mut buf).unwrap();
    buf[HEADER_LEN..n].to_vec()
}

/// A datagram whose payload is `body` (flags byte set to `flags`), signed with `key` when given.
fn datagram(mut body: Vec<u8>, flags: u8, key: Option<&AuthKey>) -> Vec<u8> {
    body[35] = flags;
    if let Some(key) = key {
        let tag = key.announce_tag(&body);
        body.extend_from_slice(&tag);
    }
    let mut buf = vec![0u8; HEADER_LEN + body.len()];
    encode_frame::<SoftCrc32>(&mut buf, Kind::ANNOUNCE, Flags::RESPONSE, 0, &body).unwrap().to_vec()
}

#[test]
fn fingerprint_round_trips_signed_and_unsigned() {
    let key = AuthKey::new(b"token");
    let a = announce("gpu").with_tls_fingerprint(FP);
    for k in [None, Some(&key)] {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = a.emit::<SoftCrc32>(k, &mut buf).unwrap();
        let parsed = Announce::parse::<SoftCrc32>(&buf[..n]).unwrap();
        assert_eq!(parsed.tls_fingerprint, Some(FP));
        assert_eq!(parsed.device, "gpu");
        assert_eq!(parsed.verify(&NONCE, k), Ok(()));
    }
    // Without the extension there is no fingerprint.
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = announce("gpu").emit::<SoftCrc32>(Some(&key), &mut buf).unwrap();
    assert_eq!(Announce::parse::<SoftCrc32>(&buf[..n]).unwrap().tls_fingerprint, None);
}

#[test]
fn the_tag_covers_the_fingerprint() {
    let key = AuthKey::new(b"token");
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = announce("gpu").with_tls_fingerprint(FP).emit::<SoftCrc32>(Some(&key), &mut buf).unwrap();
    // The fingerprint's last byte sits just before the tag; flip it and re-frame.
    let mut payload = buf[HEADER_LEN..n].to_vec();
    let at = payload.len() - MAC_LEN - 1;
    payload[at] ^= 1;
    let mut f = vec![0u8; n];
    let tampered = encode_frame::<SoftCrc32>(&mut f, Kind::ANNOUNCE, Flags::RESPONSE, 0, &payload).unwrap();
    let parsed = Announce::parse::<SoftCrc32>(tampered).unwrap();
    assert_eq!(parsed.tls_fingerprint.map(|fp| fp[31]), Some(0xab ^ 1));
    assert_eq!(parsed.verify(&NONCE, Some(&key)), Err(DiscoveryError::BadSignature));
}

#[test]
fn unknown_extensions_are_skipped_and_stay_signed() {
    let key = AuthKey::new(b"token");
    let mut body = plain_body();
    // An unknown type 0x7f with 3 bytes, the fingerprint, then an empty unknown type 0x02.
    body.extend_from_slice(&[0x7f, 3, 1, 2, 3, ANNOUNCE_EXT_TLS_FINGERPRINT, 32]);
    body.extend_from_slice(&FP);
    body.extend_from_slice(&[0x02, 0]);
    let signed = datagram(body.clone(), 0b11, Some(&key));
    let a = Announce::parse::<SoftCrc32>(&signed).unwrap();
    assert_eq!(a.tls_fingerprint, Some(FP));
    assert_eq!(a.verify(&NONCE, Some(&key)), Ok(()));
    let unsigned = datagram(body, 0b01, None);
    assert_eq!(Announce::parse::<SoftCrc32>(&unsigned).unwrap().tls_fingerprint, Some(FP));
}

#[test]
fn malformed_extensions_are_refused() {
    let bad_fp = Err(DiscoveryError::Decode(DecodeError::InvalidField("announce.tls_fingerprint")));
    let with = |ext: &[u8]| {
        let mut body = plain_body();
        body.extend_from_slice(ext);
        datagram(body, 0b01, None)
    };
    // A fingerprint of 31 bytes.
    let mut short = vec![ANNOUNCE_EXT_TLS_FINGERPRINT, 31];
    short.extend_from_slice(&FP[..31]);
    assert_eq!(Announce::parse::<SoftCrc32>(&with(&short)).map(|a| a.tls_fingerprint), bad_fp);
    // Two fingerprints.
    let mut two = vec![ANNOUNCE_EXT_TLS_FINGERPRINT, 32];
    two.extend_from_slice(&FP);
    two.extend_from_within(..);
    assert_eq!(Announce::parse::<SoftCrc32>(&with(&two)).map(|a| a.tls_fingerprint), bad_fp);
    // An extension longer than what is left, and a lone type byte.
    let truncated = Err(DiscoveryError::Decode(DecodeError::Truncated));
    assert_eq!(Announce::parse::<SoftCrc32>(&with(&[0x7f, 5, 1])).map(|a| a.tls_fingerprint), truncated);
    assert_eq!(Announce::parse::<SoftCrc32>(&with(&[0x7f])).map(|a| a.tls_fingerprint), truncated);
    // A signed announce too short to hold its tag.
    let mut body = plain_body();
    body.extend_from_slice(&[0; 4]);
    assert_eq!(Announce::parse::<SoftCrc32>(&datagram(body, 0b11, None)).map(|a| a.mac), truncated);
}

#[test]
fn the_largest_announce_with_a_fingerprint_is_smaller_than_a_discover() {
    let mut probe = [0u8; MAX_DATAGRAM];
    let n = Discover { nonce: NONCE }.emit::<SoftCrc32>(&mut probe).unwrap();
    let name = "n".repeat(MAX_DEVICE_NAME);
    let a = Announce::new(NONCE, [1; 16], 1, BackendKind::HOST, true, u64::MAX, u64::MAX, &name)
        .with_tls_fingerprint(FP);
    let mut out = [0u8; MAX_DATAGRAM];
    let m = a.emit::<SoftCrc32>(Some(&AuthKey::new(b"k")), &mut out).unwrap();
    assert_eq!(m, 165 + 34, "the fingerprint adds its type, length and 32 bytes");
    assert!(m < n, "ANNOUNCE of {m} bytes against a DISCOVER of {n}");
}
