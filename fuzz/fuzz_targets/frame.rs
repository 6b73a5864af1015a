//! Whole frames: `Frame::parse` on the input as one datagram, error consistency, re-encoding
//! with `encode_frame`, incremental CRC over an input-chosen split, and the payload decoders
//! behind a parsed frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_core::config::{HEADER_LEN, MAX_PAYLOAD};
use rela_core::crc32::{Crc32, SoftCrc32};
use rela_core::fuzzing::frame_crc;
use rela_core::wire::msg::{Request, Response};
use rela_core::wire::{FrameCrc, FrameError, HeaderRepr, RawHeader, Frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    match Frame::parse::<SoftCrc32>(data, MAX_PAYLOAD) {
        Ok(f) => {
            assert_eq!(data.len(), HEADER_LEN + f.payload.len());
            assert_eq!(f.header.len as usize, f.payload.len());
            assert_eq!(Ok(f.header), HeaderRepr::parse_bytes(data, MAX_PAYLOAD));
            assert_eq!(f.payload, &data[HEADER_LEN..]);

            // Re-encoding reproduces the frame; the CRC field is recomputed, so compare it
            // against an independent computation instead.
            let mut buf = vec![0u8; data.len()];
            let enc = encode_frame::<SoftCrc32>(&mut buf, f.kind(), f.header.flags, f.seq(), f.payload)
                .expect("a parsed frame re-encodes into its own length");
            assert_eq!(enc.len(), data.len());
            assert_eq!(enc[..12], data[..12]);
            assert_eq!(enc[HEADER_LEN..], data[HEADER_LEN..]);
            let raw = RawHeader::view(data).expect("parsed, so at least 16 bytes");
            let crc = frame_crc::<SoftCrc32>(raw, f.payload);
            assert_eq!(enc[12..16], crc.to_le_bytes());
            let reparsed = Frame::parse::<SoftCrc32>(enc, MAX_PAYLOAD).expect("re-encoded frame parses");
            assert_eq!(reparsed.payload, f.payload);

            // The incremental CRC does not depend on how the payload is split.
            let split = f.payload.first().map_or(0, |&b| b as usize % (f.payload.len() + 1));
            let mut inc = FrameCrc::<SoftCrc32>::new(raw);
            inc.update(&f.payload[..split]);
            inc.update(&f.payload[split..]);
            assert_eq!(inc.value(), crc);
            let mut one = SoftCrc32::new();
            one.update(&data[..12]);
            one.update(f.payload);
            assert_eq!(one.finish(), crc);

            // Go deeper: the payload decoders must not panic either.
            if f.header.flags.is_response() {
                let _ = Response::parse(f.kind(), f.header.flags, f.payload);
            } else {
                let _ = Request::parse(f.kind(), f.payload);
            }
        }
        Err(e) => {
            let _ = e.to_string();
            match e {
                FrameError::Header(h) => assert_eq!(HeaderRepr::parse_bytes(data, MAX_PAYLOAD), Err(h)),
                FrameError::TruncatedPayload { expected, actual } => {
                    assert_eq!(actual, data.len() - HEADER_LEN);
                    assert!(actual < expected as usize);
                }
                FrameError::TrailingBytes => {
                    let h = HeaderRepr::parse_bytes(data, MAX_PAYLOAD).expect("header was accepted");
                    assert!(data.len() - HEADER_LEN > h.len as usize);
                }
                // The CRC check passes under cfg(fuzzing).
                other => panic!("unexpected frame error {other:?}"),
            }
        }
    }
});
