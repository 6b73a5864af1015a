//! What connections and the engine send each other: commands in, replies out, and the
//! per-connection state both sides share.
//!
//! Connection tasks never touch the backend. They send [`Command`]s over one channel; the
//! engine answers with [`Reply`]s on the connection's own channel, in request order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rela_core::backend::{BufferId, DeviceInfo, Usage};
use rela_core::session::{DirectWrite, Session};
use rela_core::time::Instant;
use rela_core::wire::msg::WRITE_PREFIX_LEN;
use rela_core::wire::{FrameError, HeaderRepr};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tracing::Span;

use crate::engine::jobs::{JobDone, Lent};
use crate::leases::{Granted, ReadData};
use crate::pool::PoolBuf;

/// A connection's id (also the session id in logs).
pub(crate) type ConnId = u64;

/// Bytes of a request payload carried inline in [`Payload::Inline`] (every request but WRITE
/// is far smaller: the largest fixed one is a 256-byte PING).
pub(crate) const INLINE_PAYLOAD: usize = 512;
/// Bytes of an inline response buffer ([`OutBuf::Inline`]): enough for every response but READ
/// data (the largest is DEVICE_INFO at about 200 bytes; a session queues at most two frames).
pub(crate) const INLINE_OUT: usize = 1024;

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

/// A request payload on its way to the engine.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "inline on purpose: no allocation per small frame")]
pub(crate) enum Payload {
    /// A small payload, carried in the command itself (no buffer).
    Inline([u8; INLINE_PAYLOAD]),
    /// A large payload (WRITE data) in a pooled buffer, counted against the node's budget.
    Pooled(PoolBuf),
}

impl Payload {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline(b) => b,
            Self::Pooled(b) => b.as_slice(),
        }
    }
}

/// Where response frames are written.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "inline on purpose: no allocation per small response")]
pub(crate) enum OutBuf {
    /// Small responses (acknowledgements, PONG, errors): no buffer at all.
    Inline([u8; INLINE_OUT]),
    /// A READ response, reserved by the reader before the request was forwarded, so the
    /// backend reads straight into a buffer the node's budget already accounts for.
    Pooled(PoolBuf),
    /// Fallback when a reservation turns out too small, and control output (rare events).
    Heap(Vec<u8>),
}

impl OutBuf {
    /// An empty heap buffer (grown on demand).
    pub(crate) const fn heap() -> Self {
        Self::Heap(Vec::new())
    }

    /// The whole buffer.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline(b) => &b[..],
            Self::Pooled(b) => b.as_slice(),
            Self::Heap(v) => v,
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Inline(b) => &mut b[..],
            Self::Pooled(b) => b.as_mut_slice(),
            Self::Heap(v) => v,
        }
    }

    /// Makes room for at least `len` bytes, keeping the first `keep`.
    pub(crate) fn grow(&mut self, len: usize, keep: usize) {
        if let Self::Heap(v) = self {
            if v.len() < len {
                v.resize(len, 0);
            }
            return;
        }
        let mut bigger = vec![0u8; len];
        bigger[..keep].copy_from_slice(&self.as_slice()[..keep]);
        *self = Self::Heap(bigger);
    }
}

/// Per-connection state shared between the connection's tasks and the engine.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The session. The engine locks it for every input; the reader locks it for the PING
    /// fast path ([`crate::conn`]). Never held across an await.
    pub(crate) session: Mutex<Session>,
    /// Replies decided (by the engine or the fast path) and not yet written by the writer,
    /// plus frames on their way to the engine. The fast path runs only when this is zero, so
    /// responses stay in request order.
    pub(crate) inflight: AtomicUsize,
    /// Set (for good) when the engine takes back READ data the writer is sending: the session
    /// is ending (its timer expired, the node is shutting down) and the peer does not take it.
    writer_stop: AtomicBool,
    writer_wake: Notify,
    /// The session's next deadline in core microseconds ([`NO_DEADLINE`] for none), as of its
    /// last step: the writer reads it here instead of locking a session a job may hold.
    deadline: AtomicU64,
    /// Set by the engine when a CANCEL arrives while the session's job runs; a generation
    /// stops at its next step. Cleared when a GENERATE job starts.
    pub(crate) cancel_generation: AtomicBool,
}

/// [`ConnState::deadline`] when the session has no timer.
const NO_DEADLINE: u64 = u64::MAX;

impl ConnState {
    pub(crate) fn new(session: Session) -> Self {
        Self {
            session: Mutex::new(session),
            inflight: AtomicUsize::new(0),
            writer_stop: AtomicBool::new(false),
            writer_wake: Notify::new(),
            deadline: AtomicU64::new(NO_DEADLINE),
            cancel_generation: AtomicBool::new(false),
        }
    }

    /// Resolves once the engine has taken back the READ data the writer is sending.
    pub(crate) async fn writer_stopped(&self) {
        loop {
            let woken = self.writer_wake.notified();
            tokio::pin!(woken);
            // Registered before the flag is read, so a stop in between is not missed.
            woken.as_mut().enable();
            if self.writer_stop.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    /// The session's next deadline as of its last step.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Acquire) {
            NO_DEADLINE => None,
            at => Some(Instant::from_micros(at)),
        }
    }

    /// Records the session's next deadline (after a step).
    pub(crate) fn set_deadline(&self, at: Option<Instant>) {
        self.deadline
            .store(at.map_or(NO_DEADLINE, |t| t.as_micros().min(NO_DEADLINE - 1)), Ordering::Release);
    }

    pub(crate) fn stop_writer(&self) {
        self.writer_stop.store(true, Ordering::Release);
        self.writer_wake.notify_waiters();
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the connection does after writing a reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// When to ask for [`Command::Timeout`].
    pub(crate) timeout: Option<Instant>,
    /// The session is closed: close the connection once the bytes are out.
    pub(crate) closed: bool,
}

/// Engine (or the PING fast path) → connection writer: bytes to send, in order.
#[derive(Debug)]
pub(crate) struct Reply {
    /// Frames in `out[..len]`.
    pub(crate) out: OutBuf,
    pub(crate) len: usize,
    pub(crate) outcome: Outcome,
    /// READ data sent from the backend's memory right behind `out[..len]`.
    pub(crate) data: Option<ReadData>,
    /// The connection's pipeline slot, released once the bytes are written.
    pub(crate) _ticket: Option<OwnedSemaphorePermit>,
}

/// A validated request frame on its way to the engine.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) header: HeaderRepr,
    /// The payload, in `payload[..header.len]`.
    pub(crate) payload: Payload,
    /// The response buffer the reader reserved for a READ; `None` for a small response.
    pub(crate) out: Option<PoolBuf>,
    /// For a READ whose data may be sent from the backend's memory: the engine's queue, for the
    /// writer to hand the lease back ([`ReadDone`]).
    pub(crate) done: Option<EngineTx>,
    pub(crate) ticket: OwnedSemaphorePermit,
}

/// Connection (or node) → engine.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "frames carry small payloads inline instead of boxed")]
pub(crate) enum Command {
    /// A new connection and its session.
    Open { conn: ConnId, peer: SocketAddr, span: Span, state: Arc<ConnState>, replies: ReplyTx },
    /// A validated frame.
    Frame { conn: ConnId, now: Instant, job: Job },
    /// The connection read an invalid frame.
    FrameError { conn: ConnId, now: Instant, error: FrameError },
    /// The session's timer expired.
    Timeout { conn: ConnId, now: Instant },
    /// The transport is gone.
    Abort { conn: ConnId },
    /// A WRITE's header and prefix: may its data go straight into the buffer? The engine
    /// answers with a [`Granted`] lease on the whole buffer, which the reader keeps for the
    /// WRITEs to that buffer that follow, or with `None`: the frame comes the usual way.
    Lease {
        conn: ConnId,
        header: HeaderRepr,
        prefix: [u8; WRITE_PREFIX_LEN],
        done: EngineTx,
        reply: oneshot::Sender<Option<Granted>>,
    },
    /// A WRITE's data is in the leased buffer (sent through [`Done::written`]).
    WriteDone {
        conn: ConnId,
        write: DirectWrite,
        outcome: WriteOutcome,
        ticket: Option<OwnedSemaphorePermit>,
    },
    /// The reader gives a WRITE lease back (sent by [`Done`], exactly once per [`Granted`]).
    /// `clean`: between frames; otherwise it stopped inside one and the stream cannot go on.
    LeaseEnd { conn: ConnId, clean: bool },
    /// A READ's data lent to the writer is sent or given up (sent by [`ReadData`]'s drop).
    ReadDone { conn: ConnId, id: BufferId },
    /// Report backend usage.
    Usage { reply: oneshot::Sender<Usage> },
    /// Close every session with SHUTTING_DOWN, report usage, and stop.
    Shutdown { reply: oneshot::Sender<Usage> },
    /// A job wants a turn on the backend.
    Want { conn: ConnId },
    /// A job gives the backend back after a turn of `used`; with `again`, it wants another
    /// turn at once (it stepped aside for waiting requests, or its quantum ran out).
    Back { conn: ConnId, backend: Lent, used: Duration, again: bool },
    /// A job ended.
    JobDone { conn: ConnId, done: Box<JobDone> },
}

/// How a WRITE into a leased buffer ended.
#[derive(Debug)]
pub(crate) enum WriteOutcome {
    /// The data is in place and its CRC matched.
    Written(Instant),
    /// The data is in place but the frame's CRC did not match.
    BadCrc(Instant, FrameError),
}

impl Command {
    /// The connection a command is about, if any.
    pub(crate) fn conn(&self) -> Option<ConnId> {
        match self {
            Self::Open { conn, .. }
            | Self::Frame { conn, .. }
            | Self::FrameError { conn, .. }
            | Self::Timeout { conn, .. }
            | Self::Abort { conn }
            | Self::Lease { conn, .. }
            | Self::WriteDone { conn, .. }
            | Self::LeaseEnd { conn, .. }
            | Self::ReadDone { conn, .. }
            | Self::JobDone { conn, .. } => Some(*conn),
            Self::Usage { .. } | Self::Shutdown { .. } | Self::Want { .. } | Self::Back { .. } => None,
        }
    }
}

/// The sending side of the engine's command queue. Unbounded, yet bounded in practice: every
/// frame in it holds one of its connection's `pipeline_depth` slots, and every other command
/// is one per connection event (open, timer, abort, lease returned).
pub(crate) type EngineTx = mpsc::UnboundedSender<Command>;

/// The sending side of a connection's reply queue.
pub(crate) type ReplyTx = mpsc::UnboundedSender<Reply>;
