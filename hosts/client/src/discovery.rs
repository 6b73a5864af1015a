//! The discovery client: DISCOVER out, ANNOUNCEs in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rela_core::auth::AuthKey;
use rela_core::backend::BackendKind;
use rela_core::config::{MAX_DATAGRAM, NODE_ID_LEN, TLS_FINGERPRINT_LEN};
use rela_core::discovery::{ANNOUNCE_SIGNED, Announce, Discover, DiscoveryError};
use tokio::net::UdpSocket;

use crate::FastCrc32;
use crate::error::ClientError;

/// A node that answered DISCOVER (and, when a token was given, proved it holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAnnouncement {
    /// The session address: the datagram's source IP and the announced TCP port.
    pub addr: SocketAddr,
    /// The node's stable id.
    pub node_id: [u8; NODE_ID_LEN],
    /// Backend kind.
    pub backend: BackendKind,
    /// Whether the node requires AUTH.
    pub auth_required: bool,
    /// Whether the announcement carried an HMAC tag that was verified with the given token.
    /// `false` when no token was given (the tag, if any, could not be checked).
    pub verified: bool,
    /// Total bytes the node lends.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Device name.
    pub device: String,
    /// The SHA-256 of the node's TLS certificate, when it serves TLS. Pin it
    /// (`rela_client::tls::TlsOptions::pinned`) only when [`verified`](Self::verified): an
    /// unsigned announcement can come from anyone.
    pub tls_fingerprint: Option<[u8; TLS_FINGERPRINT_LEN]>,
}

/// A datagram that was not accepted as an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectedAnnouncement {
    /// Where it came from.
    pub from: SocketAddr,
    /// Why it was rejected: garbage, another probe's nonce, unsigned or badly signed while a
    /// token is configured.
    pub error: DiscoveryError,
}

/// Everything one discovery round heard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryReport {
    /// Accepted announcements, one per `(addr, node_id)`, in arrival order.
    pub nodes: Vec<NodeAnnouncement>,
    /// Rejected datagrams.
    pub rejected: Vec<RejectedAnnouncement>,
}

/// Sends one DISCOVER with a fresh random nonce to `target` (a node, or a broadcast address)
/// and collects the answers for `timeout`, or until the node answers when `target` is a
/// unicast address (see [`discover_targets`]).
///
/// With a token, announcements that are unsigned or whose tag does not verify are dropped
/// (logged at `warn`); use [`discover_report`] to see them.
pub async fn discover(
    target: SocketAddr,
    timeout: Duration,
    token: Option<&[u8]>,
) -> Result<Vec<NodeAnnouncement>, ClientError> {
    let report = discover_report(target, timeout, token).await?;
    for r in &report.rejected {
        tracing::warn!(from = %r.from, error = %r.error, "rejected discovery answer");
    }
    Ok(report.nodes)
}

/// [`discover`], also returning the rejected datagrams.
pub async fn discover_report(
    target: SocketAddr,
    timeout: Duration,
    token: Option<&[u8]>,
) -> Result<DiscoveryReport, ClientError> {
    discover_targets(&[target], timeout, None, token).await
}

/// One discovery round to several targets at once, say the LAN's broadcast address and the
/// loopback discovery port (where a node started with the defaults listens): one socket, one
/// fresh nonce, one DISCOVER to each target.
///
/// It collects answers until the first of:
/// - `timeout` has passed;
/// - every target is a unicast address and each one has answered;
/// - `settle` is given, at least one node has answered, and `settle` has passed since the last
///   new answer (on a LAN, nodes answer within milliseconds).
///
/// A target the DISCOVER cannot be sent to (for example a broadcast address on a host without
/// a network) is skipped and logged at `debug`; the round fails only when no target could be
/// sent to. All targets must be of one address family.
pub async fn discover_targets(
    targets: &[SocketAddr],
    timeout: Duration,
    settle: Option<Duration>,
    token: Option<&[u8]>,
) -> Result<DiscoveryReport, ClientError> {
    let Some(first) = targets.first() else {
        return Err(ClientError::InvalidArgument("no discovery target"));
    };
    if targets.iter().any(|t| t.is_ipv4() != first.is_ipv4()) {
        return Err(ClientError::InvalidArgument("discovery targets mix IPv4 and IPv6"));
    }
    let key = token.map(AuthKey::new);
    let all_loopback = targets.iter().all(|t| t.ip().is_loopback());
    let local: IpAddr = match (first.ip(), all_loopback) {
        (IpAddr::V4(_), true) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V4(_), false) => Ipv4Addr::UNSPECIFIED.into(),
        (IpAddr::V6(_), true) => Ipv6Addr::LOCALHOST.into(),
        (IpAddr::V6(_), false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    let broadcast = |t: &SocketAddr| matches!(t.ip(), IpAddr::V4(ip) if ip.is_broadcast());
    if targets.iter().any(broadcast) {
        socket.set_broadcast(true)?;
    }
    let nonce: [u8; Discover::NONCE_LEN] = rand::random();
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = Discover { nonce }
        .emit::<FastCrc32>(&mut buf)
        .map_err(|_| ClientError::InvalidArgument("DISCOVER does not encode"))?;
    let mut sent = 0;
    let mut last_err = None;
    for target in targets {
        match socket.send_to(&buf[..n], target).await {
            Ok(_) => sent += 1,
            Err(e) => {
                tracing::debug!(%target, error = %e, "cannot send DISCOVER");
                last_err = Some(e);
            }
        }
    }
    if sent == 0 {
        return Err(last_err.map_or(ClientError::InvalidArgument("no discovery target"), ClientError::Io));
    }
    // Unicast targets not yet heard from; with a broadcast target, answers cannot be counted.
    let mut waiting: Vec<SocketAddr> =
        if targets.iter().any(broadcast) { Vec::new() } else { targets.to_vec() };
    let counting = !waiting.is_empty();

    let mut report = DiscoveryReport::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut until = deadline;
    let mut rx = [0u8; 2048];
    loop {
        let (len, from) = match tokio::time::timeout_at(until, socket.recv_from(&mut rx)).await {
            Err(_) => break,
            Ok(Ok(x)) => x,
            // ICMP errors (port unreachable) surface here on some systems; keep listening.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "discovery receive error");
                continue;
            }
        };
        let checked = Announce::parse::<FastCrc32>(&rx[..len]).and_then(|a| {
            a.verify(&nonce, key.as_ref())?;
            Ok(a)
        });
        match checked {
            Ok(a) => {
                let node = NodeAnnouncement {
                    addr: SocketAddr::new(from.ip(), a.port),
                    node_id: a.node_id,
                    backend: a.backend,
                    auth_required: a.auth_required(),
                    verified: key.is_some() && a.flags & ANNOUNCE_SIGNED != 0,
                    total: a.total,
                    free: a.free,
                    device: a.device.to_owned(),
                    tls_fingerprint: a.tls_fingerprint,
                };
                if !report.nodes.iter().any(|n| n.addr == node.addr && n.node_id == node.node_id) {
                    report.nodes.push(node);
                    if let Some(quiet) = settle {
                        until = deadline.min(tokio::time::Instant::now() + quiet);
                    }
                }
                waiting.retain(|t| *t != from);
                if counting && waiting.is_empty() {
                    break;
                }
            }
            Err(error) => report.rejected.push(RejectedAnnouncement { from, error }),
        }
    }
    Ok(report)
}
