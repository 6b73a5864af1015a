//! The sans-I/O server session state machine.
//!
//! A [`Session`] is one client's conversation with a node. It never touches a socket or a
//! clock and never allocates: validated frames come in through [`Session::handle_frame`],
//! response frames go out through [`Session::poll_transmit`] into a caller buffer, and time
//! comes in as an [`Instant`].
//!
//! # Call order
//!
//! 1. Read a frame from the transport. Validate its header *before* reading the payload
//!    ([`crate::wire::HeaderRepr::parse`] with [`Session::max_payload`], asked anew for each
//!    frame: it is small until the handshake is done), then its CRC. A
//!    framing failure goes to [`Session::handle_frame_error`].
//! 2. [`Session::handle_frame`] with the validated frame.
//! 3. Drain [`Session::poll_transmit`] until it returns `Ok(None)`, writing each frame out.
//!    `handle_frame` refuses new input while output is pending.
//! 4. Drain [`Session::poll_event`].
//! 5. Wait for input no later than [`Session::poll_timeout`]; when that instant passes, call
//!    [`Session::handle_timeout`] and go to 3.
//! 6. Once [`Session::is_closed`], close the transport. If the transport fails first, call
//!    [`Session::abort`].
//!
//! # States
//!
//! ```text
//!             HELLO ok                AUTH ok
//! AwaitHello ─────────► AwaitAuth ─────────────► Ready
//!     │  └──────────────(no token)───────────────▲  │
//!     │ fatal error, BYE, timeout, abort          │  │ BYE, fatal error, timeout, abort
//!     └──────────────────► Closing ◄─────────────┴──┘
//!                             │ output drained
//!                             ▼
//!                           Closed
//! ```
//!
//! A request in the wrong state gets `ERROR(WRONG_STATE)` and the session stays where it is.
//! Fatal errors ([`ErrorCode::closes_session`]) close it. Entering `Closing` releases every
//! buffer the session holds through [`GpuBackend::free`], which zeroes it.
//!
//! # Isolation
//!
//! Buffers are named on the wire by per-session handles from a fixed-capacity table, never by
//! backend ids or addresses. A handle from another session names nothing here. Handles are
//! drawn from an odd-step sequence that starts at a secret seed the host passes to
//! [`Session::new`] (never sent, and independent of the nonce that WELCOME carries), so a
//! client cannot compute another session's handles from what it sees; a freed handle is not
//! reissued for 2³² allocations. The step is public, so a session's own handles follow one
//! another predictably: handles are names, not capabilities, and a handle is only ever
//! looked up in the session that allocated it.

use core::fmt;

use heapless::{Deque, Vec};

use crate::auth::AuthKey;
use crate::backend::{BackendError, BinaryOp, BufferId, DeviceInfo, GpuBackend, KernelCall, KernelId};
use crate::config::{
    HANDSHAKE_MAX_PAYLOAD, MAX_BUFFERS, MAX_MODELS, MAX_PAYLOAD, MAX_PENDING, MAX_PING_PAYLOAD,
    MIN_PROTOCOL_VERSION, NONCE_LEN, PROTOCOL_VERSION,
};
use crate::crc32::Crc32;
use crate::model::{InferOutput, LoadedModel, ModelEntry, ModelHost, NoModels, ProgressTarget};
use crate::time::{Duration, Instant};
use crate::wire::generate::{Generated, PromptKind};
use crate::wire::model_list::{ModelKind, ModelListed};
use crate::wire::msg::{
    self, Allocated, Caps, DeviceInfoMsg, EMBEDDINGS_PREFIX_LEN, ErrorMsg, Message, ModelLoaded, Request,
    Stats, WELCOME_AUTH_REQUIRED, Welcome,
};
use crate::wire::{
    EncodeError, ErrorCode, Flags, Frame, FrameError, HeaderError, HeaderRepr, Kind, emit_frame, emit_header,
};

#[path = "session_compress.rs"]
mod compress;
pub use compress::Refusal;

/// A node's per-session limits and settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest accepted payload; clamped to [`MAX_PAYLOAD`].
    pub max_payload: u32,
    /// Most buffers a session may hold; clamped to [`MAX_BUFFERS`].
    pub max_buffers: u16,
    /// Bytes of backend memory a session may hold at once.
    pub quota: u64,
    /// Time from session start to the end of the handshake (HELLO, and AUTH when required).
    pub handshake_timeout: Duration,
    /// Longest silence tolerated once ready. [`Duration::ZERO`] disables it.
    pub idle_timeout: Duration,
    /// The shared token's key; `Some` makes AUTH mandatory.
    pub auth: Option<AuthKey>,
    /// Whether the node serves models (MODEL_LOAD, MODEL_UNLOAD, INFER, and uploads) through
    /// a [`ModelHost`]; advertised as the MODELS and PROGRESS capabilities.
    pub models: bool,
    /// Whether the node serves LZ4-compressed payloads; advertised as the LZ4 capability. The
    /// host then decompresses compressed WRITE and MODEL_CHUNK frames itself, after
    /// [`Session::check_compressed`], and hands the session the plain frame; it may compress
    /// the answer to a READ that asked for it.
    pub lz4: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_payload: MAX_PAYLOAD,
            max_buffers: 64,
            quota: 256 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            auth: None,
            models: false,
            lz4: false,
        }
    }
}

impl SessionConfig {
    /// The payload cap in force.
    pub fn effective_max_payload(&self) -> u32 {
        self.max_payload.min(MAX_PAYLOAD)
    }

    /// The buffer cap in force.
    pub fn effective_max_buffers(&self) -> usize {
        (self.max_buffers as usize).min(MAX_BUFFERS)
    }

    /// The capabilities a node with this configuration advertises.
    pub const fn caps(&self) -> Caps {
        let caps = if self.models {
            Caps(Caps::DISPATCH.0 | Caps::MODELS.0 | Caps::PROGRESS.0)
        } else {
            Caps::DISPATCH
        };
        if self.lz4 { Caps(caps.0 | Caps::LZ4.0) } else { caps }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for HELLO.
    AwaitHello,
    /// HELLO done; waiting for AUTH.
    AwaitAuth,
    /// Serving requests.
    Ready,
    /// Closing: resources released, final output pending.
    Closing,
    /// Closed: nothing more will be sent.
    Closed,
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said BYE.
    Bye,
    /// A fatal error (the code sent to the client).
    Error(ErrorCode),
    /// The host aborted it (disconnect, shutdown).
    Aborted,
}

/// Something the host may want to log or act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished; the session is ready.
    Ready,
    /// AUTH failed.
    AuthFailed,
    /// The session closed.
    Closed(CloseReason),
}

/// One frame ready in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Bytes of the frame at the start of the buffer.
    pub len: usize,
}

/// Misuse of the session API by the host (never caused by the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// Output from the previous input has not been drained with `poll_transmit`.
    OutputPending,
    /// The session is closing or closed.
    Closed,
    /// [`Session::finish_write`] after the session changed since [`Session::begin_write`].
    StaleWrite,
}

/// A WRITE the host carries out itself, from [`Session::begin_write`]: the data goes to
/// `offset..offset + len` of backend buffer `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectWrite {
    /// The backend buffer.
    pub id: BufferId,
    /// The session's handle of the buffer.
    pub handle: u32,
    /// Where the data starts in the buffer.
    pub offset: u64,
    /// Bytes of data (the payload less the 12-byte prefix).
    pub len: u64,
    /// The request's sequence number.
    pub seq: u16,
}

impl fmt::Display for ApiMisuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutputPending => "output pending: drain poll_transmit first",
            Self::Closed => "session is closed",
            Self::StaleWrite => "finish_write after other input to the session",
        })
    }
}

impl core::error::Error for ApiMisuse {}

/// Why `poll_transmit` could not emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollError {
    /// The output buffer is too small; the frame stays queued.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// [`Session::transmit_read_header`] when the next response is not READ data of that
    /// length; nothing was emitted.
    NotReadData,
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "output buffer too small ({needed} bytes needed)"),
            Self::NotReadData => f.write_str("the next response is not the READ data that was passed"),
        }
    }
}

/// READ data waiting to be sent ([`Session::peek_read`]): bytes `offset..offset + len` of
/// backend buffer `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRead {
    /// The backend buffer.
    pub id: BufferId,
    /// Where the data starts in the buffer.
    pub offset: u64,
    /// Bytes of data.
    pub len: u32,
}

impl core::error::Error for PollError {}

impl From<EncodeError> for PollError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::BufferTooSmall { needed } => Self::BufferTooSmall { needed },
            // Every queued body is bounded by construction (ping ≤ 256 B, reasons ≤ 128 B,
            // reads ≤ max payload), so only a short buffer can make encoding fail.
            EncodeError::TooLarge => Self::BufferTooSmall { needed: usize::MAX },
        }
    }
}

/// A session's usage and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Buffers held.
    pub buffers: u32,
    /// Bytes held.
    pub used: u64,
    /// Request frames handled.
    pub frames_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    handle: u32,
    id: BufferId,
    size: u64,
}

/// A staged model upload: its announced size and the bytes received so far.
#[derive(Debug, Clone, Copy)]
struct Upload {
    size: u64,
    received: u64,
}

#[derive(Debug, Clone)]
enum Body {
    Empty,
    Welcome(Welcome),
    Pong(Vec<u8, MAX_PING_PAYLOAD>),
    DeviceInfo { info: DeviceInfo, free: u64, shared: u64 },
    Stats(Stats),
    Allocated(Allocated),
    Read { id: BufferId, offset: u64, len: u32 },
    ModelLoaded(ModelLoaded),
    ModelListed(ModelEntry),
    Embeddings(InferOutput),
    Generated(Generated),
    Error { code: ErrorCode, request_kind: Kind, reason: &'static str },
}

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    seq: u16,
    body: Body,
}

/// A failed request: the code and reason sent back in ERROR.
#[derive(Debug, Clone, Copy)]
struct Reject {
    code: ErrorCode,
    reason: &'static str,
}

impl Reject {
    const fn new(code: ErrorCode, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

impl From<BackendError> for Reject {
    fn from(e: BackendError) -> Self {
        let reason = match e {
            BackendError::OutOfMemory => "backend out of memory",
            BackendError::OutOfBounds => "range outside the buffer",
            BackendError::NoSuchBuffer => "no such buffer",
            BackendError::InvalidArgument => "invalid argument",
            BackendError::Unsupported => "not supported by this backend",
            BackendError::DeviceLost => "backend failure",
            BackendError::LimitExceeded => "over the node's per-request cost limit",
            BackendError::Leased => "buffer memory is lent out (node bug)",
        };
        Self { code: e.into(), reason }
    }
}

/// One client session on a node. See the [module docs](self) for the call order.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    nonce: [u8; NONCE_LEN],
    slots: Vec<Slot, MAX_BUFFERS>,
    models: Vec<LoadedModel, MAX_MODELS>,
    /// The staged model upload (MODEL_UPLOAD until MODEL_COMMIT); its `size` is in `used`.
    upload: Option<Upload>,
    /// The capabilities the client asked for in HELLO.
    client_caps: Caps,
    next_handle: u32,
    used: u64,
    /// The part of `used` that is the model host's working memory ([`ModelHost::working_bytes`]).
    model_working: u64,
    started: Instant,
    last_activity: Instant,
    pending: Deque<Pending, MAX_PENDING>,
    events: Deque<Event, 4>,
    stats: SessionStats,
}

impl Session {
    /// Starts a session at `now`. `nonce` must be fresh and unpredictable (from the host's
    /// CSPRNG): AUTH signs it, and WELCOME sends it. `handle_seed` must be drawn separately
    /// from the same CSPRNG and is never sent: the session's buffer handles start from it.
    pub fn new(config: SessionConfig, nonce: [u8; NONCE_LEN], handle_seed: u32, now: Instant) -> Self {
        Self {
            config,
            state: State::AwaitHello,
            nonce,
            slots: Vec::new(),
            models: Vec::new(),
            upload: None,
            client_caps: Caps(0),
            next_handle: handle_seed,
            used: 0,
            model_working: 0,
            started: now,
            last_activity: now,
            pending: Deque::new(),
            events: Deque::new(),
            stats: SessionStats::default(),
        }
    }

    // ---- getters ----

    /// The current state.
    pub const fn state(&self) -> State {
        self.state
    }

    /// Whether the session is serving requests.
    pub const fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// Whether the session has closed and its output is drained.
    pub const fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The payload cap hosts must apply when reading the next header for this session:
    /// [`HANDSHAKE_MAX_PAYLOAD`] until the session is ready, the configured cap after.
    pub fn max_payload(&self) -> u32 {
        let cap = self.config.effective_max_payload();
        if self.is_ready() { cap } else { cap.min(HANDSHAKE_MAX_PAYLOAD) }
    }

    /// The session's configuration.
    pub const fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The server nonce sent in WELCOME.
    pub const fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Usage and counters.
    pub fn stats(&self) -> SessionStats {
        SessionStats { buffers: self.slots.len() as u32, used: self.used, ..self.stats }
    }

    /// The backend ids this session holds, for invariant checks (fuzzing, tests).
    pub fn buffer_ids(&self) -> impl Iterator<Item = BufferId> + '_ {
        self.slots.iter().map(|s| s.id)
    }

    /// The models this session has loaded.
    pub fn models(&self) -> &[LoadedModel] {
        &self.models
    }

    /// The wire handles this session holds.
    pub fn handles(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().map(|s| s.handle)
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitHello | State::AwaitAuth => Some(self.started + self.config.handshake_timeout),
            State::Ready if self.config.idle_timeout != Duration::ZERO => {
                Some(self.last_activity + self.config.idle_timeout)
            }
            _ => None,
        }
    }

    // ---- inputs ----

    /// Handles one validated frame from the client.
    ///
    /// Protocol errors never come back as `Err`: they become ERROR frames (and close the
    /// session when fatal). `Err` means the host broke the call order.
    pub fn handle_frame<B: GpuBackend + ?Sized>(
        &mut self,
        now: Instant,
        frame: Frame<'_>,
        backend: &mut B,
    ) -> Result<(), ApiMisuse> {
        self.handle_frame_with(now, frame, backend, &mut NoModels)
    }

    /// [`handle_frame`](Self::handle_frame) for a node that serves models: MODEL_LOAD,
    /// MODEL_UNLOAD and INFER go to `models` (this session's model host). When the session
    /// closes, call [`ModelHost::release_all`] on it.
    pub fn handle_frame_with<B: GpuBackend + ?Sized, M: ModelHost<B> + ?Sized>(
        &mut self,
        now: Instant,
        frame: Frame<'_>,
        backend: &mut B,
        models: &mut M,
    ) -> Result<(), ApiMisuse> {
        self.check_input()?;
        self.count_input(now, frame.payload.len() as u64);
        let kind = frame.kind();
        let seq = frame.seq();
        let outcome = self.dispatch(frame, backend, models);
        match outcome {
            Ok(Some(body)) => self.queue(kind, seq, body),
            Ok(None) => {}
            Err(reject) => self.reject(kind, seq, reject, backend),
        }
        Ok(())
    }

    /// Decides a WRITE from its header and fixed prefix alone (`payload` holds at least the
    /// first 12 bytes: handle and offset), before its data is read, so that a host whose
    /// backend exposes its storage ([`GpuBackend::storage_range`]) can read the data from the
    /// transport straight into the buffer.
    ///
    /// `Some` only for a WRITE that [`handle_frame`](Self::handle_frame) would carry out: the
    /// session is ready with no output pending, the flags are clear, and the range lies inside
    /// one of this session's buffers. The host then places the data at
    /// [`DirectWrite::offset`] of buffer [`DirectWrite::id`], checks the frame's CRC, and calls
    /// [`finish_write`](Self::finish_write); or, if the transport or the CRC fails,
    /// [`abort`](Self::abort) or [`handle_frame_error`](Self::handle_frame_error) as for any
    /// frame. It must not give the session any other input in between.
    ///
    /// `None` changes nothing: the host reads the frame as usual and hands it to `handle_frame`,
    /// which answers it (with the ERROR the request deserves).
    #[must_use]
    pub fn begin_write<B: GpuBackend + ?Sized>(
        &self,
        header: &HeaderRepr,
        payload: &[u8],
        backend: &B,
    ) -> Option<DirectWrite> {
        if self.check_input().is_err() || self.state != State::Ready {
            return None;
        }
        if header.kind != Kind::WRITE || header.flags != Flags::NONE {
            return None;
        }
        let prefix = payload.get(..msg::WRITE_PREFIX_LEN)?;
        let w = msg::Write::parse(prefix).ok()?;
        let len = u64::from(header.len).checked_sub(msg::WRITE_PREFIX_LEN as u64)?;
        let slot = self.slot(w.handle).ok()?;
        Self::range(&slot, w.offset, len).ok()?;
        // The buffer exists in the backend (every slot does); asked for completeness.
        backend.size(slot.id).ok()?;
        Some(DirectWrite { id: slot.id, handle: w.handle, offset: w.offset, len, seq: header.seq })
    }

    /// Completes a WRITE begun with [`begin_write`](Self::begin_write) whose data the host has
    /// placed in the buffer and whose CRC it has checked: counts the frame and queues the
    /// acknowledgement, exactly as [`handle_frame`](Self::handle_frame) would have.
    ///
    /// `Err(ApiMisuse::StaleWrite)` if the session changed since `begin_write` (the host gave it
    /// other input in between); nothing is queued then.
    pub fn finish_write(&mut self, now: Instant, write: &DirectWrite) -> Result<(), ApiMisuse> {
        self.check_input()?;
        let slot = self.slot(write.handle).map_err(|_| ApiMisuse::StaleWrite)?;
        if slot.id != write.id
            || self.state != State::Ready
            || Self::range(&slot, write.offset, write.len).is_err()
        {
            return Err(ApiMisuse::StaleWrite);
        }
        self.count_input(now, write.len + msg::WRITE_PREFIX_LEN as u64);
        self.queue(Kind::WRITE, write.seq, Body::Empty);
        Ok(())
    }

    /// Reports a frame the host could not validate (bad header, bad CRC, truncated).
    /// Sends ERROR and closes the session: after a framing violation the byte stream can no
    /// longer be trusted.
    pub fn handle_frame_error<B: GpuBackend + ?Sized>(
        &mut self,
        _now: Instant,
        error: FrameError,
        backend: &mut B,
    ) -> Result<(), ApiMisuse> {
        self.check_input()?;
        let (code, reason) = match error {
            FrameError::Header(HeaderError::PayloadTooLarge { .. }) => {
                (ErrorCode::PAYLOAD_TOO_LARGE, "payload length above the negotiated limit")
            }
            FrameError::Header(HeaderError::BadMagic(_)) => (ErrorCode::BAD_FRAME, "bad magic"),
            FrameError::Header(HeaderError::ReservedFlags(_)) => {
                (ErrorCode::BAD_FRAME, "reserved flag bits set")
            }
            FrameError::BadCrc { .. } => (ErrorCode::BAD_FRAME, "CRC mismatch"),
            _ => (ErrorCode::BAD_FRAME, "malformed frame"),
        };
        self.close_with_error(Kind(0), 0, Reject::new(code, reason), backend);
        Ok(())
    }

    /// Fires due timers. Sends ERROR(TIMEOUT) and closes the session if the handshake or idle
    /// deadline has passed; does nothing otherwise.
    pub fn handle_timeout<B: GpuBackend + ?Sized>(&mut self, now: Instant, backend: &mut B) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
        {
            let reason = if self.is_ready() { "idle timeout" } else { "handshake timeout" };
            self.pending.clear();
            self.close_with_error(Kind(0), 0, Reject::new(ErrorCode::TIMEOUT, reason), backend);
        }
    }

    /// Ends the session without sending anything (transport gone, node shutting down):
    /// releases and zeroes every buffer it holds.
    pub fn abort<B: GpuBackend + ?Sized>(&mut self, backend: &mut B) {
        if self.is_closed() {
            return;
        }
        self.release(backend);
        self.pending.clear();
        self.enter_closed(CloseReason::Aborted);
    }

    /// Sends a final ERROR with `code` (e.g. SHUTTING_DOWN) and closes the session.
    pub fn close_with<B: GpuBackend + ?Sized>(
        &mut self,
        code: ErrorCode,
        reason: &'static str,
        backend: &mut B,
    ) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.pending.clear();
        self.close_with_error(Kind(0), 0, Reject::new(code, reason), backend);
    }

    // ---- outputs ----

    /// Writes the next response frame into `out`. `Ok(None)` when there is nothing to send.
    ///
    /// `out` must hold a header plus the largest payload the session may send: a READ response
    /// can be up to [`max_payload`](Self::max_payload) bytes, and it is read from the backend
    /// straight into `out`.
    #[must_use = "a response frame must be sent"]
    pub fn poll_transmit<C: Crc32, B: GpuBackend + ?Sized>(
        &mut self,
        backend: &mut B,
        out: &mut [u8],
    ) -> Result<Option<Transmit>, PollError> {
        let Some(p) = self.pending.front() else {
            return Ok(None);
        };
        let payload_out = out.get_mut(crate::config::HEADER_LEN..).unwrap_or(&mut []);
        let (kind, flags, len) = match &p.body {
            Body::Read { id, offset, len } => {
                let len = *len as usize;
                let needed = crate::config::HEADER_LEN + len;
                let dst = payload_out.get_mut(..len).ok_or(PollError::BufferTooSmall { needed })?;
                match backend.read(*id, *offset, dst) {
                    Ok(()) => (p.kind, Flags::RESPONSE, len),
                    Err(e) => {
                        let r = Reject::from(e);
                        let m = ErrorMsg { code: r.code, request_kind: p.kind, reason: r.reason };
                        (Kind::ERROR, ErrorMsg::flags(), m.emit(payload_out)?)
                    }
                }
            }
            Body::Embeddings(e) => {
                // At most the session's max payload: `on_model` refused larger answers (in u64).
                let data = e.count as usize * e.dim as usize * 4;
                let needed = crate::config::HEADER_LEN + EMBEDDINGS_PREFIX_LEN + data;
                let dst = payload_out
                    .get_mut(..EMBEDDINGS_PREFIX_LEN + data)
                    .ok_or(PollError::BufferTooSmall { needed })?;
                dst[0..2].copy_from_slice(&e.count.to_le_bytes());
                dst[2..4].copy_from_slice(&e.dim.to_le_bytes());
                match backend.read(e.buffer, 0, &mut dst[EMBEDDINGS_PREFIX_LEN..]) {
                    Ok(()) => (p.kind, Flags::RESPONSE, EMBEDDINGS_PREFIX_LEN + data),
                    Err(err) => {
                        let r = Reject::from(err);
                        let m = ErrorMsg { code: r.code, request_kind: p.kind, reason: r.reason };
                        (Kind::ERROR, ErrorMsg::flags(), m.emit(payload_out)?)
                    }
                }
            }
            body => {
                let (kind, flags, len) = Self::emit_body(p.kind, body, payload_out)?;
                (kind, flags, len)
            }
        };
        let n = emit_frame::<C>(out, kind, flags, p.seq, len)?;
        self.sent(len as u64);
        Ok(Some(Transmit { len: n }))
    }

    /// The next response, when it is READ data and the only frame queued: where the data lies.
    ///
    /// A host whose backend keeps its storage in memory the host can reach
    /// ([`GpuBackend::storage_range`]) may send those bytes from there itself, behind the
    /// header from [`transmit_read_header`](Self::transmit_read_header), instead of having
    /// [`poll_transmit`](Self::poll_transmit) copy them into its buffer. The bytes must not
    /// change until they are sent: the host gives the session no input that could write to
    /// the buffer (or free it) until then.
    #[must_use]
    pub fn peek_read(&self) -> Option<PendingRead> {
        match self.pending.front() {
            Some(Pending { body: Body::Read { id, offset, len }, .. }) if self.pending.len() == 1 => {
                Some(PendingRead { id: *id, offset: *offset, len: *len })
            }
            _ => None,
        }
    }

    /// Emits into `out` the header of the READ response that [`peek_read`](Self::peek_read)
    /// reported, for `data`: the bytes the host will send right behind it (the buffer's range,
    /// read from the backend's storage), which its CRC covers. Dequeues the response, counting
    /// its bytes as sent. `Err(NotReadData)` if the next response is not READ data of
    /// `data.len()` bytes.
    #[must_use = "the header must be sent, followed by the data"]
    pub fn transmit_read_header<C: Crc32>(
        &mut self,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, PollError> {
        let Some(p) = self.pending.front() else {
            return Err(PollError::NotReadData);
        };
        let len = match p.body {
            Body::Read { len, .. } if len as usize == data.len() => len,
            _ => return Err(PollError::NotReadData),
        };
        emit_header::<C>(out, p.kind, Flags::RESPONSE, p.seq, data)?;
        self.sent(u64::from(len));
        Ok(Transmit { len: crate::config::HEADER_LEN })
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    /// One frame of `bytes` payload bytes came in at `now`.
    fn count_input(&mut self, now: Instant, bytes: u64) {
        self.last_activity = now;
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes;
    }

    /// The front response went out with `payload` bytes: dequeues it, and a closing session
    /// whose output is drained is closed.
    fn sent(&mut self, payload: u64) {
        self.stats.bytes_out += payload;
        self.pending.pop_front();
        if self.pending.is_empty() && matches!(self.state, State::Closing) {
            self.state = State::Closed;
        }
    }

    fn check_input(&self) -> Result<(), ApiMisuse> {
        if matches!(self.state, State::Closing | State::Closed) {
            return Err(ApiMisuse::Closed);
        }
        if !self.pending.is_empty() {
            return Err(ApiMisuse::OutputPending);
        }
        Ok(())
    }

    fn emit_body(kind: Kind, body: &Body, out: &mut [u8]) -> Result<(Kind, Flags, usize), EncodeError> {
        let r = Flags::RESPONSE;
        Ok(match body {
            Body::Empty => (kind, r, 0),
            Body::Welcome(m) => (kind, r, m.emit(out)?),
            Body::Pong(data) => (kind, r, msg::Ping { data }.emit(out)?),
            Body::DeviceInfo { info, free, shared } => {
                let m = DeviceInfoMsg {
                    backend: info.backend,
                    total: info.total,
                    free: *free,
                    max_alloc: info.max_alloc,
                    name: &info.name,
                    vendor: &info.vendor,
                    shared_models: Some(*shared),
                };
                (kind, r, m.emit(out)?)
            }
            Body::Stats(m) => (kind, r, m.emit(out)?),
            Body::Allocated(m) => (kind, r, m.emit(out)?),
            Body::ModelLoaded(m) => (kind, r, m.emit(out)?),
            Body::ModelListed(e) => {
                let m = ModelListed { count: e.count, kind: e.kind, name: &e.name };
                (kind, r, m.emit(out)?)
            }
            Body::Generated(m) => (kind, r, m.emit(out)?),
            Body::Error { code, request_kind, reason } => {
                let m = ErrorMsg { code: *code, request_kind: *request_kind, reason };
                (Kind::ERROR, ErrorMsg::flags(), m.emit(out)?)
            }
            // Read and embedding bodies are emitted by poll_transmit, which reads the backend
            // into `out`.
            Body::Read { .. } | Body::Embeddings(_) => (kind, r, 0),
        })
    }

    fn queue(&mut self, kind: Kind, seq: u16, body: Body) {
        // Each input queues at most MAX_PENDING frames and input is refused until output is
        // drained, so the queue cannot be full here.
        let _ = self.pending.push_back(Pending { kind, seq, body });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }

    fn reject<B: GpuBackend + ?Sized>(&mut self, kind: Kind, seq: u16, r: Reject, backend: &mut B) {
        if r.code.closes_session() {
            self.close_with_error(kind, seq, r, backend);
        } else {
            self.queue(kind, seq, Body::Error { code: r.code, request_kind: kind, reason: r.reason });
        }
    }

    fn close_with_error<B: GpuBackend + ?Sized>(&mut self, kind: Kind, seq: u16, r: Reject, backend: &mut B) {
        self.release(backend);
        self.queue(kind, seq, Body::Error { code: r.code, request_kind: kind, reason: r.reason });
        self.state = State::Closing;
        self.push_event(Event::Closed(CloseReason::Error(r.code)));
    }

    fn enter_closed(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.push_event(Event::Closed(reason));
    }

    /// Frees (and so zeroes) every buffer, trying each failed free once more (a transient
    /// backend failure must not leak memory for the node's lifetime). If the backend still
    /// fails, the session's claim ends anyway and the backend's own accounting shows the leak.
    fn release<B: GpuBackend + ?Sized>(&mut self, backend: &mut B) {
        for slot in self.slots.iter() {
            if backend.free(slot.id).is_err() {
                let _ = backend.free(slot.id);
            }
        }
        self.slots.clear();
        self.models.clear();
        self.upload = None;
        self.used = 0;
        self.model_working = 0;
    }

    fn slot(&self, handle: u32) -> Result<Slot, Reject> {
        self.slots
            .iter()
            .find(|s| s.handle == handle)
            .copied()
            .ok_or(Reject::new(ErrorCode::NO_SUCH_BUFFER, "no such buffer in this session"))
    }

    fn range(slot: &Slot, offset: u64, len: u64) -> Result<(), Reject> {
        crate::backend::check_range(slot.size, offset, len)
            .map(|_| ())
            .map_err(|_| Reject::new(ErrorCode::OUT_OF_BOUNDS, "range outside the buffer"))
    }

    fn fresh_handle(&mut self) -> u32 {
        loop {
            self.next_handle = self.next_handle.wrapping_add(0x9E37_79B9);
            let h = self.next_handle;
            if h != 0 && !self.slots.iter().any(|s| s.handle == h) {
                return h;
            }
        }
    }

    fn dispatch<B: GpuBackend + ?Sized, M: ModelHost<B> + ?Sized>(
        &mut self,
        frame: Frame<'_>,
        backend: &mut B,
        models: &mut M,
    ) -> Result<Option<Body>, Reject> {
        let kind = frame.kind();
        let flags = frame.header.flags;
        if flags.is_response() {
            return Err(Reject::new(ErrorCode::MALFORMED, "response flag set on a request"));
        }
        // A compressed READ asks for a compressed answer, which the host makes (or not): the
        // session serves it as a plain READ. Any other compressed frame reaching the session
        // is one the host could not decompress.
        if flags.contains(Flags::COMPRESSED) && !(kind == Kind::READ && self.lz4()) {
            self.compressed_target(&frame.header, frame.payload)?;
            return Err(Reject::new(ErrorCode::MALFORMED, "compressed data does not decode"));
        }
        let request = Request::parse(kind, frame.payload)
            .map_err(|_| Reject::new(ErrorCode::MALFORMED, "payload does not decode"))?;
        match (self.state, request) {
            (_, Request::Unknown(_)) => Err(Reject::new(ErrorCode::UNKNOWN_KIND, "unknown message kind")),
            (_, Request::Bye) => {
                self.release(backend);
                self.queue(kind, frame.seq(), Body::Empty);
                self.state = State::Closing;
                self.push_event(Event::Closed(CloseReason::Bye));
                Ok(None)
            }
            (State::AwaitHello, Request::Hello(h)) => self.on_hello(h).map(Some),
            (State::AwaitAuth, Request::Auth(a)) => {
                let ok = self.config.auth.as_ref().is_some_and(|key| key.verify_auth(&self.nonce, &a.mac));
                if ok {
                    self.state = State::Ready;
                    self.push_event(Event::Ready);
                    Ok(Some(Body::Empty))
                } else {
                    self.push_event(Event::AuthFailed);
                    Err(Reject::new(ErrorCode::AUTH_FAILED, "authentication failed"))
                }
            }
            (
                State::Ready,
                req @ (Request::ModelLoad(_)
                | Request::ModelUnload(_)
                | Request::Infer(_)
                | Request::ModelUpload(_)
                | Request::ModelChunk(_)
                | Request::ModelCommit
                | Request::Generate(_)
                | Request::ModelList(_)),
            ) => {
                let progress = self.progress_target(kind, frame.seq());
                self.on_model(req, backend, models, progress, frame.seq()).map(Some)
            }
            (State::Ready, req) => self.on_ready(req, backend, models.shared_bytes()),
            (State::AwaitHello, _) => Err(Reject::new(ErrorCode::WRONG_STATE, "HELLO required first")),
            (State::AwaitAuth, _) => Err(Reject::new(ErrorCode::WRONG_STATE, "AUTH required first")),
            (State::Closing | State::Closed, _) => {
                Err(Reject::new(ErrorCode::WRONG_STATE, "session closing"))
            }
        }
    }

    fn on_hello(&mut self, h: msg::Hello) -> Result<Body, Reject> {
        let lo = h.min_version.max(MIN_PROTOCOL_VERSION);
        let hi = h.max_version.min(PROTOCOL_VERSION);
        if lo > hi {
            return Err(Reject::new(ErrorCode::VERSION_MISMATCH, "no common protocol version"));
        }
        let auth = self.config.auth.is_some();
        let welcome = Welcome {
            version: hi,
            flags: if auth { WELCOME_AUTH_REQUIRED } else { 0 },
            caps: self.config.caps(),
            max_payload: self.config.effective_max_payload(),
            max_buffers: self.config.effective_max_buffers() as u32,
            quota: self.config.quota,
            handshake_timeout_ms: self.config.handshake_timeout.as_millis_u32(),
            idle_timeout_ms: self.config.idle_timeout.as_millis_u32(),
            nonce: self.nonce,
        };
        self.client_caps = h.caps;
        if auth {
            self.state = State::AwaitAuth;
        } else {
            self.state = State::Ready;
            self.push_event(Event::Ready);
        }
        Ok(Body::Welcome(welcome))
    }

    /// A request of a ready session; `shared` is the model host's shared model bytes (for
    /// DEVICE_INFO).
    fn on_ready<B: GpuBackend + ?Sized>(
        &mut self,
        req: Request<'_>,
        backend: &mut B,
        shared: u64,
    ) -> Result<Option<Body>, Reject> {
        let body = match req {
            Request::Hello(_) => return Err(Reject::new(ErrorCode::WRONG_STATE, "HELLO already done")),
            Request::Auth(_) => return Err(Reject::new(ErrorCode::WRONG_STATE, "AUTH not expected")),
            Request::Ping(p) => {
                let mut data = Vec::new();
                // Ping::parse bounds the payload to MAX_PING_PAYLOAD, the vector's capacity.
                data.extend_from_slice(p.data)
                    .map_err(|_| Reject::new(ErrorCode::MALFORMED, "ping payload too long"))?;
                Body::Pong(data)
            }
            Request::DeviceInfo => {
                let info = backend.info();
                let free = info.total.saturating_sub(backend.usage().used);
                Body::DeviceInfo { info, free, shared }
            }
            Request::Stats => {
                let s = self.stats();
                Body::Stats(Stats {
                    buffers: s.buffers,
                    max_buffers: self.config.effective_max_buffers() as u32,
                    used: s.used,
                    quota: self.config.quota,
                    frames_in: s.frames_in,
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out,
                    shared_models: Some(shared),
                })
            }
            Request::Alloc(a) => {
                if a.size == 0 {
                    return Err(Reject::new(ErrorCode::INVALID_ARGUMENT, "zero-size allocation"));
                }
                if a.size > self.config.quota.saturating_sub(self.used) {
                    return Err(Reject::new(ErrorCode::QUOTA_EXCEEDED, "session quota exceeded"));
                }
                if self.slots.len() >= self.config.effective_max_buffers() {
                    return Err(Reject::new(ErrorCode::TOO_MANY_BUFFERS, "session buffer limit reached"));
                }
                let id = backend.alloc(a.size)?;
                // Backed now, or not at all: the client learns here that the device has no
                // memory for it, not at a later WRITE.
                if let Err(e) = backend.commit(id, 0, a.size) {
                    let _ = backend.free(id);
                    return Err(e.into());
                }
                let handle = self.fresh_handle();
                // Capacity was checked above (effective_max_buffers <= MAX_BUFFERS).
                if self.slots.push(Slot { handle, id, size: a.size }).is_err() {
                    let _ = backend.free(id);
                    return Err(Reject::new(ErrorCode::TOO_MANY_BUFFERS, "session buffer limit reached"));
                }
                self.used += a.size;
                Body::Allocated(Allocated { handle, size: a.size })
            }
            Request::Free(f) => {
                let slot = self.slot(f.handle)?;
                // Only a successful free ends the session's claim: if the backend fails, the
                // handle stays valid so the client can retry, and close retries it too.
                backend.free(slot.id)?;
                self.slots.retain(|s| s.handle != f.handle);
                self.used -= slot.size;
                Body::Empty
            }
            Request::Write(w) => {
                let slot = self.slot(w.handle)?;
                Self::range(&slot, w.offset, w.data.len() as u64)?;
                backend.write(slot.id, w.offset, w.data)?;
                Body::Empty
            }
            Request::Read(r) => {
                let slot = self.slot(r.handle)?;
                if r.len > self.config.effective_max_payload() {
                    return Err(Reject::new(ErrorCode::INVALID_ARGUMENT, "read length above max payload"));
                }
                Self::range(&slot, r.offset, r.len as u64)?;
                Body::Read { id: slot.id, offset: r.offset, len: r.len }
            }
            Request::Copy(c) => {
                let src = self.slot(c.src)?;
                let dst = self.slot(c.dst)?;
                Self::range(&src, c.src_offset, c.len)?;
                Self::range(&dst, c.dst_offset, c.len)?;
                let sr = c.src_offset..c.src_offset + c.len;
                let dr = c.dst_offset..c.dst_offset + c.len;
                crate::backend::check_copy_overlap(src.id, &sr, dst.id, &dr)
                    .map_err(|_| Reject::new(ErrorCode::INVALID_ARGUMENT, "overlapping copy"))?;
                backend.copy(src.id, c.src_offset, dst.id, c.dst_offset, c.len)?;
                Body::Empty
            }
            Request::Fill(f) => {
                let slot = self.slot(f.handle)?;
                Self::range(&slot, f.offset, f.len)?;
                backend.fill(slot.id, f.offset, f.len, f.value)?;
                Body::Empty
            }
            Request::Dispatch(d) => {
                let call = self.kernel_call(&d)?;
                call.validate(|id| self.slots.iter().find(|s| s.id == id).map(|s| s.size))
                    .map_err(Reject::from)?;
                backend.dispatch(&call)?;
                Body::Empty
            }
            // Handled before the state match.
            // A generation in progress is stopped by the host before this CANCEL reaches the
            // session (requests are handled in order): what is left is the acknowledgement.
            Request::Cancel => Body::Empty,
            Request::Bye
            | Request::Unknown(_)
            | Request::Generate(_)
            | Request::ModelList(_)
            | Request::ModelLoad(_)
            | Request::ModelUnload(_)
            | Request::Infer(_)
            | Request::ModelUpload(_)
            | Request::ModelChunk(_)
            | Request::ModelCommit => {
                return Err(Reject::new(ErrorCode::INTERNAL, "unreachable request routing"));
            }
        };
        Ok(Some(body))
    }

    /// Where a long request's PROGRESS frames go: only to a client that asked for them, from a
    /// node that sends them.
    fn progress_target(&self, kind: Kind, seq: u16) -> Option<ProgressTarget> {
        self.client_caps
            .intersection(self.config.caps())
            .contains(Caps::PROGRESS)
            .then_some(ProgressTarget { kind, seq })
    }

    /// Records a model the host loaded, after checking it kept its side of the contract.
    fn adopt_model<B: GpuBackend + ?Sized, M: ModelHost<B> + ?Sized>(
        &mut self,
        loaded: LoadedModel,
        budget: u64,
        backend: &mut B,
        models: &mut M,
    ) -> Result<Body, Reject> {
        if loaded.bytes > budget || self.models.iter().any(|x| x.id == loaded.id) || self.models.is_full() {
            // The host broke its contract: undo, and refuse.
            let _ = models.unload(backend, loaded.id);
            return Err(Reject::new(ErrorCode::QUOTA_EXCEEDED, "model does not fit the session quota"));
        }
        // Not full: checked above.
        let _ = self.models.push(loaded);
        self.used += loaded.bytes;
        Ok(Body::ModelLoaded(ModelLoaded { model: loaded.id, dim: loaded.dim, bytes: loaded.bytes }))
    }

    /// A model request, then the host's working memory charged to the session anew (it may
    /// have grown with an INFER or shrunk with an unload), whatever the outcome.
    fn on_model<B: GpuBackend + ?Sized, M: ModelHost<B> + ?Sized>(
        &mut self,
        req: Request<'_>,
        backend: &mut B,
        models: &mut M,
        progress: Option<ProgressTarget>,
        seq: u16,
    ) -> Result<Body, Reject> {
        let result = self.on_model_request(req, backend, models, progress, seq);
        let working = models.working_bytes();
        self.used = (self.used - self.model_working).saturating_add(working);
        self.model_working = working;
        result
    }

    fn on_model_request<B: GpuBackend + ?Sized, M: ModelHost<B> + ?Sized>(
        &mut self,
        req: Request<'_>,
        backend: &mut B,
        models: &mut M,
        progress: Option<ProgressTarget>,
        seq: u16,
    ) -> Result<Body, Reject> {
        if !self.config.models {
            return Err(Reject::new(ErrorCode::UNSUPPORTED, "this node serves no models"));
        }
        let wire = |e: crate::model::ModelError| {
            let (code, reason) = e.wire();
            Reject::new(code, reason)
        };
        let known = |models: &Vec<LoadedModel, MAX_MODELS>, id: u32| {
            models
                .iter()
                .position(|m| m.id == id)
                .ok_or(Reject::new(ErrorCode::NO_SUCH_MODEL, "no such model"))
        };
        match req {
            Request::ModelList(l) => {
                let entry = models.list(l.index);
                // The host keeps its side: a name exactly when a kind, and one MODEL_LOAD takes.
                let none = entry.kind == ModelKind::NONE;
                if none != entry.name.is_empty() || !(none || msg::valid_model_name(&entry.name)) {
                    return Err(Reject::new(ErrorCode::INTERNAL, "model list entry is not a model name"));
                }
                Ok(Body::ModelListed(entry))
            }
            Request::ModelLoad(m) => {
                if self.models.is_full() {
                    return Err(Reject::new(ErrorCode::TOO_MANY_BUFFERS, "session model limit reached"));
                }
                let budget = self.config.quota.saturating_sub(self.used);
                let loaded = models.load(backend, m.name, budget, progress).map_err(wire)?;
                self.adopt_model(loaded, budget, backend, models)
            }
            Request::ModelUpload(u) => {
                if u.size == 0 {
                    return Err(Reject::new(ErrorCode::INVALID_ARGUMENT, "empty upload"));
                }
                if self.models.is_full() {
                    return Err(Reject::new(ErrorCode::TOO_MANY_BUFFERS, "session model limit reached"));
                }
                // A new upload replaces a staged one, whose bytes stop counting.
                let staged = self.upload.map_or(0, |up| up.size);
                if u.size > self.config.quota.saturating_sub(self.used - staged) {
                    return Err(Reject::new(
                        ErrorCode::QUOTA_EXCEEDED,
                        "upload does not fit the session quota",
                    ));
                }
                self.upload = None;
                self.used -= staged;
                models.upload_begin(u.base, u.size).map_err(wire)?;
                self.upload = Some(Upload { size: u.size, received: 0 });
                self.used += u.size;
                Ok(Body::Empty)
            }
            Request::ModelChunk(c) => {
                let up = self
                    .upload
                    .as_mut()
                    .ok_or(Reject::new(ErrorCode::WRONG_STATE, "no upload in progress"))?;
                if c.offset != up.received {
                    return Err(Reject::new(
                        ErrorCode::INVALID_ARGUMENT,
                        "chunk offset is not the number of bytes received so far",
                    ));
                }
                if c.data.len() as u64 > up.size - up.received {
                    return Err(Reject::new(ErrorCode::OUT_OF_BOUNDS, "chunk runs past the upload's size"));
                }
                models.upload_chunk(c.data).map_err(wire)?;
                up.received += c.data.len() as u64;
                Ok(Body::Empty)
            }
            Request::ModelCommit => {
                let up = self.upload.ok_or(Reject::new(ErrorCode::WRONG_STATE, "no upload in progress"))?;
                if up.received != up.size {
                    return Err(Reject::new(ErrorCode::INVALID_ARGUMENT, "upload incomplete"));
                }
                if self.models.is_full() {
                    return Err(Reject::new(ErrorCode::TOO_MANY_BUFFERS, "session model limit reached"));
                }
                // The staged bytes are gone whatever the outcome.
                self.upload = None;
                self.used -= up.size;
                let budget = self.config.quota.saturating_sub(self.used);
                let loaded = models.upload_commit(backend, budget, progress).map_err(wire)?;
                self.adopt_model(loaded, budget, backend, models)
            }
            Request::ModelUnload(u) => {
                let i = known(&self.models, u.model)?;
                let m = self.models.swap_remove(i);
                self.used -= m.bytes;
                models.unload(backend, m.id).map_err(wire)?;
                Ok(Body::Empty)
            }
            Request::Infer(inf) => {
                let i = known(&self.models, inf.model)?;
                // The working memory the host may hold for this session: what the quota leaves
                // besides buffers, weights and staged uploads.
                let budget = self.config.quota.saturating_sub(self.used - self.model_working);
                let out = models.infer(backend, self.models[i].id, &inf, budget).map_err(wire)?;
                let payload = EMBEDDINGS_PREFIX_LEN as u64 + out.count as u64 * out.dim as u64 * 4;
                if out.count as usize != inf.count() || payload > self.config.effective_max_payload() as u64 {
                    return Err(Reject::new(
                        ErrorCode::INVALID_INPUT,
                        "batch too large for one response frame",
                    ));
                }
                Ok(Body::Embeddings(out))
            }
            Request::Generate(g) => {
                let i = known(&self.models, g.model)?;
                if g.max_tokens == 0 {
                    return Err(Reject::new(ErrorCode::INVALID_ARGUMENT, "max_tokens is 0"));
                }
                if !g.sampling.is_valid() {
                    return Err(Reject::new(
                        ErrorCode::INVALID_ARGUMENT,
                        "temperature must be finite and >= 0, top_p in (0, 1]",
                    ));
                }
                if !matches!(g.prompt_kind, PromptKind::TEXT | PromptKind::MESSAGES | PromptKind::TOKENS) {
                    return Err(Reject::new(ErrorCode::UNSUPPORTED, "unknown prompt kind"));
                }
                // As for INFER: the working memory (the KV cache) the host may hold.
                let budget = self.config.quota.saturating_sub(self.used - self.model_working);
                let done = models.generate(backend, self.models[i].id, &g, budget, seq).map_err(wire)?;
                Ok(Body::Generated(done))
            }
            _ => Err(Reject::new(ErrorCode::INTERNAL, "unreachable model routing")),
        }
    }

    fn kernel_call(&self, d: &msg::Dispatch) -> Result<KernelCall, Reject> {
        let bad = |reason| Reject::new(ErrorCode::INVALID_ARGUMENT, reason);
        if d.reserved != 0 {
            return Err(Reject::new(ErrorCode::MALFORMED, "reserved field not zero"));
        }
        let id = |h: u32| self.slot(h).map(|s| s.id);
        let unused_zero = |vals: &[u32]| vals.iter().all(|v| *v == 0);
        match d.kernel {
            KernelId::ADD | KernelId::MUL => {
                if !unused_zero(&[d.m, d.k]) || d.alpha.to_bits() != 0 {
                    return Err(bad("unused kernel fields must be zero"));
                }
                let op = if d.kernel == KernelId::ADD { BinaryOp::Add } else { BinaryOp::Mul };
                Ok(KernelCall::Binary { op, a: id(d.a)?, b: id(d.b)?, out: id(d.out)?, n: d.n })
            }
            KernelId::SCALE => {
                if !unused_zero(&[d.b, d.m, d.k]) {
                    return Err(bad("unused kernel fields must be zero"));
                }
                Ok(KernelCall::Scale { x: id(d.a)?, out: id(d.out)?, n: d.n, alpha: d.alpha })
            }
            KernelId::MATMUL => {
                if d.alpha.to_bits() != 0 {
                    return Err(bad("unused kernel fields must be zero"));
                }
                Ok(KernelCall::Matmul { a: id(d.a)?, b: id(d.b)?, out: id(d.out)?, m: d.m, k: d.k, n: d.n })
            }
            _ => Err(Reject::new(ErrorCode::UNSUPPORTED, "unknown kernel")),
        }
    }
}
