//! The engine thread: owns the backend and every [`Session`], and runs each input through the
//! core state machine.
//!
//! Connection tasks never touch the backend. They send [`Command`]s over one channel; the engine
//! handles them in arrival order, so each connection's responses come back in request order,
//! and answers with [`Reply`]s on the connection's own channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rela_client::FastCrc32;
use rela_core::backend::{BufferId, DeviceInfo, GpuBackend, Usage};
use rela_core::config::MAX_FRAME;
use rela_core::model::ModelHost;
use rela_core::session::{DirectWrite, Event, PollError, Session, SessionConfig};
use rela_core::time::Instant;
use rela_core::wire::msg::WRITE_PREFIX_LEN;
use rela_core::wire::{ErrorCode, Frame, FrameError, HeaderRepr, Kind};
use rela_models::ModelRepository;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tracing::Span;

use crate::arena::{DirectMemory, Lease};
use crate::models::{ProgressSink, SessionModels, StagingBudget};
use crate::pool::PoolBuf;
use crate::throttle::AuthThrottle;

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
    fn as_slice(&self) -> &[u8] {
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

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Inline(b) => &mut b[..],
            Self::Pooled(b) => b.as_mut_slice(),
            Self::Heap(v) => v,
        }
    }

    /// Makes room for at least `len` bytes, keeping the first `keep`.
    fn grow(&mut self, len: usize, keep: usize) {
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
}

impl ConnState {
    pub(crate) fn new(session: Session) -> Self {
        Self {
            session: Mutex::new(session),
            inflight: AtomicUsize::new(0),
            writer_stop: AtomicBool::new(false),
            writer_wake: Notify::new(),
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

    fn stop_writer(&self) {
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

/// A READ's data lent to the connection's writer, which sends it from the backend's memory.
/// Dropping it (once sent, or when the connection gives up) hands the lease back.
#[derive(Debug)]
pub(crate) struct ReadData {
    lease: Lease,
    _done: ReadDone,
}

impl ReadData {
    /// The bytes to send.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.lease.as_slice()
    }
}

/// Sends [`Command::ReadDone`] when dropped, over the engine's unbounded queue (so it never
/// waits), whether the data was sent or the connection gave up.
#[derive(Debug)]
struct ReadDone {
    conn: ConnId,
    tx: EngineTx,
}

impl Drop for ReadDone {
    fn drop(&mut self) {
        // Fails only if the engine is gone, and then nothing waits for the lease.
        let _ = self.tx.send(Command::ReadDone { conn: self.conn });
    }
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
    ReadDone { conn: ConnId },
    /// Report backend usage.
    Usage { reply: oneshot::Sender<Usage> },
    /// Close every session with SHUTTING_DOWN, report usage, and stop.
    Shutdown { reply: oneshot::Sender<Usage> },
}

/// How a WRITE into a leased buffer ended.
#[derive(Debug)]
pub(crate) enum WriteOutcome {
    /// The data is in place and its CRC matched.
    Written(Instant),
    /// The data is in place but the frame's CRC did not match.
    BadCrc(Instant, FrameError),
}

/// A buffer lent to a reader for the WRITEs into it: its range, the first WRITE, the engine's
/// call to give it back early, and the way to report WRITEs and end the lease.
#[derive(Debug)]
pub(crate) struct Granted {
    /// The whole buffer.
    pub(crate) lease: Lease,
    /// The WRITE the lease was asked for.
    pub(crate) first: DirectWrite,
    /// Notified when the engine needs the lease back (the session's timer expired, the node is
    /// shutting down): the reader gives it back at once, mid-frame if it must.
    pub(crate) cancel: Arc<Notify>,
    pub(crate) done: Done,
}

/// Reports WRITEs into a leased buffer and ends the lease, over the engine's unbounded queue
/// (so it never waits). Dropped without [`end`](Self::end) (the reader task was cancelled, or
/// the grant never reached it), it ends the lease as broken mid-frame.
#[derive(Debug)]
pub(crate) struct Done {
    conn: ConnId,
    state: Arc<ConnState>,
    tx: Option<EngineTx>,
}

impl Done {
    /// One WRITE's data is in the buffer; the reply to it holds `ticket`.
    pub(crate) fn written(
        &self,
        write: DirectWrite,
        outcome: WriteOutcome,
        ticket: Option<OwnedSemaphorePermit>,
    ) {
        if let Some(tx) = &self.tx {
            // The engine answers with one reply, which the writer counts out again.
            self.state.inflight.fetch_add(1, Ordering::AcqRel);
            // Fails only if the engine is gone, and then nothing waits for the lease.
            let _ = tx.send(Command::WriteDone { conn: self.conn, write, outcome, ticket });
        }
    }

    /// Gives the lease back: `clean` between frames, otherwise mid-frame.
    pub(crate) fn end(mut self, clean: bool) {
        self.finish(clean);
    }

    fn finish(&mut self, clean: bool) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Command::LeaseEnd { conn: self.conn, clean });
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The leases a connection has out; its session waits for them.
struct Leased {
    /// The buffer lent to the reader for WRITEs.
    write: Option<BufferId>,
    /// READs whose data the writer is sending.
    reads: usize,
    /// Asks the reader to give its WRITE lease back early.
    cancel: Arc<Notify>,
    /// The engine asked for them back: the session closes once they are.
    cancel_requested: bool,
    /// This connection's commands that arrived meanwhile, run once the leases are back.
    deferred: Vec<Command>,
}

impl Leased {
    fn new() -> Self {
        Self {
            write: None,
            reads: 0,
            cancel: Arc::new(Notify::new()),
            cancel_requested: false,
            deferred: Vec::new(),
        }
    }

    /// Asks for the leases back: the reader's (it stops waiting for WRITE data) and the
    /// writer's (it stops sending READ data the peer does not take).
    fn cancel(&mut self, state: Option<&ConnState>) {
        self.cancel_requested = true;
        self.cancel.notify_one();
        if self.reads > 0
            && let Some(state) = state
        {
            state.stop_writer();
        }
    }
}

impl Command {
    /// The connection a command is about, if any.
    fn conn(&self) -> Option<ConnId> {
        match self {
            Self::Open { conn, .. }
            | Self::Frame { conn, .. }
            | Self::FrameError { conn, .. }
            | Self::Timeout { conn, .. }
            | Self::Abort { conn }
            | Self::Lease { conn, .. }
            | Self::WriteDone { conn, .. }
            | Self::LeaseEnd { conn, .. }
            | Self::ReadDone { conn } => Some(*conn),
            Self::Usage { .. } | Self::Shutdown { .. } => None,
        }
    }
}

/// The sending side of the engine's command queue. Unbounded, yet bounded in practice: every
/// frame in it holds one of its connection's `pipeline_depth` slots, and every other command
/// is one per connection event (open, timer, abort, lease returned).
pub(crate) type EngineTx = mpsc::UnboundedSender<Command>;

/// The sending side of a connection's reply queue.
pub(crate) type ReplyTx = mpsc::UnboundedSender<Reply>;

struct Conn {
    state: Arc<ConnState>,
    replies: ReplyTx,
    peer: SocketAddr,
    span: Span,
}

/// The engine's state; lives on its own thread.
pub(crate) struct Engine {
    backend: Box<dyn GpuBackend + Send>,
    config: SessionConfig,
    sessions: HashMap<ConnId, Conn>,
    /// The model repository, when the node serves models.
    repository: Option<Arc<ModelRepository>>,
    /// Model hosts of sessions that sent a model request. Released when their session ends.
    models: HashMap<ConnId, SessionModels>,
    /// Host memory staging client uploads, shared by every session.
    staging: Arc<StagingBudget>,
    status: Arc<Status>,
    throttle: Arc<Mutex<AuthThrottle>>,
    /// The backend's storage, when readers may place WRITE data in it themselves.
    direct: Option<DirectMemory>,
    /// Leases out, by connection.
    leases: HashMap<ConnId, Leased>,
    /// A shutdown waiting for the leases to come back.
    shutdown: Option<Command>,
}

impl Engine {
    pub(crate) fn new(
        backend: Box<dyn GpuBackend + Send>,
        config: SessionConfig,
        status: Arc<Status>,
        throttle: Arc<Mutex<AuthThrottle>>,
        repository: Option<Arc<ModelRepository>>,
        direct: Option<DirectMemory>,
    ) -> Self {
        Self {
            direct,
            leases: HashMap::new(),
            shutdown: None,
            backend,
            config,
            sessions: HashMap::new(),
            repository,
            models: HashMap::new(),
            staging: Arc::default(),
            status,
            throttle,
        }
    }

    /// Frees and zeroes the models of every session that has ended.
    fn release_models(&mut self) {
        let backend: &mut dyn GpuBackend = &mut *self.backend;
        let sessions = &self.sessions;
        self.models.retain(|conn, models| {
            let live = sessions.contains_key(conn);
            if !live {
                models.release_all(backend);
            }
            live
        });
    }

    /// Serves commands until [`Command::Shutdown`] or until every sender is gone. Sessions left
    /// then are aborted, so their buffers are freed and zeroed.
    pub(crate) fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(cmd) = commands.blocking_recv() {
            let stop = self.handle(cmd);
            self.release_models();
            self.status.used.store(self.backend.usage().used, Ordering::Relaxed);
            if stop {
                break;
            }
        }
        for (_, c) in self.sessions.drain() {
            c.state.lock().abort(&mut *self.backend);
        }
        self.release_models();
    }

    /// Handles one command; `true` to stop. A command for a connection whose reader holds a
    /// lease waits until the lease is back, and so does a shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        if let Some(conn) = cmd.conn()
            && !matches!(cmd, Command::WriteDone { .. } | Command::LeaseEnd { .. } | Command::ReadDone { .. })
            && let Some(leased) = self.leases.get_mut(&conn)
        {
            // Another READ may go ahead of READs still being sent (they only read), unless
            // something that waits came before it.
            let read = matches!(&cmd, Command::Frame { job, .. } if job.header.kind == Kind::READ);
            if !(read && leased.write.is_none() && leased.deferred.is_empty()) {
                if let Command::Timeout { now, .. } = &cmd {
                    let expired = self
                        .sessions
                        .get(&conn)
                        .and_then(|c| c.state.lock().poll_timeout())
                        .is_some_and(|at| *now >= at);
                    if !expired {
                        // Not yet: tell the writer the session's deadline so it fires again
                        // then. Only the timer is read; the session gets no input.
                        self.control(conn, |_, _| {});
                        return false;
                    }
                    // Data that does not arrive, or is not taken, in time: stop waiting.
                    leased.cancel(self.sessions.get(&conn).map(|c| &*c.state));
                }
                leased.deferred.push(cmd);
                return false;
            }
        }
        if matches!(cmd, Command::Shutdown { .. }) && !self.leases.is_empty() {
            for (conn, leased) in &mut self.leases {
                leased.cancel(self.sessions.get(conn).map(|c| &*c.state));
            }
            self.shutdown = Some(cmd);
            return false;
        }
        match cmd {
            Command::Lease { conn, header, prefix, done, reply } => {
                let Some((first, lease)) = self.grant(conn, &header, &prefix) else {
                    let _ = reply.send(None);
                    return false;
                };
                let Some(c) = self.sessions.get(&conn) else { return false };
                // Recorded first: a grant that never reaches the reader still ends through
                // its `Done`, which then finds the lease here.
                let leased = self.leases.entry(conn).or_insert_with(Leased::new);
                leased.write = Some(first.id);
                let cancel = leased.cancel.clone();
                let done = Done { conn, state: c.state.clone(), tx: Some(done) };
                let _ = reply.send(Some(Granted { lease, first, cancel, done }));
            }
            Command::WriteDone { conn, write, outcome, ticket } => {
                self.write_done(conn, write, outcome, ticket)
            }
            Command::LeaseEnd { conn, clean } => {
                if let Some(leased) = self.leases.get_mut(&conn) {
                    leased.write = None;
                    if !clean {
                        // Stopped inside a frame: the stream cannot go on.
                        leased.cancel_requested = true;
                    }
                }
                return self.settle(conn);
            }
            Command::ReadDone { conn } => {
                if let Some(leased) = self.leases.get_mut(&conn) {
                    leased.reads = leased.reads.saturating_sub(1);
                }
                return self.settle(conn);
            }
            Command::Open { conn, peer, span, state, replies } => {
                tracing::debug!(parent: &span, "session opened");
                self.sessions.insert(conn, Conn { state, replies, peer, span });
                self.control(conn, |_, _| {});
            }
            Command::Frame { conn, now, job } => {
                let Job { header, payload, out, done, ticket } = job;
                let mut out = out.map_or(OutBuf::Inline([0; INLINE_OUT]), OutBuf::Pooled);
                let model_request = matches!(
                    header.kind,
                    Kind::MODEL_LOAD
                        | Kind::MODEL_UNLOAD
                        | Kind::INFER
                        | Kind::MODEL_UPLOAD
                        | Kind::MODEL_CHUNK
                        | Kind::MODEL_COMMIT
                );
                let mut models = if model_request {
                    Some(self.models.remove(&conn).unwrap_or_else(|| {
                        let sink = self
                            .sessions
                            .get(&conn)
                            .map(|c| ProgressSink { replies: c.replies.clone(), state: c.state.clone() });
                        SessionModels::new(self.repository.clone(), self.staging.clone(), sink)
                    }))
                } else {
                    None
                };
                // The reader counted this frame as in flight when it sent it.
                let stepped = self.step(conn, &mut out, false, done, |session, backend| {
                    match payload.as_slice().get(..header.len as usize) {
                        Some(p) => {
                            // Err only if the session is closing; it is then removed below.
                            let frame = Frame::from_verified(header, p);
                            let _ = match models.as_mut() {
                                Some(m) => session.handle_frame_with(now, frame, backend, m),
                                None => session.handle_frame(now, frame, backend),
                            };
                        }
                        // The connection always fills the payload; treat a short one as broken.
                        None => session.abort(backend),
                    }
                    // The payload's buffer goes back to the pool before the response is sent.
                    drop(payload);
                });
                if let Some(m) = models {
                    // Kept while the session lives; `release_models` frees it once it ends.
                    self.models.insert(conn, m);
                }
                if let Some(Stepped { len, outcome, replies, data }) = stepped {
                    let _ = replies.send(Reply { out, len, outcome, data, _ticket: Some(ticket) });
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
                if let Some(c) = self.sessions.remove(&conn) {
                    let mut session = c.state.lock();
                    session.abort(&mut *self.backend);
                    log_events(&mut session, &c, &self.config, &self.throttle);
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

    /// Lends the range of a WRITE's data to the connection's reader, if the backend's storage
    /// is shared and the session accepts the WRITE as it stands.
    fn grant(&self, conn: ConnId, header: &HeaderRepr, prefix: &[u8]) -> Option<(DirectWrite, Lease)> {
        let direct = self.direct.as_ref()?;
        if self.shutdown.is_some() {
            return None;
        }
        let c = self.sessions.get(&conn)?;
        let write = c.state.lock().begin_write(header, prefix, &*self.backend)?;
        let size = self.backend.size(write.id).ok()?;
        let range = self.backend.storage_range(write.id, 0, size)?;
        // SAFETY: `range` is where the backend keeps a live buffer of this session
        // (`storage_range` of the buffer `begin_write` found in its slots). Until the lease
        // comes back (`LeaseEnd`), `handle` runs no input of this session (its commands wait
        // in `deferred`; the reader sends only WRITEs into this buffer), so none of its buffers
        // is freed or touched; no other session can name the buffer; and the backend only
        // touches the ranges of the buffers a call names (`rela_backend_host::Arena`).
        let lease = unsafe { direct.lease(range) };
        Some((write, lease))
    }

    /// A WRITE's data is in the leased buffer: acknowledges it (the session checks it again),
    /// or closes the session on a bad CRC.
    fn write_done(
        &mut self,
        conn: ConnId,
        write: DirectWrite,
        outcome: WriteOutcome,
        ticket: Option<OwnedSemaphorePermit>,
    ) {
        let leased = self.leases.get(&conn).and_then(|l| l.write);
        match outcome {
            WriteOutcome::Written(now) => self.reply_to(conn, ticket, |session, backend| {
                // A WRITE outside the lease, or one the session no longer takes, cannot
                // happen; if it did, nothing of it is acknowledged.
                if leased != Some(write.id) || session.finish_write(now, &write).is_err() {
                    session.abort(backend);
                }
            }),
            WriteOutcome::BadCrc(now, error) => self.reply_to(conn, ticket, |session, backend| {
                let _ = session.handle_frame_error(now, error, backend);
            }),
        }
    }

    /// Once a connection has no lease out: runs its commands that waited, closes its session if
    /// the leases were asked back (the stream stopped mid-frame), and carries out a shutdown
    /// that waited for the last lease. `true` to stop.
    fn settle(&mut self, conn: ConnId) -> bool {
        if self.leases.get(&conn).is_some_and(|l| l.write.is_none() && l.reads == 0)
            && let Some(leased) = self.leases.remove(&conn)
        {
            for cmd in leased.deferred {
                if self.handle(cmd) {
                    return true;
                }
            }
            if leased.cancel_requested && self.sessions.contains_key(&conn) {
                let shutting_down = self.shutdown.is_some();
                self.control(conn, |session, backend| {
                    if shutting_down {
                        session.close_with(ErrorCode::SHUTTING_DOWN, "node shutting down", backend);
                    } else {
                        session.abort(backend);
                    }
                });
            }
        }
        if self.leases.is_empty()
            && let Some(shutdown) = self.shutdown.take()
        {
            return self.handle(shutdown);
        }
        false
    }

    /// Runs `input` on a session and answers with its output, holding `ticket` (the reply the
    /// reader counted in flight).
    fn reply_to(
        &mut self,
        conn: ConnId,
        ticket: Option<OwnedSemaphorePermit>,
        input: impl FnOnce(&mut Session, &mut dyn GpuBackend),
    ) {
        let mut out = OutBuf::Inline([0; INLINE_OUT]);
        if let Some(Stepped { len, outcome, replies, data }) = self.step(conn, &mut out, false, None, input) {
            let _ = replies.send(Reply { out, len, outcome, data, _ticket: ticket });
        }
    }

    /// Runs `input` on a session and sends whatever it produced as a reply without a slot.
    fn control(&mut self, conn: ConnId, input: impl FnOnce(&mut Session, &mut dyn GpuBackend)) {
        let mut out = OutBuf::heap();
        if let Some(Stepped { len, outcome, replies, data }) = self.step(conn, &mut out, true, None, input) {
            let _ = replies.send(Reply { out, len, outcome, data, _ticket: None });
        }
    }

    /// Runs `input` on the session of `conn`, drains its output into `out`, handles its events
    /// and removes it once closed. Returns the output length, the outcome and the reply channel,
    /// or `None` if the connection has no session. With `count`, counts the reply as in flight
    /// (replies to frames were counted by the reader already).
    ///
    /// With `done` (the engine's queue, for a READ), READ data the session answers with is lent to the
    /// writer ([`ReadData`]) instead of copied into `out`, when the backend's storage is shared.
    fn step(
        &mut self,
        conn: ConnId,
        out: &mut OutBuf,
        count: bool,
        done: Option<EngineTx>,
        input: impl FnOnce(&mut Session, &mut dyn GpuBackend),
    ) -> Option<Stepped> {
        let c = self.sessions.get(&conn)?;
        let backend: &mut dyn GpuBackend = &mut *self.backend;
        let mut session = c.state.lock();
        input(&mut session, backend);
        let mut start = 0;
        let mut data = None;
        if let (Some(direct), Some(tx), None) = (self.direct.as_ref(), done, self.shutdown.as_ref())
            && let Some(pending) = session.peek_read()
            && let Some(range) = backend.storage_range(pending.id, pending.offset, u64::from(pending.len))
        {
            // SAFETY: `range` holds the data of a READ the session answers from a live buffer of
            // its own (`peek_read`, `storage_range`). Until this lease comes back (`ReadDone`),
            // `handle` runs nothing of this session but further READs (which only read): every
            // other command waits in `deferred`, so nothing writes or frees the buffer; no other
            // session can name it; and the backend only touches the ranges a call names.
            let lease = unsafe { direct.lease(range) };
            if let Ok(t) = session.transmit_read_header::<FastCrc32>(lease.as_slice(), out.as_mut_slice()) {
                start = t.len;
                let leased = self.leases.entry(conn).or_insert_with(Leased::new);
                leased.reads += 1;
                data = Some(ReadData { lease, _done: ReadDone { conn, tx } });
            }
        }
        let len = match drain_from(&mut session, backend, out, start) {
            Ok(len) => len,
            Err(e) => {
                tracing::error!(parent: &c.span, %e, "response does not fit; aborting session");
                // Nothing is sent: READ data lent above goes back before the buffers are freed.
                // (Unreachable with a lease: `peek_read` lends only the one pending frame.)
                data = None;
                session.abort(backend);
                0
            }
        };
        log_events(&mut session, c, &self.config, &self.throttle);
        let outcome = Outcome { timeout: session.poll_timeout(), closed: session.is_closed() };
        if count {
            // Counted while the session is locked, so the fast path sees it.
            c.state.inflight.fetch_add(1, Ordering::AcqRel);
        }
        drop(session);
        let replies =
            if outcome.closed { self.sessions.remove(&conn).map(|c| c.replies)? } else { c.replies.clone() };
        Some(Stepped { len, outcome, replies, data })
    }
}

/// What [`Engine::step`] produced: `len` bytes of frames, what to do after, where to send
/// them, and READ data to send behind them.
struct Stepped {
    len: usize,
    outcome: Outcome,
    replies: ReplyTx,
    data: Option<ReadData>,
}

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
fn drain_from<B: GpuBackend + ?Sized>(
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

impl ConnInfo for Conn {
    fn span(&self) -> &Span {
        &self.span
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }
}
