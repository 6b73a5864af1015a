//! The accept loop and the per-connection tasks.
//!
//! Each connection has a reader task and a writer (the connection task itself):
//!
//! ```text
//!                     node-wide buffer pool (byte budget)
//!                      │ WRITE payloads, READ responses
//!                      ▼
//! socket ──► reader ──Command::Frame──► engine ──Reply──► writer ──► socket
//!              │                                  ▲        (in order)
//!              └──── PING fast path (session lock) ┘
//! ```
//!
//! The reader validates the header before reading the payload. Small payloads travel inline in
//! the command; a large one (WRITE data) is read straight from the socket into a buffer from the
//! node's [`Pool`], waiting for room in the budget first, and its CRC is computed piece by
//! piece while the bytes are hot. With a shared host arena the WRITE data skips the pool: the
//! engine lends the reader the buffer's own range ([`direct_write`]). For a READ the reader reserves the response buffer (header
//! plus the length asked for) before forwarding the request, so the backend reads straight into
//! it and the budget bounds READ responses too. At most `pipeline_depth` requests per
//! connection are between the reader and the socket at once.
//!
//! The PING fast path: when nothing of this connection is in flight, a well-formed PING is run
//! through the session on the reader task itself (under the session's lock; the core decides,
//! updates the idle timer and the counters exactly as on the engine) and the reader writes the
//! PONG to the socket itself (a non-blocking write; whatever the socket does not take at once
//! goes to the writer), saving the two thread hops of the engine and the hop to the writer. A
//! PING is the one request the core serves without the backend, so the reader needs none.
//!
//! The writer writes replies in order (several at once with a vectored write when they queue
//! up, trying a non-blocking write before arming the stall timeout), keeps the session timer
//! armed at the earliest deadline it was told (a deadline that moved later is picked up when
//! the timer fires, so steady traffic does not reset the timer per reply), and closes the
//! connection when the session closes.
//!
//! The tasks are not instrumented with the session's span (entering a span on every poll costs
//! more than a PING); log lines name it as their parent instead.
//!
//! The tasks are generic over the stream ([`SplitStream`]): plain TCP, or TLS when the node has
//! an identity (the handshake runs in the connection's task before anything else, bounded by
//! the session's handshake timeout; the session's own handshake deadline starts after it). Over TLS the PING fast path decides on the reader but leaves the writing
//! to the writer, which flushes the TLS layer after each batch.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rela_client::FastCrc32;
use rela_core::backend::{BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage};
use rela_core::config::{HANDSHAKE_MAX_PAYLOAD, HEADER_LEN};
use rela_core::session::{DirectWrite, Session, SessionConfig};
use rela_core::wire::msg::{self, ErrorMsg, Message, Request, WRITE_PREFIX_LEN};
use rela_core::wire::{
    ErrorCode, Flags, Frame, FrameCrc, FrameError, HeaderRepr, Kind, RawHeader, emit_frame,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Span;

use crate::compress::{self, ReadWishes};
use crate::engine::{
    Clock, Command, ConnId, ConnState, EngineTx, Granted, INLINE_OUT, INLINE_PAYLOAD, Job, OutBuf, Outcome,
    Payload, Reply, ReplyTx, WriteOutcome, drain,
};
use crate::pool::{Pool, PoolBuf};
use crate::stream::{SplitStream, TryWrite};
use crate::throttle::AuthThrottle;

/// How long a closing connection keeps reading (and discarding) so that its last frames are not
/// destroyed by a reset (closing a socket with unread input sends RST).
const LINGER: Duration = Duration::from_secs(2);
/// Read buffer in front of each socket: headers and small requests take one syscall for many.
/// Large payloads bypass it (they are read straight into their pooled buffer); at most this
/// many bytes of a payload are copied out of it.
const READ_BUFFER: usize = 8 * 1024;
/// Payloads are read and checksummed in pieces of this size (cache-resident between the copy
/// out of the socket and the CRC).
const READ_PIECE: usize = 256 * 1024;
/// A peer that takes no response bytes for this long is dropped, so it cannot hold pooled
/// buffers (and with them the node's budget) indefinitely.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// How often a large header read before the session is ready looks again whether the handshake
/// request in flight made it ready.
const HANDSHAKE_POLL: Duration = Duration::from_millis(5);
/// Most replies gathered into one vectored write.
const WRITE_BATCH: usize = 16;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: EngineTx,
    /// The backend's storage is shared: WRITE data may go straight into its buffer.
    pub(crate) direct: bool,
    pub(crate) clock: Clock,
    pub(crate) throttle: Arc<Mutex<AuthThrottle>>,
    /// Every session's configuration (each connection starts its session from it).
    pub(crate) session: SessionConfig,
    pub(crate) max_payload: u32,
    pub(crate) depth: usize,
    /// Payload and READ-response buffers, bounded by the node's budget.
    pub(crate) pool: Arc<Pool>,
    pub(crate) max_sessions: usize,
    /// Most connections served at once from one address (loopback ones only when
    /// `cap_loopback`).
    pub(crate) max_per_address: usize,
    /// Whether loopback peers count against `max_per_address`.
    pub(crate) cap_loopback: bool,
    /// Connections being served, per address (only addresses with at least one).
    pub(crate) per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Connections being served (counted against `max_sessions`).
    pub(crate) live: AtomicUsize,
    /// Connections being turned away with BUSY.
    pub(crate) rejecting: AtomicUsize,
    pub(crate) next_conn: AtomicU64,
    /// WRITEs read straight into the backend's memory.
    pub(crate) direct_writes: AtomicU64,
    /// Serve over TLS with this configuration.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Decrements a counter when dropped.
struct CountGuard(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl Drop for CountGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Gives back an address's connection count when dropped.
struct AddressGuard(Arc<Shared>, IpAddr);

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = self.0.per_address.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// Aborts a task when dropped, so a cancelled connection takes its reader with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts connections until `stop` fires (or its sender is dropped). Returns the connection
/// tasks still running.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(stream, peer, &shared, &mut tasks),
                Err(error) => {
                    // Usually EMFILE or ECONNABORTED; back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    tasks
}

/// Serves a new connection, or turns it away at once with ERROR(BUSY) and a reason: its
/// address is throttled after failed AUTHs (the reason says how long to wait), it has
/// `max_per_address` sessions already, or the node has `max_sessions`. A connection turned
/// away holds no session slot.
fn admit(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
    let ip = peer.ip();
    let throttled =
        shared.throttle.lock().unwrap_or_else(PoisonError::into_inner).admit(ip, std::time::Instant::now());
    if let Err(wait) = throttled {
        tracing::info!(%peer, ?wait, "connection refused after failed AUTH attempts from this address");
        return reject(stream, peer, shared, tasks, throttled_reason(wait));
    }
    if shared.live.load(Ordering::Acquire) >= shared.max_sessions {
        tracing::info!(%peer, "session limit reached; sending BUSY");
        return reject(stream, peer, shared, tasks, "node at its session limit".to_owned());
    }
    let address = if shared.cap_loopback || !ip.is_loopback() {
        let mut counts = shared.per_address.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if *n >= shared.max_per_address {
            drop(counts);
            tracing::info!(%peer, "per-address session limit reached; sending BUSY");
            let reason = format!("{} sessions from this address already", shared.max_per_address);
            return reject(stream, peer, shared, tasks, reason);
        }
        *n += 1;
        Some(AddressGuard(shared.clone(), ip))
    } else {
        None
    };
    shared.live.fetch_add(1, Ordering::AcqRel);
    let guard = CountGuard(shared.clone(), |s| &s.live);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", %peer, id = conn);
    let admitted = Admitted::Serve { conn, span, slots: (guard, address) };
    tasks.spawn(start(stream, peer, shared.clone(), admitted));
}

/// What [`admit`] decided for a connection.
enum Admitted {
    /// Serve it.
    Serve { conn: ConnId, span: Span, slots: (CountGuard, Option<AddressGuard>) },
    /// Turn it away with ERROR(BUSY) and this reason.
    Reject { reason: String, guard: CountGuard },
}

impl Admitted {
    async fn run<S: SplitStream>(self, stream: S, peer: SocketAddr, shared: Arc<Shared>) {
        match self {
            Self::Serve { conn, span, slots } => serve(stream, peer, conn, span, shared, slots).await,
            Self::Reject { reason, guard } => reject_busy(stream, reason, guard).await,
        }
    }
}

/// Runs the TLS handshake when the node serves TLS, then serves the connection or turns it
/// away as [`admit`] decided. A handshake that fails or takes longer than the session's
/// handshake timeout drops the connection (logged at debug).
async fn start(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, admitted: Admitted) {
    let _ = stream.set_nodelay(true);
    #[cfg(feature = "tls")]
    if let Some(config) = shared.tls.clone() {
        let limit = Duration::from_micros(shared.session.handshake_timeout.as_micros());
        match tokio::time::timeout(limit, rela_client::tls::accept_session(stream, &config)).await {
            Ok(Ok((rd, wr))) => admitted.run(crate::stream::Tls::new(rd, wr), peer, shared).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
        return;
    }
    admitted.run(stream, peer, shared).await;
}

/// The BUSY reason for an address throttled after failed AUTHs: `retry after N ms`, rounded up.
pub(crate) fn throttled_reason(wait: Duration) -> String {
    let ms = wait.as_micros().div_ceil(1000);
    format!("too many failed AUTHs from this address; retry after {ms} ms")
}

/// Turns a connection away with ERROR(BUSY) and `reason`; past `max_sessions` connections
/// being turned away at once, just closes it.
fn reject(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    reason: String,
) {
    if shared.rejecting.fetch_add(1, Ordering::AcqRel) < shared.max_sessions {
        let guard = CountGuard(shared.clone(), |s| &s.rejecting);
        tasks.spawn(start(stream, peer, shared.clone(), Admitted::Reject { reason, guard }));
    } else {
        // Already turning many away: just close.
        shared.rejecting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends one ERROR(BUSY) with seq 0 and closes.
async fn reject_busy<S: SplitStream>(mut stream: S, reason: String, _guard: CountGuard) {
    let mut buf = [0u8; 256];
    let m = ErrorMsg { code: ErrorCode::BUSY, request_kind: Kind(0), reason: &reason };
    let frame = m
        .emit(&mut buf[HEADER_LEN..])
        .ok()
        .and_then(|len| emit_frame::<FastCrc32>(&mut buf, Kind::ERROR, ErrorMsg::flags(), 0, len).ok());
    if let Some(n) = frame {
        let _ = stream.write_all(&buf[..n]).await;
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
    linger(&mut stream).await;
}

/// Reads and discards until EOF, an error or [`LINGER`].
async fn linger<R: AsyncRead + Unpin>(r: &mut R) {
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = r.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The connection's write half: the writer's, lent to the PING fast path when it is idle.
type SharedWriter<W> = Arc<AsyncMutex<W>>;

/// Serves one connection: the writer half runs here, the reader in its own task.
async fn serve<S: SplitStream>(
    stream: S,
    peer: SocketAddr,
    conn: ConnId,
    span: Span,
    shared: Arc<Shared>,
    _slots: (CountGuard, Option<AddressGuard>),
) {
    let (rd, wr) = stream.split();
    let wr: SharedWriter<S::Write> = Arc::new(AsyncMutex::new(wr));
    let (reply_tx, mut replies) = mpsc::unbounded_channel();
    let session = Session::new(shared.session.clone(), rand::random(), rand::random(), shared.clock.now());
    let state = Arc::new(ConnState::new(session));
    let open =
        Command::Open { conn, peer, span: span.clone(), state: state.clone(), replies: reply_tx.clone() };
    if shared.engine.send(open).is_err() {
        return;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let wishes = ReadWishes::default();
    let reader = Reader {
        rd: BufReader::with_capacity(READ_BUFFER, rd),
        conn,
        span: span.clone(),
        shared: shared.clone(),
        state: state.clone(),
        depth: Arc::new(Semaphore::new(shared.depth)),
        fast: reply_tx,
        wr: wr.clone(),
        wishes: wishes.clone(),
    };
    let reader = AbortOnDrop(tokio::spawn(reader.run(stop_rx)));

    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    // The session's latest deadline, and whether the timer is armed (at that deadline or an
    // earlier one).
    let mut deadline: Option<rela_core::time::Instant> = None;
    let mut armed = false;
    let mut batch: Vec<Reply> = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            reply = replies.recv() => {
                let Some(reply) = reply else { break };
                batch.push(reply);
                while batch.len() < WRITE_BATCH {
                    match replies.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                compress::compress_replies(&mut batch, &wishes);
                // READ data is sent from the backend's memory: stop if the engine takes it back.
                let written = {
                    let mut socket = wr.lock().await;
                    let write = write_replies(&mut *socket, &batch);
                    tokio::pin!(write);
                    loop {
                        tokio::select! {
                            r = &mut write => break r,
                            () = state.writer_stopped() => break Err(io::Error::other("READ data taken back")),
                            // A peer that does not take what is written still has a session
                            // timer. Its deadline may have moved with requests answered
                            // meanwhile (their replies queue behind this write), so ask the
                            // session; once it has passed, the engine ends the session and
                            // takes back READ data lent to this writer.
                            () = &mut timer, if armed => {
                                let now = shared.clock.now();
                                match state.deadline() {
                                    Some(at) if at > now => timer.as_mut().reset(shared.clock.deadline(at)),
                                    Some(_) => {
                                        armed = false;
                                        let _ = shared.engine.send(Command::Timeout { conn, now });
                                    }
                                    None => armed = false,
                                }
                            }
                        }
                    }
                };
                // Everything in the batch is out (or the connection is broken): release the
                // pipeline slots and buffers, then let the fast path know.
                let n = batch.len();
                let last = batch.last().map(|r| r.outcome);
                let closed = batch.iter().any(|r| r.outcome.closed);
                batch.clear();
                state.inflight.fetch_sub(n, Ordering::AcqRel);
                if let Err(error) = written {
                    tracing::debug!(parent: &span, %error, "write failed");
                    let _ = shared.engine.send(Command::Abort { conn });
                    break;
                }
                if let Some(outcome) = last {
                    // A later deadline waits for the armed timer; an earlier one re-arms it.
                    let earlier = matches!((outcome.timeout, deadline), (Some(new), Some(old)) if new < old);
                    deadline = outcome.timeout;
                    match outcome.timeout {
                        Some(at) if !armed || earlier => {
                            timer.as_mut().reset(shared.clock.deadline(at));
                            armed = true;
                        }
                        Some(_) => {}
                        None => armed = false,
                    }
                }
                if closed {
                    break;
                }
            }
            () = &mut timer, if armed => {
                let now = shared.clock.now();
                match deadline {
                    // The deadline moved on since the timer was set: wait for the new one.
                    Some(at) if at > now => timer.as_mut().reset(shared.clock.deadline(at)),
                    _ => {
                        armed = false;
                        if shared.engine.send(Command::Timeout { conn, now }).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = wr.lock().await.shutdown().await;
    // The reader lingers at most LINGER; dropping `reader` aborts it if this task is cancelled.
    let mut reader = reader;
    let _ = (&mut reader.0).await;
}

/// Writes the frames of `batch` in order: one write for one reply, a vectored write for more.
/// A non-blocking attempt comes first (over TCP); only what the socket does not take at once
/// waits, for at most [`WRITE_STALL`].
async fn write_replies<W: TryWrite>(wr: &mut W, batch: &[Reply]) -> io::Result<()> {
    // Each reply: its frames, then READ data sent from the backend's memory, if any.
    let mut slices: [IoSlice<'_>; 2 * WRITE_BATCH] = [IoSlice::new(&[]); 2 * WRITE_BATCH];
    let mut count = 0;
    let pieces = batch.iter().flat_map(|r| {
        [r.out.as_slice().get(..r.len).unwrap_or(&[]), r.data.as_ref().map_or(&[][..], |d| d.as_slice())]
    });
    for piece in pieces.filter(|p| !p.is_empty()) {
        if let Some(slot) = slices.get_mut(count) {
            *slot = IoSlice::new(piece);
            count += 1;
        }
    }
    let mut bufs = &mut slices[..count];
    let first = match &*bufs {
        [] => return Ok(()),
        [one] => wr.try_write(one),
        more => wr.try_write_vectored(more),
    };
    match first {
        Ok(n) => IoSlice::advance_slices(&mut bufs, n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    if bufs.is_empty() {
        return Ok(());
    }
    let rest = async {
        while !bufs.is_empty() {
            let n = wr.write_vectored(bufs).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        // TLS holds what it took until flushed; TCP has nothing to flush.
        wr.flush().await
    };
    tokio::time::timeout(WRITE_STALL, rest).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Why [`read_frame`] stopped.
enum ReadError {
    Io(io::Error),
    Frame(FrameError),
    /// A WRITE read straight into its buffer failed, and the engine has been told: the reader
    /// stops without another word.
    Told,
}

/// What [`read_frame`] read.
#[allow(clippy::large_enum_variant, reason = "small payloads travel inline; see `Payload`")]
enum Got {
    /// A frame for the engine, with the pipeline slot it holds.
    Frame(HeaderRepr, Payload, Option<PoolBuf>, Option<EngineTx>, OwnedSemaphorePermit),
    /// A WRITE whose data went straight into the held lease's buffer, CRC checked; not yet
    /// acknowledged. The reader acknowledges it itself when it can ([`fast_write_ack`]),
    /// otherwise the engine does.
    Written(DirectWrite, OwnedSemaphorePermit),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A connection's reader task.
struct Reader<R, W> {
    rd: BufReader<R>,
    conn: ConnId,
    span: Span,
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    /// `pipeline_depth` permits: one per request between the reader and the socket.
    depth: Arc<Semaphore>,
    /// The writer's queue, for fast-path replies the socket did not take at once.
    fast: ReplyTx,
    /// The socket's write half, for fast-path replies.
    wr: SharedWriter<W>,
    /// Whether each READ on its way wants its answer compressed, for the writer.
    wishes: ReadWishes,
}

impl<R: AsyncRead + Send + Unpin, W: TryWrite> Reader<R, W> {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Self { mut rd, conn, span, shared, state, depth, fast, wr, wishes } = self;
        // Made once: the writer asks the reader to stop at most once, and the loop ends then.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        // A buffer the engine lent for WRITEs, kept while they keep coming.
        let mut held: Option<Granted> = None;
        // Whether the session has been seen ready (the payload cap is small until then).
        let mut ready = false;
        loop {
            let ticket = match depth.clone().try_acquire_owned() {
                Ok(t) => t,
                Err(_) => {
                    // Waiting for the writer (the peer is not taking replies): a lease is not
                    // held while waiting, so the engine never waits on this wait.
                    release(&mut held, true);
                    tokio::select! {
                        biased;
                        _ = &mut stopped => break,
                        t = depth.clone().acquire_owned() => t.expect("the depth semaphore is never closed"),
                    }
                }
            };
            let read = tokio::select! {
                biased;
                _ = &mut stopped => break,
                r = read_frame(&mut rd, &shared, &state, &mut ready, conn, ticket, &mut held) => r,
            };
            let now = shared.clock.now();
            let (cmd, last) = match read {
                Ok(Got::Written(write, ticket)) => {
                    // `direct_write` returns `Written` only with the lease held.
                    let Some(g) = held.as_ref() else { break };
                    match fast_write_ack(&state, &wr, &write, now) {
                        Some(here) => {
                            if !hand_on(&fast, here, ticket) {
                                break;
                            }
                        }
                        None => g.done.written(write, WriteOutcome::Written(now), Some(ticket)),
                    }
                    continue;
                }
                Err(ReadError::Told) => break,
                Ok(Got::Frame(header, payload, out, done, ticket)) => {
                    if let Payload::Inline(p) = &payload
                        && let Some(here) = fast_ping(&state, &wr, header, p, now)
                    {
                        if !hand_on(&fast, here, ticket) {
                            break;
                        }
                        continue;
                    }
                    if header.kind == Kind::READ {
                        let want = header.flags.contains(Flags::COMPRESSED);
                        wishes.lock().unwrap_or_else(PoisonError::into_inner).push_back(want);
                    }
                    state.inflight.fetch_add(1, Ordering::AcqRel);
                    let job = Job { header, payload, out, done, ticket };
                    (Command::Frame { conn, now, job }, false)
                }
                Err(ReadError::Frame(error)) => (Command::FrameError { conn, now, error }, true),
                Err(ReadError::Io(error)) => {
                    // EOF between frames, EOF inside a frame, or a reset: the transport is gone.
                    tracing::debug!(parent: &span, %error, "connection ended");
                    (Command::Abort { conn }, true)
                }
            };
            if shared.engine.send(cmd).is_err() || last {
                break;
            }
        }
        // The lease goes back before anything else (mid-frame if the loop stopped inside one).
        drop(held);
        // The writer's queue must close once the engine lets go of the session.
        drop(fast);
        drop(wr);
        linger(&mut rd).await;
    }
}

/// Reads one frame: the header is validated before any payload byte is read; a small payload
/// is read inline, a large one into a pooled buffer (waiting for budget first), with its CRC
/// checked piece by piece. Also reserves the response buffer. A WRITE goes straight into its
/// buffer when the engine lends it ([`direct_write`]).
///
/// A lease on a buffer (`held`) is kept for the WRITEs into that buffer that follow; any other
/// frame gives it back first, so the engine sees the lease end before that frame.
///
/// Until the session is ready, the payload cap is [`HANDSHAKE_MAX_PAYLOAD`] ([`payload_cap`])
/// and no READ response buffer is reserved, so a peer that has not authenticated takes nothing
/// from the node's pool.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    state: &ConnState,
    ready: &mut bool,
    conn: ConnId,
    ticket: OwnedSemaphorePermit,
    held: &mut Option<Granted>,
) -> Result<Got, ReadError> {
    // Between frames the engine may ask for a held lease back (the session's timer expired,
    // the node is shutting down): give it back, then wait for the frame as usual. Waiting
    // with `fill_buf` consumes nothing, so giving up the wait loses no bytes.
    if let Some(cancel) = held.as_ref().map(|g| g.cancel.clone()) {
        match unless_asked_back(Some(&cancel), rd.fill_buf()).await {
            Some(filled) => drop(filled?),
            None => release(held, true),
        }
    }
    let mut raw = [0u8; HEADER_LEN];
    or_asked_back(held, rd.read_exact(&mut raw)).await?;
    let len_field = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let cap = payload_cap(shared, state, ready, len_field).await;
    let parsed = RawHeader::view(&raw)
        .and_then(|view| Ok((view, HeaderRepr::parse(view, cap)?)))
        .map_err(|e| ReadError::Frame(e.into()));
    let more_writes = matches!(&parsed, Ok((_, h)) if h.kind == Kind::WRITE && h.flags == Flags::NONE
        && h.len as usize > INLINE_PAYLOAD);
    if !more_writes {
        release(held, true);
    }
    let (view, header) = parsed?;
    let len = header.len as usize;
    let mut crc = FrameCrc::<FastCrc32>::new(view);
    if len <= INLINE_PAYLOAD {
        let mut buf = [0u8; INLINE_PAYLOAD];
        rd.read_exact(&mut buf[..len]).await?;
        crc.update(&buf[..len]);
        crc.verify(&header).map_err(ReadError::Frame)?;
        if compress::is_compressed_data(&header)
            && let Some((plain, payload)) =
                compress::inflate(state, &shared.pool, shared.max_payload, header, &buf[..len]).await
        {
            return Ok(Got::Frame(plain, payload, None, None, ticket));
        }
        let read_len = match msg::Read::parse(&buf[..len]) {
            Ok(r) if header.kind == Kind::READ && r.len <= shared.max_payload => r.len as usize,
            _ => 0,
        };
        // Room for the response: READ data plus header, or a small frame (an ERROR at most).
        // With a shared arena the data is sent from the buffer itself, and the writer tells the
        // engine when it has been sent.
        // Nothing is reserved before the session is ready: it answers such a READ with a
        // small ERROR (and should the session become ready meanwhile, the engine makes room
        // for the data itself).
        let (out, done) = if HEADER_LEN + read_len <= INLINE_OUT || !is_ready(state, ready) {
            (None, None)
        } else if shared.direct {
            (None, Some(shared.engine.clone()))
        } else {
            (Some(shared.pool.get(HEADER_LEN + read_len).await), None)
        };
        return Ok(Got::Frame(header, Payload::Inline(buf), out, done, ticket));
    }
    let mut start = 0;
    let mut prefix = [0u8; WRITE_PREFIX_LEN];
    if shared.direct && header.kind == Kind::WRITE && header.flags == Flags::NONE {
        or_asked_back(held, rd.read_exact(&mut prefix)).await?;
        crc.update(&prefix);
        let data_len = (len - WRITE_PREFIX_LEN) as u64;
        let (handle, offset) = match msg::Write::parse(&prefix) {
            Ok(w) => (w.handle, w.offset),
            Err(_) => (0, u64::MAX),
        };
        // The held lease takes the WRITEs into its buffer that stay inside it; any other goes
        // back to the engine to decide.
        let fits = |g: &Granted| {
            g.first.handle == handle
                && offset.checked_add(data_len).is_some_and(|end| end <= g.lease.len() as u64)
        };
        if !held.as_ref().is_some_and(fits) {
            release(held, true);
            *held = lease(shared, conn, header, prefix).await?;
        }
        if let Some(g) = held.as_ref() {
            let write = DirectWrite { id: g.first.id, handle, offset, len: data_len, seq: header.seq };
            return direct_write(rd, shared, header, crc, held, write, ticket).await;
        }
        // Not lent (the WRITE will fail, or the node is shutting down): the usual way, with
        // the prefix already read.
        start = WRITE_PREFIX_LEN;
    }
    let mut buf = shared.pool.get(len).await;
    buf.as_mut_slice()[..start].copy_from_slice(&prefix[..start]);
    for piece in buf.as_mut_slice()[start..len].chunks_mut(READ_PIECE) {
        rd.read_exact(piece).await?;
        crc.update(piece);
    }
    crc.verify(&header).map_err(ReadError::Frame)?;
    if compress::is_compressed_data(&header) {
        // Out of the pool while the plain payload is reserved (see `compress::inflate`).
        let wire = buf.as_slice()[..len].to_vec();
        drop(buf);
        if let Some((plain, payload)) =
            compress::inflate(state, &shared.pool, shared.max_payload, header, &wire).await
        {
            return Ok(Got::Frame(plain, payload, None, None, ticket));
        }
        // Refused: the session answers the frame as it came.
        buf = shared.pool.get(len).await;
        buf.as_mut_slice()[..len].copy_from_slice(&wire);
    }
    Ok(Got::Frame(header, Payload::Pooled(buf), None, None, ticket))
}

/// Whether the session is ready; remembered in `ready` once it is (a session never goes back).
fn is_ready(state: &ConnState, ready: &mut bool) -> bool {
    if !*ready {
        *ready = state.lock().is_ready();
    }
    *ready
}

/// The payload cap for a frame whose header says `len`: the node's `max_payload` once the
/// session is ready, [`HANDSHAKE_MAX_PAYLOAD`] before (the core's [`Session::max_payload`]).
///
/// The cap that applies is the one in force once the node has handled every earlier frame of
/// the connection, as if frames were read one after another: a large header read while the
/// request that makes the session ready (HELLO or AUTH) is still in flight waits for it.
async fn payload_cap(shared: &Shared, state: &ConnState, ready: &mut bool, len: u32) -> u32 {
    let small = shared.max_payload.min(HANDSHAKE_MAX_PAYLOAD);
    if len <= small {
        return small;
    }
    loop {
        // In this order: with nothing in flight, nothing can make the session ready later.
        let idle = state.inflight.load(Ordering::Acquire) == 0;
        if is_ready(state, ready) {
            return shared.max_payload;
        }
        if idle {
            return small;
        }
        // Only while a handshake request is in flight; the handshake deadline bounds it.
        tokio::time::sleep(HANDSHAKE_POLL).await;
    }
}

/// Runs `read`, a read inside a frame. If the engine asks for a held lease back meanwhile, the
/// lease goes back mid-frame and the reader stops.
async fn or_asked_back<T>(
    held: &mut Option<Granted>,
    read: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, ReadError> {
    let cancel = held.as_ref().map(|g| g.cancel.clone());
    match unless_asked_back(cancel.as_deref(), read).await {
        Some(r) => Ok(r?),
        None => {
            release(held, false);
            Err(ReadError::Told)
        }
    }
}

/// Runs `read` unless `cancel` (a held lease's) is notified first: `None` then.
async fn unless_asked_back<T>(
    cancel: Option<&Notify>,
    read: impl std::future::Future<Output = io::Result<T>>,
) -> Option<io::Result<T>> {
    let Some(cancel) = cancel else {
        return Some(read.await);
    };
    tokio::select! {
        biased;
        () = cancel.notified() => None,
        r = read => Some(r),
    }
}

/// Gives a held lease back: `clean` between frames, otherwise mid-frame.
fn release(held: &mut Option<Granted>, clean: bool) {
    if let Some(g) = held.take() {
        g.done.end(clean);
    }
}

/// Asks the engine to lend the buffer a WRITE's data goes to. `None`: read the frame as usual.
async fn lease(
    shared: &Shared,
    conn: ConnId,
    header: HeaderRepr,
    prefix: [u8; WRITE_PREFIX_LEN],
) -> Result<Option<Granted>, ReadError> {
    let gone = || ReadError::Io(io::Error::other("the engine has stopped"));
    let (reply, answer) = oneshot::channel();
    let done = shared.engine.clone();
    shared.engine.send(Command::Lease { conn, header, prefix, done, reply }).map_err(|_| gone())?;
    answer.await.map_err(|_| gone())
}

/// Reads a WRITE's data from the socket straight into the held lease (at `write.offset`, which
/// with its length lies inside the lease), checking the CRC piece by piece, and tells the
/// engine, which acknowledges it (or closes the session on a bad CRC). If the engine asks for
/// the lease back meanwhile, or the transport fails, the lease goes back mid-frame.
async fn direct_write<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    shared: &Shared,
    header: HeaderRepr,
    mut crc: FrameCrc<FastCrc32>,
    held: &mut Option<Granted>,
    write: DirectWrite,
    ticket: OwnedSemaphorePermit,
) -> Result<Got, ReadError> {
    // `read_frame` checked that the range lies inside the lease, so both ends fit.
    let range = usize::try_from(write.offset).ok().zip(usize::try_from(write.offset + write.len).ok());
    let mut filled = false;
    if let Some(g) = held.as_mut()
        && let Some(dst) = range.and_then(|(from, to)| g.lease.as_mut_slice().get_mut(from..to))
    {
        let fill = async {
            for piece in dst.chunks_mut(READ_PIECE) {
                rd.read_exact(piece).await?;
                crc.update(piece);
            }
            Ok(())
        };
        filled = matches!(unless_asked_back(Some(&g.cancel), fill).await, Some(Ok(())));
    }
    let Some(g) = held.as_ref().filter(|_| filled) else {
        // Asked back, or the transport failed: the stream stops inside this frame.
        release(held, false);
        return Err(ReadError::Told);
    };
    let now = shared.clock.now();
    match crc.verify(&header) {
        Ok(()) => {
            shared.direct_writes.fetch_add(1, Ordering::Relaxed);
            Ok(Got::Written(write, ticket))
        }
        Err(error) => {
            g.done.written(write, WriteOutcome::BadCrc(now, error), Some(ticket));
            release(held, false);
            Err(ReadError::Told)
        }
    }
}

/// A reply the reader writes itself ([`answer_here`]): `None` when the socket took it all,
/// else what is left of it for the writer, counted in flight.
type HereReply = Option<(OutBuf, usize, Outcome)>;

/// Hands what the socket did not take of a reply the reader wrote itself to the writer, holding
/// the request's pipeline slot. `false` if the writer is gone.
fn hand_on(fast: &ReplyTx, here: HereReply, ticket: OwnedSemaphorePermit) -> bool {
    match here {
        Some((out, len, outcome)) => {
            fast.send(Reply { out, len, outcome, data: None, _ticket: Some(ticket) }).is_ok()
        }
        None => true,
    }
}

/// The PING fast path: serves a well-formed PING on the reader task ([`answer_here`]). `None`
/// sends the frame the normal way.
fn fast_ping<W: TryWrite>(
    state: &ConnState,
    wr: &SharedWriter<W>,
    header: HeaderRepr,
    payload: &[u8; INLINE_PAYLOAD],
    now: rela_core::time::Instant,
) -> Option<HereReply> {
    let payload = payload.get(..header.len as usize)?;
    // Only a request the core answers without the backend: a PING that decodes, no flags.
    if header.kind != Kind::PING
        || header.flags != Flags::NONE
        || !matches!(Request::parse(Kind::PING, payload), Ok(Request::Ping(_)))
    {
        return None;
    }
    answer_here(state, wr, |session| {
        session.handle_frame(now, Frame::from_verified(header, payload), &mut NoBackend).is_ok()
    })
}

/// The direct WRITE's fast path: acknowledges a WRITE whose data is already in the leased
/// buffer on the reader task ([`answer_here`]), as the engine would (`finish_write` checks the
/// WRITE against the session again). `None` leaves it to the engine, which then also handles
/// a WRITE the session no longer takes. Without it, a small WRITE waits for the engine twice
/// (the lease, then the acknowledgement), each time up to a step of a running job.
fn fast_write_ack<W: TryWrite>(
    state: &ConnState,
    wr: &SharedWriter<W>,
    write: &DirectWrite,
    now: rela_core::time::Instant,
) -> Option<HereReply> {
    answer_here(state, wr, |session| session.finish_write(now, write).is_ok())
}

/// Runs `input` on the session on the reader task and answers it from here, when nothing of
/// this connection is in flight (so the answer cannot overtake an earlier response). `input`
/// decides, under the session's lock, exactly as on the engine, with no backend; `false` (or
/// something in flight) gives `None`: the request goes the normal way.
///
/// With the writer idle (nothing in flight, so it has nothing to write), the answer is written
/// to the socket right here, still under the session's lock so nothing else of this connection
/// can be decided and written in between; `Some(None)` then. Whatever the socket does not take
/// at once (or the whole frame, when the session closes or the writer is busy) comes back as
/// `Some(Some(reply))`, counted in flight, for the writer. An answer written here does not
/// tell the writer the session's new idle deadline; the writer's timer then fires at the old
/// one, the engine finds the session not yet expired, and its answer carries the new deadline.
fn answer_here<W: TryWrite>(
    state: &ConnState,
    wr: &SharedWriter<W>,
    input: impl FnOnce(&mut Session) -> bool,
) -> Option<HereReply> {
    // Something in flight: the engine may be holding the session for a long request (a model
    // load, an INFER), and waiting for its lock here would stall this runtime thread.
    if state.inflight.load(Ordering::Acquire) != 0 {
        return None;
    }
    let mut session = state.lock();
    // Checked again under the lock: the engine counts its replies while holding it.
    if !session.is_ready() || state.inflight.load(Ordering::Acquire) != 0 || !input(&mut session) {
        return None;
    }
    let mut out = OutBuf::Inline([0; INLINE_OUT]);
    // A PONG (at most 272 bytes) or a WRITE's acknowledgement (a header) always fits; `drain`
    // would grow the buffer otherwise.
    let mut len = drain(&mut session, &mut NoBackend, &mut out).unwrap_or(0);
    let outcome = Outcome { timeout: session.poll_timeout(), closed: session.is_closed() };
    if let OutBuf::Inline(bytes) = &mut out
        && len > 0
        && !outcome.closed
        && let Ok(socket) = wr.try_lock()
    {
        match bytes.get(..len).map(|frame| socket.try_write(frame)) {
            Some(Ok(n)) if n >= len => return Some(None),
            Some(Ok(n)) => {
                // The rest goes to the writer, in order: nothing else is queued before it.
                bytes.copy_within(n..len, 0);
                len -= n;
            }
            // Would block, or the socket is broken: the writer finds out the same way.
            _ => {}
        }
    }
    state.inflight.fetch_add(1, Ordering::AcqRel);
    Some(Some((out, len, outcome)))
}

/// The backend the reader's fast paths hand the session: the core never calls a backend for a
/// PING or a WRITE's acknowledgement, and every call here fails, so a future change in that
/// would show as errors rather than touch the real backend.
struct NoBackend;

impl GpuBackend for NoBackend {
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new(BackendKind::HOST, "", "", 0, 0)
    }

    fn usage(&self) -> Usage {
        Usage { used: 0, buffers: 0 }
    }

    fn alloc(&mut self, _size: u64) -> Result<BufferId, BackendError> {
        Err(BackendError::Unsupported)
    }

    fn free(&mut self, _id: BufferId) -> Result<(), BackendError> {
        Err(BackendError::Unsupported)
    }

    fn size(&self, _id: BufferId) -> Result<u64, BackendError> {
        Err(BackendError::Unsupported)
    }

    fn write(&mut self, _id: BufferId, _offset: u64, _data: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::Unsupported)
    }

    fn read(&mut self, _id: BufferId, _offset: u64, _out: &mut [u8]) -> Result<(), BackendError> {
        Err(BackendError::Unsupported)
    }

    fn copy(
        &mut self,
        _src: BufferId,
        _src_offset: u64,
        _dst: BufferId,
        _dst_offset: u64,
        _len: u64,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported)
    }

    fn fill(&mut self, _id: BufferId, _offset: u64, _len: u64, _value: u8) -> Result<(), BackendError> {
        Err(BackendError::Unsupported)
    }

    fn dispatch(&mut self, _call: &KernelCall) -> Result<(), BackendError> {
        Err(BackendError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rela_backend_host::OwnedHostBackend;
    use rela_client::Client;
    use rela_core::wire::ErrorCode;

    use crate::{Node, NodeConfig};

    /// PONGs the reader writes itself keep the session alive: the writer's timer, armed at an
    /// older deadline, fires, the engine finds the session active and the timer moves on. A
    /// session that then goes quiet still times out.
    /// A node on `backend` whose sessions time out after 600 ms without input, and a client.
    async fn node_with_idle_timeout(backend: impl Into<crate::NodeBackend>) -> (crate::NodeHandle, Client) {
        let mut config = NodeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            discovery: None,
            ..NodeConfig::default()
        };
        config.session.idle_timeout = rela_core::time::Duration::from_millis(600);
        let node = Node::start(config, backend).await.expect("node starts");
        let client = Client::connect(node.local_addr(), None).await.expect("connect");
        (node, client)
    }

    /// After 1.5 s of quiet (over two idle timeouts) the session is closed, and the node ends
    /// with nothing allocated.
    async fn quiet_session_times_out(node: crate::NodeHandle, client: &mut Client) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let error = client.ping().await.expect_err("a quiet session is closed");
        assert_eq!(error.code(), Some(ErrorCode::TIMEOUT), "{error}");
        let usage = node.shutdown().await.expect("shutdown");
        assert_eq!(usage.used, 0);
    }

    #[tokio::test]
    async fn fast_path_pings_extend_the_idle_deadline() {
        let backend: Box<dyn rela_core::backend::GpuBackend + Send> =
            Box::new(OwnedHostBackend::with_capacity(1 << 20));
        let (node, mut client) = node_with_idle_timeout(backend).await;
        // 12 × 150 ms: three idle timeouts' worth of time, never 600 ms quiet.
        for _ in 0..12 {
            client.ping().await.expect("pings keep the session alive");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        quiet_session_times_out(node, &mut client).await;
    }

    /// WRITEs the reader acknowledges itself (data straight into a leased buffer, nothing in
    /// flight) keep the session alive the same way, and what they wrote reads back.
    #[tokio::test]
    async fn writes_acknowledged_by_the_reader_extend_the_idle_deadline() {
        // Over the host arena, WRITE data goes straight into the buffer.
        let backend = crate::NodeBackend::host::<{ rela_backend_host::MAX_BLOCKS }>(1 << 20).expect("arena");
        let (node, mut client) = node_with_idle_timeout(backend).await;
        let h = client.alloc(64 << 10).await.expect("alloc");
        // 12 × 150 ms of WRITEs only: three idle timeouts' worth of time, never 600 ms quiet.
        for round in 0..12u8 {
            let data = vec![round; 4096];
            client.write(h, u64::from(round) * 4096, &data).await.expect("writes keep the session alive");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(node.direct_writes() >= 12, "{} direct WRITEs", node.direct_writes());
        let back = client.read(h, 0, 12 * 4096).await.expect("read");
        assert!(back.chunks(4096).enumerate().all(|(i, c)| c.iter().all(|&b| usize::from(b) == i)));
        quiet_session_times_out(node, &mut client).await;
    }

    /// A PING written by the reader and the responses the writer sends stay in request order
    /// when they alternate quickly (the fast path only runs with nothing in flight).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_between_writes_and_reads_stay_in_order() {
        let config = NodeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            discovery: None,
            ..NodeConfig::default()
        };
        let backend = Box::new(OwnedHostBackend::with_capacity(8 << 20));
        let node = Node::start(config, backend).await.expect("node starts");
        let mut client = Client::connect(node.local_addr(), None).await.expect("connect");
        let h = client.alloc(1 << 20).await.expect("alloc");
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        for round in 0..50 {
            client.ping().await.expect("ping");
            client.write(h, 0, &data[..4096 * (round % 7 + 1)]).await.expect("write");
            client.ping().await.expect("ping");
            let back = client.read(h, 0, 4096).await.expect("read");
            assert_eq!(back, data[..4096]);
        }
        client.close().await.expect("bye");
        let usage = node.shutdown().await.expect("shutdown");
        assert_eq!(usage.used, 0);
    }
}
