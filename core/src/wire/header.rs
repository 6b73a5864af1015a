//! The 16-byte RELA frame header.
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | magic | ASCII `RELA` |
//! | 4 | 1 | kind | [`Kind`] |
//! | 5 | 1 | flags | [`Flags`] |
//! | 6 | 2 | seq | `u16` LE; a response echoes its request's seq |
//! | 8 | 4 | len | `u32` LE payload length, at most 16 MiB |
//! | 12 | 4 | crc | `u32` LE CRC-32/ISO-HDLC over bytes 0..12 then the payload |

use core::fmt;

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::Kind;
use crate::config::{HEADER_LEN, MAX_PAYLOAD};

/// The frame magic, ASCII `RELA`.
pub const MAGIC: [u8; 4] = *b"RELA";

/// The header as it lies on the wire: a zero-copy view, field offsets fixed by `repr(C)`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeader {
    /// Bytes 0..4: must be [`MAGIC`].
    pub magic: [u8; 4],
    /// Byte 4: the message kind.
    pub kind: u8,
    /// Byte 5: flag bits.
    pub flags: u8,
    /// Bytes 6..8: sequence number.
    pub seq: U16,
    /// Bytes 8..12: payload length.
    pub len: U32,
    /// Bytes 12..16: CRC-32 over bytes 0..12 and the payload.
    pub crc: U32,
}

static_assertions::const_assert_eq!(core::mem::size_of::<RawHeader>(), HEADER_LEN);
static_assertions::const_assert_eq!(core::mem::align_of::<RawHeader>(), 1);

impl RawHeader {
    /// Views the first 16 bytes of `bytes` as a header, without copying.
    ///
    /// Fails only if fewer than 16 bytes are given.
    pub fn view(bytes: &[u8]) -> Result<&Self, HeaderError> {
        Self::ref_from_prefix(bytes).map(|(h, _)| h).map_err(|_| HeaderError::Truncated)
    }

    /// The bytes the CRC covers before the payload (header bytes 0..12).
    pub fn crc_prefix(&self) -> &[u8] {
        &self.as_bytes()[..12]
    }
}

/// Header flag bits (header byte 5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// No flags: a request.
    pub const NONE: Self = Self(0);
    /// Bit 0: this frame is a response.
    pub const RESPONSE: Self = Self(0x01);
    /// Bit 1: this frame is an ERROR (set exactly when the kind is ERROR).
    pub const ERROR: Self = Self(0x02);
    /// Bit 2: the payload's data is LZ4-compressed ([`crate::wire::compress`]); on a READ
    /// request, the answer is wanted compressed. Only with the LZ4 capability negotiated.
    pub const COMPRESSED: Self = Self(0x04);
    /// Bits 3..8: reserved, must be zero.
    pub const RESERVED_MASK: u8 = 0xF8;

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two flag sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether the response bit is set.
    pub const fn is_response(self) -> bool {
        self.contains(Self::RESPONSE)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags(0x{:02x})", self.0)
    }
}

/// Why a header was rejected. Every variant is decided from the 16 header bytes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer than 16 bytes.
    Truncated,
    /// The magic is not `RELA`.
    BadMagic([u8; 4]),
    /// A reserved flag bit is set.
    ReservedFlags(u8),
    /// The ERROR flag and the ERROR kind disagree.
    ErrorFlagMismatch,
    /// The payload length is above the configured cap.
    PayloadTooLarge {
        /// The length the header announced.
        len: u32,
        /// The cap in force.
        max: u32,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("header truncated"),
            Self::BadMagic(m) => write!(f, "bad magic {m:02x?}"),
            Self::ReservedFlags(b) => write!(f, "reserved flag bits set (0x{b:02x})"),
            Self::ErrorFlagMismatch => f.write_str("ERROR flag does not match the kind"),
            Self::PayloadTooLarge { len, max } => write!(f, "payload length {len} above limit {max}"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// A parsed, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    /// Message kind.
    pub kind: Kind,
    /// Flag bits.
    pub flags: Flags,
    /// Sequence number.
    pub seq: u16,
    /// Payload length in bytes.
    pub len: u32,
    /// The CRC carried by the header.
    pub crc: u32,
}

impl HeaderRepr {
    /// Length of an encoded header.
    pub const fn buffer_len() -> usize {
        HEADER_LEN
    }

    /// Validates a raw header. `max_payload` is clamped to [`MAX_PAYLOAD`].
    ///
    /// Checks, in order: magic, reserved flags, ERROR flag consistency, payload length. The CRC
    /// cannot be checked until the payload is read; see [`FrameCrc`](super::FrameCrc).
    pub fn parse(raw: &RawHeader, max_payload: u32) -> Result<Self, HeaderError> {
        if raw.magic != MAGIC {
            return Err(HeaderError::BadMagic(raw.magic));
        }
        if raw.flags & Flags::RESERVED_MASK != 0 {
            return Err(HeaderError::ReservedFlags(raw.flags));
        }
        let kind = Kind(raw.kind);
        let flags = Flags(raw.flags);
        if flags.contains(Flags::ERROR) != (kind == Kind::ERROR) {
            return Err(HeaderError::ErrorFlagMismatch);
        }
        let len = raw.len.get();
        let max = max_payload.min(MAX_PAYLOAD);
        if len > max {
            return Err(HeaderError::PayloadTooLarge { len, max });
        }
        Ok(Self { kind, flags, seq: raw.seq.get(), len, crc: raw.crc.get() })
    }

    /// Parses the first 16 bytes of `bytes`.
    pub fn parse_bytes(bytes: &[u8], max_payload: u32) -> Result<Self, HeaderError> {
        Self::parse(RawHeader::view(bytes)?, max_payload)
    }

    /// The raw header for these fields (with `self.crc` as given).
    pub fn to_raw(&self) -> RawHeader {
        RawHeader {
            magic: MAGIC,
            kind: self.kind.0,
            flags: self.flags.0,
            seq: U16::new(self.seq),
            len: U32::new(self.len),
            crc: U32::new(self.crc),
        }
    }

    /// Writes the 16 header bytes (with `self.crc` as given) into `buf[..16]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), super::EncodeError> {
        let dst =
            buf.get_mut(..HEADER_LEN).ok_or(super::EncodeError::BufferTooSmall { needed: HEADER_LEN })?;
        dst.copy_from_slice(self.to_raw().as_bytes());
        Ok(())
    }
}
