//! Draining a session's output into a reply buffer, and logging its events.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use rela_client::FastCrc32;
use rela_core::backend::GpuBackend;
use rela_core::config::MAX_FRAME;
use rela_core::session::{Event, PollError, Session, SessionConfig};
use tracing::Span;

use crate::messages::{INLINE_OUT, OutBuf};
use crate::throttle::AuthThrottle;

/// Writes every pending frame of `session` into `out`, growing it (off the pool, a rare
/// fallback) when a frame does not fit. Returns the bytes written.
pub(crate) fn drain<B: GpuBackend + ?Sized>(
    session: &mut Session,
    backend: &mut B,
    out: &mut OutBuf,
) -> Result<usize, PollError> {
    drain_from(session, backend, out, 0)
}

/// [`drain`] behind the first `start` bytes of `out`.
pub(super) fn drain_from<B: GpuBackend + ?Sized>(
    session: &mut Session,
    backend: &mut B,
    out: &mut OutBuf,
    start: usize,
) -> Result<usize, PollError> {
    let mut len = start;
    // Each round emits a frame or grows the buffer once; a session queues at most two frames.
    for _ in 0..8 {
        match session
            .poll_transmit::<FastCrc32, _>(backend, out.as_mut_slice().get_mut(len..).unwrap_or(&mut []))
        {
            Ok(Some(t)) => len += t.len,
            Ok(None) => return Ok(len),
            Err(PollError::BufferTooSmall { needed }) if needed <= MAX_FRAME => {
                out.grow(len + needed.max(INLINE_OUT), len);
            }
            Err(e) => return Err(e),
        }
    }
    Err(PollError::BufferTooSmall { needed: usize::MAX })
}

pub(crate) fn log_events(
    session: &mut Session,
    c: &impl ConnInfo,
    config: &SessionConfig,
    throttle: &Mutex<AuthThrottle>,
) {
    while let Some(event) = session.poll_event() {
        match event {
            Event::Ready => {
                tracing::info!(parent: c.span(), "session ready");
                if config.auth.is_some() {
                    throttle.lock().unwrap_or_else(PoisonError::into_inner).succeeded(c.peer().ip());
                }
            }
            Event::AuthFailed => {
                tracing::warn!(parent: c.span(), "authentication failed");
                throttle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .failed(c.peer().ip(), std::time::Instant::now());
            }
            Event::Closed(reason) => {
                let stats = session.stats();
                tracing::info!(
                    parent: c.span(),
                    ?reason,
                    frames = stats.frames_in,
                    bytes_in = stats.bytes_in,
                    bytes_out = stats.bytes_out,
                    "session closed"
                );
            }
        }
    }
}

/// What [`log_events`] needs to know about a connection.
pub(crate) trait ConnInfo {
    fn span(&self) -> &Span;
    fn peer(&self) -> SocketAddr;
}
