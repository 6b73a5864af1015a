//! Little-endian cursor helpers shared by every payload codec.

use core::fmt;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ended before the message did.
    Truncated,
    /// Bytes were left over after the message.
    TrailingBytes,
    /// A field holds a value the message does not allow (named here).
    InvalidField(&'static str),
    /// A string field is not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("payload truncated"),
            Self::TrailingBytes => f.write_str("trailing bytes after message"),
            Self::InvalidField(name) => write!(f, "invalid field `{name}`"),
            Self::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small; `needed` bytes are required.
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
    },
    /// The message is larger than the protocol allows.
    TooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "output buffer too small ({needed} bytes needed)"),
            Self::TooLarge => f.write_str("message larger than the protocol allows"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// A bounds-checked little-endian reader over a borrowed payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub const fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes, borrowed.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Reads a little-endian IEEE-754 `f32`.
    pub fn f32(&mut self) -> Result<f32, DecodeError> {
        self.array().map(f32::from_le_bytes)
    }

    /// Reads a `u8` length followed by that many UTF-8 bytes, at most `max`.
    pub fn str_u8(&mut self, max: usize, field: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(DecodeError::InvalidField(field));
        }
        core::str::from_utf8(self.bytes(n)?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }
}

/// A bounds-checked little-endian writer into a caller buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub const fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written yet.
    pub const fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos.checked_add(b.len()).ok_or(EncodeError::TooLarge)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(EncodeError::BufferTooSmall { needed: end })?;
        dst.copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    /// Appends a `u8`.
    pub fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian `f32`.
    pub fn f32(&mut self, v: f32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a `u8` length and the string, which must be at most `max` bytes.
    pub fn str_u8(&mut self, s: &str, max: usize) -> Result<(), EncodeError> {
        if s.len() > max || s.len() > u8::MAX as usize {
            return Err(EncodeError::TooLarge);
        }
        self.u8(s.len() as u8)?;
        self.bytes(s.as_bytes())
    }
}
