//! The discovery client: DISCOVER out, ANNOUNCEs in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rela_core::auth::AuthKey;
use rela_core::backend::BackendKind;
use rela_core::config::{MAX_DATAGRAM, NODE_ID_LEN};
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
/// and collects the answers for `timeout`.
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
    let key = token.map(AuthKey::new);
    let local: IpAddr = match (target.ip(), target.ip().is_loopback()) {
        (IpAddr::V4(_), true) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V4(_), false) => Ipv4Addr::UNSPECIFIED.into(),
        (IpAddr::V6(_), true) => Ipv6Addr::LOCALHOST.into(),
        (IpAddr::V6(_), false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    if matches!(target.ip(), IpAddr::V4(ip) if ip.is_broadcast()) {
        socket.set_broadcast(true)?;
    }
    let nonce: [u8; Discover::PAYLOAD_LEN] = rand::random();
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = Discover { nonce }
        .emit::<FastCrc32>(&mut buf)
        .map_err(|_| ClientError::InvalidArgument("DISCOVER does not encode"))?;
    socket.send_to(&buf[..n], target).await?;

    let mut report = DiscoveryReport::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = [0u8; 2048];
    loop {
        let (len, from) = match tokio::time::timeout_at(deadline, socket.recv_from(&mut rx)).await {
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
                };
                if !report.nodes.iter().any(|n| n.addr == node.addr && n.node_id == node.node_id) {
                    report.nodes.push(node);
                }
            }
            Err(error) => report.rejected.push(RejectedAnnouncement { from, error }),
        }
    }
    Ok(report)
}
