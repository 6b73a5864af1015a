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
pub(crate) use tls::Tls;

#[cfg(feature = "tls")]
mod tls {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use rela_client::tls::records::{Reader, Writer};
    use tokio::io::ReadBuf;

    use super::*;

    /// TLS over TCP after the handshake ([`rela_client::tls::accept_session`]): the record
    /// layer's two halves.
    pub(crate) struct Tls {
        rd: Reader,
        wr: Writer,
    }

    impl Tls {
        /// The session's halves, as `accept_session` returns them.
        pub(crate) const fn new(rd: Reader, wr: Writer) -> Self {
            Self { rd, wr }
        }
    }

    impl AsyncRead for Tls {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().rd).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Tls {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().wr).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().wr).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.wr.is_write_vectored()
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().wr).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().wr).poll_shutdown(cx)
        }
    }

    impl SplitStream for Tls {
        type Read = Reader;
        type Write = Writer;

        fn split(self) -> (Reader, Writer) {
            (self.rd, self.wr)
        }
    }

    impl TryWrite for Writer {
        fn try_write(&self, _buf: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn try_write_vectored(&self, _bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}
