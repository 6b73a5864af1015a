//! The byte streams a connection is served over: plain TCP, or TLS over TCP (feature `tls`).
//!
//! The connection tasks (`conn.rs`) are generic over [`SplitStream`]: a stream that splits into
//! a read half and a write half the two tasks own. The write half may offer a non-blocking
//! write ([`TryWrite`]), which the PING fast path and the writer's first attempt use; over TLS
//! there is none (the bytes would sit in the TLS layer's buffer until a flush), so those writes
//! report `WouldBlock` and the frames take the ordinary path, which flushes.

use std::io::{self, IoSlice};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A connection's stream, split into halves owned by the reader and the writer task.
pub(crate) trait SplitStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The reader's half.
    type Read: AsyncRead + Send + Unpin + 'static;
    /// The writer's half.
    type Write: TryWrite;

    /// Splits the stream.
    fn split(self) -> (Self::Read, Self::Write);
}

/// A write half, with a non-blocking write where the transport has one.
pub(crate) trait TryWrite: AsyncWrite + Send + Sync + Unpin + 'static {
    /// Writes what the transport takes at once; `WouldBlock` when nothing (or when the
    /// transport cannot write without waiting).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;

    /// [`try_write`](Self::try_write) for several buffers in order.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl SplitStream for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl TryWrite for OwnedWriteHalf {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        Self::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Self::try_write_vectored(self, bufs)
    }
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;

    /// TLS over TCP, with a read buffer under TLS (rustls reads at most 4 KiB at a time).
    pub(crate) type Tls = tokio_rustls::server::TlsStream<tokio::io::BufReader<TcpStream>>;

    impl SplitStream for Tls {
        type Read = tokio::io::ReadHalf<Self>;
        type Write = tokio::io::WriteHalf<Self>;

        fn split(self) -> (Self::Read, Self::Write) {
            tokio::io::split(self)
        }
    }

    impl TryWrite for tokio::io::WriteHalf<Tls> {
        fn try_write(&self, _buf: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn try_write_vectored(&self, _bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}
