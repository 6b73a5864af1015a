//! The engine thread: owns the backend and every [`Session`], and runs each input through the
//! core state machine.
//!
//! Connection tasks never touch the backend. They send [`Command`]s over one channel; the engine
//! handles them in arrival order, so each connection's responses come back in request order,
//! and answers with [`Reply`]s on the connection's own channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rela_client::FastCrc32;
use rela_core::backend::{DeviceInfo, GpuBackend, Usage};
use rela_core::config::MAX_FRAME;
use rela_core::session::{Event, PollError, Session, SessionConfig};
use rela_core::time::Instant;
use rela_core::wire::{ErrorCode, Frame, FrameError, HeaderRepr};
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use crate::throttle::AuthThrottle;

/// A connection's id (also the session id in logs).
pub(crate) type ConnId = u64;

/// Room kept free in an output buffer for a non-READ frame (the largest is a 256-byte PONG).
const SMALL_ROOM: usize = 1024;

/// Time as the core sees it: microseconds since the node started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: std::time::Instant,
    start_tokio: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self { start: std::time::Instant::now(), start_tokio: tokio::time::Instant::now() }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// The tokio instant of a core instant.
    pub(crate) fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.start_tokio + std::time::Duration::from_micros(at.as_micros().min(u64::MAX / 2))
    }
}

/// Backend facts shared with the discovery responder without asking the engine.
#[derive(Debug)]
pub(crate) struct Status {
    pub(crate) info: DeviceInfo,
    pub(crate) used: AtomicU64,
}

/// One request's buffers, recycled between the connection and the engine: `input` holds the
/// request payload, `output` the response frames. Both keep their length (their largest size
/// so far) so refilling them never zeroes memory again.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) input: Vec<u8>,
    pub(crate) output: Vec<u8>,
    pub(crate) out_len: usize,
}

/// What the connection does after writing a reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// When to ask for [`Command::Timeout`].
    pub(crate) timeout: Option<Instant>,
    /// The session is closed: close the connection once the bytes are out.
    pub(crate) closed: bool,
}

/// Engine → connection.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The answer to [`Command::Frame`]: the slot, with its output filled.
    Frame { slot: Slot, outcome: Outcome },
    /// Output not tied to a request slot (handshake start, timeouts, framing errors, shutdown).
    Control { bytes: Vec<u8>, outcome: Outcome },
}

/// Connection (or node) → engine.
#[derive(Debug)]
pub(crate) enum Command {
    /// A new connection: start its session.
    Open { conn: ConnId, peer: SocketAddr, span: Span, replies: mpsc::UnboundedSender<Reply> },
    /// A validated frame whose payload is `slot.input[..header.len]`.
    Frame { conn: ConnId, now: Instant, header: HeaderRepr, slot: Slot },
    /// The connection read an invalid frame.
    FrameError { conn: ConnId, now: Instant, error: FrameError },
    /// The session's timer expired.
    Timeout { conn: ConnId, now: Instant },
    /// The transport is gone.
    Abort { conn: ConnId },
    /// Report backend usage.
    Usage { reply: oneshot::Sender<Usage> },
    /// Close every session with SHUTTING_DOWN, report usage, and stop.
    Shutdown { reply: oneshot::Sender<Usage> },
}

struct Conn {
    session: Session,
    replies: mpsc::UnboundedSender<Reply>,
    peer: SocketAddr,
    span: Span,
}

/// The engine's state; lives on its own thread.
pub(crate) struct Engine {
    backend: Box<dyn GpuBackend + Send>,
    config: SessionConfig,
    sessions: HashMap<ConnId, Conn>,
    status: Arc<Status>,
    throttle: Arc<Mutex<AuthThrottle>>,
    clock: Clock,
}

impl Engine {
    pub(crate) fn new(
        backend: Box<dyn GpuBackend + Send>,
        config: SessionConfig,
        status: Arc<Status>,
        throttle: Arc<Mutex<AuthThrottle>>,
        clock: Clock,
    ) -> Self {
        Self { backend, config, sessions: HashMap::new(), status, throttle, clock }
    }

    /// Serves commands until [`Command::Shutdown`] or until every sender is gone. Sessions left
    /// then are aborted, so their buffers are freed and zeroed.
    pub(crate) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(cmd) = commands.blocking_recv() {
            let stop = self.handle(cmd);
            self.status.used.store(self.backend.usage().used, Ordering::Relaxed);
            if stop {
                break;
            }
        }
        for (_, mut c) in self.sessions.drain() {
            c.session.abort(&mut *self.backend);
        }
    }

    /// Handles one command; `true` to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Open { conn, peer, span, replies } => {
                let session = Session::new(self.config.clone(), rand::random(), self.clock.now());
                tracing::debug!(parent: &span, "session opened");
                self.sessions.insert(conn, Conn { session, replies, peer, span });
                self.control(conn, |_, _| {});
            }
            Command::Frame { conn, now, header, mut slot } => {
                let mut output = std::mem::take(&mut slot.output);
                let input = &slot.input;
                let stepped = self.step(conn, &mut output, |session, backend| {
                    match input.get(..header.len as usize) {
                        Some(payload) => {
                            // Err only if the session is closing; it is then removed below.
                            let _ = session.handle_frame(now, Frame::from_verified(header, payload), backend);
                        }
                        // The connection always fills the slot; treat a short one as broken.
                        None => session.abort(backend),
                    }
                });
                slot.output = output;
                if let Some((len, outcome, replies)) = stepped {
                    slot.out_len = len;
                    let _ = replies.send(Reply::Frame { slot, outcome });
                }
            }
            Command::FrameError { conn, now, error } => {
                if let Some(c) = self.sessions.get(&conn) {
                    tracing::debug!(parent: &c.span, %error, "framing error");
                }
                self.control(conn, |session, backend| {
                    let _ = session.handle_frame_error(now, error, backend);
                });
            }
            Command::Timeout { conn, now } => {
                self.control(conn, |session, backend| session.handle_timeout(now, backend));
            }
            Command::Abort { conn } => {
                if let Some(mut c) = self.sessions.remove(&conn) {
                    c.session.abort(&mut *self.backend);
                    log_events(&mut c, &self.config, &self.throttle);
                }
            }
            Command::Usage { reply } => {
                let _ = reply.send(self.backend.usage());
            }
            Command::Shutdown { reply } => {
                let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
                for conn in ids {
                    self.control(conn, |session, backend| {
                        session.close_with(ErrorCode::SHUTTING_DOWN, "node shutting down", backend);
                    });
                }
                let _ = reply.send(self.backend.usage());
                return true;
            }
        }
        false
    }

    /// Runs `input` on a session and sends whatever it produced as a control reply.
    fn control(&mut self, conn: ConnId, input: impl FnOnce(&mut Session, &mut dyn GpuBackend)) {
        let mut out = Vec::new();
        if let Some((len, outcome, replies)) = self.step(conn, &mut out, input) {
            out.truncate(len);
            let _ = replies.send(Reply::Control { bytes: out, outcome });
        }
    }

    /// Runs `input` on the session of `conn`, drains its output into `out`, handles its events
    /// and removes it once closed. Returns the output length, the outcome and the reply channel,
    /// or `None` if the connection has no session.
    fn step(
        &mut self,
        conn: ConnId,
        out: &mut Vec<u8>,
        input: impl FnOnce(&mut Session, &mut dyn GpuBackend),
    ) -> Option<(usize, Outcome, mpsc::UnboundedSender<Reply>)> {
        let c = self.sessions.get_mut(&conn)?;
        let backend: &mut dyn GpuBackend = &mut *self.backend;
        input(&mut c.session, backend);
        let len = match drain(&mut c.session, backend, out) {
            Ok(len) => len,
            Err(e) => {
                tracing::error!(parent: &c.span, %e, "response does not fit; aborting session");
                c.session.abort(backend);
                0
            }
        };
        log_events(c, &self.config, &self.throttle);
        let outcome = Outcome { timeout: c.session.poll_timeout(), closed: c.session.is_closed() };
        let replies =
            if outcome.closed { self.sessions.remove(&conn).map(|c| c.replies)? } else { c.replies.clone() };
        Some((len, outcome, replies))
    }
}

/// Writes every pending frame of `session` into `out`, growing it when a READ response needs
/// more room. `out` keeps its grown length for reuse. Returns the bytes written.
fn drain(session: &mut Session, backend: &mut dyn GpuBackend, out: &mut Vec<u8>) -> Result<usize, PollError> {
    let mut len = 0;
    // Each round emits a frame or grows the buffer once; a session queues at most two frames.
    for _ in 0..8 {
        if out.len() < len + SMALL_ROOM {
            out.resize(len + SMALL_ROOM, 0);
        }
        match session.poll_transmit::<FastCrc32, _>(backend, &mut out[len..]) {
            Ok(Some(t)) => len += t.len,
            Ok(None) => return Ok(len),
            Err(PollError::BufferTooSmall { needed }) if needed <= MAX_FRAME => {
                out.resize(len + needed, 0);
            }
            Err(e) => return Err(e),
        }
    }
    Err(PollError::BufferTooSmall { needed: usize::MAX })
}

fn log_events(c: &mut Conn, config: &SessionConfig, throttle: &Mutex<AuthThrottle>) {
    while let Some(event) = c.session.poll_event() {
        match event {
            Event::Ready => {
                tracing::info!(parent: &c.span, "session ready");
                if config.auth.is_some() {
                    throttle.lock().unwrap_or_else(PoisonError::into_inner).succeeded(c.peer.ip());
                }
            }
            Event::AuthFailed => {
                tracing::warn!(parent: &c.span, "authentication failed");
                throttle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .failed(c.peer.ip(), std::time::Instant::now());
            }
            Event::Closed(reason) => {
                let stats = c.session.stats();
                tracing::info!(
                    parent: &c.span,
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
