//! Connecting, pinging and closing.

use std::ffi::c_char;
use std::time::Duration;

use rela_client::{BlockingClient, ClientOptions};

use crate::boundary::{Failure, bytes, non_null_mut, run, text};
use crate::clients::{self, RelaClient};

/// [`RelaConnectOptions::tls`]: plaintext TCP (the default).
pub const RELA_TLS_OFF: u32 = 0;
/// [`RelaConnectOptions::tls`]: TLS, trusting only the certificate whose SHA-256 fingerprint is
/// [`RelaConnectOptions::tls_fingerprint`] (what `vram-relay serve --tls` logs and discovery
/// announces).
pub const RELA_TLS_PINNED: u32 = 1;
/// [`RelaConnectOptions::tls`]: TLS, trusting certificates that chain to a CA of the PEM file
/// [`RelaConnectOptions::tls_ca_file`] and name the host connected to.
pub const RELA_TLS_CA: u32 = 2;
/// [`RelaConnectOptions::tls`]: TLS, trusting the certificate a node presents the first time
/// and only that one afterwards, remembered per address in the file
/// [`RelaConnectOptions::tls_known_nodes`].
pub const RELA_TLS_FIRST_USE: u32 = 3;

/// Deadlines and transport for [`rela_connect`]. A deadline of 0 keeps the library default
/// (10 s to connect, 10 s for the handshake, 60 s for each step of a request). A zeroed
/// struct, or a null pointer, means all defaults: plaintext, default deadlines.
///
/// TLS (`tls` other than [`RELA_TLS_OFF`]) needs a library built with the `tls` feature (the
/// default; the Android builds of CI leave it out, since its crypto needs the NDK's C
/// compiler); without it, [`rela_connect`] answers `RELA_ERR_TLS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaConnectOptions {
    /// Longest wait for the TCP connection to be accepted.
    pub connect_timeout_ms: u32,
    /// Longest the handshake (TLS, then HELLO, WELCOME, AUTH) may take.
    pub handshake_timeout_ms: u32,
    /// Longest wait for the node on any one step of a request.
    pub request_timeout_ms: u32,
    /// How the session is carried: [`RELA_TLS_OFF`], [`RELA_TLS_PINNED`], [`RELA_TLS_CA`] or
    /// [`RELA_TLS_FIRST_USE`].
    pub tls: u32,
    /// With [`RELA_TLS_PINNED`]: the fingerprint, 64 hex digits (colons between bytes allowed),
    /// NUL-terminated. Otherwise ignored (may be null).
    pub tls_fingerprint: *const c_char,
    /// With [`RELA_TLS_CA`]: the path of a PEM file of CA certificates, NUL-terminated.
    /// Otherwise ignored (may be null).
    pub tls_ca_file: *const c_char,
    /// With [`RELA_TLS_FIRST_USE`]: the path of the known-nodes file (one line per node), or
    /// null for the default (`$XDG_STATE_HOME/vram-relay/known_nodes`, else under `$HOME`).
    /// Otherwise ignored.
    pub tls_known_nodes: *const c_char,
}

impl Default for RelaConnectOptions {
    /// All defaults: plaintext, the library's deadlines.
    fn default() -> Self {
        Self {
            connect_timeout_ms: 0,
            handshake_timeout_ms: 0,
            request_timeout_ms: 0,
            tls: RELA_TLS_OFF,
            tls_fingerprint: std::ptr::null(),
            tls_ca_file: std::ptr::null(),
            tls_known_nodes: std::ptr::null(),
        }
    }
}

/// How a client trusts a node's certificate, in Rust terms (what [`RelaConnectOptions`]'s TLS
/// fields say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// Plaintext TCP.
    Off,
    /// Only the certificate with this fingerprint (64 hex digits, colons allowed).
    Pinned(String),
    /// Certificates that chain to a CA of this PEM file.
    Ca(String),
    /// Trust on first use, remembered in this file (`None`: the default location).
    FirstUse(Option<String>),
}

/// Deadlines in milliseconds (0: the default) and the transport, for [`connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// Longest wait for the TCP connection to be accepted.
    pub connect_timeout_ms: u32,
    /// Longest the handshake may take.
    pub handshake_timeout_ms: u32,
    /// Longest wait for the node on any one step of a request.
    pub request_timeout_ms: u32,
    /// Plaintext or TLS, and how the node's certificate is trusted.
    pub tls: TlsChoice,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self { connect_timeout_ms: 0, handshake_timeout_ms: 0, request_timeout_ms: 0, tls: TlsChoice::Off }
    }
}

impl RelaConnectOptions {
    /// The settings these options describe.
    ///
    /// # Safety
    /// The string fields the `tls` mode reads must be null or NUL-terminated strings.
    unsafe fn settings(&self) -> Result<ConnectSettings, Failure> {
        // SAFETY (each call): the caller's contract for the field read.
        let path = |p: *const c_char, name: &str| -> Result<Option<String>, Failure> {
            if p.is_null() { Ok(None) } else { Ok(Some(unsafe { text(p, name) }?.to_owned())) }
        };
        let tls = match self.tls {
            RELA_TLS_OFF => TlsChoice::Off,
            RELA_TLS_PINNED => TlsChoice::Pinned(
                path(self.tls_fingerprint, "tls_fingerprint")?
                    .ok_or_else(|| Failure::invalid("RELA_TLS_PINNED needs tls_fingerprint"))?,
            ),
            RELA_TLS_CA => TlsChoice::Ca(
                path(self.tls_ca_file, "tls_ca_file")?
                    .ok_or_else(|| Failure::invalid("RELA_TLS_CA needs tls_ca_file"))?,
            ),
            RELA_TLS_FIRST_USE => TlsChoice::FirstUse(path(self.tls_known_nodes, "tls_known_nodes")?),
            other => {
                return Err(Failure::invalid(format!("tls is {other}: not one of the RELA_TLS_* modes")));
            }
        };
        Ok(ConnectSettings {
            connect_timeout_ms: self.connect_timeout_ms,
            handshake_timeout_ms: self.handshake_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            tls,
        })
    }
}

impl ConnectSettings {
    fn client_options(&self) -> Result<ClientOptions, Failure> {
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
        tls_options(&self.tls, o)
    }
}

/// `o` with the TLS options `choice` asks for.
#[cfg(feature = "tls")]
fn tls_options(choice: &TlsChoice, o: ClientOptions) -> Result<ClientOptions, Failure> {
    use rela_client::tls::{Fingerprint, KnownNodes, TlsOptions, TlsTrust};
    let tls = match choice {
        TlsChoice::Off => return Ok(o),
        TlsChoice::Pinned(hex) => TlsOptions::pinned(
            hex.parse::<Fingerprint>().map_err(|e| Failure::invalid(format!("tls_fingerprint: {e}")))?,
        ),
        TlsChoice::Ca(path) => TlsOptions {
            trust: TlsTrust::ca_file(std::path::Path::new(path)).map_err(rela_client::ClientError::from)?,
        },
        TlsChoice::FirstUse(store) => TlsOptions::first_use(match store {
            Some(path) => KnownNodes::new(path),
            None => KnownNodes::default_location(),
        }),
    };
    Ok(o.with_tls(tls))
}

/// Without the `tls` feature only plaintext connects.
#[cfg(not(feature = "tls"))]
fn tls_options(choice: &TlsChoice, o: ClientOptions) -> Result<ClientOptions, Failure> {
    match choice {
        TlsChoice::Off => Ok(o),
        _ => Err(Failure::new(
            crate::status::RELA_ERR_TLS,
            "this library was built without TLS (rela-ffi's `tls` feature)",
        )),
    }
}

/// Connects to `host` (a name, an IPv4 or an IPv6 address) on `port`, completes the handshake
/// (TLS first, when `settings` ask for it) and, when `token` is given, AUTH; returns the new
/// client's handle.
///
/// This is the entry point for bindings written in Rust (`rela-jni`).
pub fn connect(
    host: &str,
    port: u16,
    token: Option<&[u8]>,
    settings: &ConnectSettings,
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
    let (client, _addr) = BlockingClient::connect_host(&name, token, settings.client_options()?)?;
    Ok(clients::insert(client))
}

/// Connects to a node and writes the new client's handle to `*out_client`.
///
/// `token` is the shared secret (`token_len` bytes, any bytes), or null with `token_len` 0
/// when the node requires none. `options` may be null (all defaults).
///
/// Statuses: `AUTH_FAILED` (6) for a wrong token, `RELA_ERR_TOKEN_REQUIRED` when the node
/// wants one, `BUSY` (17) while the node turns this address away after failed AUTHs,
/// `RELA_ERR_TIMEOUT`, `RELA_ERR_IO` (refused), `RELA_ERR_RESOLVE`; with TLS, `RELA_ERR_TLS`
/// for a certificate that is not trusted (another fingerprint than the pinned one, one that
/// changed since first use, one no CA of the file vouches for) or a failed TLS handshake, and
/// `RELA_ERR_INVALID_ARGUMENT` for a fingerprint that is not 64 hex digits.
///
/// # Safety
/// `host` must be a NUL-terminated string; `token`, when not null, must point to `token_len`
/// bytes; `options`, when not null, to a `RelaConnectOptions` whose string fields that its
/// `tls` mode reads are null or NUL-terminated; `out_client` to a writable `RelaClient`.
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
                options.as_ref().map(|o| o.settings()).transpose()?.unwrap_or_default(),
                non_null_mut(out_client, "out_client")?,
            )
        };
        *out = connect(host, port, token, &options)?;
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
