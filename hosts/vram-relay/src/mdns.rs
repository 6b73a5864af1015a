//! mDNS / DNS-SD beside the UDP discovery: `serve --mdns` advertises `_rela._tcp.local.`,
//! `discover --mdns` browses for it.
//!
//! What mDNS says is unsigned: anyone on the link can advertise anything. A node's TXT record
//! names its UDP discovery port (`udp`), so a client that holds the token confirms a node found
//! by mDNS with one signed ANNOUNCE from that port (`discover --mdns --token-file F` does), as
//! docs/PROTOCOL.md describes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use rela_core::backend::BackendKind;
use rela_core::config::{NODE_ID_LEN, PROTOCOL_VERSION};
use rela_node::NodeHandle;

use crate::error::CliError;
use crate::util::{human, outln};

/// The DNS-SD service type.
pub(crate) const SERVICE_TYPE: &str = "_rela._tcp.local.";

/// How often a node checks its free memory for the TXT record.
const REFRESH: Duration = Duration::from_secs(5);

/// What a node advertises.
#[derive(Debug, Clone)]
pub(crate) struct Advert {
    /// The session address (`--listen`).
    pub(crate) listen: SocketAddr,
    /// The UDP discovery address, if discovery is on.
    pub(crate) discovery: Option<SocketAddr>,
    /// The node id.
    pub(crate) node_id: [u8; NODE_ID_LEN],
    /// Backend kind.
    pub(crate) backend: BackendKind,
    /// Device name.
    pub(crate) device: String,
    /// Bytes the node lends.
    pub(crate) total: u64,
    /// Whether AUTH is required.
    pub(crate) auth: bool,
    /// The TLS certificate's fingerprint (64 hex digits), when the node serves TLS.
    pub(crate) tls_fingerprint: Option<String>,
}

/// A running advertisement; dropping it unregisters (a goodbye packet) and stops the daemon.
pub(crate) struct Advertiser {
    daemon: ServiceDaemon,
    advert: Advert,
    fullname: String,
    free: u64,
}

impl Advertiser {
    /// Registers the service with `free` bytes free.
    pub(crate) fn start(advert: Advert, free: u64) -> Result<Self, String> {
        let daemon = ServiceDaemon::new().map_err(|e| format!("mDNS: cannot start: {e}"))?;
        let info = service_info(&advert, free)?;
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(|e| format!("mDNS: cannot register {fullname}: {e}"))?;
        tracing::info!(service = %fullname, "advertising over mDNS");
        Ok(Self { daemon, advert, fullname, free })
    }

    /// Re-announces the TXT record when the free memory changed.
    fn refresh(&mut self, free: u64) {
        if free == self.free {
            return;
        }
        match service_info(&self.advert, free)
            .and_then(|i| self.daemon.register(i).map_err(|e| e.to_string()))
        {
            Ok(()) => self.free = free,
            Err(e) => tracing::warn!(error = %e, "mDNS: cannot update the TXT record"),
        }
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        // Best effort: a goodbye, then the daemon's thread ends.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}

/// Keeps the advertised free memory current; never returns (pending forever without one).
pub(crate) async fn keep_fresh(advertiser: Option<&mut Advertiser>, node: &NodeHandle) {
    let Some(advertiser) = advertiser else { return std::future::pending().await };
    loop {
        tokio::time::sleep(REFRESH).await;
        if let Ok(usage) = node.usage().await {
            advertiser.refresh(advertiser.advert.total.saturating_sub(usage.used));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn service_info(a: &Advert, free: u64) -> Result<ServiceInfo, String> {
    let id = hex(&a.node_id);
    let instance = format!("vram-relay {}", &id[..8]);
    let host = format!("rela-{}.local.", &id[..8]);
    let mut txt = vec![
        ("proto", PROTOCOL_VERSION.to_string()),
        ("backend", a.backend.to_string().to_lowercase()),
        ("device", a.device.clone()),
        ("free", free.to_string()),
        ("total", a.total.to_string()),
        ("auth", if a.auth { "1" } else { "0" }.to_owned()),
        ("id", id.clone()),
    ];
    if let Some(d) = a.discovery {
        txt.push(("udp", d.port().to_string()));
    }
    if let Some(fp) = &a.tls_fingerprint {
        txt.push(("tls", fp.clone()));
    }
    let ip = a.listen.ip();
    let info = if ip.is_unspecified() {
        // Every interface's addresses, as they come and go.
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", a.listen.port(), &txt[..])
            .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, ip, a.listen.port(), &txt[..])
    };
    info.map_err(|e| format!("mDNS: invalid service record: {e}"))
}

/// A node found over mDNS, as its TXT record describes it (unverified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The session address.
    pub(crate) addr: SocketAddr,
    /// The instance's full name.
    pub(crate) name: String,
    /// TXT `proto`.
    pub(crate) proto: Option<u16>,
    /// TXT `backend`.
    pub(crate) backend: String,
    /// TXT `device`.
    pub(crate) device: String,
    /// TXT `free`.
    pub(crate) free: Option<u64>,
    /// TXT `total`.
    pub(crate) total: Option<u64>,
    /// TXT `auth`.
    pub(crate) auth_required: bool,
    /// TXT `id`.
    pub(crate) node_id: String,
    /// TXT `udp`: the discovery port, for a signed ANNOUNCE.
    pub(crate) udp: Option<u16>,
    /// TXT `tls`: the TLS certificate's fingerprint (unsigned; the signed ANNOUNCE's must agree).
    pub(crate) tls: Option<String>,
}

impl Found {
    fn from_resolved(r: &ResolvedService) -> Option<Self> {
        // Prefer IPv4 (what the session listener usually binds), then anything.
        let mut ips: Vec<IpAddr> = r.addresses.iter().map(|a| a.to_ip_addr()).collect();
        ips.sort_by_key(|ip| (!ip.is_ipv4(), *ip));
        let ip = *ips.first()?;
        let txt = |k: &str| r.txt_properties.get_property_val_str(k).map(str::to_owned);
        Some(Self {
            addr: SocketAddr::new(ip, r.port),
            name: r.fullname.clone(),
            proto: txt("proto").and_then(|v| v.parse().ok()),
            backend: txt("backend").unwrap_or_default(),
            device: txt("device").unwrap_or_default(),
            free: txt("free").and_then(|v| v.parse().ok()),
            total: txt("total").and_then(|v| v.parse().ok()),
            auth_required: txt("auth").as_deref() == Some("1"),
            node_id: txt("id").unwrap_or_default(),
            udp: txt("udp").and_then(|v| v.parse().ok()),
            tls: txt("tls"),
        })
    }
}

/// Browses for `_rela._tcp.local.` until `timeout`, or `settle` after the last new node.
pub(crate) fn browse(timeout: Duration, settle: Duration) -> Result<Vec<Found>, String> {
    let daemon = ServiceDaemon::new().map_err(|e| format!("mDNS: cannot start: {e}"))?;
    let events = daemon.browse(SERVICE_TYPE).map_err(|e| format!("mDNS: cannot browse: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut until = deadline;
    let mut found: HashMap<String, Found> = HashMap::new();
    let mut order = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(event) = events.recv_timeout(left) else { break };
        if let ServiceEvent::ServiceResolved(r) = event
            && let Some(f) = Found::from_resolved(&r)
        {
            if !found.contains_key(&f.name) {
                order.push(f.name.clone());
                until = deadline.min(Instant::now() + settle);
            }
            found.insert(f.name.clone(), f);
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    let _ = daemon.shutdown();
    Ok(order.into_iter().filter_map(|n| found.remove(&n)).collect())
}

/// `vram-relay discover --mdns`: browse, then (with a token) confirm each node with a signed
/// ANNOUNCE from the discovery port its TXT record names.
pub(crate) async fn discover(
    timeout: Duration,
    settle: Duration,
    token: Option<&[u8]>,
    json: bool,
) -> Result<(), CliError> {
    let nodes = tokio::task::spawn_blocking(move || browse(timeout, settle))
        .await
        .map_err(|e| format!("mDNS browse failed: {e}"))??;
    let mut rows = Vec::new();
    for n in nodes {
        let verified = match (token, n.udp) {
            (Some(t), Some(port)) => {
                let target = SocketAddr::new(n.addr.ip(), port);
                let report = rela_client::discover_targets(&[target], Duration::from_secs(2), None, Some(t))
                    .await
                    .map_err(|e| format!("signed ANNOUNCE from {target}: {e}"))?;
                // The signed ANNOUNCE must also carry the TLS fingerprint the record names (or
                // neither names one), so an unsigned record cannot swap a certificate in.
                report.nodes.iter().any(|a| {
                    a.verified
                        && a.addr == n.addr
                        && hex(&a.node_id) == n.node_id
                        && a.tls_fingerprint.map(|f| hex(&f)) == n.tls
                })
            }
            _ => false,
        };
        if token.is_some() && !verified {
            eprintln!("{} ({}) did not prove it holds the token; not listed", n.addr, n.name);
            continue;
        }
        rows.push((n, verified));
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(n, verified)| {
                serde_json::json!({
                    "addr": n.addr.to_string(),
                    "name": n.name,
                    "proto": n.proto,
                    "backend": n.backend,
                    "device": n.device,
                    "free": n.free,
                    "total": n.total,
                    "auth_required": n.auth_required,
                    "node_id": n.node_id,
                    "discovery_port": n.udp,
                    "tls_fingerprint": n.tls,
                    "verified": verified,
                })
            })
            .collect();
        outln!("{}", serde_json::json!({ "nodes": list }));
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no nodes advertised {SERVICE_TYPE} within {} s", timeout.as_secs_f64());
        return Ok(());
    }
    outln!("{:<22} {:<8} {:<36} {:>12} {:>12}  auth", "address", "backend", "device", "free", "total");
    for (n, verified) in &rows {
        let auth = match (n.auth_required, verified) {
            (true, true) => "required (signature verified)",
            (true, false) => "required (mDNS, unverified)",
            (false, _) => "none (mDNS, unverified)",
        };
        let size = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), human);
        outln!(
            "{:<22} {:<8} {:<36} {:>12} {:>12}  {auth}",
            n.addr.to_string(),
            n.backend,
            n.device,
            size(n.free),
            size(n.total)
        );
        if let Some(fp) = &n.tls {
            // Worth pinning only when the signed ANNOUNCE carried the same.
            let pin = if *verified { "--tls-fingerprint" } else { "unverified, do not pin" };
            outln!("{:<22} TLS {fp} ({pin})", "");
        }
    }
    Ok(())
}
