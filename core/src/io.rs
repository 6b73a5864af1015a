//! Async framing over [`embedded_io_async`] streams.
//!
//! The same functions serve an embassy-net TCP socket on a microcontroller and (through
//! `embedded-io-adapters`) a tokio `TcpStream`. The header is validated before a single payload
//! byte is read, so an oversized or garbage length never reserves memory or blocks on a read.

use core::fmt;

use embedded_io_async::{Read, ReadExactError, Write};

use crate::config::HEADER_LEN;
use crate::crc32::Crc32;
use crate::wire::{Frame, FrameCrc, FrameError, HeaderRepr, RawHeader};

/// Why [`read_frame`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadFrameError<E> {
    /// The stream ended cleanly before a new frame began.
    Eof,
    /// The stream ended inside a frame.
    UnexpectedEof,
    /// The frame is invalid (header or CRC).
    Frame(FrameError),
    /// The caller's buffer cannot hold the announced payload.
    BufferTooSmall {
        /// Bytes needed (header plus payload).
        needed: usize,
    },
    /// The transport failed.
    Io(E),
}

impl<E: fmt::Debug> fmt::Display for ReadFrameError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("end of stream"),
            Self::UnexpectedEof => f.write_str("stream ended inside a frame"),
            Self::Frame(e) => write!(f, "{e}"),
            Self::BufferTooSmall { needed } => write!(f, "buffer too small ({needed} bytes needed)"),
            Self::Io(e) => write!(f, "transport error: {e:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for ReadFrameError<E> {}

impl<E> From<ReadExactError<E>> for ReadFrameError<E> {
    fn from(e: ReadExactError<E>) -> Self {
        match e {
            ReadExactError::UnexpectedEof => Self::UnexpectedEof,
            ReadExactError::Other(e) => Self::Io(e),
        }
    }
}

/// Reads one frame into `buf` and returns it validated.
///
/// Order: read 16 header bytes; validate magic, flags and length against `max_payload` (a
/// failure returns before any payload byte is read); read the payload; check the CRC.
pub async fn read_frame<'b, R: Read, C: Crc32>(
    reader: &mut R,
    buf: &'b mut [u8],
    max_payload: u32,
) -> Result<Frame<'b>, ReadFrameError<R::Error>> {
    if buf.len() < HEADER_LEN {
        return Err(ReadFrameError::BufferTooSmall { needed: HEADER_LEN });
    }
    // First byte separately, so a clean close between frames is `Eof`, not an error.
    let n = reader.read(&mut buf[..1]).await.map_err(ReadFrameError::Io)?;
    if n == 0 {
        return Err(ReadFrameError::Eof);
    }
    reader.read_exact(&mut buf[1..HEADER_LEN]).await?;
    let raw = RawHeader::view(buf).map_err(|e| ReadFrameError::Frame(e.into()))?;
    let header = HeaderRepr::parse(raw, max_payload).map_err(|e| ReadFrameError::Frame(e.into()))?;
    let mut crc = FrameCrc::<C>::new(raw);
    let total = HEADER_LEN + header.len as usize;
    if buf.len() < total {
        return Err(ReadFrameError::BufferTooSmall { needed: total });
    }
    reader.read_exact(&mut buf[HEADER_LEN..total]).await?;
    crc.update(&buf[HEADER_LEN..total]);
    crc.verify(&header).map_err(ReadFrameError::Frame)?;
    Ok(Frame::from_verified(header, &buf[HEADER_LEN..total]))
}

/// Writes an encoded frame (from [`crate::wire::encode_frame`] or
/// [`crate::session::Session::poll_transmit`]) and flushes.
pub async fn write_frame<W: Write>(writer: &mut W, frame: &[u8]) -> Result<(), W::Error> {
    writer.write_all(frame).await?;
    writer.flush().await
}
