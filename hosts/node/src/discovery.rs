//! The UDP discovery responder.
//!
//! Only padded DISCOVERs are answered (a whole 256-byte datagram), and an answer is never
//! larger than its probe, so the responder cannot amplify traffic aimed at a spoofed source.
//! Answers are also rate-limited per source address ([`REPLIES_PER_SOURCE`] per second) and in
//! total ([`REPLIES_TOTAL`] per second), so it cannot be made to flood one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rela_client::FastCrc32;
use rela_core::auth::AuthKey;
use rela_core::config::{MAX_DATAGRAM, NODE_ID_LEN, TLS_FINGERPRINT_LEN};
use rela_core::discovery::{Announce, Discover};
use tokio::net::UdpSocket;

use crate::messages::Status;

/// Most answers per second to one source address.
pub(crate) const REPLIES_PER_SOURCE: u32 = 4;
/// Most answers per second in all.
pub(crate) const REPLIES_TOTAL: u32 = 256;
/// Most source addresses remembered in one second.
const MAX_SOURCES: usize = 4096;

/// Counts answers per source in one-second windows.
#[derive(Debug)]
pub(crate) struct ReplyLimiter {
    window: std::time::Instant,
    total: u32,
    per_source: HashMap<IpAddr, u32>,
}

impl ReplyLimiter {
    pub(crate) fn new(now: std::time::Instant) -> Self {
        Self { window: now, total: 0, per_source: HashMap::new() }
    }

    /// Whether an answer to `source` may be sent at `now` (and counts it if so).
    pub(crate) fn allow(&mut self, source: IpAddr, now: std::time::Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.total = 0;
            self.per_source.clear();
        }
        if self.total >= REPLIES_TOTAL {
            return false;
        }
        if !self.per_source.contains_key(&source) && self.per_source.len() >= MAX_SOURCES {
            return false;
        }
        let n = self.per_source.entry(source).or_insert(0);
        if *n >= REPLIES_PER_SOURCE {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

/// Answers every valid (padded) DISCOVER with an ANNOUNCE (signed when `key` is set, with the
/// TLS certificate's fingerprint when the node serves TLS), within the rate limits. Anything else is ignored (logged at debug). Never blocks on the engine: usage comes from `status`.
pub(crate) async fn respond(
    socket: UdpSocket,
    status: Arc<Status>,
    key: Option<AuthKey>,
    node_id: [u8; NODE_ID_LEN],
    port: u16,
    tls_fingerprint: Option<[u8; TLS_FINGERPRINT_LEN]>,
) {
    let mut rx = [0u8; 2048];
    let mut tx = [0u8; MAX_DATAGRAM];
    let mut limiter = ReplyLimiter::new(std::time::Instant::now());
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
        if !limiter.allow(from.ip(), std::time::Instant::now()) {
            tracing::debug!(%from, "discovery answer rate-limited");
            continue;
        }
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
        let announce = match tls_fingerprint {
            Some(fp) => announce.with_tls_fingerprint(fp),
            None => announce,
        };
        match announce.emit::<FastCrc32>(key.as_ref(), &mut tx) {
            // Never larger than the probe (a padded DISCOVER is the largest datagram there is).
            Ok(n) if n > len => tracing::debug!(%from, "ANNOUNCE larger than its DISCOVER; not sent"),
            Ok(n) => {
                if let Err(error) = socket.send_to(&tx[..n], from).await {
                    tracing::debug!(%from, %error, "discovery answer not sent");
                }
            }
            Err(error) => tracing::debug!(%error, "ANNOUNCE does not encode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use super::*;

    #[test]
    fn replies_are_limited_per_source_and_in_total() {
        let now = Instant::now();
        let mut l = ReplyLimiter::new(now);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for _ in 0..REPLIES_PER_SOURCE {
            assert!(l.allow(a, now));
        }
        assert!(!l.allow(a, now), "one source past its share");
        assert!(l.allow(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), now), "another source is answered");
        // In total: many sources in one second.
        let mut answered = REPLIES_PER_SOURCE + 1;
        for i in 0..10_000u32 {
            if l.allow(IpAddr::V4(Ipv4Addr::from((i + 1) << 8)), now) {
                answered += 1;
            }
        }
        assert_eq!(answered, REPLIES_TOTAL);
        // The next second starts afresh.
        assert!(l.allow(a, now + Duration::from_secs(1)));
    }
}
