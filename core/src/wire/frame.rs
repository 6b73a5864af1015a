//! Whole frames: header plus payload, with the CRC checked.

use core::fmt;

use super::{EncodeError, Flags, HeaderError, HeaderRepr, Kind, RawHeader};
use crate::config::{HEADER_LEN, MAX_PAYLOAD};
use crate::crc32::Crc32;

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The header is invalid.
    Header(HeaderError),
    /// Fewer payload bytes than the header announced.
    TruncatedPayload {
        /// Payload bytes announced.
        expected: u32,
        /// Payload bytes present.
        actual: usize,
    },
    /// Bytes follow the payload (for whole-buffer parsing such as datagrams).
    TrailingBytes,
    /// The CRC does not match.
    BadCrc {
        /// The CRC in the header.
        expected: u32,
        /// The CRC computed over the frame.
        actual: u32,
    },
}

impl From<HeaderError> for FrameError {
    fn from(e: HeaderError) -> Self {
        Self::Header(e)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(e) => write!(f, "bad header: {e}"),
            Self::TruncatedPayload { expected, actual } => {
                write!(f, "payload truncated: {actual} of {expected} bytes")
            }
            Self::TrailingBytes => f.write_str("bytes after the payload"),
            Self::BadCrc { expected, actual } => {
                write!(f, "CRC mismatch: header 0x{expected:08x}, computed 0x{actual:08x}")
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// Incremental CRC check of a frame whose payload arrives in pieces.
///
/// ```
/// use rela_core::crc32::SoftCrc32;
/// use rela_core::wire::{FrameCrc, HeaderRepr, RawHeader};
/// # let frame = rela_core::wire::encode_frame::<SoftCrc32>(
/// #     &mut [0u8; 64], rela_core::wire::Kind::PING, rela_core::wire::Flags::NONE, 7, b"hi").unwrap().to_vec();
/// let raw = RawHeader::view(&frame).unwrap();
/// let header = HeaderRepr::parse(raw, 1 << 24).unwrap();
/// let mut crc = FrameCrc::<SoftCrc32>::new(raw);
/// crc.update(&frame[16..17]);
/// crc.update(&frame[17..]);
/// assert!(crc.verify(&header).is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct FrameCrc<C: Crc32> {
    digest: C,
}

impl<C: Crc32> FrameCrc<C> {
    /// Starts a CRC over the header's first 12 bytes.
    pub fn new(raw: &RawHeader) -> Self {
        let mut digest = C::new();
        digest.update(raw.crc_prefix());
        Self { digest }
    }

    /// Feeds the next piece of payload.
    pub fn update(&mut self, payload_piece: &[u8]) {
        self.digest.update(payload_piece);
    }

    /// The CRC so far.
    pub fn value(&self) -> u32 {
        self.digest.finish()
    }

    /// Compares the CRC so far against the header's.
    ///
    /// # Fuzzing
    ///
    /// Under `cfg(fuzzing)` this always succeeds, so fuzzers can reach the decoders behind it.
    pub fn verify(&self, header: &HeaderRepr) -> Result<(), FrameError> {
        let actual = self.value();
        if cfg!(fuzzing) || actual == header.crc {
            Ok(())
        } else {
            Err(FrameError::BadCrc { expected: header.crc, actual })
        }
    }
}

/// A validated frame borrowed from a buffer: header checked, CRC verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The parsed header.
    pub header: HeaderRepr,
    /// The payload, borrowed.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses a buffer that holds exactly one frame (a datagram, or a buffer filled by
    /// [`crate::io::read_frame`]).
    pub fn parse<C: Crc32>(bytes: &'a [u8], max_payload: u32) -> Result<Self, FrameError> {
        let raw = RawHeader::view(bytes)?;
        let header = HeaderRepr::parse(raw, max_payload)?;
        let body = &bytes[HEADER_LEN..];
        let len = header.len as usize;
        if body.len() < len {
            return Err(FrameError::TruncatedPayload { expected: header.len, actual: body.len() });
        }
        if body.len() > len {
            return Err(FrameError::TrailingBytes);
        }
        let mut crc = FrameCrc::<C>::new(raw);
        crc.update(body);
        crc.verify(&header)?;
        Ok(Self { header, payload: body })
    }

    /// Builds a frame from a header whose CRC the caller has already verified.
    pub const fn from_verified(header: HeaderRepr, payload: &'a [u8]) -> Self {
        Self { header, payload }
    }

    /// The message kind.
    pub const fn kind(&self) -> Kind {
        self.header.kind
    }

    /// The sequence number.
    pub const fn seq(&self) -> u16 {
        self.header.seq
    }
}

/// Completes a frame whose payload is already in `buf[16..16 + payload_len]`: writes the header
/// with its CRC. Returns the frame length.
///
/// This is how responses are built without copying the payload: the payload is produced in
/// place, then the header is written in front of it.
pub fn emit_frame<C: Crc32>(
    buf: &mut [u8],
    kind: Kind,
    flags: Flags,
    seq: u16,
    payload_len: usize,
) -> Result<usize, EncodeError> {
    if payload_len > MAX_PAYLOAD as usize {
        return Err(EncodeError::TooLarge);
    }
    let total = HEADER_LEN + payload_len;
    if buf.len() < total {
        return Err(EncodeError::BufferTooSmall { needed: total });
    }
    let (head, rest) = buf.split_at_mut(HEADER_LEN);
    emit_header::<C>(head, kind, flags, seq, &rest[..payload_len])?;
    Ok(total)
}

/// Writes into `buf[..16]` the header of a frame whose payload is `payload`, wherever that
/// lies (the host sends it right behind the header); the CRC covers it. `payload` must be at
/// most [`MAX_PAYLOAD`] bytes.
pub fn emit_header<C: Crc32>(
    buf: &mut [u8],
    kind: Kind,
    flags: Flags,
    seq: u16,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let len = u32::try_from(payload.len()).ok().filter(|&n| n <= MAX_PAYLOAD).ok_or(EncodeError::TooLarge)?;
    let mut header = HeaderRepr { kind, flags, seq, len, crc: 0 };
    let mut crc = FrameCrc::<C>::new(&header.to_raw());
    crc.update(payload);
    header.crc = crc.value();
    header.emit(buf)
}

/// Copies `payload` behind a header into `buf` and returns the encoded frame.
pub fn encode_frame<'b, C: Crc32>(
    buf: &'b mut [u8],
    kind: Kind,
    flags: Flags,
    seq: u16,
    payload: &[u8],
) -> Result<&'b [u8], EncodeError> {
    let total = HEADER_LEN.checked_add(payload.len()).ok_or(EncodeError::TooLarge)?;
    let dst = buf.get_mut(HEADER_LEN..total).ok_or(EncodeError::BufferTooSmall { needed: total })?;
    dst.copy_from_slice(payload);
    let n = emit_frame::<C>(buf, kind, flags, seq, payload.len())?;
    Ok(&buf[..n])
}
