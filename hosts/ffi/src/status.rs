//! Status codes: 0, the node's positive ERROR codes, and negative local codes.

use std::ffi::c_char;

use rela_client::ClientError;
use rela_core::wire::ErrorCode;

/// Success.
pub const RELA_OK: i32 = 0;
/// An argument is invalid: a null pointer, text that is not UTF-8, a length that does not fit,
/// an unknown kernel id, or an argument the client refuses to send.
pub const RELA_ERR_INVALID_ARGUMENT: i32 = -1;
/// The client handle names no open client (never opened, or closed), or a model id was not
/// loaded through this client.
pub const RELA_ERR_UNKNOWN_HANDLE: i32 = -2;
/// The transport failed: the connection was refused, reset or closed by the node.
pub const RELA_ERR_IO: i32 = -3;
/// The node did not do its part within a deadline (connect, handshake or request); the
/// connection is closed.
pub const RELA_ERR_TIMEOUT: i32 = -4;
/// The connection was closed by an earlier fatal error; close the client and connect again.
pub const RELA_ERR_CLOSED: i32 = -5;
/// The node broke the protocol (an unexpected or invalid frame).
pub const RELA_ERR_PROTOCOL: i32 = -6;
/// The node requires a token and none was given.
pub const RELA_ERR_TOKEN_REQUIRED: i32 = -7;
/// The host name could not be resolved.
pub const RELA_ERR_RESOLVE: i32 = -8;
/// A discovery datagram could not be built or sent.
pub const RELA_ERR_DISCOVERY: i32 = -9;
/// The caller's output buffer is too small for the answer.
pub const RELA_ERR_BUFFER_TOO_SMALL: i32 = -10;
/// The library panicked (a bug); the message says where.
pub const RELA_ERR_PANIC: i32 = -11;
/// Any other failure inside the library.
pub const RELA_ERR_INTERNAL: i32 = -12;
/// TLS failed: the node's certificate is not trusted (not the pinned fingerprint, changed since
/// first use, or vouched for by no CA of the file), the CA file or the known-nodes file could
/// not be used, the handshake failed (a node not serving TLS), or the library was built
/// without TLS.
pub const RELA_ERR_TLS: i32 = -13;

/// The local status codes and their names, in order.
const LOCAL: [(i32, &str); 14] = [
    (RELA_OK, "RELA_OK\0"),
    (RELA_ERR_INVALID_ARGUMENT, "RELA_ERR_INVALID_ARGUMENT\0"),
    (RELA_ERR_UNKNOWN_HANDLE, "RELA_ERR_UNKNOWN_HANDLE\0"),
    (RELA_ERR_IO, "RELA_ERR_IO\0"),
    (RELA_ERR_TIMEOUT, "RELA_ERR_TIMEOUT\0"),
    (RELA_ERR_CLOSED, "RELA_ERR_CLOSED\0"),
    (RELA_ERR_PROTOCOL, "RELA_ERR_PROTOCOL\0"),
    (RELA_ERR_TOKEN_REQUIRED, "RELA_ERR_TOKEN_REQUIRED\0"),
    (RELA_ERR_RESOLVE, "RELA_ERR_RESOLVE\0"),
    (RELA_ERR_DISCOVERY, "RELA_ERR_DISCOVERY\0"),
    (RELA_ERR_BUFFER_TOO_SMALL, "RELA_ERR_BUFFER_TOO_SMALL\0"),
    (RELA_ERR_PANIC, "RELA_ERR_PANIC\0"),
    (RELA_ERR_INTERNAL, "RELA_ERR_INTERNAL\0"),
    (RELA_ERR_TLS, "RELA_ERR_TLS\0"),
];

/// The status a client error maps to: the node's code for ERROR answers (and `AUTH_FAILED`
/// for a rejected token), a local code for everything else.
pub fn status_of(e: &ClientError) -> i32 {
    if let Some(code) = e.code() {
        return i32::from(code.0);
    }
    match e {
        ClientError::Io(_) => RELA_ERR_IO,
        ClientError::Timeout { .. } => RELA_ERR_TIMEOUT,
        ClientError::Closed => RELA_ERR_CLOSED,
        ClientError::Protocol(_) | ClientError::Frame(_) => RELA_ERR_PROTOCOL,
        ClientError::TokenRequired => RELA_ERR_TOKEN_REQUIRED,
        ClientError::Resolve(_) => RELA_ERR_RESOLVE,
        ClientError::Discovery(_) => RELA_ERR_DISCOVERY,
        ClientError::InvalidArgument(_) => RELA_ERR_INVALID_ARGUMENT,
        #[cfg(feature = "tls")]
        ClientError::Tls(_) => RELA_ERR_TLS,
        _ => RELA_ERR_INTERNAL,
    }
}

/// The name of a status: `"RELA_OK"`, `"RELA_ERR_TIMEOUT"`, the protocol's name of a known
/// wire code (`"AUTH_FAILED"`, `"NO_SUCH_BUFFER"`), or `"UNKNOWN"`. The string is static;
/// never free it.
#[unsafe(no_mangle)]
pub extern "C" fn rela_status_name(status: i32) -> *const c_char {
    // Nothing here can panic: a table lookup and a match on a number.
    let name: &'static str = if status > 0 {
        u16::try_from(status).ok().and_then(|c| wire_name(ErrorCode(c))).unwrap_or("UNKNOWN\0")
    } else {
        LOCAL.iter().find(|(s, _)| *s == status).map_or("UNKNOWN\0", |(_, n)| n)
    };
    name.as_ptr().cast()
}

/// The NUL-terminated protocol name of a known wire code.
fn wire_name(code: ErrorCode) -> Option<&'static str> {
    // The names come from rela-core; the NUL-terminated copies are made once.
    static NAMES: std::sync::OnceLock<Vec<(u16, &'static str)>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        ErrorCode::KNOWN.iter().filter_map(|c| c.name().map(|n| (c.0, &*format!("{n}\0").leak()))).collect()
    });
    names.iter().find(|(c, _)| *c == code.0).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::time::Duration;

    use rela_client::TimeoutPhase;

    use super::*;

    fn name(status: i32) -> &'static str {
        // SAFETY: rela_status_name returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(rela_status_name(status)) }.to_str().unwrap()
    }

    #[test]
    fn names_of_local_and_wire_codes() {
        assert_eq!(name(RELA_OK), "RELA_OK");
        assert_eq!(name(RELA_ERR_TIMEOUT), "RELA_ERR_TIMEOUT");
        assert_eq!(name(RELA_ERR_INTERNAL), "RELA_ERR_INTERNAL");
        assert_eq!(name(6), "AUTH_FAILED");
        assert_eq!(name(10), "NO_SUCH_BUFFER");
        assert_eq!(name(-99), "UNKNOWN");
        assert_eq!(name(60_000), "UNKNOWN");
        assert_eq!(name(i32::MAX), "UNKNOWN");
        // Every local code has its own name.
        let mut names: Vec<_> = LOCAL.iter().map(|(s, _)| name(*s)).collect();
        names.dedup();
        assert_eq!(names.len(), LOCAL.len());
    }

    #[test]
    fn client_errors_map_to_codes() {
        assert_eq!(status_of(&ClientError::AuthRejected), 6);
        let server = ClientError::Server {
            code: ErrorCode::NO_SUCH_BUFFER,
            reason: "no".into(),
            request: rela_core::wire::Kind(0),
        };
        assert_eq!(status_of(&server), 10);
        let timeout = ClientError::Timeout { phase: TimeoutPhase::Request, after: Duration::from_secs(1) };
        assert_eq!(status_of(&timeout), RELA_ERR_TIMEOUT);
        assert_eq!(status_of(&ClientError::Closed), RELA_ERR_CLOSED);
        assert_eq!(status_of(&ClientError::TokenRequired), RELA_ERR_TOKEN_REQUIRED);
        assert_eq!(status_of(&ClientError::InvalidArgument("x")), RELA_ERR_INVALID_ARGUMENT);
        assert_eq!(status_of(&ClientError::Io(std::io::ErrorKind::ConnectionReset.into())), RELA_ERR_IO);
        assert_eq!(status_of(&ClientError::Resolve("x".into())), RELA_ERR_RESOLVE);
    }
}
