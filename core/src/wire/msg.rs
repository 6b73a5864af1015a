//! Payload codecs for every message. All integers are little-endian.
//!
//! Each message type has `parse` (strict: a short payload is [`DecodeError::Truncated`], extra
//! bytes are [`DecodeError::TrailingBytes`]), `buffer_len` and `emit` through the [`Message`]
//! trait. Borrowing messages keep their byte fields as slices of the frame (zero copy).
//!
//! Requests are decoded together by [`Request::parse`] and responses by [`Response::parse`];
//! both keep unknown kinds instead of failing.

use super::generate::{Generate, Generated, TokenMsg};
use super::model_list::{ModelList, ModelListed};
use super::{DecodeError, EncodeError, ErrorCode, Flags, Kind, Reader, Writer};
use crate::backend::{BackendKind, KernelId};
use crate::config::{
    MAC_LEN, MAX_DEVICE_NAME, MAX_ERROR_REASON, MAX_PING_PAYLOAD, MAX_VENDOR_NAME, NONCE_LEN,
};

/// A message payload codec.
pub trait Message<'a>: Sized {
    /// The kind this message travels under.
    const KIND: Kind;
    /// Whether it is a response (header flag bit 0).
    const RESPONSE: bool;

    /// Decodes a payload.
    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError>;
    /// Encoded payload length.
    fn buffer_len(&self) -> usize;
    /// Encodes into `buf`, returning the payload length.
    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError>;

    /// The header flags this message is sent with.
    fn flags() -> Flags {
        match (Self::RESPONSE, Self::KIND == Kind::ERROR) {
            (true, true) => Flags::RESPONSE.union(Flags::ERROR),
            (true, false) => Flags::RESPONSE,
            _ => Flags::NONE,
        }
    }
}

/// Declares a fixed-layout message: its fields, their wire types, and its kind.
macro_rules! fixed_message {
    (
        $(#[$doc:meta])*
        $name:ident, $kind:ident, response = $resp:literal {
            $($(#[$fdoc:meta])* $field:ident : $ty:ty,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $name {
            /// Encoded payload length (fixed).
            pub const LEN: usize = 0 $(+ core::mem::size_of::<$ty>())*;
        }

        impl<'a> Message<'a> for $name {
            const KIND: Kind = Kind::$kind;
            const RESPONSE: bool = $resp;

            fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(payload);
                let msg = Self { $($field: <$ty as WireField>::read(&mut r)?,)* };
                r.finish()?;
                Ok(msg)
            }

            fn buffer_len(&self) -> usize {
                Self::LEN
            }

            #[allow(unused_mut, unused_variables)]
            fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
                let mut w = Writer::new(buf);
                $(WireField::write(self.$field, &mut w)?;)*
                Ok(w.len())
            }
        }
    };
}

/// Capability bits carried by HELLO and WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps(pub u32);

impl Caps {
    /// Built-in kernel dispatch (DISPATCH).
    pub const DISPATCH: Self = Self(1 << 0);
    /// Model loading and inference (MODEL_LOAD, MODEL_UNLOAD, INFER, MODEL_UPLOAD,
    /// MODEL_CHUNK, MODEL_COMMIT).
    pub const MODELS: Self = Self(1 << 1);
    /// LZ4-compressed payloads (header flag COMPRESSED) on WRITE, MODEL_CHUNK and READ answers
    /// ([`crate::wire::compress`]). In WELCOME: the node decompresses them and compresses a
    /// READ's answer on request; in HELLO: the client wants to use them.
    pub const LZ4: Self = Self(1 << 2);
    /// PROGRESS frames before the answer to a long request. A client sets it in HELLO to ask
    /// for them; a node sets it in WELCOME when it sends them.
    pub const PROGRESS: Self = Self(1 << 3);

    /// The bits set in both.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl From<u32> for Caps {
    fn from(v: u32) -> Self {
        Self(v)
    }
}

impl From<Caps> for u32 {
    fn from(c: Caps) -> Self {
        c.0
    }
}

fixed_message! {
    /// HELLO: the first request of a session. The node picks the highest version in
    /// `min_version..=max_version` it speaks.
    Hello, HELLO, response = false {
        /// Oldest protocol version the client speaks.
        min_version: u16,
        /// Newest protocol version the client speaks.
        max_version: u16,
        /// Capabilities the client would use.
        caps: Caps,
    }
}

/// WELCOME flag: the node requires AUTH before any other request.
pub const WELCOME_AUTH_REQUIRED: u16 = 1 << 0;

fixed_message! {
    /// WELCOME: the answer to HELLO. Carries the chosen version, the node's capabilities and the
    /// limits it enforces, and the nonce AUTH must sign.
    Welcome, HELLO, response = true {
        /// The chosen protocol version.
        version: u16,
        /// Bit 0: AUTH required. Other bits zero.
        flags: u16,
        /// Capabilities the node serves.
        caps: Caps,
        /// Largest payload the node accepts.
        max_payload: u32,
        /// Most buffers a session may hold.
        max_buffers: u32,
        /// Session VRAM quota in bytes.
        quota: u64,
        /// Handshake timeout in milliseconds.
        handshake_timeout_ms: u32,
        /// Idle timeout in milliseconds.
        idle_timeout_ms: u32,
        /// Server nonce for AUTH.
        nonce: [u8; NONCE_LEN],
    }
}

impl Welcome {
    /// Whether the node requires AUTH.
    pub const fn auth_required(&self) -> bool {
        self.flags & WELCOME_AUTH_REQUIRED != 0
    }
}

fixed_message! {
    /// AUTH: `HMAC-SHA256(token, "RELA-AUTH-v1" || nonce)`. The token never crosses the wire.
    Auth, AUTH, response = false {
        /// The tag.
        mac: [u8; MAC_LEN],
    }
}

fixed_message! {
    /// ALLOC: reserve `size` bytes (non-zero). Answered with [`Allocated`].
    Alloc, ALLOC, response = false {
        /// Bytes requested.
        size: u64,
    }
}

fixed_message! {
    /// The answer to ALLOC.
    Allocated, ALLOC, response = true {
        /// The new buffer's handle, valid in this session only.
        handle: u32,
        /// Its size in bytes.
        size: u64,
    }
}

fixed_message! {
    /// FREE: release a buffer; its memory is zeroed. Answered with an empty response.
    Free, FREE, response = false {
        /// The buffer.
        handle: u32,
    }
}

fixed_message! {
    /// READ: `len` bytes of a buffer from `offset`. Answered with the bytes as the payload.
    Read, READ, response = false {
        /// The buffer.
        handle: u32,
        /// Start offset.
        offset: u64,
        /// Bytes wanted; at most the negotiated max payload.
        len: u32,
    }
}

fixed_message! {
    /// COPY: `len` bytes from one buffer to another (or within one, ranges not overlapping).
    Copy, COPY, response = false {
        /// Source buffer.
        src: u32,
        /// Source offset.
        src_offset: u64,
        /// Destination buffer.
        dst: u32,
        /// Destination offset.
        dst_offset: u64,
        /// Bytes to copy.
        len: u64,
    }
}

fixed_message! {
    /// FILL: set `len` bytes from `offset` to `value`.
    Fill, FILL, response = false {
        /// The buffer.
        handle: u32,
        /// Start offset.
        offset: u64,
        /// Bytes to set.
        len: u64,
        /// The byte value.
        value: u8,
    }
}

fixed_message! {
    /// DISPATCH: run a built-in kernel. Fields a kernel does not use must be zero.
    ///
    /// | kernel | a | b | out | m | k | n | alpha |
    /// |---|---|---|---|---|---|---|---|
    /// | ADD, MUL | lhs | rhs | out | 0 | 0 | elements | 0 |
    /// | SCALE | x | 0 | out | 0 | 0 | elements | factor |
    /// | MATMUL | M×K | K×N | M×N | M | K | N | 0 |
    Dispatch, DISPATCH, response = false {
        /// The kernel.
        kernel: KernelId,
        /// Reserved, zero.
        reserved: u16,
        /// First input buffer.
        a: u32,
        /// Second input buffer (0 when unused).
        b: u32,
        /// Output buffer.
        out: u32,
        /// Rows of `a` and `out` (MATMUL).
        m: u32,
        /// Inner dimension (MATMUL).
        k: u32,
        /// Elements (ADD, MUL, SCALE) or columns of `b` and `out` (MATMUL).
        n: u32,
        /// Scale factor (SCALE).
        alpha: f32,
    }
}

/// The answer to STATS: the session's usage and counters, then (optionally) the node's shared
/// model memory. 48 bytes, or 56 with `shared_models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Buffers held.
    pub buffers: u32,
    /// Most buffers allowed.
    pub max_buffers: u32,
    /// Bytes held.
    pub used: u64,
    /// Quota in bytes.
    pub quota: u64,
    /// Request frames handled.
    pub frames_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Bytes of models the node holds once for every session that loads them, as in
    /// [`DeviceInfoMsg::shared_models`] (charged to no session, so not in `used`). `None`: the
    /// payload ends after `bytes_out` (a node that does not say); emitted only when `Some`.
    pub shared_models: Option<u64>,
}

impl Stats {
    /// Length of the payload without `shared_models`.
    pub const LEN: usize = 48;
}

impl<'a> Message<'a> for Stats {
    const KIND: Kind = Kind::STATS;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let msg = Self {
            buffers: r.u32()?,
            max_buffers: r.u32()?,
            used: r.u64()?,
            quota: r.u64()?,
            frames_in: r.u64()?,
            bytes_in: r.u64()?,
            bytes_out: r.u64()?,
            shared_models: None,
        };
        let msg = if r.remaining() == 0 { msg } else { Self { shared_models: Some(r.u64()?), ..msg } };
        r.finish()?;
        Ok(msg)
    }

    fn buffer_len(&self) -> usize {
        Self::LEN + if self.shared_models.is_some() { 8 } else { 0 }
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u32(self.buffers)?;
        w.u32(self.max_buffers)?;
        w.u64(self.used)?;
        w.u64(self.quota)?;
        w.u64(self.frames_in)?;
        w.u64(self.bytes_in)?;
        w.u64(self.bytes_out)?;
        if let Some(shared) = self.shared_models {
            w.u64(shared)?;
        }
        Ok(w.len())
    }
}

fixed_message! {
    /// MODEL_UNLOAD: free (and zero) every byte of a loaded model. Answered with an empty response.
    ModelUnload, MODEL_UNLOAD, response = false {
        /// The model, as MODEL_LOAD's answer named it.
        model: u32,
    }
}

fixed_message! {
    /// The answer to MODEL_LOAD.
    ModelLoaded, MODEL_LOAD, response = true {
        /// The model's id, valid in this session only.
        model: u32,
        /// Embedding width of the model's output.
        dim: u32,
        /// Device bytes the weights hold (charged to the session's quota).
        bytes: u64,
    }
}

fixed_message! {
    /// PROGRESS: how far a long request has got. Sent by a node only, with the RESPONSE flag
    /// and the seq of the request it reports on, before that request's answer.
    Progress, PROGRESS, response = true {
        /// Units done (bytes of weights placed in device memory).
        done: u64,
        /// Units in all.
        total: u64,
    }
}

/// MODEL_LOAD: load a model from the node's repository, by name. The name is 1–64 bytes of
/// `[A-Za-z0-9._-]`, not starting with `.` (so no path can be named).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLoad<'a> {
    /// The model's name in the node's repository.
    pub name: &'a str,
}

/// Longest model name.
pub const MAX_MODEL_NAME: usize = 64;

/// Whether `name` is a valid model name: 1–64 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl<'a> Message<'a> for ModelLoad<'a> {
    const KIND: Kind = Kind::MODEL_LOAD;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let name = r.str_u8(MAX_MODEL_NAME, "model_load.name")?;
        r.finish()?;
        if !valid_model_name(name) {
            return Err(DecodeError::InvalidField("model_load.name"));
        }
        Ok(Self { name })
    }

    fn buffer_len(&self) -> usize {
        1 + self.name.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.str_u8(self.name, MAX_MODEL_NAME)?;
        Ok(w.len())
    }
}

/// MODEL_UPLOAD: start staging `size` bytes of client-supplied weights (a safetensors file)
/// for a model of the architecture and tokenizer of `base`, a model in the node's repository.
/// Payload: `size u64`, then `base` as `str8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelUpload<'a> {
    /// Bytes of the safetensors file that MODEL_CHUNK frames will carry (non-zero).
    pub size: u64,
    /// The repository model whose `config.json` and `tokenizer.json` the weights go with.
    pub base: &'a str,
}

impl<'a> Message<'a> for ModelUpload<'a> {
    const KIND: Kind = Kind::MODEL_UPLOAD;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let size = r.u64()?;
        let base = r.str_u8(MAX_MODEL_NAME, "model_upload.base")?;
        r.finish()?;
        if !valid_model_name(base) {
            return Err(DecodeError::InvalidField("model_upload.base"));
        }
        Ok(Self { size, base })
    }

    fn buffer_len(&self) -> usize {
        8 + 1 + self.base.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u64(self.size)?;
        w.str_u8(self.base, MAX_MODEL_NAME)?;
        Ok(w.len())
    }
}

/// Length of MODEL_CHUNK's fixed part (the offset) before the data.
pub const MODEL_CHUNK_PREFIX_LEN: usize = 8;

/// MODEL_CHUNK: the bytes of the staged upload from `offset`, which must equal the bytes
/// received so far. Payload: `offset u64`, then the data. The data borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelChunk<'a> {
    /// Where the data goes in the file.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
}

impl<'a> Message<'a> for ModelChunk<'a> {
    const KIND: Kind = Kind::MODEL_CHUNK;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        Ok(Self { offset: r.u64()?, data: r.rest() })
    }

    fn buffer_len(&self) -> usize {
        MODEL_CHUNK_PREFIX_LEN + self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u64(self.offset)?;
        w.bytes(self.data)?;
        Ok(w.len())
    }
}

/// INFER: run a loaded model on a batch of texts. Payload: `model u32`, `count u16`, then
/// `count` texts, each a `u16` byte length and that many bytes of UTF-8. The texts borrow the
/// frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Infer<'a> {
    /// The model.
    pub model: u32,
    count: u16,
    texts: &'a [u8],
}

/// Length of INFER's fixed part (model and count).
pub const INFER_PREFIX_LEN: usize = 6;

impl<'a> Infer<'a> {
    /// Number of texts.
    pub const fn count(&self) -> usize {
        self.count as usize
    }

    /// The texts, in order. Parsing checked their lengths and UTF-8, so this yields exactly
    /// [`count`](Self::count) items.
    pub fn texts(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader::new(self.texts);
        (0..self.count).map_while(move |_| {
            let n = r.u16().ok()? as usize;
            core::str::from_utf8(r.bytes(n).ok()?).ok()
        })
    }

    /// Encodes the payload for `texts` into `buf`, returning its length.
    pub fn emit_texts(model: u32, texts: &[&str], buf: &mut [u8]) -> Result<usize, EncodeError> {
        let count = u16::try_from(texts.len()).map_err(|_| EncodeError::TooLarge)?;
        let mut w = Writer::new(buf);
        w.u32(model)?;
        w.u16(count)?;
        for t in texts {
            w.u16(u16::try_from(t.len()).map_err(|_| EncodeError::TooLarge)?)?;
            w.bytes(t.as_bytes())?;
        }
        Ok(w.len())
    }

    /// Encoded length for `texts`.
    pub fn encoded_len(texts: &[&str]) -> usize {
        INFER_PREFIX_LEN + texts.iter().map(|t| 2 + t.len()).sum::<usize>()
    }
}

impl<'a> Message<'a> for Infer<'a> {
    const KIND: Kind = Kind::INFER;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let model = r.u32()?;
        let count = r.u16()?;
        let texts = r.rest();
        let mut check = Reader::new(texts);
        for _ in 0..count {
            let n = check.u16()? as usize;
            core::str::from_utf8(check.bytes(n)?).map_err(|_| DecodeError::InvalidUtf8)?;
        }
        check.finish()?;
        Ok(Self { model, count, texts })
    }

    fn buffer_len(&self) -> usize {
        INFER_PREFIX_LEN + self.texts.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u32(self.model)?;
        w.u16(self.count)?;
        w.bytes(self.texts)?;
        Ok(w.len())
    }
}

/// Length of the INFER response's fixed part (`count u16`, `dim u16`) before the floats.
pub const EMBEDDINGS_PREFIX_LEN: usize = 4;

/// The answer to INFER: `count u16`, `dim u16`, then `count × dim` little-endian f32, one
/// L2-normalized embedding per text, in request order. The floats borrow the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embeddings<'a> {
    /// Embeddings.
    pub count: u16,
    /// Floats per embedding.
    pub dim: u16,
    /// `count × dim` little-endian f32.
    pub data: &'a [u8],
}

impl<'a> Embeddings<'a> {
    /// The `i`-th float.
    pub fn get(&self, i: usize) -> Option<f32> {
        let b = self.data.get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
        Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl<'a> Message<'a> for Embeddings<'a> {
    const KIND: Kind = Kind::INFER;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let count = r.u16()?;
        let dim = r.u16()?;
        let data = r.rest();
        // In u64: `count × dim × 4` reaches 2³⁴, past a 32-bit usize.
        if data.len() as u64 != u64::from(count) * u64::from(dim) * 4 {
            return Err(DecodeError::InvalidField("embeddings.data"));
        }
        Ok(Self { count, dim, data })
    }

    fn buffer_len(&self) -> usize {
        EMBEDDINGS_PREFIX_LEN + self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u16(self.count)?;
        w.u16(self.dim)?;
        w.bytes(self.data)?;
        Ok(w.len())
    }
}

/// A request or response with an empty payload (DEVICE_INFO, STATS and BYE requests, and the
/// acknowledgements of AUTH, FREE, WRITE, COPY, FILL, DISPATCH and BYE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

impl Empty {
    /// Decodes an empty payload.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.is_empty() { Ok(Self) } else { Err(DecodeError::TrailingBytes) }
    }
}

/// PING: up to 256 bytes, echoed by PONG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping<'a> {
    /// The bytes to echo.
    pub data: &'a [u8],
}

impl<'a> Message<'a> for Ping<'a> {
    const KIND: Kind = Kind::PING;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_PING_PAYLOAD {
            return Err(DecodeError::InvalidField("ping.data"));
        }
        Ok(Self { data: payload })
    }

    fn buffer_len(&self) -> usize {
        self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        if self.data.len() > MAX_PING_PAYLOAD {
            return Err(EncodeError::TooLarge);
        }
        let mut w = Writer::new(buf);
        w.bytes(self.data)?;
        Ok(w.len())
    }
}

/// Length of WRITE's fixed part (handle and offset) before the data.
pub const WRITE_PREFIX_LEN: usize = 12;

/// WRITE: bytes into a buffer from `offset`. The data borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write<'a> {
    /// The buffer.
    pub handle: u32,
    /// Start offset.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
}

impl<'a> Write<'a> {
    /// Writes just the fixed prefix (handle, offset) into `buf[..12]`, for senders that place
    /// the data behind it themselves.
    pub fn emit_prefix(handle: u32, offset: u64, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u32(handle)?;
        w.u64(offset)?;
        Ok(w.len())
    }
}

impl<'a> Message<'a> for Write<'a> {
    const KIND: Kind = Kind::WRITE;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        Ok(Self { handle: r.u32()?, offset: r.u64()?, data: r.rest() })
    }

    fn buffer_len(&self) -> usize {
        WRITE_PREFIX_LEN + self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        Self::emit_prefix(self.handle, self.offset, buf)?;
        let mut w = Writer::new(&mut buf[WRITE_PREFIX_LEN..]);
        w.bytes(self.data)?;
        Ok(WRITE_PREFIX_LEN + w.len())
    }
}

/// The answer to DEVICE_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfoMsg<'a> {
    /// Backend kind.
    pub backend: BackendKind,
    /// Total device memory the node lends, in bytes.
    pub total: u64,
    /// Free device memory, in bytes.
    pub free: u64,
    /// Largest single allocation, in bytes.
    pub max_alloc: u64,
    /// Device name (at most 64 bytes).
    pub name: &'a str,
    /// Vendor name (at most 32 bytes).
    pub vendor: &'a str,
    /// Device bytes of models the node holds once for every session that loads them (counted
    /// in `total - free`, charged to no session's quota). `None`: the payload ends after
    /// `vendor` (a node that does not say); emitted only when `Some`, so every payload
    /// re-encodes to itself.
    pub shared_models: Option<u64>,
}

impl<'a> Message<'a> for DeviceInfoMsg<'a> {
    const KIND: Kind = Kind::DEVICE_INFO;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let backend = BackendKind(r.u8()?);
        if r.array::<3>()? != [0; 3] {
            return Err(DecodeError::InvalidField("device_info.reserved"));
        }
        let msg = Self {
            backend,
            total: r.u64()?,
            free: r.u64()?,
            max_alloc: r.u64()?,
            name: r.str_u8(MAX_DEVICE_NAME, "device_info.name")?,
            vendor: r.str_u8(MAX_VENDOR_NAME, "device_info.vendor")?,
            shared_models: None,
        };
        // The trailing field is optional: absent (an older node) is `None`.
        let msg = if r.remaining() == 0 { msg } else { Self { shared_models: Some(r.u64()?), ..msg } };
        r.finish()?;
        Ok(msg)
    }

    fn buffer_len(&self) -> usize {
        4 + 24
            + 1
            + self.name.len()
            + 1
            + self.vendor.len()
            + if self.shared_models.is_some() { 8 } else { 0 }
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(self.backend.0)?;
        w.bytes(&[0; 3])?;
        w.u64(self.total)?;
        w.u64(self.free)?;
        w.u64(self.max_alloc)?;
        w.str_u8(self.name, MAX_DEVICE_NAME)?;
        w.str_u8(self.vendor, MAX_VENDOR_NAME)?;
        if let Some(shared) = self.shared_models {
            w.u64(shared)?;
        }
        Ok(w.len())
    }
}

/// ERROR: a typed error reply. `seq` echoes the failed request (0 when unsolicited, such as a
/// timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMsg<'a> {
    /// The error code.
    pub code: ErrorCode,
    /// The kind of the request that failed (0 when unsolicited).
    pub request_kind: Kind,
    /// A short human-readable reason, at most 128 bytes of UTF-8.
    pub reason: &'a str,
}

impl<'a> Message<'a> for ErrorMsg<'a> {
    const KIND: Kind = Kind::ERROR;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let msg = Self {
            code: ErrorCode(r.u16()?),
            request_kind: Kind(r.u8()?),
            reason: r.str_u8(MAX_ERROR_REASON, "error.reason")?,
        };
        r.finish()?;
        Ok(msg)
    }

    fn buffer_len(&self) -> usize {
        4 + self.reason.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u16(self.code.0)?;
        w.u8(self.request_kind.0)?;
        w.str_u8(self.reason, MAX_ERROR_REASON)?;
        Ok(w.len())
    }
}

/// Any request, decoded from its kind and payload.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// HELLO.
    Hello(Hello),
    /// AUTH.
    Auth(Auth),
    /// PING.
    Ping(Ping<'a>),
    /// DEVICE_INFO.
    DeviceInfo,
    /// STATS.
    Stats,
    /// BYE.
    Bye,
    /// ALLOC.
    Alloc(Alloc),
    /// FREE.
    Free(Free),
    /// WRITE.
    Write(Write<'a>),
    /// READ.
    Read(Read),
    /// COPY.
    Copy(Copy),
    /// FILL.
    Fill(Fill),
    /// DISPATCH.
    Dispatch(Dispatch),
    /// MODEL_LOAD.
    ModelLoad(ModelLoad<'a>),
    /// MODEL_UNLOAD.
    ModelUnload(ModelUnload),
    /// INFER.
    Infer(Infer<'a>),
    /// MODEL_UPLOAD.
    ModelUpload(ModelUpload<'a>),
    /// MODEL_CHUNK.
    ModelChunk(ModelChunk<'a>),
    /// MODEL_COMMIT (empty payload).
    ModelCommit,
    /// GENERATE.
    Generate(Generate<'a>),
    /// CANCEL (empty payload).
    Cancel,
    /// MODEL_LIST.
    ModelList(ModelList),
    /// A kind this crate does not know, or one that is not a request (PROGRESS, TOKEN,
    /// DISCOVER, ANNOUNCE, ERROR).
    Unknown(Kind),
}

impl<'a> Request<'a> {
    /// Decodes a request payload of the given kind.
    pub fn parse(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match kind {
            Kind::HELLO => Self::Hello(Hello::parse(payload)?),
            Kind::AUTH => Self::Auth(Auth::parse(payload)?),
            Kind::PING => Self::Ping(Ping::parse(payload)?),
            Kind::DEVICE_INFO => Empty::parse(payload).map(|_| Self::DeviceInfo)?,
            Kind::STATS => Empty::parse(payload).map(|_| Self::Stats)?,
            Kind::BYE => Empty::parse(payload).map(|_| Self::Bye)?,
            Kind::ALLOC => Self::Alloc(Alloc::parse(payload)?),
            Kind::FREE => Self::Free(Free::parse(payload)?),
            Kind::WRITE => Self::Write(Write::parse(payload)?),
            Kind::READ => Self::Read(Read::parse(payload)?),
            Kind::COPY => Self::Copy(Copy::parse(payload)?),
            Kind::FILL => Self::Fill(Fill::parse(payload)?),
            Kind::DISPATCH => Self::Dispatch(Dispatch::parse(payload)?),
            Kind::MODEL_LOAD => Self::ModelLoad(ModelLoad::parse(payload)?),
            Kind::MODEL_UNLOAD => Self::ModelUnload(ModelUnload::parse(payload)?),
            Kind::INFER => Self::Infer(Infer::parse(payload)?),
            Kind::MODEL_UPLOAD => Self::ModelUpload(ModelUpload::parse(payload)?),
            Kind::MODEL_CHUNK => Self::ModelChunk(ModelChunk::parse(payload)?),
            Kind::MODEL_COMMIT => Empty::parse(payload).map(|_| Self::ModelCommit)?,
            Kind::GENERATE => Self::Generate(Generate::parse(payload)?),
            Kind::CANCEL => Empty::parse(payload).map(|_| Self::Cancel)?,
            Kind::MODEL_LIST => Self::ModelList(ModelList::parse(payload)?),
            k => Self::Unknown(k),
        })
    }

    /// The kind this request travels under.
    pub const fn kind(&self) -> Kind {
        match self {
            Self::Hello(_) => Kind::HELLO,
            Self::Auth(_) => Kind::AUTH,
            Self::Ping(_) => Kind::PING,
            Self::DeviceInfo => Kind::DEVICE_INFO,
            Self::Stats => Kind::STATS,
            Self::Bye => Kind::BYE,
            Self::Alloc(_) => Kind::ALLOC,
            Self::Free(_) => Kind::FREE,
            Self::Write(_) => Kind::WRITE,
            Self::Read(_) => Kind::READ,
            Self::Copy(_) => Kind::COPY,
            Self::Fill(_) => Kind::FILL,
            Self::Dispatch(_) => Kind::DISPATCH,
            Self::ModelLoad(_) => Kind::MODEL_LOAD,
            Self::ModelUnload(_) => Kind::MODEL_UNLOAD,
            Self::Infer(_) => Kind::INFER,
            Self::ModelUpload(_) => Kind::MODEL_UPLOAD,
            Self::ModelChunk(_) => Kind::MODEL_CHUNK,
            Self::ModelCommit => Kind::MODEL_COMMIT,
            Self::Generate(_) => Kind::GENERATE,
            Self::Cancel => Kind::CANCEL,
            Self::ModelList(_) => Kind::MODEL_LIST,
            Self::Unknown(k) => *k,
        }
    }

    /// Encodes the payload into `buf` (unknown kinds encode as empty).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Self::Hello(m) => m.emit(buf),
            Self::Auth(m) => m.emit(buf),
            Self::Ping(m) => m.emit(buf),
            Self::Alloc(m) => m.emit(buf),
            Self::Free(m) => m.emit(buf),
            Self::Write(m) => m.emit(buf),
            Self::Read(m) => m.emit(buf),
            Self::Copy(m) => m.emit(buf),
            Self::Fill(m) => m.emit(buf),
            Self::Dispatch(m) => m.emit(buf),
            Self::ModelLoad(m) => m.emit(buf),
            Self::ModelUnload(m) => m.emit(buf),
            Self::Infer(m) => m.emit(buf),
            Self::ModelUpload(m) => m.emit(buf),
            Self::ModelChunk(m) => m.emit(buf),
            Self::Generate(m) => m.emit(buf),
            Self::ModelList(m) => m.emit(buf),
            Self::DeviceInfo
            | Self::Stats
            | Self::Bye
            | Self::ModelCommit
            | Self::Cancel
            | Self::Unknown(_) => Ok(0),
        }
    }
}

/// Any response, decoded from its header and payload (the client side's decoder).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Response<'a> {
    /// WELCOME.
    Welcome(Welcome),
    /// PONG, echoing the PING's bytes.
    Pong(&'a [u8]),
    /// DEVICE_INFO's answer.
    DeviceInfo(DeviceInfoMsg<'a>),
    /// STATS's answer.
    Stats(Stats),
    /// ALLOC's answer.
    Allocated(Allocated),
    /// READ's answer: the bytes.
    Data(&'a [u8]),
    /// MODEL_LOAD's and MODEL_COMMIT's answer.
    ModelLoaded(ModelLoaded),
    /// INFER's answer.
    Embeddings(Embeddings<'a>),
    /// A PROGRESS report on the request with the same seq (its answer is still to come).
    Progress(Progress),
    /// A TOKEN frame of the GENERATE with the same seq (its answer is still to come).
    Token(TokenMsg<'a>),
    /// GENERATE's answer, after its TOKEN frames.
    Generated(Generated),
    /// MODEL_LIST's answer.
    ModelListed(ModelListed<'a>),
    /// An empty acknowledgement of the named kind (AUTH, FREE, WRITE, COPY, FILL, DISPATCH,
    /// MODEL_UNLOAD, MODEL_UPLOAD, MODEL_CHUNK, CANCEL, BYE).
    Ack(Kind),
    /// An ERROR.
    Error(ErrorMsg<'a>),
    /// A response of a kind this crate does not know; the payload is kept.
    Unknown(Kind, &'a [u8]),
}

impl<'a> Response<'a> {
    /// Decodes a response. Fails if the response flag is clear.
    pub fn parse(kind: Kind, flags: Flags, payload: &'a [u8]) -> Result<Self, DecodeError> {
        if !flags.is_response() {
            return Err(DecodeError::InvalidField("flags.response"));
        }
        Ok(match kind {
            Kind::HELLO => Self::Welcome(Welcome::parse(payload)?),
            Kind::PING => {
                if payload.len() > MAX_PING_PAYLOAD {
                    return Err(DecodeError::InvalidField("pong.data"));
                }
                Self::Pong(payload)
            }
            Kind::DEVICE_INFO => Self::DeviceInfo(DeviceInfoMsg::parse(payload)?),
            Kind::STATS => Self::Stats(Stats::parse(payload)?),
            Kind::ALLOC => Self::Allocated(Allocated::parse(payload)?),
            Kind::READ => Self::Data(payload),
            Kind::MODEL_LOAD | Kind::MODEL_COMMIT => Self::ModelLoaded(ModelLoaded::parse(payload)?),
            Kind::INFER => Self::Embeddings(Embeddings::parse(payload)?),
            Kind::PROGRESS => Self::Progress(Progress::parse(payload)?),
            Kind::TOKEN => Self::Token(TokenMsg::parse(payload)?),
            Kind::GENERATE => Self::Generated(Generated::parse(payload)?),
            Kind::MODEL_LIST => Self::ModelListed(ModelListed::parse(payload)?),
            Kind::AUTH
            | Kind::FREE
            | Kind::WRITE
            | Kind::COPY
            | Kind::FILL
            | Kind::DISPATCH
            | Kind::MODEL_UNLOAD
            | Kind::MODEL_UPLOAD
            | Kind::MODEL_CHUNK
            | Kind::CANCEL
            | Kind::BYE => {
                Empty::parse(payload)?;
                Self::Ack(kind)
            }
            Kind::ERROR => Self::Error(ErrorMsg::parse(payload)?),
            k => Self::Unknown(k, payload),
        })
    }
}

/// A fixed-size field of a fixed-layout message.
trait WireField: Sized {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    fn write(self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
}

macro_rules! wire_field {
    ($($ty:ty => $rd:ident / $wr:ident, $to:expr, $from:expr;)*) => {$(
        impl WireField for $ty {
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                r.$rd().map($from)
            }
            fn write(self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                w.$wr($to(self))
            }
        }
    )*};
}

wire_field! {
    u8 => u8 / u8, |v| v, |v| v;
    u16 => u16 / u16, |v| v, |v| v;
    u32 => u32 / u32, |v| v, |v| v;
    u64 => u64 / u64, |v| v, |v| v;
    f32 => f32 / f32, |v| v, |v| v;
    Caps => u32 / u32, |v: Caps| v.0, Caps;
    KernelId => u16 / u16, |v: KernelId| v.0, KernelId;
}

impl<const N: usize> WireField for [u8; N] {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.array()
    }
    fn write(self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.bytes(&self)
    }
}
