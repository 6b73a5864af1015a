//! The UDP discovery responder.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rela_client::FastCrc32;
use rela_core::auth::AuthKey;
use rela_core::config::{MAX_DATAGRAM, NODE_ID_LEN};
use rela_core::discovery::{Announce, Discover};
use tokio::net::UdpSocket;

use crate::messages::Status;

/// Answers every valid DISCOVER with an ANNOUNCE (signed when `key` is set). Anything else is
/// ignored (logged at debug). Never blocks on the engine: usage comes from `status`.
pub(crate) async fn respond(
    socket: UdpSocket,
    status: Arc<Status>,
    key: Option<AuthKey>,
    node_id: [u8; NODE_ID_LEN],
    port: u16,
) {
    let mut rx = [0u8; 2048];
    let mut tx = [0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut rx).await {
            Ok(x) => x,
            Err(error) => {
                // ICMP errors from earlier answers surface here; do not spin on a broken socket.
                tracing::debug!(%error, "discovery receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let probe = match Discover::parse::<FastCrc32>(&rx[..len]) {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%from, %error, "ignoring discovery datagram");
                continue;
            }
        };
        let info = &status.info;
        let free = info.total.saturating_sub(status.used.load(Ordering::Relaxed));
        let announce = Announce::new(
            probe.nonce,
            node_id,
            port,
            info.backend,
            key.is_some(),
            info.total,
            free,
            &info.name,
        );
        match announce.emit::<FastCrc32>(key.as_ref(), &mut tx) {
            Ok(n) => {
                if let Err(error) = socket.send_to(&tx[..n], from).await {
                    tracing::debug!(%from, %error, "discovery answer not sent");
                }
            }
            Err(error) => tracing::debug!(%error, "ANNOUNCE does not encode"),
        }
    }
}
