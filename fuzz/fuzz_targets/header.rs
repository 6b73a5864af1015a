//! The 16-byte header: the zero-copy `RawHeader` view and `HeaderRepr::parse` under a payload
//! cap taken from the input, with an exact emit/parse round trip of whatever parses.
//!
//! Input: `cap: u32 LE` then the header bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_core::config::MAX_PAYLOAD;
use rela_core::wire::{Flags, HeaderError, HeaderRepr, Kind, MAGIC, RawHeader};

fuzz_target!(|data: &[u8]| {
    let Some((cap, bytes)) = data.split_first_chunk::<4>() else { return };
    let cap = u32::from_le_bytes(*cap);
    let raw = match RawHeader::view(bytes) {
        Ok(raw) => raw,
        Err(e) => {
            assert!(bytes.len() < 16, "view refused {} bytes", bytes.len());
            assert_eq!(e, HeaderError::Truncated);
            assert_eq!(HeaderRepr::parse_bytes(bytes, cap), Err(HeaderError::Truncated));
            return;
        }
    };
    assert!(bytes.len() >= 16);
    let parsed = HeaderRepr::parse(raw, cap);
    assert_eq!(parsed, HeaderRepr::parse_bytes(bytes, cap));
    let max = cap.min(MAX_PAYLOAD);
    match parsed {
        Ok(h) => {
            assert_eq!(bytes[..4], MAGIC);
            assert_eq!(h.flags.0 & Flags::RESERVED_MASK, 0);
            assert_eq!(h.flags.contains(Flags::ERROR), h.kind == Kind::ERROR);
            assert!(h.len <= max, "accepted len {} above cap {max}", h.len);
            let mut out = [0u8; 16];
            h.emit(&mut out).expect("16 bytes fit a header");
            assert_eq!(out, bytes[..16], "emit does not reproduce the parsed header");
            assert_eq!(HeaderRepr::parse_bytes(&out, cap), Ok(h));
            assert!(h.emit(&mut out[..15]).is_err(), "emit into 15 bytes succeeded");
        }
        Err(e) => {
            let _ = e.to_string();
            match e {
                HeaderError::BadMagic(m) => {
                    assert_ne!(m, MAGIC);
                    assert_eq!(m, bytes[..4]);
                }
                HeaderError::ReservedFlags(f) => {
                    assert_eq!(bytes[..4], MAGIC);
                    assert_eq!(f, bytes[5]);
                    assert_ne!(f & Flags::RESERVED_MASK, 0);
                }
                HeaderError::ErrorFlagMismatch => {
                    assert_eq!(Flags(bytes[5]).contains(Flags::ERROR) , bytes[4] != Kind::ERROR.0);
                }
                HeaderError::PayloadTooLarge { len, max: m } => {
                    assert_eq!(m, max);
                    assert!(len > m);
                    assert_eq!(len, u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]));
                }
                other => panic!("unexpected header error {other:?}"),
            }
        }
    }
});
