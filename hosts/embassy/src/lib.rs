//! A RELA node front-end for [embassy-net]: `no_std`, no allocator.
//!
//! The core's sans-I/O [`Session`] does the protocol; this crate moves its bytes and its time:
//!
//! - [`serve_session`] drives one session over any [`embedded_io_async`] stream (an embassy-net
//!   [`TcpSocket`](embassy_net::tcp::TcpSocket), or anything else that reads and writes), with
//!   the session's deadlines on an [`embassy_time`] timer, and a deadline on every write: a peer
//!   that stops reading loses its session (and its buffers) instead of holding a listener.
//! - [`run_listener`] accepts sessions on a TCP port of an embassy-net [`Stack`](embassy_net::Stack),
//!   one after another, forever. Run several listeners (each with its own buffers) on the same
//!   port for concurrent sessions: they share one backend through a [`RefCell`], borrowed only
//!   inside the session's synchronous calls, never across an `await`.
//! - [`run_discovery`] answers DISCOVER datagrams on a UDP port with a (signed, when a key is
//!   given) ANNOUNCE, like the std node.
//!
//! Sessions are **plain TCP**: this front-end has no TLS (the std node's `serve --tls` does), so
//! its sessions, AUTH included, cross the network in the clear, and its ANNOUNCE carries no
//! certificate fingerprint. Run it on a network you trust, or behind a tunnel
//! (docs/SECURITY.md).
//!
//! This crate enables embassy-net's `tcp`, `udp`, `proto-ipv4` and `medium-ip`; enable the
//! medium your driver needs (`medium-ethernet` for most boards) in your own `Cargo.toml`, and
//! provide an `embassy-time` driver as for any embassy program.
//!
//! Every buffer is the caller's: frame buffers ([`FrameBuffers`]) bound the payload the node
//! accepts (the WELCOME tells clients, which size their frames to it), and socket buffers bound
//! what embassy-net holds. A microcontroller with 64 KiB of RAM to spare can serve 4 KiB frames.
//!
//! ```no_run
//! use core::cell::RefCell;
//!
//! use embassy_net::Stack;
//! use rela_backend_host::HostBackend;
//! use rela_core::config::DEFAULT_SESSION_PORT;
//! use rela_core::crc32::SoftCrc32;
//! use rela_core::session::SessionConfig;
//! use rela_embassy::{DEFAULT_WRITE_TIMEOUT, FrameBuffers, SocketBuffers, run_listener};
//!
//! /// On the device: a host-memory backend over the arena, 4 KiB frames.
//! async fn node(stack: Stack<'_>, arena: &mut [u8], random: impl FnMut() -> [u8; 32]) -> ! {
//!     let backend = RefCell::new(HostBackend::<'_, 16>::with_block_table(arena));
//!     let (mut rx, mut tx) = ([0u8; 16 + 4096], [0u8; 16 + 4096]);
//!     let (mut sock_rx, mut sock_tx) = ([0u8; 8192], [0u8; 8192]);
//!     let config = SessionConfig::default();
//!     run_listener::<_, SoftCrc32>(
//!         stack,
//!         DEFAULT_SESSION_PORT,
//!         &backend,
//!         &config,
//!         random,
//!         SocketBuffers { rx: &mut sock_rx, tx: &mut sock_tx },
//!         FrameBuffers { rx: &mut rx, tx: &mut tx },
//!         DEFAULT_WRITE_TIMEOUT,
//!         |_end| {},
//!     )
//!     .await
//! }
//! ```
//!
//! [embassy-net]: https://docs.rs/embassy-net

#![no_std]

use core::cell::RefCell;
use core::fmt;

use embassy_futures::select::{Either, select};
use embassy_time::{Duration as EmbassyDuration, Timer, with_timeout};
use embedded_io_async::{Read, Write};
use rela_core::backend::GpuBackend;
use rela_core::config::{HEADER_LEN, MAX_PING_PAYLOAD, NONCE_LEN};
use rela_core::crc32::Crc32;
use rela_core::io::{ReadFrameError, read_frame};
use rela_core::session::{CloseReason, Event, Session, SessionConfig};
use rela_core::time::Instant;

mod net;

pub use net::{
    Advert, DISCOVERY_REPLIES_PER_SECOND, DiscoveryBuffers, SocketBuffers, run_discovery, run_listener,
};

/// How long [`run_listener`]'s callers typically give one response frame to leave (and the
/// session's last frame to be delivered): 10 s. A peer that takes no bytes for that long is
/// stalled, whatever its link.
pub const DEFAULT_WRITE_TIMEOUT: EmbassyDuration = EmbassyDuration::from_secs(10);

/// A session's secrets, drawn fresh for each session from a source that no client can predict
/// (a hardware RNG).
#[derive(Clone, Copy)]
pub struct Secrets {
    /// The nonce WELCOME sends and AUTH's challenge is built on.
    pub nonce: [u8; NONCE_LEN],
    /// Where the session's buffer handles start; never sent. Draw it apart from the nonce.
    pub handle_seed: u32,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// The smallest frame buffer [`serve_session`] accepts: a header and 512 payload bytes, enough
/// for every response that is not READ data (the largest, PONG, echoes up to 256 bytes).
pub const MIN_FRAME_BUFFER: usize = HEADER_LEN + 2 * MAX_PING_PAYLOAD;

/// The two frame buffers of a session: one request in, one response out.
///
/// The payload the node accepts is the smaller of the two less the 16-byte header (and the
/// session config's `max_payload`): READ data is read from the backend into `tx`, a WRITE's
/// payload lands in `rx` before it goes to the backend.
#[derive(Debug)]
pub struct FrameBuffers<'a> {
    /// Receives one request frame.
    pub rx: &'a mut [u8],
    /// Holds one response frame.
    pub tx: &'a mut [u8],
}

impl FrameBuffers<'_> {
    /// The largest payload these buffers carry in both directions.
    pub fn max_payload(&self) -> u32 {
        let bytes = self.rx.len().min(self.tx.len()).saturating_sub(HEADER_LEN);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// How a session served by [`serve_session`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The session closed itself: BYE, or a fatal error whose ERROR frame was sent (including
    /// handshake and idle timeouts, and frames that fail validation).
    Closed(CloseReason),
    /// The peer closed the stream or the transport failed; the session was aborted. Its buffers
    /// were freed (and zeroed) either way.
    Disconnected,
    /// A response frame (or the session's last frame) did not leave within the write timeout:
    /// the peer stopped reading. The session was aborted and its buffers freed (and zeroed).
    Stalled,
    /// The frame buffers are smaller than [`MIN_FRAME_BUFFER`]; nothing was read or sent.
    BuffersTooSmall,
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed(CloseReason::Bye) => f.write_str("closed by the client (BYE)"),
            Self::Closed(CloseReason::Error(code)) => write!(f, "closed with ERROR {code}"),
            Self::Closed(CloseReason::Aborted) | Self::Disconnected => f.write_str("disconnected"),
            Self::Stalled => f.write_str("the peer stopped reading (write timeout)"),
            Self::BuffersTooSmall => write!(f, "frame buffers below {MIN_FRAME_BUFFER} bytes"),
        }
    }
}

/// The current time in the core's terms (microseconds of the embassy clock).
fn now() -> Instant {
    Instant(embassy_time::Instant::now().as_micros())
}

/// Serves one session over `stream` until it ends, and leaves nothing of it in `backend`.
///
/// `config` is the node's session configuration; its `max_payload` is lowered to what `bufs`
/// carry ([`FrameBuffers::max_payload`]), and the WELCOME advertises that. `secrets` must be
/// fresh and unpredictable (a hardware RNG): AUTH's challenge is built on the nonce.
///
/// Every response frame must leave within `write_timeout` ([`DEFAULT_WRITE_TIMEOUT`] is a
/// fair choice): a peer that stops reading fills the socket's send buffer, and when a write has
/// waited that long the session is aborted ([`SessionEnd::Stalled`]). However the session ends,
/// its backend buffers are freed (and zeroed) and both frame buffers are zeroed before this
/// returns, so no request or response data stays behind in them.
///
/// Frames are read whole into `bufs.rx` and validated (header first, so an oversized length is
/// refused before any payload byte is read), handled, and every response written before the
/// next request is read. The session's handshake and idle deadlines race each read. The stream
/// is left open; the caller closes it.
///
/// The stream must send written bytes without being flushed, as TCP sockets do (embassy-net's
/// [`TcpSocket`](embassy_net::tcp::TcpSocket), tokio's `TcpStream`): it is flushed only after
/// the session's last frame. Wrap a buffering writer so that it does.
pub async fn serve_session<S, B, C>(
    stream: &mut S,
    backend: &RefCell<B>,
    config: &SessionConfig,
    secrets: Secrets,
    bufs: FrameBuffers<'_>,
    write_timeout: EmbassyDuration,
) -> SessionEnd
where
    S: Read + Write,
    B: GpuBackend + ?Sized,
    C: Crc32,
{
    if bufs.rx.len() < MIN_FRAME_BUFFER || bufs.tx.len() < MIN_FRAME_BUFFER {
        return SessionEnd::BuffersTooSmall;
    }
    let FrameBuffers { rx, tx } = bufs;
    let bufs = FrameBuffers { rx: &mut *rx, tx: &mut *tx };
    let end = serve::<S, B, C>(stream, backend, config, secrets, bufs, write_timeout).await;
    // Whatever ended the session, the last request and response leave nothing behind.
    rx.fill(0);
    tx.fill(0);
    end
}

/// [`serve_session`] once the buffers are known to be large enough.
async fn serve<S, B, C>(
    stream: &mut S,
    backend: &RefCell<B>,
    config: &SessionConfig,
    secrets: Secrets,
    bufs: FrameBuffers<'_>,
    write_timeout: EmbassyDuration,
) -> SessionEnd
where
    S: Read + Write,
    B: GpuBackend + ?Sized,
    C: Crc32,
{
    let mut config = config.clone();
    config.max_payload = config.max_payload.min(bufs.max_payload());
    let mut session = Session::new(config, secrets.nonce, secrets.handle_seed, now());
    loop {
        // Output first: the responses to the last input, then the session's verdict.
        loop {
            let polled = session.poll_transmit::<C, B>(&mut backend.borrow_mut(), bufs.tx);
            let frame = match polled {
                Ok(Some(t)) => &bufs.tx[..t.len],
                Ok(None) => break,
                // Unreachable while `max_payload` fits `tx` (set above); end the session rather
                // than send a truncated frame.
                Err(_) => {
                    session.abort(&mut *backend.borrow_mut());
                    return SessionEnd::Disconnected;
                }
            };
            // A peer that does not read fills the socket's buffers; the write then waits for
            // room that never comes. The deadline ends that wait, and the session with it.
            match with_timeout(write_timeout, stream.write_all(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    session.abort(&mut *backend.borrow_mut());
                    return SessionEnd::Disconnected;
                }
                Err(_) => {
                    session.abort(&mut *backend.borrow_mut());
                    return SessionEnd::Stalled;
                }
            }
        }
        // No flush between requests: on a TCP socket written bytes go out by themselves, and
        // embassy-net's flush waits for the peer's ACK, a round trip per response. The last
        // frame of a session is flushed (the BYE acknowledgement, or the ERROR that closed it).
        let mut closed = None;
        while let Some(event) = session.poll_event() {
            if let Event::Closed(reason) = event {
                closed = Some(reason);
            }
        }
        if let Some(reason) = closed.or(session.is_closed().then_some(CloseReason::Aborted)) {
            // The session is over either way (its buffers are already freed); a peer that is
            // gone, or one that does not read, changes nothing but the wait, which is bounded.
            let _ = with_timeout(write_timeout, stream.flush()).await;
            return SessionEnd::Closed(reason);
        }

        // Input: the next frame, or the deadline, whichever comes first.
        // The cap is small until the handshake is done, so an unauthenticated peer cannot
        // make the session wait for a large payload.
        let read = read_frame::<S, C>(stream, bufs.rx, session.max_payload());
        let input = match session.poll_timeout() {
            Some(deadline) => {
                let wait = EmbassyDuration::from_micros(deadline.0.saturating_sub(now().0));
                match select(read, Timer::after(wait)).await {
                    Either::First(r) => Some(r),
                    Either::Second(()) => None,
                }
            }
            None => Some(read.await),
        };
        let now = now();
        let mut backend = backend.borrow_mut();
        // `Err` from the session means this loop broke the call order (input with output
        // pending, or after close); both are excluded above, so it is ignored.
        let _ = match input {
            None => {
                session.handle_timeout(now, &mut *backend);
                Ok(())
            }
            Some(Ok(frame)) => session.handle_frame(now, frame, &mut *backend),
            Some(Err(ReadFrameError::Frame(e))) => session.handle_frame_error(now, e, &mut *backend),
            // End of stream, transport failure, or (unreachable: `max_payload` fits `rx`) a
            // frame larger than the buffer.
            Some(Err(_)) => {
                session.abort(&mut *backend);
                return SessionEnd::Disconnected;
            }
        };
    }
}
