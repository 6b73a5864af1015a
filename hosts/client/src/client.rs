//! The async client: one session with a node, over TCP or TLS.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rela_core::auth::AuthKey;
use rela_core::backend::{BackendKind, KernelId};
use rela_core::config::{HEADER_LEN, MAX_PAYLOAD, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use rela_core::wire::compress::Compressed;
use rela_core::wire::msg::{self, Caps, ErrorMsg, Message, Response, WRITE_PREFIX_LEN, Welcome};
use rela_core::wire::{ErrorCode, Flags, FrameCrc, HeaderRepr, Kind, RawHeader, emit_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::FastCrc32;
use crate::error::{ClientError, TimeoutPhase};
use crate::transport::{ReadHalf, WriteHalf};

mod deflate;
mod generate;
mod models;
pub use generate::{GenerateEvent, GenerateOutcome, GenerateRequest, TokenStream};
pub use models::{ListedModel, LoadProgress, LoadStage, RemoteModel};

/// Largest non-data response payload the client accepts (WELCOME, PONG, DEVICE_INFO, STATS,
/// ERROR are all well below this).
const SMALL_PAYLOAD: usize = 512;
/// Piece size for reading bulk payloads, so the CRC runs over cache-hot bytes.
const READ_PIECE: usize = 256 * 1024;
/// Default WRITE frame payload ([`ClientOptions::chunk`]).
pub const DEFAULT_WRITE_CHUNK: u32 = 4 * 1024 * 1024;
/// Default WRITE frame payload while LZ4 is in use ([`ClientOptions::compress`]): smaller
/// frames start the link sooner (the first frame is compressed before anything is sent) and
/// leave less to decompress after the last byte arrived.
pub const DEFAULT_COMPRESSED_WRITE_CHUNK: u32 = 1024 * 1024;
/// Default READ frame payload ([`ClientOptions::chunk`]).
pub const DEFAULT_READ_CHUNK: u32 = 1024 * 1024;
/// Read buffer in front of the socket, so small responses take one syscall for many.
const READ_BUFFER: usize = 64 * 1024;
/// Default [`ClientOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A progress callback for bulk transfers: `(bytes done, bytes total)`, called after each
/// acknowledged frame.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Tuning knobs for a connection.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Frames in flight during bulk reads and writes (at least 1). Default 8.
    pub window: usize,
    /// Largest payload per bulk frame, WRITE and READ alike; clamped to the node's
    /// `max_payload`. Default ([`None`]): [`DEFAULT_WRITE_CHUNK`] (4 MiB) for WRITE
    /// ([`DEFAULT_COMPRESSED_WRITE_CHUNK`], 1 MiB, while LZ4 is in use) and
    /// [`DEFAULT_READ_CHUNK`] (1 MiB) for READ, which measured best on loopback against a node
    /// that moves the data straight between the socket and the buffer: larger WRITE frames
    /// halve the per-frame costs (acknowledgements, wakeups on both ends), while READ does
    /// better with finer pipelining (`docs/BENCHMARKS.md`).
    pub chunk: Option<u32>,
    /// Requested socket send and receive buffer size. Applied only when the kernel allows that
    /// much (Linux `net.core.{r,w}mem_max`): a clamped fixed size would switch off the kernel's
    /// buffer autotuning and be slower than leaving it alone. `0` leaves the defaults.
    pub socket_buffer: usize,
    /// Longest wait for the TCP connection to be accepted (per address tried). Default
    /// [`DEFAULT_CONNECT_TIMEOUT`] (10 s); [`None`] waits as long as the OS does.
    pub connect_timeout: Option<Duration>,
    /// Longest the whole handshake may take once connected: HELLO, WELCOME and, when the node
    /// requires it, AUTH. Default [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s, the node's own default
    /// handshake deadline); [`None`] waits forever.
    pub handshake_timeout: Option<Duration>,
    /// Longest wait for the node on any one step of a request after the handshake: sending one
    /// frame, receiving the header of an answer, or receiving each 256 KiB of a READ's data. A
    /// bulk transfer of any size therefore never times out while data keeps moving; a node
    /// that stops answering does. Model loads count each PROGRESS frame as an answer. Default
    /// [`DEFAULT_REQUEST_TIMEOUT`] (60 s, room for INFER on a slow backend); [`None`] waits
    /// forever.
    pub request_timeout: Option<Duration>,
    /// Use LZ4 when the node offers it (capability LZ4): WRITE and MODEL_CHUNK data is sent
    /// compressed frame by frame when that pays (a compressible sample and result,
    /// [`crate::compress::deflate`]; otherwise plain), and READs ask for compressed answers.
    /// Up to two frames are compressed on blocking threads ([`tokio::task::spawn_blocking`])
    /// while the one before them is sent, so compressing and sending overlap.
    /// It pays on slow links with compressible data (zero-heavy weights, text); on loopback
    /// or with random data it only costs CPU. Default `false`.
    pub compress: bool,
    /// Run the session over TLS, trusting the node's certificate as these options say
    /// ([`crate::tls`]). The TLS handshake counts against
    /// [`handshake_timeout`](Self::handshake_timeout). Default [`None`]: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            window: 8,
            chunk: None,
            socket_buffer: 4 * 1024 * 1024,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            compress: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientOptions {
    /// These options with all three deadlines (connect, handshake, each request step) set to
    /// `timeout`.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self.handshake_timeout = Some(timeout);
        self.request_timeout = Some(timeout);
        self
    }

    /// These options with the session over TLS.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: crate::tls::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A buffer on the node, named by its per-session handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    raw: u32,
    size: u64,
}

impl Handle {
    /// Rebuilds a handle from its wire value and size.
    pub const fn from_raw(raw: u32, size: u64) -> Self {
        Self { raw, size }
    }

    /// The wire value.
    pub const fn raw(self) -> u32 {
        self.raw
    }

    /// The buffer's size in bytes.
    pub const fn size(self) -> u64 {
        self.size
    }
}

/// A built-in kernel invocation (see DISPATCH in the protocol). Buffers hold little-endian f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// `out[i] = a[i] + b[i]` for `i < n`.
    Add {
        /// Left input.
        a: Handle,
        /// Right input.
        b: Handle,
        /// Output.
        out: Handle,
        /// Elements.
        n: u32,
    },
    /// `out[i] = a[i] * b[i]` for `i < n`.
    Mul {
        /// Left input.
        a: Handle,
        /// Right input.
        b: Handle,
        /// Output.
        out: Handle,
        /// Elements.
        n: u32,
    },
    /// `out[i] = alpha * x[i]` for `i < n`.
    Scale {
        /// Input.
        x: Handle,
        /// Output.
        out: Handle,
        /// Elements.
        n: u32,
        /// Factor.
        alpha: f32,
    },
    /// Row-major `out (M×N) = a (M×K) · b (K×N)`.
    Matmul {
        /// Left matrix.
        a: Handle,
        /// Right matrix.
        b: Handle,
        /// Output matrix.
        out: Handle,
        /// Rows of `a`.
        m: u32,
        /// Inner dimension.
        k: u32,
        /// Columns of `b`.
        n: u32,
    },
}

impl Kernel {
    fn to_msg(self) -> msg::Dispatch {
        let base = msg::Dispatch {
            kernel: KernelId::ADD,
            reserved: 0,
            a: 0,
            b: 0,
            out: 0,
            m: 0,
            k: 0,
            n: 0,
            alpha: 0.0,
        };
        match self {
            Self::Add { a, b, out, n } => {
                msg::Dispatch { kernel: KernelId::ADD, a: a.raw, b: b.raw, out: out.raw, n, ..base }
            }
            Self::Mul { a, b, out, n } => {
                msg::Dispatch { kernel: KernelId::MUL, a: a.raw, b: b.raw, out: out.raw, n, ..base }
            }
            Self::Scale { x, out, n, alpha } => {
                msg::Dispatch { kernel: KernelId::SCALE, a: x.raw, out: out.raw, n, alpha, ..base }
            }
            Self::Matmul { a, b, out, m, k, n } => {
                msg::Dispatch { kernel: KernelId::MATMUL, a: a.raw, b: b.raw, out: out.raw, m, k, n, ..base }
            }
        }
    }
}

/// The node's device, as DEVICE_INFO reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDeviceInfo {
    /// Backend kind.
    pub backend: BackendKind,
    /// Total memory the node lends, in bytes.
    pub total: u64,
    /// Free memory, in bytes.
    pub free: u64,
    /// Largest single allocation, in bytes.
    pub max_alloc: u64,
    /// Device name.
    pub name: String,
    /// Vendor name.
    pub vendor: String,
    /// Bytes of models the node holds once for every session that loads them (part of
    /// `total - free`; 0 from a node that shares none or does not say).
    pub shared_models: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u16,
    pos: usize,
    len: usize,
}

/// One session with a node, over TCP or TLS ([`ClientOptions::tls`]).
///
/// Calls take `&mut self`: one call runs at a time, but bulk [`write`](Self::write) and
/// [`read_into`](Self::read_into) split the transfer into frames of at most the node's
/// `max_payload` and keep [`ClientOptions::window`] of them in flight.
///
/// Every wait on the node is bounded by the deadlines of [`ClientOptions`] (connect,
/// handshake, each step of a request); a deadline that passes returns
/// [`ClientError::Timeout`] and closes the session.
#[derive(Debug)]
pub struct Client {
    rd: BufReader<ReadHalf>,
    wr: WriteHalf,
    peer: SocketAddr,
    /// The node's certificate fingerprint, over TLS.
    #[cfg(feature = "tls")]
    tls_fingerprint: Option<crate::tls::Fingerprint>,
    welcome: Welcome,
    options: ClientOptions,
    next_seq: u16,
    /// Encoding buffer for requests (header plus the largest fixed request).
    tx: Vec<u8>,
    /// Payload buffer for non-data responses.
    rx: Vec<u8>,
    /// Scratch for compressed READ answers.
    zbuf: Vec<u8>,
    /// Compresses WRITE and MODEL_CHUNK frames ahead of sending them, while LZ4 is in use.
    deflater: deflate::Deflater,
    inflight: VecDeque<InFlight>,
    broken: bool,
    /// During the handshake, whose deadline covers it as a whole, single steps are not timed.
    handshaking: bool,
}

impl Client {
    /// Connects, says HELLO and, when the node requires it, authenticates with `token`.
    pub async fn connect(addr: SocketAddr, token: Option<&[u8]>) -> Result<Self, ClientError> {
        Self::connect_with(addr, token, ClientOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit options.
    pub async fn connect_with(
        addr: SocketAddr,
        token: Option<&[u8]>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let stream = open_stream(addr, &options).await?;
        Self::handshake_on(stream, addr, None, token, options).await
    }

    /// [`connect_with`](Self::connect_with) to `addr`, an address of `host` (a `HOST:PORT`
    /// string such as `node.lan:8765`), which a CA-signed certificate must name over TLS.
    pub async fn connect_named(
        addr: SocketAddr,
        host: &str,
        token: Option<&[u8]>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let stream = open_stream(addr, &options).await?;
        Self::handshake_on(stream, addr, Some(host), token, options).await
    }

    /// Connects to `host`, a `HOST:PORT` string such as `localhost:8765` or `[::1]:8765`,
    /// trying each address the name resolves to in turn until one accepts the TCP connection
    /// (each attempt bounded by [`ClientOptions::connect_timeout`]), then handshakes there as
    /// [`connect_with`](Self::connect_with) does. Returns the session and the address used.
    pub async fn connect_host(
        host: &str,
        token: Option<&[u8]>,
        options: ClientOptions,
    ) -> Result<(Self, SocketAddr), ClientError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host)
            .await
            .map_err(|e| ClientError::Resolve(format!("{host}: {e}")))?
            .collect();
        let mut last = ClientError::Resolve(format!("{host}: no addresses"));
        for addr in addrs {
            match open_stream(addr, &options).await {
                Ok(stream) => {
                    return Ok((Self::handshake_on(stream, addr, Some(host), token, options).await?, addr));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Runs the TLS handshake when the options ask for TLS, then says HELLO (and AUTH), each
    /// within the handshake deadline. `host` is the name the caller gave, if any (a CA-signed
    /// certificate must carry it).
    async fn handshake_on(
        stream: TcpStream,
        addr: SocketAddr,
        host: Option<&str>,
        token: Option<&[u8]>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        stream.set_nodelay(true)?;
        #[cfg(feature = "tls")]
        let (rd, wr, tls_fingerprint) = match &options.tls {
            Some(tls) => {
                let connect = crate::tls::connect_session(stream, addr, host, tls);
                let (rd, wr, fp) = match options.handshake_timeout {
                    Some(after) => tokio::time::timeout(after, connect)
                        .await
                        .map_err(|_| ClientError::Timeout { phase: TimeoutPhase::Handshake, after })??,
                    None => connect.await?,
                };
                let (rd, wr) = crate::transport::tls(rd, wr);
                (rd, wr, Some(fp))
            }
            None => {
                let (rd, wr) = crate::transport::plain(stream);
                (rd, wr, None)
            }
        };
        #[cfg(not(feature = "tls"))]
        let (rd, wr) = {
            let _ = host;
            crate::transport::plain(stream)
        };
        let placeholder = Welcome {
            version: 0,
            flags: 0,
            caps: Caps(0),
            max_payload: MAX_PAYLOAD,
            max_buffers: 0,
            quota: 0,
            handshake_timeout_ms: 0,
            idle_timeout_ms: 0,
            nonce: [0; 32],
        };
        let mut client = Self {
            rd: BufReader::with_capacity(READ_BUFFER, rd),
            wr,
            peer: addr,
            #[cfg(feature = "tls")]
            tls_fingerprint,
            welcome: placeholder,
            options,
            next_seq: 0,
            tx: vec![0; HEADER_LEN + SMALL_PAYLOAD],
            rx: vec![0; SMALL_PAYLOAD],
            zbuf: Vec::new(),
            deflater: deflate::Deflater::default(),
            inflight: VecDeque::new(),
            broken: false,
            handshaking: true,
        };
        match client.options.handshake_timeout {
            Some(after) => match tokio::time::timeout(after, client.handshake(token)).await {
                Ok(done) => done?,
                Err(_) => return Err(ClientError::Timeout { phase: TimeoutPhase::Handshake, after }),
            },
            None => client.handshake(token).await?,
        }
        client.handshaking = false;
        Ok(client)
    }

    async fn handshake(&mut self, token: Option<&[u8]>) -> Result<(), ClientError> {
        let hello = msg::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            caps: Caps(
                Caps::DISPATCH.0 | Caps::PROGRESS.0 | if self.options.compress { Caps::LZ4.0 } else { 0 },
            ),
        };
        let seq = self.send_msg(&hello).await?;
        let welcome = match self.expect(seq, Kind::HELLO).await? {
            Response::Welcome(w) => w,
            other => {
                return {
                    let e = unexpected(&other);
                    Err(self.broke(e))
                };
            }
        };
        if (welcome.max_payload as usize) <= WRITE_PREFIX_LEN {
            self.broken = true;
            return Err(ClientError::Protocol(format!("max payload {} too small", welcome.max_payload)));
        }
        self.welcome = welcome;
        if welcome.auth_required() {
            let Some(token) = token else {
                self.broken = true;
                return Err(ClientError::TokenRequired);
            };
            let mac = AuthKey::new(token).auth_tag(&welcome.nonce);
            let seq = self.send_msg(&msg::Auth { mac }).await?;
            match self.expect(seq, Kind::AUTH).await? {
                Response::Ack(Kind::AUTH) => {}
                other => {
                    return {
                        let e = unexpected(&other);
                        Err(self.broke(e))
                    };
                }
            }
        }
        Ok(())
    }

    // ---- getters ----

    /// The node's WELCOME: protocol version, limits, quota.
    pub const fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The node's address.
    pub const fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// The SHA-256 fingerprint of the node's TLS certificate, when the session runs over TLS.
    #[cfg(feature = "tls")]
    pub const fn tls_fingerprint(&self) -> Option<crate::tls::Fingerprint> {
        self.tls_fingerprint
    }

    /// Whether this session uses LZ4: the options ask for it and the node offers it.
    pub const fn compressing(&self) -> bool {
        self.options.compress && self.welcome.caps.contains(Caps::LZ4)
    }

    /// Whether an earlier fatal error closed the connection.
    pub const fn is_closed(&self) -> bool {
        self.broken
    }

    // ---- calls ----

    /// PING with a random payload; returns the round-trip time.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let data: [u8; 8] = rand::random();
        let started = Instant::now();
        let seq = self.send_msg(&msg::Ping { data: &data }).await?;
        match self.expect(seq, Kind::PING).await? {
            Response::Pong(echo) if echo == data => Ok(started.elapsed()),
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }

    /// DEVICE_INFO.
    pub async fn device_info(&mut self) -> Result<RemoteDeviceInfo, ClientError> {
        let seq = self.send_empty(Kind::DEVICE_INFO).await?;
        match self.expect(seq, Kind::DEVICE_INFO).await? {
            Response::DeviceInfo(d) => Ok(RemoteDeviceInfo {
                backend: d.backend,
                total: d.total,
                free: d.free,
                max_alloc: d.max_alloc,
                name: d.name.to_owned(),
                vendor: d.vendor.to_owned(),
                shared_models: d.shared_models.unwrap_or(0),
            }),
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }

    /// STATS: this session's usage and counters.
    pub async fn stats(&mut self) -> Result<msg::Stats, ClientError> {
        let seq = self.send_empty(Kind::STATS).await?;
        match self.expect(seq, Kind::STATS).await? {
            Response::Stats(s) => Ok(s),
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }

    /// ALLOC: a zeroed buffer of `size` bytes.
    pub async fn alloc(&mut self, size: u64) -> Result<Handle, ClientError> {
        let seq = self.send_msg(&msg::Alloc { size }).await?;
        match self.expect(seq, Kind::ALLOC).await? {
            Response::Allocated(a) => Ok(Handle { raw: a.handle, size: a.size }),
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }

    /// FREE: releases (and zeroes) a buffer.
    pub async fn free(&mut self, h: Handle) -> Result<(), ClientError> {
        let seq = self.send_msg(&msg::Free { handle: h.raw }).await?;
        self.expect_ack(seq, Kind::FREE).await
    }

    /// COPY `len` bytes between buffers of this session.
    pub async fn copy(
        &mut self,
        src: Handle,
        src_offset: u64,
        dst: Handle,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), ClientError> {
        let m = msg::Copy { src: src.raw, src_offset, dst: dst.raw, dst_offset, len };
        let seq = self.send_msg(&m).await?;
        self.expect_ack(seq, Kind::COPY).await
    }

    /// FILL `len` bytes from `offset` with `value`.
    pub async fn fill(&mut self, h: Handle, offset: u64, len: u64, value: u8) -> Result<(), ClientError> {
        let seq = self.send_msg(&msg::Fill { handle: h.raw, offset, len, value }).await?;
        self.expect_ack(seq, Kind::FILL).await
    }

    /// DISPATCH a built-in kernel and wait for it to finish.
    pub async fn dispatch(&mut self, kernel: Kernel) -> Result<(), ClientError> {
        let seq = self.send_msg(&kernel.to_msg()).await?;
        self.expect_ack(seq, Kind::DISPATCH).await
    }

    /// Writes `data` at `offset`, of any size, pipelined.
    pub async fn write(&mut self, h: Handle, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write_with_progress(h, offset, data, None).await
    }

    /// [`write`](Self::write) with a progress callback.
    ///
    /// On a non-fatal node error (for example `OUT_OF_BOUNDS`) the frames already in flight are
    /// still collected, so the session stays usable, and the first error is returned.
    pub async fn write_with_progress(
        &mut self,
        h: Handle,
        offset: u64,
        data: &[u8],
        mut progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        self.check_usable()?;
        offset
            .checked_add(data.len() as u64)
            .ok_or(ClientError::InvalidArgument("offset + length overflows"))?;
        let default = if self.compressing() { DEFAULT_COMPRESSED_WRITE_CHUNK } else { DEFAULT_WRITE_CHUNK };
        let chunk = self.chunk(default).saturating_sub(WRITE_PREFIX_LEN).max(1);
        let total = data.len();
        let window = self.options.window.max(1);
        self.inflight.clear();
        // With LZ4, the frames after the one being sent are compressed meanwhile.
        let mut deflater = self.compressing().then(|| std::mem::take(&mut self.deflater));
        if let Some(d) = deflater.as_mut() {
            d.begin(chunk);
        }
        let (mut sent, mut done, mut started) = (0usize, 0usize, false);
        let mut first_err = None;
        loop {
            while first_err.is_none() && self.inflight.len() < window && (sent < total || !started) {
                started = true;
                let n = chunk.min(total - sent);
                let at = offset + sent as u64;
                let seq = match deflater.as_mut() {
                    Some(d) if total > 0 => {
                        // `sent < total`, so a frame is left, and it starts at `sent` and holds
                        // `n` bytes: the pipeline cuts `data` into the same `chunk`s from 0.
                        // Checked all the same, so that a slip could never skip data silently.
                        let frame = match d.next(data).await {
                            Some(f) if f.pos == sent && f.len == n => f,
                            _ => {
                                let e = ClientError::InvalidArgument("compression out of step with the data");
                                return Err(self.broke(e));
                            }
                        };
                        let seq = self.send_write_frame(h.raw, at, data, &frame).await;
                        d.recycle(frame);
                        seq?
                    }
                    _ => self.send_write(h.raw, at, &data[sent..sent + n]).await?,
                };
                self.inflight.push_back(InFlight { seq, pos: sent, len: n });
                sent += n;
            }
            let Some(f) = self.inflight.pop_front() else { break };
            match self.expect(f.seq, Kind::WRITE).await {
                Ok(Response::Ack(Kind::WRITE)) => {
                    done += f.len;
                    if let Some(p) = progress.as_deref_mut() {
                        p(done as u64, total as u64);
                    }
                }
                Ok(other) => {
                    return {
                        let e = unexpected(&other);
                        Err(self.broke(e))
                    };
                }
                Err(e) => {
                    if self.broken {
                        return Err(e);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(d) = deflater {
            self.deflater = d;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Reads `len` bytes from `offset` into a new vector, of any size, pipelined.
    pub async fn read(&mut self, h: Handle, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        let len = usize::try_from(len).map_err(|_| ClientError::InvalidArgument("length above usize"))?;
        let mut out = vec![0; len];
        self.read_into(h, offset, &mut out).await?;
        Ok(out)
    }

    /// Reads `out.len()` bytes from `offset` into `out`, of any size, pipelined. Each frame's
    /// payload goes straight from the socket into `out`.
    pub async fn read_into(&mut self, h: Handle, offset: u64, out: &mut [u8]) -> Result<(), ClientError> {
        self.read_into_with_progress(h, offset, out, None).await
    }

    /// [`read_into`](Self::read_into) with a progress callback. Error handling as in
    /// [`write_with_progress`](Self::write_with_progress).
    pub async fn read_into_with_progress(
        &mut self,
        h: Handle,
        offset: u64,
        out: &mut [u8],
        mut progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        self.check_usable()?;
        offset
            .checked_add(out.len() as u64)
            .ok_or(ClientError::InvalidArgument("offset + length overflows"))?;
        let chunk = self.chunk(DEFAULT_READ_CHUNK);
        let total = out.len();
        let window = self.options.window.max(1);
        self.inflight.clear();
        let (mut sent, mut done, mut started) = (0usize, 0usize, false);
        let mut first_err = None;
        loop {
            while first_err.is_none() && self.inflight.len() < window && (sent < total || !started) {
                started = true;
                let n = chunk.min(total - sent);
                // `n <= chunk <= MAX_PAYLOAD`, so it fits in u32.
                let m = msg::Read { handle: h.raw, offset: offset + sent as u64, len: n as u32 };
                let flags = if self.compressing() { Flags::COMPRESSED } else { Flags::NONE };
                let seq = self.send_msg_flags(&m, flags).await?;
                self.inflight.push_back(InFlight { seq, pos: sent, len: n });
                sent += n;
            }
            let Some(f) = self.inflight.pop_front() else { break };
            let (header, mut crc) = self.read_header().await?;
            if header.kind == Kind::READ && header.flags == Flags::RESPONSE && header.seq == f.seq {
                if header.len as usize != f.len {
                    self.broken = true;
                    return Err(ClientError::Protocol(format!(
                        "READ answered with {} bytes, {} requested",
                        header.len, f.len
                    )));
                }
                let dst = &mut out[f.pos..f.pos + f.len];
                self.read_payload_into(dst, &mut crc).await?;
                if let Err(e) = crc.verify(&header) {
                    self.broken = true;
                    return Err(e.into());
                }
                done += f.len;
                if let Some(p) = progress.as_deref_mut() {
                    p(done as u64, total as u64);
                }
                continue;
            }
            let compressed = Flags::RESPONSE.union(Flags::COMPRESSED);
            if header.kind == Kind::READ && header.flags == compressed && header.seq == f.seq {
                self.read_compressed(header, crc, &mut out[f.pos..f.pos + f.len]).await?;
                done += f.len;
                if let Some(p) = progress.as_deref_mut() {
                    p(done as u64, total as u64);
                }
                continue;
            }
            match self.finish_small(header, crc, f.seq, Kind::READ).await {
                Ok(other) => {
                    return {
                        let e = unexpected(&other);
                        Err(self.broke(e))
                    };
                }
                Err(e) => {
                    if self.broken {
                        return Err(e);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// BYE: the node frees every buffer of the session, acknowledges, and closes.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.broken {
            return Ok(());
        }
        let seq = self.send_empty(Kind::BYE).await?;
        self.expect_ack(seq, Kind::BYE).await?;
        self.broken = true;
        // Best effort: the node closes its side after acknowledging BYE.
        let _ = timed(self.step_timeout(), self.wr.shutdown()).await;
        Ok(())
    }

    // ---- internals ----

    fn check_usable(&self) -> Result<(), ClientError> {
        if self.broken { Err(ClientError::Closed) } else { Ok(()) }
    }

    /// The deadline for one step on the socket: none during the handshake (its own deadline
    /// covers it), else [`ClientOptions::request_timeout`].
    fn step_timeout(&self) -> Option<Duration> {
        if self.handshaking { None } else { self.options.request_timeout }
    }

    fn max_payload(&self) -> u32 {
        self.welcome.max_payload.min(MAX_PAYLOAD)
    }

    /// Payload bytes per bulk frame.
    /// Payload bytes per bulk frame: the option, else `default`, within the node's limit.
    fn chunk(&self, default: u32) -> usize {
        let max = self.max_payload();
        self.options.chunk.unwrap_or(default).min(max).max(WRITE_PREFIX_LEN as u32 + 1) as usize
    }

    fn next_seq(&mut self) -> u16 {
        // Seq 0 is left for the node's unsolicited errors.
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        self.next_seq
    }

    fn fail<T>(&mut self, e: impl Into<ClientError>) -> Result<T, ClientError> {
        self.broken = true;
        Err(e.into())
    }

    fn broke(&mut self, e: ClientError) -> ClientError {
        self.broken = true;
        e
    }

    async fn send_msg<'m, M: Message<'m>>(&mut self, m: &M) -> Result<u16, ClientError> {
        self.send_msg_flags(m, M::flags()).await
    }

    /// [`send_msg`](Self::send_msg) with the header flags given.
    async fn send_msg_flags<'m, M: Message<'m>>(&mut self, m: &M, flags: Flags) -> Result<u16, ClientError> {
        self.check_usable()?;
        let seq = self.next_seq();
        let len = match m.emit(&mut self.tx[HEADER_LEN..]) {
            Ok(len) => len,
            Err(_) => return Err(ClientError::InvalidArgument("request does not encode")),
        };
        let n = emit_frame::<FastCrc32>(&mut self.tx, M::KIND, flags, seq, len)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        if let Err(e) = timed(self.step_timeout(), write_flush(&mut self.wr, &self.tx[..n])).await {
            return self.fail(e);
        }
        Ok(seq)
    }

    async fn send_empty(&mut self, kind: Kind) -> Result<u16, ClientError> {
        self.check_usable()?;
        let seq = self.next_seq();
        let n = emit_frame::<FastCrc32>(&mut self.tx, kind, Flags::NONE, seq, 0)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        if let Err(e) = timed(self.step_timeout(), write_flush(&mut self.wr, &self.tx[..n])).await {
            return self.fail(e);
        }
        Ok(seq)
    }

    /// Sends one WRITE frame: header and prefix from `tx`, the data straight from the caller's
    /// slice (no copy).
    async fn send_write(&mut self, handle: u32, offset: u64, data: &[u8]) -> Result<u16, ClientError> {
        let mut prefix = [0u8; WRITE_PREFIX_LEN];
        msg::Write::emit_prefix(handle, offset, &mut prefix)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        self.send_prefixed(Kind::WRITE, &prefix, data).await
    }

    /// Sends one WRITE frame the [`deflate::Deflater`] made of `data` (the whole transfer):
    /// compressed, or plain straight from `data`.
    async fn send_write_frame(
        &mut self,
        handle: u32,
        offset: u64,
        data: &[u8],
        frame: &deflate::Frame,
    ) -> Result<u16, ClientError> {
        let mut prefix = [0u8; WRITE_PREFIX_LEN];
        msg::Write::emit_prefix(handle, offset, &mut prefix)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        self.send_deflated(Kind::WRITE, &prefix, data, frame).await
    }

    /// Sends one request frame of `kind` whose payload is `prefix` then the data of `frame`:
    /// compressed when the pipeline compressed it, else plain from `data[frame.pos..]`.
    async fn send_deflated(
        &mut self,
        kind: Kind,
        prefix: &[u8],
        data: &[u8],
        frame: &deflate::Frame,
    ) -> Result<u16, ClientError> {
        self.check_usable()?;
        match frame.compressed() {
            // The compressed data is smaller than the plain data it stands for, so it fits
            // wherever the plain frame does.
            Some(z) => self.send_raw(kind, Flags::COMPRESSED, prefix, z).await,
            None => self.send_raw(kind, Flags::NONE, prefix, &data[frame.pos..frame.pos + frame.len]).await,
        }
    }

    /// Sends one request frame whose payload is `prefix` then `data`, plain: header and prefix
    /// from `tx`, the data straight from the caller's slice (no copy). The caller keeps the
    /// payload within the node's `max_payload`. (With LZ4 in use, bulk data goes through the
    /// [`deflate::Deflater`] and [`send_deflated`](Self::send_deflated) instead.)
    async fn send_prefixed(&mut self, kind: Kind, prefix: &[u8], data: &[u8]) -> Result<u16, ClientError> {
        self.check_usable()?;
        self.send_raw(kind, Flags::NONE, prefix, data).await
    }

    /// Sends one request frame of `kind` with `flags` whose payload is `prefix` then `data`.
    async fn send_raw(
        &mut self,
        kind: Kind,
        flags: Flags,
        prefix: &[u8],
        data: &[u8],
    ) -> Result<u16, ClientError> {
        let len = u32::try_from(prefix.len() + data.len())
            .ok()
            .filter(|&len| len <= self.max_payload())
            .ok_or(ClientError::InvalidArgument("payload larger than the node's max_payload"))?;
        let seq = self.next_seq();
        let head_len = HEADER_LEN + prefix.len();
        self.tx[HEADER_LEN..head_len].copy_from_slice(prefix);
        let mut header = HeaderRepr { kind, flags, seq, len, crc: 0 };
        let mut crc = FrameCrc::<FastCrc32>::new(&header.to_raw());
        crc.update(prefix);
        crc.update(data);
        header.crc = crc.value();
        header.emit(&mut self.tx).map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        let head = &self.tx[..head_len];
        if let Err(e) = timed(self.step_timeout(), write_all_two(&mut self.wr, head, data)).await {
            return self.fail(e);
        }
        Ok(seq)
    }

    async fn read_header(&mut self) -> Result<(HeaderRepr, FrameCrc<FastCrc32>), ClientError> {
        let mut raw = [0u8; HEADER_LEN];
        if let Err(e) = timed(self.step_timeout(), self.rd.read_exact(&mut raw)).await {
            return self.fail(e);
        }
        let max = self.max_payload();
        let parsed = RawHeader::view(&raw).and_then(|r| HeaderRepr::parse(r, max).map(|h| (r, h)));
        match parsed {
            Ok((r, h)) => Ok((h, FrameCrc::new(r))),
            Err(e) => self.fail(rela_core::wire::FrameError::Header(e)),
        }
    }

    async fn read_payload_into(
        &mut self,
        dst: &mut [u8],
        crc: &mut FrameCrc<FastCrc32>,
    ) -> Result<(), ClientError> {
        let limit = self.step_timeout();
        for piece in dst.chunks_mut(READ_PIECE) {
            if let Err(e) = timed(limit, self.rd.read_exact(piece)).await {
                return self.fail(e);
            }
            crc.update(piece);
        }
        Ok(())
    }

    /// Reads a compressed READ answer's payload (after `header`), checks its CRC over the bytes
    /// received, and decompresses it into `dst`, which it must fill exactly.
    async fn read_compressed(
        &mut self,
        header: HeaderRepr,
        mut crc: FrameCrc<FastCrc32>,
        dst: &mut [u8],
    ) -> Result<(), ClientError> {
        let mut zbuf = std::mem::take(&mut self.zbuf);
        zbuf.resize(header.len as usize, 0);
        let read = self.read_payload_into(&mut zbuf, &mut crc).await;
        let result = read.and_then(|()| {
            crc.verify(&header)?;
            let c = Compressed::parse(Kind::READ, true, &zbuf, self.max_payload())
                .map_err(|e| ClientError::Protocol(format!("compressed READ answer: {e}")))?;
            if c.plain_len() != dst.len() {
                return Err(ClientError::Protocol(format!(
                    "compressed READ answer of {} bytes, {} requested",
                    c.plain_len(),
                    dst.len()
                )));
            }
            c.inflate(dst).map_err(|e| ClientError::Protocol(format!("compressed READ answer: {e}")))?;
            Ok(())
        });
        self.zbuf = zbuf;
        result.map_err(|e| self.broke(e))
    }

    /// Reads the answer to request `seq` of kind `request`.
    async fn expect(&mut self, seq: u16, request: Kind) -> Result<Response<'_>, ClientError> {
        let (header, crc) = self.read_header().await?;
        self.finish_small(header, crc, seq, request).await
    }

    async fn expect_ack(&mut self, seq: u16, request: Kind) -> Result<(), ClientError> {
        match self.expect(seq, request).await? {
            Response::Ack(k) if k == request => Ok(()),
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }

    /// Reads a small payload after `header`, checks it answers `seq`, decodes it and turns an
    /// ERROR into `Err`.
    async fn finish_small(
        &mut self,
        header: HeaderRepr,
        mut crc: FrameCrc<FastCrc32>,
        seq: u16,
        request: Kind,
    ) -> Result<Response<'_>, ClientError> {
        let len = header.len as usize;
        if len > self.rx.len() {
            return self.fail(ClientError::Protocol(format!(
                "{} response of {len} bytes where at most {} were expected",
                header.kind,
                self.rx.len()
            )));
        }
        let mut rx = std::mem::take(&mut self.rx);
        let read = timed(self.step_timeout(), self.rd.read_exact(&mut rx[..len])).await;
        self.rx = rx;
        if let Err(e) = read {
            return self.fail(e);
        }
        crc.update(&self.rx[..len]);
        if let Err(e) = crc.verify(&header) {
            return self.fail(e);
        }
        let unsolicited = header.seq == 0 && header.kind == Kind::ERROR;
        if header.seq != seq && !unsolicited {
            return self.fail(ClientError::Protocol(format!(
                "answer to seq {} while waiting for seq {seq}",
                header.seq
            )));
        }
        let response = match Response::parse(header.kind, header.flags, &self.rx[..len]) {
            Ok(r) => r,
            Err(e) => {
                self.broken = true;
                return Err(ClientError::Protocol(format!("{} response does not decode: {e}", header.kind)));
            }
        };
        if let Response::Error(e) = response {
            let fatal = unsolicited || e.code.closes_session();
            let err = server_error(&e, if unsolicited { e.request_kind } else { request });
            if fatal {
                self.broken = true;
            }
            return Err(err);
        }
        Ok(response)
    }
}

/// Opens the TCP connection to `addr` within [`ClientOptions::connect_timeout`], with the
/// socket buffers the options ask for.
async fn open_stream(addr: SocketAddr, options: &ClientOptions) -> Result<TcpStream, ClientError> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if crate::__private::socket_buffer_applicable(options.socket_buffer) {
        // Best effort: the defaults still work.
        let _ = socket.set_send_buffer_size(options.socket_buffer as u32);
        let _ = socket.set_recv_buffer_size(options.socket_buffer as u32);
    }
    match options.connect_timeout {
        Some(after) => match tokio::time::timeout(after, socket.connect(addr)).await {
            Ok(stream) => Ok(stream?),
            Err(_) => Err(ClientError::Timeout { phase: TimeoutPhase::Connect, after }),
        },
        None => Ok(socket.connect(addr).await?),
    }
}

/// Runs one socket step, bounded by `limit` when there is one. A step that runs out of time
/// is a [`TimeoutPhase::Request`] timeout.
async fn timed<T>(
    limit: Option<Duration>,
    step: impl Future<Output = io::Result<T>>,
) -> Result<T, ClientError> {
    match limit {
        Some(after) => match tokio::time::timeout(after, step).await {
            Ok(r) => r.map_err(ClientError::Io),
            Err(_) => Err(ClientError::Timeout { phase: TimeoutPhase::Request, after }),
        },
        None => step.await.map_err(ClientError::Io),
    }
}

fn unexpected(r: &Response<'_>) -> ClientError {
    let what = match r {
        Response::Welcome(_) => "WELCOME".to_owned(),
        Response::Pong(_) => "PONG".to_owned(),
        Response::DeviceInfo(_) => "DEVICE_INFO".to_owned(),
        Response::Stats(_) => "STATS".to_owned(),
        Response::Allocated(_) => "ALLOCATED".to_owned(),
        Response::Data(_) => "READ data".to_owned(),
        Response::Ack(k) => format!("{k} acknowledgement"),
        Response::Error(e) => format!("ERROR {}", e.code),
        Response::Unknown(k, _) => format!("unknown kind {k}"),
        _ => "an unknown response".to_owned(),
    };
    ClientError::Protocol(format!("unexpected response: {what}"))
}

fn server_error(e: &ErrorMsg<'_>, request: Kind) -> ClientError {
    if e.code == ErrorCode::AUTH_FAILED {
        return ClientError::AuthRejected;
    }
    ClientError::Server { code: e.code, reason: e.reason.to_owned(), request }
}

/// Writes `a` then `b` with vectored writes (one syscall for a frame's header and data when the
/// socket takes it all), then flushes.
async fn write_all_two(stream: &mut WriteHalf, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    stream.write_all(b).await?;
    stream.flush().await
}

/// Writes `bytes` and flushes (TLS keeps what it was given until flushed; TCP has nothing to
/// flush).
pub(crate) async fn write_flush(stream: &mut WriteHalf, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
