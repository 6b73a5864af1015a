//! Compressed payloads: the COMPRESSED header flag, negotiated by the LZ4 capability.
//!
//! Three frames may carry compressed data: a WRITE request, a MODEL_CHUNK request and the
//! answer to a READ. The message's fixed prefix stays plain; its data part is replaced by the
//! data's length before compression and an LZ4 block:
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | p | prefix | the message's fixed part as usual (WRITE 12, MODEL_CHUNK 8, READ data 0) |
//! | p | 4 | raw_len | `u32` bytes of data once decompressed, non-zero |
//! | p + 4 | n | block | one LZ4 block (no frame header, no checksum) |
//!
//! The frame's CRC covers the bytes on the wire (the compressed form). A receiver checks
//! `raw_len` ([`Compressed::parse`], then the payload cap with [`Compressed::plain_len`], then
//! where the data goes) before it reserves or decompresses anything, and the block must decode
//! to exactly `raw_len` bytes ([`Compressed::inflate`], feature `lz4`); so a small frame can
//! never make a receiver reserve more than a plain frame of the largest allowed size would.
//!
//! On a READ request the COMPRESSED flag asks for the answer compressed (the request's own
//! payload is plain); the node compresses it only when that pays.
//!
//! Compressing needs a hash table on the heap, so it lives in the std hosts; this crate only
//! decodes, into a caller's slice.

use core::fmt;

use super::Kind;
use super::msg::{MODEL_CHUNK_PREFIX_LEN, WRITE_PREFIX_LEN};

/// Bytes of the `raw_len` field between the plain prefix and the LZ4 block.
pub const RAW_LEN_FIELD: usize = 4;

/// The plain prefix before the compressed data of a frame of `kind` (a request, or a response
/// when `response`); `None` when such a frame cannot carry compressed data.
pub const fn data_offset(kind: Kind, response: bool) -> Option<usize> {
    match (kind, response) {
        (Kind::WRITE, false) => Some(WRITE_PREFIX_LEN),
        (Kind::MODEL_CHUNK, false) => Some(MODEL_CHUNK_PREFIX_LEN),
        (Kind::READ, true) => Some(0),
        _ => None,
    }
}

/// Why a compressed payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressError {
    /// Frames of this kind (and direction) never carry compressed data.
    NotCompressible(Kind),
    /// The payload ends before the prefix and `raw_len`.
    Truncated,
    /// `raw_len` is zero.
    ZeroLength,
    /// The data would be larger than allowed once decompressed: the payload (prefix and data)
    /// would be `plain` bytes, above `max`.
    TooLarge {
        /// Payload bytes once decompressed.
        plain: u64,
        /// The cap in force.
        max: u32,
    },
    /// The output slice is shorter than [`Compressed::plain_len`].
    OutputTooSmall,
    /// The block does not decode, or decodes to another length than `raw_len`.
    Corrupt,
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotCompressible(k) => write!(f, "{k:?} frames carry no compressed data"),
            Self::Truncated => f.write_str("compressed payload shorter than its fixed part"),
            Self::ZeroLength => f.write_str("compressed data of zero length"),
            Self::TooLarge { plain, max } => {
                write!(f, "decompressed payload of {plain} bytes above the cap of {max}")
            }
            Self::OutputTooSmall => f.write_str("output shorter than the decompressed payload"),
            Self::Corrupt => f.write_str("compressed data does not decode to its declared length"),
        }
    }
}

impl core::error::Error for CompressError {}

/// A compressed payload, split into its parts. Borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressed<'a> {
    /// The message's plain fixed part (WRITE: handle and offset; MODEL_CHUNK: offset).
    pub prefix: &'a [u8],
    /// Bytes of data once decompressed (non-zero).
    pub raw_len: u32,
    /// The LZ4 block.
    pub block: &'a [u8],
}

impl<'a> Compressed<'a> {
    /// Splits the payload of a compressed frame of `kind` (a response when `response`), and
    /// checks that once decompressed it fits `max_payload`. Nothing is decompressed.
    pub fn parse(
        kind: Kind,
        response: bool,
        payload: &'a [u8],
        max_payload: u32,
    ) -> Result<Self, CompressError> {
        let offset = data_offset(kind, response).ok_or(CompressError::NotCompressible(kind))?;
        let (prefix, rest) = payload.split_at_checked(offset).ok_or(CompressError::Truncated)?;
        let (len, block) = rest.split_at_checked(RAW_LEN_FIELD).ok_or(CompressError::Truncated)?;
        let raw_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if raw_len == 0 {
            return Err(CompressError::ZeroLength);
        }
        let plain = offset as u64 + u64::from(raw_len);
        if plain > u64::from(max_payload) {
            return Err(CompressError::TooLarge { plain, max: max_payload });
        }
        Ok(Self { prefix, raw_len, block })
    }

    /// Bytes of the payload once decompressed: the prefix and `raw_len` bytes of data.
    pub const fn plain_len(&self) -> usize {
        self.prefix.len() + self.raw_len as usize
    }

    /// Decompresses into `out`: the prefix, then the data; returns [`plain_len`](Self::plain_len).
    /// The block must decode to exactly `raw_len` bytes, and nothing past `plain_len` is
    /// touched.
    #[cfg(feature = "lz4")]
    pub fn inflate(&self, out: &mut [u8]) -> Result<usize, CompressError> {
        let out = out.get_mut(..self.plain_len()).ok_or(CompressError::OutputTooSmall)?;
        let (prefix, data) = out.split_at_mut(self.prefix.len());
        prefix.copy_from_slice(self.prefix);
        match lz4_flex::block::decompress_into(self.block, data) {
            Ok(n) if n == data.len() => Ok(self.plain_len()),
            _ => Err(CompressError::Corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_layout_and_cap() {
        let mut p = [0u8; 20];
        p[12..16].copy_from_slice(&100u32.to_le_bytes());
        let c = Compressed::parse(Kind::WRITE, false, &p, 1024).expect("valid");
        assert_eq!(c.plain_len(), 112);
        assert_eq!(c.block.len(), 4);
        assert_eq!(
            Compressed::parse(Kind::WRITE, false, &p, 111),
            Err(CompressError::TooLarge { plain: 112, max: 111 })
        );
        assert_eq!(Compressed::parse(Kind::WRITE, false, &p[..15], 1024), Err(CompressError::Truncated));
        assert_eq!(
            Compressed::parse(Kind::ALLOC, false, &p, 1024),
            Err(CompressError::NotCompressible(Kind::ALLOC))
        );
        assert_eq!(
            Compressed::parse(Kind::READ, false, &p, 1024),
            Err(CompressError::NotCompressible(Kind::READ))
        );
        p[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Compressed::parse(Kind::WRITE, false, &p, 1024), Err(CompressError::ZeroLength));
        // u32::MAX does not overflow the sum.
        p[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Compressed::parse(Kind::WRITE, false, &p, u32::MAX),
            Err(CompressError::TooLarge { .. })
        ));
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn inflate_demands_the_declared_length() {
        // An LZ4 block of 64 zero bytes, made by hand: one literal, a match of 58 at offset 1
        // (length 58 - 4 = 15 + 39), then the five literals a block ends with.
        let block = [0x1f, 0x00, 0x01, 0x00, 39, 0x50, 0, 0, 0, 0, 0];
        let mut payload = std::vec::Vec::new();
        payload.extend_from_slice(&[7u8; 8]);
        payload.extend_from_slice(&64u32.to_le_bytes());
        payload.extend_from_slice(&block);
        let c = Compressed::parse(Kind::MODEL_CHUNK, false, &payload, 1024).expect("valid");
        let mut out = [0xAAu8; 100];
        assert_eq!(c.inflate(&mut out), Ok(72));
        assert_eq!(&out[..8], &[7u8; 8]);
        assert!(out[8..72].iter().all(|&b| b == 0));
        assert!(out[72..].iter().all(|&b| b == 0xAA), "nothing past the payload is touched");
        assert_eq!(c.inflate(&mut out[..71]), Err(CompressError::OutputTooSmall));
        // The same block declared larger or smaller than it decodes to.
        for lie in [63u32, 65, 1000] {
            payload[8..12].copy_from_slice(&lie.to_le_bytes());
            let c = Compressed::parse(Kind::MODEL_CHUNK, false, &payload, 2048).expect("layout");
            let mut out = [0u8; 1100];
            assert_eq!(c.inflate(&mut out), Err(CompressError::Corrupt), "raw_len {lie}");
        }
        // Truncated block.
        payload[8..12].copy_from_slice(&64u32.to_le_bytes());
        let c =
            Compressed::parse(Kind::MODEL_CHUNK, false, &payload[..payload.len() - 3], 1024).expect("layout");
        assert_eq!(c.inflate(&mut out), Err(CompressError::Corrupt));
    }
}
