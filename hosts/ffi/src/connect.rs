//! Connecting, pinging and closing.

use std::ffi::c_char;
use std::time::Duration;

use rela_client::{BlockingClient, ClientOptions};

use crate::boundary::{Failure, bytes, non_null_mut, run, text};
use crate::clients::{self, RelaClient};

/// Deadlines for [`rela_connect`], in milliseconds; 0 keeps the library default (10 s to
/// connect, 10 s for the handshake, 60 s for each step of a request). A zeroed struct, or a
/// null pointer, means all defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaConnectOptions {
    /// Longest wait for the TCP connection to be accepted.
    pub connect_timeout_ms: u32,
    /// Longest the handshake (HELLO, WELCOME, AUTH) may take.
    pub handshake_timeout_ms: u32,
    /// Longest wait for the node on any one step of a request.
    pub request_timeout_ms: u32,
}

impl RelaConnectOptions {
    fn client_options(self) -> ClientOptions {
        let mut o = ClientOptions::default();
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        if self.connect_timeout_ms != 0 {
            o.connect_timeout = Some(ms(self.connect_timeout_ms));
        }
        if self.handshake_timeout_ms != 0 {
            o.handshake_timeout = Some(ms(self.handshake_timeout_ms));
        }
        if self.request_timeout_ms != 0 {
            o.request_timeout = Some(ms(self.request_timeout_ms));
        }
        o
    }
}

/// Connects to `host` (a name, an IPv4 or an IPv6 address) on `port`, completes the handshake
/// and, when `token` is given, AUTH; returns the new client's handle.
///
/// This is the entry point for bindings written in Rust (`rela-jni`).
pub fn connect(
    host: &str,
    port: u16,
    token: Option<&[u8]>,
    options: RelaConnectOptions,
) -> Result<RelaClient, Failure> {
    if host.is_empty() {
        return Err(Failure::invalid("host is empty"));
    }
    // An IPv6 literal needs brackets before the port.
    let name = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let (client, _addr) = BlockingClient::connect_host(&name, token, options.client_options())?;
    Ok(clients::insert(client))
}

/// Connects to a node and writes the new client's handle to `*out_client`.
///
/// `token` is the shared secret (`token_len` bytes, any bytes), or null with `token_len` 0
/// when the node requires none. `options` may be null (all defaults).
///
/// Statuses: `AUTH_FAILED` (6) for a wrong token, `RELA_ERR_TOKEN_REQUIRED` when the node
/// wants one, `BUSY` (17) while the node turns this address away after failed AUTHs,
/// `RELA_ERR_TIMEOUT`, `RELA_ERR_IO` (refused), `RELA_ERR_RESOLVE`.
///
/// # Safety
/// `host` must be a NUL-terminated string; `token`, when not null, must point to `token_len`
/// bytes; `options`, when not null, to a `RelaConnectOptions`; `out_client` to a writable
/// `RelaClient`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_connect(
    host: *const c_char,
    port: u16,
    token: *const u8,
    token_len: usize,
    options: *const RelaConnectOptions,
    out_client: *mut RelaClient,
) -> i32 {
    run(|| {
        // SAFETY: the caller's contract, for each pointer.
        let (host, token, options, out) = unsafe {
            (
                text(host, "host")?,
                if token.is_null() && token_len == 0 {
                    None
                } else {
                    Some(bytes(token, token_len, "token")?)
                },
                options.as_ref().copied().unwrap_or_default(),
                non_null_mut(out_client, "out_client")?,
            )
        };
        *out = connect(host, port, token, options)?;
        Ok(())
    })
}

/// Sends PING and writes the round-trip time in microseconds to `*out_micros` (which may be
/// null).
///
/// # Safety
/// `out_micros`, when not null, must point to a writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_ping(client: RelaClient, out_micros: *mut u64) -> i32 {
    run(|| {
        let rtt = clients::with_client(client, |c| Ok(c.ping()?))?;
        // SAFETY: the caller's contract.
        if let Some(out) = unsafe { out_micros.as_mut() } {
            *out = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        }
        Ok(())
    })
}

/// Ends the session (BYE) and frees the client. The node frees and zeroes every buffer and
/// model the session held. The handle is invalid afterwards, whatever the status: a non-zero
/// status only says the goodbye could not be delivered. A session already broken (the node
/// went away, a deadline passed) has no goodbye to deliver and closes with `RELA_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn rela_close(client: RelaClient) -> i32 {
    run(|| close(client))
}

/// Takes the client out of the table and ends its session; see [`rela_close`].
///
/// This is the entry point for bindings written in Rust (`rela-jni`).
pub fn close(client: RelaClient) -> Result<(), Failure> {
    let entry = clients::remove(client)?;
    entry.client.close()?;
    Ok(())
}
