//! # rela-client
//!
//! The RELA client library.
//!
//! - [`Client`]: an async (tokio) session with a node: HELLO, WELCOME and AUTH, then buffer
//!   calls. Bulk [`Client::write`] and [`Client::read_into`] take any size: they are split
//!   into frames of at most the node's `max_payload` and pipelined.
//! - [`BlockingClient`]: the same calls for plain std programs.
//! - [`discover`] / [`discover_report`] / [`discover_targets`]: UDP discovery, with
//!   announcement signatures checked when a token is given.
//! - [`FastCrc32`]: the `crc32fast` implementation of the core's CRC seam, shared with the node.
//! - [`tls`] (feature `tls`, on by default): sessions over TLS 1.3 with the node's certificate
//!   pinned, checked against a CA bundle, or trusted on first use ([`ClientOptions::tls`]).
//!
//! No call waits forever: connecting, the handshake and every step of a request have deadlines
//! ([`ClientOptions::connect_timeout`], [`ClientOptions::handshake_timeout`],
//! [`ClientOptions::request_timeout`]; 10 s, 10 s and 60 s by default). One that passes is a
//! [`ClientError::Timeout`] and closes the session.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rela_client::ClientError> {
//! let addr = "127.0.0.1:8765".parse().unwrap();
//! let mut client = rela_client::Client::connect(addr, Some(b"token")).await?;
//! let buf = client.alloc(1 << 20).await?;
//! client.write(buf, 0, &[7u8; 1 << 20]).await?;
//! let back = client.read(buf, 0, 1 << 20).await?;
//! assert!(back.iter().all(|b| *b == 7));
//! client.close().await
//! # }
//! ```

mod blocking;
mod client;
pub mod compress;
mod crc;
mod discovery;
mod error;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use blocking::BlockingClient;
pub use client::{
    Client, ClientOptions, DEFAULT_COMPRESSED_WRITE_CHUNK, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_READ_CHUNK, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WRITE_CHUNK,
    GenerateEvent, GenerateOutcome, GenerateRequest, Handle, Kernel, ListedModel, LoadProgress, LoadStage,
    Progress, RemoteDeviceInfo, RemoteModel, TokenStream,
};
pub use crc::FastCrc32;
pub use discovery::{
    DiscoveryReport, NodeAnnouncement, RejectedAnnouncement, discover, discover_report, discover_targets,
};
pub use error::{ClientError, TimeoutPhase};

#[doc(hidden)]
pub mod __private {
    //! Not public API: helpers shared with `rela-node`.

    /// Whether asking for `size`-byte socket buffers gets them: on Linux the kernel clamps
    /// `SO_{SND,RCV}BUF` to `net.core.{w,r}mem_max` and turns off autotuning, which would make
    /// a clamped request slower than the default.
    pub fn socket_buffer_applicable(size: usize) -> bool {
        if size == 0 {
            return false;
        }
        let max = |path: &str| {
            std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(0)
        };
        max("/proc/sys/net/core/rmem_max") >= size && max("/proc/sys/net/core/wmem_max") >= size
    }
}
