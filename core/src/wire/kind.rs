//! Message kinds: an open enum, so unknown values survive a decode and re-encode.

use core::fmt;

/// A frame's message kind (header byte 4).
///
/// Unknown values are kept as they are; a node answers them with
/// [`ErrorCode::UNKNOWN_KIND`](super::ErrorCode::UNKNOWN_KIND).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(pub u8);

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $val:literal,)*) => {
        impl Kind {
            $($(#[$doc])* pub const $name: Self = Self($val);)*

            /// Every kind this crate defines, in numeric order.
            pub const KNOWN: &'static [Self] = &[$(Self::$name),*];

            /// The spec name of a known kind.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// HELLO (request) / WELCOME (response): version negotiation, limits and the server nonce.
    HELLO = 0x01,
    /// AUTH: HMAC-SHA256 of the server nonce, keyed by the shared token.
    AUTH = 0x02,
    /// PING / PONG: liveness and round-trip time; the payload is echoed.
    PING = 0x03,
    /// DEVICE_INFO: backend kind, device, vendor, total and free VRAM.
    DEVICE_INFO = 0x04,
    /// STATS: the session's usage and counters.
    STATS = 0x05,
    /// BYE: orderly close; every buffer of the session is freed and zeroed.
    BYE = 0x06,
    /// PROGRESS: node → client only, before the answer to a long request (MODEL_LOAD,
    /// MODEL_COMMIT) of a client that advertised the PROGRESS capability.
    PROGRESS = 0x07,
    /// ALLOC: reserve a buffer of remote memory.
    ALLOC = 0x10,
    /// FREE: release (and zero) a buffer.
    FREE = 0x11,
    /// WRITE: bytes into a buffer at an offset.
    WRITE = 0x12,
    /// READ: bytes out of a buffer at an offset.
    READ = 0x13,
    /// COPY: between two of the session's buffers.
    COPY = 0x14,
    /// FILL: set a byte range to one value.
    FILL = 0x15,
    /// DISPATCH: run a built-in kernel on the session's buffers.
    DISPATCH = 0x20,
    /// MODEL_LOAD: load a model from the node's repository (capability MODELS).
    MODEL_LOAD = 0x30,
    /// MODEL_UNLOAD: free and zero a loaded model (capability MODELS).
    MODEL_UNLOAD = 0x31,
    /// INFER: run a loaded model on a batch of texts (capability MODELS).
    INFER = 0x32,
    /// MODEL_UPLOAD: start staging client-supplied weights for a model (capability MODELS).
    MODEL_UPLOAD = 0x33,
    /// MODEL_CHUNK: the next piece of the staged weights (capability MODELS).
    MODEL_CHUNK = 0x34,
    /// MODEL_COMMIT: check the staged weights and load them (capability MODELS).
    MODEL_COMMIT = 0x35,
    /// GENERATE: generate text with a loaded language model; TOKEN frames stream the tokens,
    /// then the answer says why it ended (capability MODELS).
    GENERATE = 0x36,
    /// TOKEN: node → client only, streamed before the answer to GENERATE: token ids and the
    /// text they complete.
    TOKEN = 0x37,
    /// CANCEL: stops the session's generation in progress, if any.
    CANCEL = 0x38,
    /// MODEL_LIST: one entry of the node's model list, by index (capability MODELS).
    MODEL_LIST = 0x39,
    /// DISCOVER: UDP discovery probe.
    DISCOVER = 0x40,
    /// ANNOUNCE: UDP discovery answer.
    ANNOUNCE = 0x41,
    /// ERROR: a typed error reply.
    ERROR = 0x7F,
}

impl From<u8> for Kind {
    fn from(v: u8) -> Self {
        Self(v)
    }
}

impl From<Kind> for u8 {
    fn from(k: Kind) -> Self {
        k.0
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown(0x{:02x})", self.0),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
