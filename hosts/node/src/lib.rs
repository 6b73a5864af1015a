//! # rela-node
//!
//! The tokio RELA relay node: a thin driver of `rela-core`'s sans-I/O
//! [`Session`](rela_core::session::Session).
//!
//! # Architecture
//!
//! - One **engine thread** (a plain `std::thread`) owns the `Box<dyn GpuBackend + Send>` and
//!   every session. Backend calls (which may block on a device) never run on the async
//!   runtime. Light requests run on the engine thread; requests that may run long (DISPATCH,
//!   INFER, MODEL_LOAD, MODEL_COMMIT, COPY, FILL) run as **jobs** on threads of their own that
//!   borrow the backend a step of about a millisecond at a time, and the engine serves every
//!   waiting light request between two steps and gives the next step to the least-served job
//!   (`engine/jobs.rs`, `engine/sched.rs`; `docs/ARCHITECTURE.md`). No session can stall
//!   another. A panic ends the session it happened in; one the engine cannot contain stops
//!   the node ([`NodeHandle::stopped`]).
//! - Repository models are held once for every session that loads them (`shared_models.rs`,
//!   [`NodeConfig::preload`]); each session's working memory is charged to its quota.
//! - Each connection has a reader task and a writer task. The reader checks each header against
//!   the session's payload cap *before* reading the payload, reads a large payload straight
//!   from the socket into a buffer from the node-wide pool, verifies the CRC
//!   ([`FastCrc32`](rela_client::FastCrc32)) and hands the frame to the engine; it keeps reading
//!   while earlier requests are served (up to [`NodeConfig::pipeline_depth`] per connection).
//!   The engine runs the frame through the session and drains the response frames into a small
//!   inline buffer, or for a READ into the pooled buffer the reader reserved (READ data goes
//!   from the backend straight into it); the writer sends them in order, batching replies that
//!   queue up into one vectored write, and returns the buffers to the pool.
//! - Direct transfers: over [`NodeBackend::host`] (what `vram-relay serve --backend host`
//!   runs), the reader sends a WRITE's header and 12-byte prefix to the engine first; when the
//!   session accepts it, the engine lends the reader the buffer's range of host memory, and the
//!   reader reads the data from the socket straight into place (CRC checked as it goes), keeping
//!   the buffer for the WRITEs into it that follow. For a READ the engine computes the
//!   response's CRC over the bytes where they lie and the writer sends them from there. While
//!   a lease is out, the session runs nothing that could write or free a buffer (see
//!   `arena.rs` for why this is sound). Other backends, and WRITEs the session refuses, take
//!   the pooled path. [`NodeHandle::direct_writes`] counts the direct WRITEs.
//! - Memory: every other payload and READ-response buffer comes from one pool bounded by
//!   [`NodeConfig::buffer_budget`] (in use plus cached). Readers wait for room before reading a
//!   payload, so many connections with large frames back up into TCP instead of growing the
//!   node; an idle connection holds no payload buffer. Steady traffic reuses pooled buffers and
//!   allocates nothing per frame. [`NodeHandle::buffer_bytes`] and
//!   [`NodeHandle::peak_buffer_bytes`] report the pool's size.
//! - PING fast path: with nothing else of a connection in flight, a PING is run through the
//!   session on the connection's reader task (under the session's lock) instead of the engine
//!   thread, and the reader writes the PONG to the socket itself, saving the engine's two
//!   thread hops and the hop to the writer task.
//! - Threads: the connection tasks run on whatever tokio runtime calls [`Node::start`]. A
//!   single-threaded runtime has the fewest wakeups between threads (one thread for every
//!   socket plus the engine thread), and on 2 cores it keeps one upload and PINGs as fast as
//!   two threads do, but many concurrent uploads need both cores; `vram-relay serve --threads`
//!   chooses, with one fewer than the cores as its default (2 on a machine of 2 cores).
//! - Session timers: every reply carries the session's next deadline; the writer arms a timer
//!   and asks the engine to fire it.
//! - Past [`NodeConfig::max_sessions`] a connection gets one `ERROR(BUSY)` and is closed.
//! - Failed AUTH attempts slow down later connections from the same IP (exponential, bounded).
//! - A UDP responder answers DISCOVER with ANNOUNCE, signed when a token is configured.
//! - TLS (feature `tls`, [`NodeConfig::tls`]): each connection's task runs the TLS 1.3
//!   handshake (ALPN `rela/1`) before anything else; the connection tasks are generic over the
//!   stream (`stream.rs`). [`tls::TlsIdentity`] loads the certificate or makes a self-signed one
//!   kept in a state directory; its fingerprint is logged at start and travels in ANNOUNCE.
//! - [`NodeHandle::shutdown`] stops accepting, sends `ERROR(SHUTTING_DOWN)` to every session,
//!   frees everything and returns the backend's final usage.
//!
//! Logging uses `tracing` with one span per session (peer address and id). Tokens and payload
//! bytes are never logged.
//!
//! ```no_run
//! # async fn demo(backend: Box<dyn rela_core::backend::GpuBackend + Send>) -> Result<(), rela_node::NodeError> {
//! use rela_node::{Node, NodeConfig};
//! let config = NodeConfig { listen: "127.0.0.1:0".parse().unwrap(), ..NodeConfig::default() };
//! let node = Node::start(config.with_token(b"secret"), backend).await?;
//! println!("serving on {}", node.local_addr());
//! let final_usage = node.shutdown().await?;
//! assert_eq!(final_usage.used, 0);
//! # Ok(()) }
//! ```

mod arena;
mod compress;
mod config;
mod conn;
mod discovery;
mod engine;
mod leases;
mod llm;
mod llm_batch;
mod llm_device_batch;
mod llm_shared;
mod messages;
mod models;
mod pool;
mod shared_models;
mod stream;
mod throttle;
#[cfg(feature = "tls")]
pub mod tls;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::{ConfigError, DEFAULT_BUFFER_BUDGET, MIN_MAX_PAYLOAD, NodeConfig};
pub use engine::DEFAULT_MAX_DISPATCH_COST;
pub use llm::{DEFAULT_MAX_CONTEXT, DEFAULT_MAX_GENERATE_TOKENS, GenerateLimits};
pub use models::DEFAULT_MAX_INFER_TOKENS;
use rela_core::backend::{GpuBackend, Usage};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::arena::DirectMemory;
use crate::conn::Shared;
use crate::engine::{Clock, Command, Engine, EngineTx, Status};
use crate::pool::Pool;
use crate::throttle::AuthThrottle;

/// How long shutdown waits for connections to finish their last writes before cancelling them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the node could not start or stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration was refused.
    Config(ConfigError),
    /// Binding a socket or starting the engine thread failed.
    Io(io::Error),
    /// The engine thread is no longer running (it stopped or panicked).
    EngineStopped,
    /// The model repository could not be opened.
    Models(String),
    /// The TLS certificate and key cannot be used.
    #[cfg(feature = "tls")]
    Tls(tls::TlsSetupError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::EngineStopped => f.write_str("the engine thread is not running"),
            Self::Models(e) => write!(f, "model repository: {e}"),
            #[cfg(feature = "tls")]
            Self::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Io(e) => Some(e),
            Self::EngineStopped | Self::Models(_) => None,
            #[cfg(feature = "tls")]
            Self::Tls(e) => Some(e),
        }
    }
}

impl From<ConfigError> for NodeError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<io::Error> for NodeError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The backend a node runs on, with what the node may do with its memory.
///
/// Any `Box<dyn GpuBackend + Send>` converts into one. [`NodeBackend::host`] makes the host
/// backend over memory the node shares with its connection readers, so that WRITE data goes
/// from the socket straight into its buffer instead of through a staging buffer and a copy
/// (see `docs/BENCHMARKS.md`).
pub struct NodeBackend {
    backend: Box<dyn GpuBackend + Send>,
    direct: Option<DirectMemory>,
}

impl NodeBackend {
    /// The host backend (`rela_backend_host::HostMemory`) over `capacity` bytes of zeroed host
    /// memory (mapped lazily), with a table of `N` live buffers, whose WRITE data the node reads
    /// from the socket straight into place. Large freed buffers give their pages back to the
    /// OS. `Err` if the OS cannot map `capacity` bytes.
    pub fn host<const N: usize>(capacity: usize) -> Result<Self, io::Error> {
        let (backend, direct) = arena::host_backend::<N>(capacity)?;
        Ok(Self { backend: Box::new(backend), direct: Some(direct) })
    }

    /// The backend's device facts.
    pub fn info(&self) -> rela_core::backend::DeviceInfo {
        self.backend.info()
    }

    /// Whether WRITE data goes straight into the backend's memory.
    pub const fn direct_writes(&self) -> bool {
        self.direct.is_some()
    }
}

impl fmt::Debug for NodeBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBackend")
            .field("device", &self.info().name.as_str())
            .field("direct_writes", &self.direct_writes())
            .finish()
    }
}

impl<B: GpuBackend + Send + 'static> From<Box<B>> for NodeBackend {
    fn from(backend: Box<B>) -> Self {
        Self { backend, direct: None }
    }
}

impl From<Box<dyn GpuBackend + Send>> for NodeBackend {
    fn from(backend: Box<dyn GpuBackend + Send>) -> Self {
        Self { backend, direct: None }
    }
}

/// The node entry point.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Validates `config`, binds the session listener and the discovery socket, starts the
    /// engine thread with `backend` (a `Box<dyn GpuBackend + Send>` or a [`NodeBackend`]), and
    /// starts serving. Must be called inside a tokio runtime.
    pub async fn start(config: NodeConfig, backend: impl Into<NodeBackend>) -> Result<NodeHandle, NodeError> {
        let NodeBackend { backend, direct } = backend.into();
        config.validate()?;
        let listener = bind_listener(config.listen, config.socket_buffer)?;
        let local_addr = listener.local_addr()?;
        let discovery = match config.discovery {
            Some(addr) => Some(UdpSocket::bind(addr).await?),
            None => None,
        };
        let discovery_addr = discovery.as_ref().map(UdpSocket::local_addr).transpose()?;

        let status = Arc::new(Status { info: backend.info(), used: AtomicU64::new(backend.usage().used) });
        let clock = Clock::new();
        let throttle = Arc::new(Mutex::new(AuthThrottle::new(config.auth_backoff, config.auth_backoff_max)));
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        let repository = match &config.models {
            Some(dir) => Some(Arc::new(
                rela_models::ModelRepository::open(dir).map_err(|e| NodeError::Models(e.to_string()))?,
            )),
            None => None,
        };
        if let Some(r) = &repository {
            tracing::info!(dir = %r.root().display(), models = ?r.names(), "serving models");
        }
        let mut config = config;
        config.session.models = repository.is_some();
        let shared = Arc::new(shared_models::SharedModels::default());
        let mut backend = backend;
        for name in &config.preload {
            let repo = repository
                .as_ref()
                .ok_or_else(|| NodeError::Models(format!("--preload {name}: no --models")))?;
            let files = repo.files(name).map_err(|e| NodeError::Models(format!("--preload {name}: {e}")))?;
            // At start, before any session: the engine thread does not run yet.
            shared
                .preload(name, &files, &mut *backend)
                .map_err(|e| NodeError::Models(format!("--preload {name}: {e}")))?;
            tracing::info!(model = %name, bytes = shared.bytes(), "model preloaded");
        }
        let engine = Engine::new(
            backend,
            config.session.clone(),
            status.clone(),
            throttle.clone(),
            repository,
            direct.clone(),
            engine_tx.clone(),
            config.max_dispatch_cost,
            shared,
            config.max_infer_tokens,
            crate::llm::GenerateLimits {
                max_tokens: config.max_generate_tokens,
                max_context: config.max_context,
            },
            config.activations,
        );
        // Cleared when the engine thread ends, whatever the reason.
        let (alive_tx, alive) = tokio::sync::watch::channel(true);
        let engine_thread = std::thread::Builder::new().name("rela-engine".into()).spawn(move || {
            engine.run(engine_rx);
            alive_tx.send_replace(false);
        })?;

        let shared = Arc::new(Shared {
            engine: engine_tx.clone(),
            direct: direct.is_some(),
            clock,
            throttle,
            session: config.session.clone(),
            max_payload: config.session.effective_max_payload(),
            depth: config.pipeline_depth,
            pool: Pool::new(config.buffer_budget),
            max_sessions: config.max_sessions,
            max_per_address: config.max_sessions_per_address,
            cap_loopback: config.cap_loopback,
            per_address: Mutex::new(std::collections::HashMap::new()),
            live: AtomicUsize::new(0),
            rejecting: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            direct_writes: AtomicU64::new(0),
            #[cfg(feature = "tls")]
            tls: config.tls.as_ref().map(tls::TlsIdentity::acceptor).transpose().map_err(NodeError::Tls)?,
        });
        #[cfg(feature = "tls")]
        let tls_fingerprint = config.tls.as_ref().map(tls::TlsIdentity::fingerprint);
        #[cfg(feature = "tls")]
        let announced = tls_fingerprint.map(|f| f.0);
        #[cfg(not(feature = "tls"))]
        let announced = None;
        let responder = discovery.map(|socket| {
            let key = config.session.auth.clone();
            let port = local_addr.port();
            tokio::spawn(discovery::respond(socket, status, key, config.node_id, port, announced))
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        // Stop accepting when asked, or when the engine stops on its own (after a panic it could
        // not contain): a node without an engine must not take connections it cannot serve.
        let (accept_stop_tx, accept_stop_rx) = oneshot::channel();
        let mut engine_alive = alive.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx => {}
                _ = engine_alive.wait_for(|a| !*a) => {
                    tracing::error!("the engine thread stopped; the node stops");
                }
            }
            let _ = accept_stop_tx.send(());
        });
        tokio::spawn(run(listener, shared.clone(), accept_stop_rx, responder, engine_thread, done_tx));
        let discovery = discovery_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        let hex = |fp: [u8; rela_core::config::TLS_FINGERPRINT_LEN]| {
            fp.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        match announced.map(hex) {
            Some(fp) => tracing::info!(%local_addr, discovery_addr = %discovery, auth = config.has_token(),
                tls_fingerprint = %fp, "node started (TLS)"),
            None => tracing::info!(%local_addr, discovery_addr = %discovery, auth = config.has_token(),
                "node started"),
        }
        Ok(NodeHandle {
            local_addr,
            discovery_addr,
            #[cfg(feature = "tls")]
            tls_fingerprint,
            engine: engine_tx,
            shared,
            stop: Some(stop_tx),
            alive,
            done: done_rx,
        })
    }
}

/// A running node. Dropping it shuts the node down in the background; call
/// [`shutdown`](Self::shutdown) to wait for that.
#[derive(Debug)]
pub struct NodeHandle {
    local_addr: SocketAddr,
    discovery_addr: Option<SocketAddr>,
    #[cfg(feature = "tls")]
    tls_fingerprint: Option<tls::Fingerprint>,
    engine: EngineTx,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<Result<Usage, NodeError>>,
    alive: tokio::sync::watch::Receiver<bool>,
}

impl NodeHandle {
    /// The bound session address (with the real port when configured with port 0).
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound discovery address, if discovery is enabled.
    pub const fn discovery_addr(&self) -> Option<SocketAddr> {
        self.discovery_addr
    }

    /// The fingerprint of the node's TLS certificate, when it serves TLS.
    #[cfg(feature = "tls")]
    pub const fn tls_fingerprint(&self) -> Option<tls::Fingerprint> {
        self.tls_fingerprint
    }

    /// Connections being served now (including ones still in their handshake).
    pub fn sessions(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Bytes of frame buffers the node holds now: payloads being read or waiting for the engine,
    /// READ responses waiting for their socket, and buffers cached for reuse. Never above
    /// [`NodeConfig::buffer_budget`].
    pub fn buffer_bytes(&self) -> usize {
        self.shared.pool.current()
    }

    /// The configured [`NodeConfig::buffer_budget`].
    pub fn buffer_budget(&self) -> usize {
        self.shared.pool.budget()
    }

    /// WRITEs whose data went from the socket straight into the backend's memory (a node over
    /// [`NodeBackend::host`]); the others went through a staging buffer.
    pub fn direct_writes(&self) -> u64 {
        self.shared.direct_writes.load(Ordering::Relaxed)
    }

    /// The largest [`buffer_bytes`](Self::buffer_bytes) since the node started.
    pub fn peak_buffer_bytes(&self) -> usize {
        self.shared.pool.peak()
    }

    /// Drops the buffers the pool keeps cached for reuse (those in use stay); for example after
    /// a burst of large transfers.
    pub fn trim_buffers(&self) {
        self.shared.pool.trim();
    }

    /// The backend's current usage, as the engine sees it.
    pub async fn usage(&self) -> Result<Usage, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.engine.send(Command::Usage { reply }).map_err(|_| NodeError::EngineStopped)?;
        rx.await.map_err(|_| NodeError::EngineStopped)
    }

    /// Resolves if the node stops on its own: its engine thread ended without being asked to
    /// (a panic it could not contain to one session). The node then no longer accepts
    /// connections; [`shutdown`](Self::shutdown) reports [`NodeError::EngineStopped`].
    pub async fn stopped(&self) {
        let mut alive = self.alive.clone();
        let _ = alive.wait_for(|a| !*a).await;
    }

    /// Graceful shutdown: stops accepting, sends `ERROR(SHUTTING_DOWN)` to every live session
    /// (which frees and zeroes its buffers), waits up to a few seconds for connections to
    /// finish, stops the engine thread and returns the backend's usage after the sessions were
    /// released.
    pub async fn shutdown(mut self) -> Result<Usage, NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.done).await.map_err(|_| NodeError::EngineStopped)?
    }
}

fn bind_listener(addr: SocketAddr, socket_buffer: usize) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if rela_client::__private::socket_buffer_applicable(socket_buffer) {
        // Accepted sockets inherit these. Best effort: the defaults still work.
        let size = u32::try_from(socket_buffer).unwrap_or(u32::MAX);
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The node's lifetime: accept until told to stop, then shut down in order.
async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: oneshot::Receiver<()>,
    responder: Option<JoinHandle<()>>,
    engine_thread: std::thread::JoinHandle<()>,
    done: oneshot::Sender<Result<Usage, NodeError>>,
) {
    let mut tasks = conn::accept_loop(listener, shared.clone(), stop).await;
    tracing::info!("shutting down: no longer accepting");
    if let Some(r) = responder {
        r.abort();
    }
    let (reply, usage) = oneshot::channel();
    let usage = match shared.engine.send(Command::Shutdown { reply }) {
        Ok(()) => usage.await.map_err(|_| NodeError::EngineStopped),
        Err(_) => Err(NodeError::EngineStopped),
    };
    drop(shared);
    let drained =
        tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = tasks.len(), "connections still open after the grace period; cancelling");
        tasks.shutdown().await;
    }
    // The engine stops right after Shutdown; joining only waits for it to drop the backend.
    let joined = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    let result = match joined {
        Ok(Ok(())) => usage,
        _ => Err(NodeError::EngineStopped),
    };
    tracing::info!("node stopped");
    let _ = done.send(result);
}
