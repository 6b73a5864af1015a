//! [`NodeConfig`] and its validation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rela_core::auth::AuthKey;
use rela_core::config::{
    DEFAULT_DISCOVERY_PORT, DEFAULT_SESSION_PORT, HEADER_LEN, MAX_BUFFERS, MAX_PAYLOAD, MAX_PING_PAYLOAD,
    NODE_ID_LEN,
};
use rela_core::session::SessionConfig;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// TCP address for sessions. Default `127.0.0.1:8765`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// UDP address of the discovery responder, `None` to disable it. Default `127.0.0.1:8766`.
    pub discovery: Option<SocketAddr>,
    /// Most concurrent sessions; past it a connection gets one ERROR(BUSY) and is closed.
    pub max_sessions: usize,
    /// Most concurrent sessions from one IP address (default 16); past it a connection gets
    /// one ERROR(BUSY) and is closed, so one address cannot take every slot. Loopback peers
    /// count against it only with [`cap_loopback`](Self::cap_loopback).
    pub max_sessions_per_address: usize,
    /// Whether loopback peers count against
    /// [`max_sessions_per_address`](Self::max_sessions_per_address). Default `false`: on
    /// loopback every local client, and every client arriving through a TLS tunnel, shares one
    /// address, and only `max_sessions` bounds them.
    pub cap_loopback: bool,
    /// Per-session limits, timeouts and the auth key (`session.auth`: `Some` makes AUTH
    /// mandatory and signs discovery announcements).
    pub session: SessionConfig,
    /// The id announced by discovery. Default: random per config.
    pub node_id: [u8; NODE_ID_LEN],
    /// Allow binding a non-loopback address without a token (see [`validate`](Self::validate)).
    pub allow_unauthenticated: bool,
    /// Serve sessions over TLS with this certificate and key (`serve --tls`); its fingerprint
    /// travels in ANNOUNCE. Default [`None`]: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsIdentity>,
    /// Allow serving a non-loopback address over plain TCP (see [`validate`](Self::validate)).
    pub allow_plaintext: bool,
    /// Requests read ahead per connection while earlier ones are served (pipelining depth,
    /// at least 1). Their large buffers come from the node-wide pool ([`buffer_budget`]).
    ///
    /// [`buffer_budget`]: Self::buffer_budget
    pub pipeline_depth: usize,
    /// Bytes of frame buffers the whole node may hold at once: WRITE payloads being read or
    /// waiting for the engine, READ responses waiting for their socket, and buffers cached for
    /// reuse. A connection waits for room before reading a payload. Must hold at least one
    /// largest frame (header plus `max_payload`, rounded up to 4 KiB). Default
    /// [`DEFAULT_BUFFER_BUDGET`]. Over [`NodeBackend::host`](crate::NodeBackend::host) WRITE
    /// data and READ responses skip the pool (they go straight to and from the buffer); it
    /// then holds only payloads the session refuses and other large requests.
    pub buffer_budget: usize,
    /// After the first failed AUTH from an IP, no connection from it is served for this long;
    /// the wait doubles with each further failure. Connections that arrive meanwhile are told
    /// at once (ERROR(BUSY) with `retry after N ms` in its reason) and closed.
    pub auth_backoff: Duration,
    /// Upper bound of that delay.
    pub auth_backoff_max: Duration,
    /// Directory of models to serve (`serve --models DIR`): each subdirectory holding
    /// `model.safetensors`, `tokenizer.json` and `config.json` is an embedding model named after
    /// it, and each `NAME.gguf` file a language model named `NAME` (GENERATE).
    /// `None` serves no models (MODEL_* requests are answered UNSUPPORTED).
    pub models: Option<std::path::PathBuf>,
    /// Requested socket buffer size; applied only where the kernel grants that much (see
    /// `rela_client::ClientOptions::socket_buffer`). `0` leaves the defaults.
    pub socket_buffer: usize,
    /// Most multiply-adds one DISPATCH may cost ([`rela_core::backend::KernelCall::work`]);
    /// more is `ERROR(LIMIT_EXCEEDED)`. Bounds one request to seconds of device time.
    pub max_dispatch_cost: u64,
    /// Repository models to load at start and keep until the node stops (`serve --preload`),
    /// shared by every session that loads them.
    pub preload: Vec<String>,
    /// Most tokens one INFER may embed, over all its texts; more is `ERROR(LIMIT_EXCEEDED)`.
    pub max_infer_tokens: u64,
    /// Most tokens one GENERATE may ask for (`max_tokens`); more is `ERROR(LIMIT_EXCEEDED)`.
    pub max_generate_tokens: u32,
    /// Most positions (prompt and generated tokens) of one generation, below each model's own
    /// context length; a prompt that leaves no room is `ERROR(LIMIT_EXCEEDED)`. Bounds the KV
    /// cache, which is charged to the session's quota.
    pub max_context: u32,
    /// How language models' forward passes on the host backend treat activations (`serve
    /// --activations`): [`rela_llm::Activations::F32`] (the default, the path checked against
    /// the reference) or [`rela_llm::Activations::Q8`] (8-bit inputs to the Q4 products, faster
    /// and less exact). Device backends run their own kernels, in f32.
    pub activations: rela_llm::Activations,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_SESSION_PORT),
            discovery: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_DISCOVERY_PORT)),
            max_sessions: 64,
            max_sessions_per_address: 16,
            cap_loopback: false,
            // Compressed payloads are served to clients that ask for them (`crate::compress`).
            session: SessionConfig { lz4: true, ..SessionConfig::default() },
            node_id: rand::random(),
            allow_unauthenticated: false,
            #[cfg(feature = "tls")]
            tls: None,
            allow_plaintext: false,
            pipeline_depth: 4,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
            auth_backoff: Duration::from_millis(250),
            auth_backoff_max: Duration::from_secs(30),
            socket_buffer: 4 * 1024 * 1024,
            models: None,
            max_dispatch_cost: crate::engine::DEFAULT_MAX_DISPATCH_COST,
            preload: Vec::new(),
            max_infer_tokens: crate::models::DEFAULT_MAX_INFER_TOKENS,
            max_generate_tokens: crate::llm::DEFAULT_MAX_GENERATE_TOKENS,
            max_context: crate::llm::DEFAULT_MAX_CONTEXT,
            activations: rela_llm::Activations::F32,
        }
    }
}

impl NodeConfig {
    /// Sets the shared token (AUTH becomes mandatory; announcements are signed).
    #[must_use]
    pub fn with_token(mut self, token: &[u8]) -> Self {
        self.session.auth = Some(AuthKey::new(token));
        self
    }

    /// Whether a token is configured.
    pub const fn has_token(&self) -> bool {
        self.session.auth.is_some()
    }

    /// Whether sessions are served over TLS.
    pub const fn has_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Checks the configuration. [`crate::Node::start`] calls it; a CLI can call it first to
    /// report problems before binding anything.
    ///
    /// Refuses a non-loopback session or discovery address without a token unless
    /// [`allow_unauthenticated`](Self::allow_unauthenticated) is set, a non-loopback session
    /// address without TLS unless [`allow_plaintext`](Self::allow_plaintext) is set, and
    /// limits outside what the protocol core supports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.has_token() && !self.allow_unauthenticated {
            for addr in std::iter::once(self.listen).chain(self.discovery) {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::UnauthenticatedBind(addr));
                }
            }
        }
        if !self.has_tls() && !self.allow_plaintext && !self.listen.ip().is_loopback() {
            return Err(ConfigError::PlaintextBind(self.listen));
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::NoSessions);
        }
        if self.max_sessions_per_address == 0 {
            return Err(ConfigError::NoSessionsPerAddress);
        }
        if self.pipeline_depth == 0 {
            return Err(ConfigError::NoPipeline);
        }
        let p = self.session.max_payload;
        if !(MIN_MAX_PAYLOAD..=MAX_PAYLOAD).contains(&p) {
            return Err(ConfigError::MaxPayload(p));
        }
        let frame = crate::pool::class_of(HEADER_LEN + p as usize);
        if self.buffer_budget < frame {
            return Err(ConfigError::BufferBudget { budget: self.buffer_budget, needed: frame });
        }
        if self.session.max_buffers == 0 || self.session.max_buffers as usize > MAX_BUFFERS {
            return Err(ConfigError::MaxBuffers(self.session.max_buffers));
        }
        Ok(())
    }
}

/// Default [`NodeConfig::buffer_budget`]: 40 MiB — two largest (16 MiB) frames, so one can be
/// read while the other is stored, plus eight default-size (1 MiB) client frames; small enough
/// that a node's memory beyond the bytes it stores stays well under 64 MiB with many sessions
/// (about 53 MiB with 64 sessions uploading at once, see docs/BENCHMARKS.md).
pub const DEFAULT_BUFFER_BUDGET: usize = 40 * 1024 * 1024;

/// Smallest `max_payload` a node accepts: a PING must fit.
pub const MIN_MAX_PAYLOAD: u32 = MAX_PING_PAYLOAD as u32 * 4;

/// A configuration [`NodeConfig::validate`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A non-loopback address without a token and without `allow_unauthenticated`.
    UnauthenticatedBind(SocketAddr),
    /// A non-loopback session address without TLS and without `allow_plaintext`.
    PlaintextBind(SocketAddr),
    /// `max_sessions` is zero.
    NoSessions,
    /// `max_sessions_per_address` is zero.
    NoSessionsPerAddress,
    /// `pipeline_depth` is zero.
    NoPipeline,
    /// `max_payload` outside [`MIN_MAX_PAYLOAD`]`..=16 MiB`.
    MaxPayload(u32),
    /// `max_buffers` is zero or above the core's table capacity.
    MaxBuffers(u16),
    /// `buffer_budget` cannot hold one largest frame.
    BufferBudget {
        /// The configured budget.
        budget: usize,
        /// The bytes one largest frame needs.
        needed: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnauthenticatedBind(a) => write!(
                f,
                "refusing to serve {a} without a token (set a token or allow unauthenticated access)"
            ),
            Self::PlaintextBind(a) => write!(
                f,
                "refusing to serve {a} over plain TCP, readable by anyone on the network (serve TLS or \
                 allow plaintext)"
            ),
            Self::NoSessions => f.write_str("max_sessions must be at least 1"),
            Self::NoSessionsPerAddress => f.write_str("max_sessions_per_address must be at least 1"),
            Self::NoPipeline => f.write_str("pipeline_depth must be at least 1"),
            Self::MaxPayload(p) => {
                write!(f, "max_payload {p} outside {MIN_MAX_PAYLOAD}..={MAX_PAYLOAD}")
            }
            Self::MaxBuffers(b) => write!(f, "max_buffers {b} outside 1..={MAX_BUFFERS}"),
            Self::BufferBudget { budget, needed } => {
                write!(f, "buffer_budget {budget} below one largest frame ({needed} bytes)")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(NodeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn public_bind_needs_token_or_opt_in() {
        let mut c = NodeConfig { listen: "0.0.0.0:8765".parse().expect("addr"), ..NodeConfig::default() };
        c.allow_plaintext = true;
        assert!(matches!(c.validate(), Err(ConfigError::UnauthenticatedBind(_))));
        c.allow_unauthenticated = true;
        assert_eq!(c.validate(), Ok(()));
        c.allow_unauthenticated = false;
        let c = c.with_token(b"t");
        assert_eq!(c.validate(), Ok(()));
        let c =
            NodeConfig { discovery: Some("0.0.0.0:8766".parse().expect("addr")), ..NodeConfig::default() };
        assert!(matches!(c.validate(), Err(ConfigError::UnauthenticatedBind(_))));
    }

    #[test]
    fn public_plaintext_bind_needs_tls_or_opt_in() {
        let mut c = NodeConfig { listen: "0.0.0.0:8765".parse().expect("addr"), ..NodeConfig::default() }
            .with_token(b"t");
        assert_eq!(c.validate(), Err(ConfigError::PlaintextBind(c.listen)));
        c.allow_plaintext = true;
        assert_eq!(c.validate(), Ok(()));
        // Loopback needs neither; discovery on a public address carries no session data.
        let c =
            NodeConfig { discovery: Some("0.0.0.0:8766".parse().expect("addr")), ..NodeConfig::default() }
                .with_token(b"t");
        assert_eq!(c.validate(), Ok(()));
        #[cfg(feature = "tls")]
        {
            let tls = crate::tls::TlsIdentity::self_signed().expect("identity");
            let c = NodeConfig {
                listen: "0.0.0.0:8765".parse().expect("addr"),
                tls: Some(tls),
                ..NodeConfig::default()
            }
            .with_token(b"t");
            assert_eq!(c.validate(), Ok(()));
        }
    }

    #[test]
    fn limits() {
        let mut c = NodeConfig::default();
        c.session.max_payload = MAX_PAYLOAD + 1;
        assert_eq!(c.validate(), Err(ConfigError::MaxPayload(MAX_PAYLOAD + 1)));
        let c = NodeConfig { max_sessions: 0, ..NodeConfig::default() };
        assert_eq!(c.validate(), Err(ConfigError::NoSessions));
        let c = NodeConfig { max_sessions_per_address: 0, ..NodeConfig::default() };
        assert_eq!(c.validate(), Err(ConfigError::NoSessionsPerAddress));
        let c = NodeConfig { buffer_budget: 1 << 20, ..NodeConfig::default() };
        assert!(matches!(c.validate(), Err(ConfigError::BufferBudget { .. })));
        let mut c = NodeConfig { buffer_budget: 1 << 20, ..NodeConfig::default() };
        c.session.max_payload = 512 * 1024;
        assert_eq!(c.validate(), Ok(()));
    }
}
