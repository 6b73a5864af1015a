//! Compressed payloads: `Compressed::parse` under a payload cap and `Compressed::inflate` of
//! whatever block the input holds. A parsed payload never claims more than the cap; inflating
//! either fills exactly the prefix and `raw_len` bytes or fails, and never touches the output
//! past them. Data compressed by `lz4_flex` always inflates back to itself.
//!
//! Input: a selector byte (WRITE, MODEL_CHUNK or a READ answer), `cap: u16 LE` (in units of
//! 16 bytes), then the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_core::wire::Kind;
use rela_core::wire::compress::{Compressed, RAW_LEN_FIELD, data_offset};

const CANARY: u8 = 0xA5;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Some((cap, payload)) = rest.split_first_chunk::<2>() else { return };
    let cap = u32::from(u16::from_le_bytes(*cap)) * 16;
    let (kind, response) = match sel % 3 {
        0 => (Kind::WRITE, false),
        1 => (Kind::MODEL_CHUNK, false),
        _ => (Kind::READ, true),
    };
    let offset = data_offset(kind, response).expect("these kinds carry compressed data");
    if let Ok(c) = Compressed::parse(kind, response, payload, cap) {
        assert!(c.plain_len() <= cap as usize, "parse let through more than the cap");
        assert_eq!(c.prefix.len(), offset);
        assert_eq!(c.prefix.len() + RAW_LEN_FIELD + c.block.len(), payload.len());
        let mut out = vec![CANARY; c.plain_len() + 64];
        if let Ok(n) = c.inflate(&mut out) {
            assert_eq!(n, c.plain_len());
            assert_eq!(&out[..offset], c.prefix);
        }
        assert!(out[c.plain_len()..].iter().all(|&b| b == CANARY), "inflate wrote past the payload");
        assert!(c.inflate(&mut out[..c.plain_len() - 1]).is_err(), "inflate into a short slice");
    }

    // Round trip: the input's payload as data.
    let Some(prefix) = payload.get(..offset) else { return };
    let plain = &payload[offset..];
    let Ok(raw_len) = u32::try_from(plain.len()) else { return };
    let mut wire = prefix.to_vec();
    wire.extend_from_slice(&raw_len.to_le_bytes());
    wire.extend_from_slice(&lz4_flex::block::compress(plain));
    match Compressed::parse(kind, response, &wire, u32::MAX) {
        Ok(c) => {
            let mut out = vec![0u8; c.plain_len()];
            assert_eq!(c.inflate(&mut out), Ok(payload.len()));
            assert_eq!(out, payload, "round trip changed the data");
        }
        Err(e) => assert!(plain.is_empty(), "valid compressed payload refused: {e}"),
    }
});
