//! The client's error type.

use std::fmt;
use std::io;

use rela_core::discovery::DiscoveryError;
use rela_core::wire::{ErrorCode, FrameError, Kind};

/// Why a client call failed.
///
/// After [`Io`](Self::Io), [`Frame`](Self::Frame), [`Protocol`](Self::Protocol),
/// [`AuthRejected`](Self::AuthRejected) or a [`Server`](Self::Server) error whose code closes
/// the session, the connection is unusable and every later call returns [`Closed`](Self::Closed).
/// Other server errors (quota, bounds, …) leave the session usable.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The transport failed, or the node closed the connection.
    Io(io::Error),
    /// The node sent something the protocol does not allow here.
    Protocol(String),
    /// The node answered with ERROR.
    Server {
        /// The error code.
        code: ErrorCode,
        /// The node's reason text.
        reason: String,
        /// The kind of the request that failed (`Kind(0)` when the error was unsolicited, such as
        /// a timeout, `BUSY` or `SHUTTING_DOWN`).
        request: Kind,
    },
    /// The node rejected the token (ERROR `AUTH_FAILED`); the node has closed the connection.
    AuthRejected,
    /// The node requires a token and none was given.
    TokenRequired,
    /// A received frame is invalid (header or CRC).
    Frame(FrameError),
    /// A discovery datagram could not be built or sent.
    Discovery(DiscoveryError),
    /// An argument cannot be sent (for example an offset range that overflows `u64`).
    InvalidArgument(&'static str),
    /// The connection was closed by an earlier fatal error or by [`crate::Client::close`].
    Closed,
}

impl ClientError {
    /// The server's error code, if this is a [`Server`](Self::Server) error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::AuthRejected => Some(ErrorCode::AUTH_FAILED),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "transport error: {e}"),
            Self::Protocol(m) => write!(f, "protocol violation by the node: {m}"),
            Self::Server { code, reason, request } => {
                write!(f, "node error {code} on {request}: {reason}")
            }
            Self::AuthRejected => f.write_str("the node rejected the token"),
            Self::TokenRequired => f.write_str("the node requires a token"),
            Self::Frame(e) => write!(f, "invalid frame from the node: {e}"),
            Self::Discovery(e) => write!(f, "discovery: {e}"),
            Self::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Self::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Frame(e) => Some(e),
            Self::Discovery(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}
