//! Every protocol limit and fixed capacity of the core, in one place.
//!
//! Hosts may configure limits *lower* than these (see [`crate::session::SessionConfig`]),
//! never higher: the capacities of the no-alloc tables are compile-time constants.

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this crate accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Hard cap on a frame's payload length: 16 MiB. No configuration can raise it.
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Payload cap in force until a session is ready (handshake done): every request allowed
/// before then (HELLO, AUTH, PING of at most 256 bytes, BYE) fits, so a peer that has not
/// authenticated cannot make a node reserve more than this for one frame.
pub const HANDSHAKE_MAX_PAYLOAD: u32 = 512;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest possible frame: header plus the largest payload.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD as usize;

/// Capacity of a session's buffer table (the most buffers one session can hold).
pub const MAX_BUFFERS: usize = 256;
/// Most models one session may hold loaded at once.
pub const MAX_MODELS: usize = 4;
/// Largest PING payload a node echoes.
pub const MAX_PING_PAYLOAD: usize = 256;
/// Longest reason string carried by an ERROR frame.
pub const MAX_ERROR_REASON: usize = 128;
/// Longest device name in DEVICE_INFO and ANNOUNCE.
pub const MAX_DEVICE_NAME: usize = 64;
/// Longest vendor name in DEVICE_INFO.
pub const MAX_VENDOR_NAME: usize = 32;
/// Length of the server nonce sent in WELCOME.
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Length of the client nonce in DISCOVER.
pub const DISCOVERY_NONCE_LEN: usize = 16;
/// Length of a node id in ANNOUNCE.
pub const NODE_ID_LEN: usize = 16;
/// Largest encoded discovery datagram (header included).
pub const MAX_DATAGRAM: usize = 256;
/// Length of a TLS certificate fingerprint: SHA-256 of the certificate's DER encoding.
pub const TLS_FINGERPRINT_LEN: usize = 32;
/// The ALPN protocol name a node serving TLS offers and a client asks for (docs/PROTOCOL.md §1).
pub const TLS_ALPN: &[u8] = b"rela/1";
/// Most output frames one input can produce (a response, or an ERROR then the close).
pub const MAX_PENDING: usize = 2;

/// Default TCP port for sessions.
pub const DEFAULT_SESSION_PORT: u16 = 8765;
/// Default UDP port for discovery.
pub const DEFAULT_DISCOVERY_PORT: u16 = 8766;

static_assertions::const_assert!(MAX_BUFFERS <= u16::MAX as usize);
static_assertions::const_assert!(MAX_PAYLOAD as usize <= MAX_FRAME);
static_assertions::const_assert!(HANDSHAKE_MAX_PAYLOAD as usize >= MAX_PING_PAYLOAD);
