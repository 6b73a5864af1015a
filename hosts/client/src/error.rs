//! The client's error type.

use std::fmt;
use std::io;
use std::time::Duration;

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
    /// The node did not do its part within a deadline of [`crate::ClientOptions`]. The
    /// session's state is unknown afterwards, so the connection is closed.
    Timeout {
        /// What the client was waiting for.
        phase: TimeoutPhase,
        /// The deadline that passed.
        after: Duration,
    },
    /// A host name could not be resolved to any address (the host and the reason).
    Resolve(String),
    /// The TLS session could not be set up: the node's certificate is not trusted (a pinned
    /// fingerprint that does not match, a changed one under trust on first use, a CA that does
    /// not vouch for it), or the handshake failed.
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsError),
}

/// What a [`ClientError::Timeout`] was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// The TCP connection ([`crate::ClientOptions::connect_timeout`]).
    Connect,
    /// HELLO, WELCOME and AUTH ([`crate::ClientOptions::handshake_timeout`]).
    Handshake,
    /// One frame of a request: sending it, or receiving (part of) its answer
    /// ([`crate::ClientOptions::request_timeout`]).
    Request,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "the node did not accept the connection",
            Self::Handshake => "the node did not complete the handshake (HELLO, WELCOME, AUTH)",
            Self::Request => "the node did not answer the request",
        })
    }
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

    /// How long the node asked the client to wait before connecting again: an ERROR(BUSY)
    /// whose reason ends with `retry after N ms` (a node says so to an address it throttles
    /// after failed AUTHs; docs/PROTOCOL.md §6). `None` for any other error.
    pub fn retry_after(&self) -> Option<Duration> {
        let Self::Server { code: ErrorCode::BUSY, reason, .. } = self else { return None };
        let (_, tail) = reason.rsplit_once("retry after ")?;
        let ms = tail.strip_suffix(" ms")?.parse().ok()?;
        Some(Duration::from_millis(ms))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "transport error: {e}"),
            Self::Protocol(m) => write!(f, "protocol violation by the node: {m}"),
            // Kind 0: an unsolicited error (timeout, BUSY, SHUTTING_DOWN), about no request.
            Self::Server { code, reason, request } if request.0 == 0 => {
                write!(f, "node error {code}: {reason}")
            }
            Self::Server { code, reason, request } => {
                write!(f, "node error {code} on {request}: {reason}")
            }
            Self::AuthRejected => f.write_str("the node rejected the token"),
            Self::TokenRequired => f.write_str("the node requires a token"),
            Self::Frame(e) => write!(f, "invalid frame from the node: {e}"),
            Self::Discovery(e) => write!(f, "discovery: {e}"),
            Self::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Self::Closed => f.write_str("connection closed"),
            Self::Timeout { phase, after } => write!(f, "timed out after {}: {phase}", seconds(*after)),
            Self::Resolve(why) => write!(f, "cannot resolve {why}"),
            #[cfg(feature = "tls")]
            Self::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// `2 s`, `1.5 s`, `250 ms`.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Frame(e) => Some(e),
            Self::Discovery(e) => Some(e),
            #[cfg(feature = "tls")]
            Self::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(feature = "tls")]
impl From<crate::tls::TlsError> for ClientError {
    fn from(e: crate::tls::TlsError) -> Self {
        Self::Tls(e)
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode, reason: &str) -> ClientError {
        ClientError::Server { code, reason: reason.to_owned(), request: Kind(0) }
    }

    #[test]
    fn retry_after_reads_a_busy_reason() {
        let busy = server(ErrorCode::BUSY, "too many failed AUTHs from this address; retry after 250 ms");
        assert_eq!(busy.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(server(ErrorCode::BUSY, "node at its session limit").retry_after(), None);
        assert_eq!(server(ErrorCode::BUSY, "retry after soon ms").retry_after(), None);
        assert_eq!(server(ErrorCode::INTERNAL, "retry after 5 ms").retry_after(), None);
        assert_eq!(ClientError::Closed.retry_after(), None);
    }
}
