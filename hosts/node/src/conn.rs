//! The accept loop and the per-connection tasks.
//!
//! Each connection has a reader task and a writer (the connection task itself):
//!
//! ```text
//!          pool of `pipeline_depth` slots
//!   ┌──────────────────────────────────────────┐
//!   ▼                                          │
//! reader ──Command::Frame(slot)──► engine ──Reply(slot)──► writer ──► socket
//!   ▲ socket                                        (in order)
//! ```
//!
//! The reader validates the header before reading the payload, reads the payload into a
//! recycled slot and checks the CRC while the bytes are hot; it keeps reading while earlier
//! requests are served, up to the number of slots. The writer writes replies in order, arms the
//! session timer the engine reports, and closes the connection when the session closes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rela_client::FastCrc32;
use rela_core::config::HEADER_LEN;
use rela_core::wire::msg::{ErrorMsg, Message};
use rela_core::wire::{ErrorCode, FrameCrc, FrameError, HeaderRepr, Kind, RawHeader, emit_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, Span};

use crate::engine::{Clock, Command, ConnId, Reply, Slot};
use crate::throttle::AuthThrottle;

/// How long a closing connection keeps reading (and discarding) so that its last frames are not
/// destroyed by a reset (closing a socket with unread input sends RST).
const LINGER: Duration = Duration::from_secs(2);
/// Read buffer in front of each socket: headers and small requests take one syscall for many.
const READ_BUFFER: usize = 64 * 1024;
/// Payloads are read and checksummed in pieces of this size.
const READ_PIECE: usize = 256 * 1024;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: mpsc::Sender<Command>,
    pub(crate) clock: Clock,
    pub(crate) throttle: Arc<Mutex<AuthThrottle>>,
    pub(crate) max_payload: u32,
    pub(crate) depth: usize,
    pub(crate) max_sessions: usize,
    /// Connections being served (counted against `max_sessions`).
    pub(crate) live: AtomicUsize,
    /// Connections being turned away with BUSY.
    pub(crate) rejecting: AtomicUsize,
    pub(crate) next_conn: AtomicU64,
}

/// Decrements a counter when dropped.
struct CountGuard(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl Drop for CountGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::AcqRel);
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

fn admit(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
    if shared.live.load(Ordering::Acquire) >= shared.max_sessions {
        if shared.rejecting.fetch_add(1, Ordering::AcqRel) < shared.max_sessions {
            tracing::info!(%peer, "session limit reached; sending BUSY");
            let guard = CountGuard(shared.clone(), |s| &s.rejecting);
            tasks.spawn(reject_busy(stream, guard));
        } else {
            // Already turning many away: just close.
            shared.rejecting.fetch_sub(1, Ordering::AcqRel);
        }
        return;
    }
    shared.live.fetch_add(1, Ordering::AcqRel);
    let guard = CountGuard(shared.clone(), |s| &s.live);
    let delay = shared
        .throttle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(peer.ip(), std::time::Instant::now());
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", %peer, id = conn);
    tasks.spawn(serve(stream, peer, conn, shared.clone(), delay, guard).instrument(span));
}

/// Sends one ERROR(BUSY) with seq 0 and closes.
async fn reject_busy(mut stream: TcpStream, _guard: CountGuard) {
    let mut buf = [0u8; 256];
    let m = ErrorMsg { code: ErrorCode::BUSY, request_kind: Kind(0), reason: "node at its session limit" };
    let frame = m
        .emit(&mut buf[HEADER_LEN..])
        .ok()
        .and_then(|len| emit_frame::<FastCrc32>(&mut buf, Kind::ERROR, ErrorMsg::flags(), 0, len).ok());
    if let Some(n) = frame {
        let _ = stream.write_all(&buf[..n]).await;
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

/// Serves one connection: the writer half runs here, the reader in its own task.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    shared: Arc<Shared>,
    delay: Duration,
    _live: CountGuard,
) {
    if !delay.is_zero() {
        tracing::info!(?delay, "delaying connection after failed AUTH attempts from this address");
        tokio::time::sleep(delay).await;
    }
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let (reply_tx, mut replies) = mpsc::unbounded_channel();
    let open = Command::Open { conn, peer, span: Span::current(), replies: reply_tx };
    if shared.engine.send(open).await.is_err() {
        return;
    }
    let (pool_tx, pool_rx) = mpsc::channel(shared.depth);
    for _ in 0..shared.depth {
        let _ = pool_tx.try_send(Slot::default());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = AbortOnDrop(tokio::spawn(
        read_loop(BufReader::with_capacity(READ_BUFFER, rd), conn, shared.clone(), pool_rx, stop_rx)
            .instrument(Span::current()),
    ));

    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed = false;
    loop {
        tokio::select! {
            reply = replies.recv() => {
                let Some(reply) = reply else { break };
                let (written, outcome) = match reply {
                    Reply::Frame { slot, outcome } => {
                        let r = wr.write_all(slot.output.get(..slot.out_len).unwrap_or(&[])).await;
                        // The pool has room for every slot, so this cannot fail while the
                        // reader is alive; if it is gone the slot is simply dropped.
                        let _ = pool_tx.try_send(slot);
                        (r, outcome)
                    }
                    Reply::Control { bytes, outcome } => (wr.write_all(&bytes).await, outcome),
                };
                if let Err(error) = written {
                    tracing::debug!(%error, "write failed");
                    let _ = shared.engine.send(Command::Abort { conn }).await;
                    break;
                }
                match outcome.timeout {
                    Some(at) => {
                        timer.as_mut().reset(shared.clock.deadline(at));
                        armed = true;
                    }
                    None => armed = false,
                }
                if outcome.closed {
                    break;
                }
            }
            () = &mut timer, if armed => {
                armed = false;
                let now = shared.clock.now();
                if shared.engine.send(Command::Timeout { conn, now }).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = wr.shutdown().await;
    // The reader lingers at most LINGER; dropping `reader` aborts it if this task is cancelled.
    let mut reader = reader;
    let _ = (&mut reader.0).await;
}

/// Why [`read_frame`] stopped.
enum ReadError {
    Io(io::Error),
    Frame(FrameError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

async fn read_loop(
    mut rd: BufReader<OwnedReadHalf>,
    conn: ConnId,
    shared: Arc<Shared>,
    mut pool: mpsc::Receiver<Slot>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut slot = tokio::select! {
            biased;
            _ = stop.changed() => break,
            slot = pool.recv() => match slot {
                Some(slot) => slot,
                None => break,
            },
        };
        let read = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = read_frame(&mut rd, &mut slot.input, shared.max_payload) => r,
        };
        let now = shared.clock.now();
        let (cmd, last) = match read {
            Ok(header) => (Command::Frame { conn, now, header, slot }, false),
            Err(ReadError::Frame(error)) => (Command::FrameError { conn, now, error }, true),
            Err(ReadError::Io(error)) => {
                // EOF between frames, EOF inside a frame, or a reset: the transport is gone.
                tracing::debug!(%error, "connection ended");
                (Command::Abort { conn }, true)
            }
        };
        if shared.engine.send(cmd).await.is_err() || last {
            break;
        }
    }
    linger(&mut rd).await;
}

/// Reads one frame: the header is validated before any payload byte is read, the payload lands
/// in `buf[..len]` (grown, never shrunk) and its CRC is checked piece by piece.
async fn read_frame(
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    max_payload: u32,
) -> Result<HeaderRepr, ReadError> {
    let mut raw = [0u8; HEADER_LEN];
    rd.read_exact(&mut raw).await?;
    let view = RawHeader::view(&raw).map_err(|e| ReadError::Frame(e.into()))?;
    let header = HeaderRepr::parse(view, max_payload).map_err(|e| ReadError::Frame(e.into()))?;
    let len = header.len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let mut crc = FrameCrc::<FastCrc32>::new(view);
    for piece in buf[..len].chunks_mut(READ_PIECE) {
        rd.read_exact(piece).await?;
        crc.update(piece);
    }
    crc.verify(&header).map_err(ReadError::Frame)?;
    Ok(header)
}
