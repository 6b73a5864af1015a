//! ERROR codes: an open enum of `u16` values.

use core::fmt;

/// The code carried by an ERROR frame. Unknown codes round-trip unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $val:literal, $fatal:literal;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: Self = Self($val);)*

            /// Every code this crate defines, in numeric order.
            pub const KNOWN: &'static [Self] = &[$(Self::$name),*];

            /// The spec name of a known code.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Whether a node closes the session after sending this code.
            pub const fn closes_session(self) -> bool {
                match self.0 {
                    $($val => $fatal,)*
                    _ => false,
                }
            }
        }
    };
}

codes! {
    /// The payload does not decode as the message its kind names.
    MALFORMED = 1, false;
    /// Framing violation: bad magic, reserved flag bits, bad CRC, or an oversized length.
    BAD_FRAME = 2, true;
    /// The kind is not one this node knows.
    UNKNOWN_KIND = 3, false;
    /// The kind or feature is known but not served (reserved kinds, compression).
    UNSUPPORTED = 4, false;
    /// The request is not allowed in the session's current state.
    WRONG_STATE = 5, false;
    /// AUTH failed. The node closes the session.
    AUTH_FAILED = 6, true;
    /// No protocol version in common. The node closes the session.
    VERSION_MISMATCH = 7, true;
    /// The session's VRAM quota would be exceeded.
    QUOTA_EXCEEDED = 8, false;
    /// The session's buffer table is full.
    TOO_MANY_BUFFERS = 9, false;
    /// The handle names no buffer of this session.
    NO_SUCH_BUFFER = 10, false;
    /// Offset and length reach outside the buffer (or overflow).
    OUT_OF_BOUNDS = 11, false;
    /// The device has no memory left for the request.
    OUT_OF_MEMORY = 12, false;
    /// An argument is invalid (zero size, kernel shape, aliasing).
    INVALID_ARGUMENT = 13, false;
    /// The backend failed or the device was lost.
    BACKEND = 14, false;
    /// The handshake or idle timeout expired. The node closes the session.
    TIMEOUT = 15, true;
    /// The payload is larger than the negotiated limit.
    PAYLOAD_TOO_LARGE = 16, true;
    /// The node is at its session limit. The node closes the connection.
    BUSY = 17, true;
    /// An internal error in the node.
    INTERNAL = 18, false;
    /// The node is shutting down. The node closes the session.
    SHUTTING_DOWN = 19, true;
    /// No model of that name in the node's repository, or no loaded model with that id in
    /// this session.
    NO_SUCH_MODEL = 20, false;
    /// The model's input is outside its limits (too many texts, a text too long).
    INVALID_INPUT = 21, false;
    /// The request costs more than the node allows one request (multiply-adds per DISPATCH).
    LIMIT_EXCEEDED = 22, false;
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> Self {
        c.0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
