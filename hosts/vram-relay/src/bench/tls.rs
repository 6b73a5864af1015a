//! `bench --spawn --tls`: the same node over TLS against plaintext, side by side in one run.
//!
//! A second node is spawned with `serve --tls` (its self-signed certificate in a temporary
//! state directory, trusted on first use by the client here), beside the plaintext node the
//! rest of the bench measures, with the same backend, limits and connection threads. Uploads,
//! downloads and PINGs alternate between the two (transfers best of `--repeat`, PINGs in blocks
//! of 50), so load on the machine hits both alike.

use std::time::Duration;

use rela_client::tls::{KnownNodes, TlsOptions};
use rela_client::{Client, ClientOptions};

use super::{BenchArgs, CpuUse, Row, Spawned, mib_s, percentile, relay_download, relay_upload};
use crate::util::human;

/// Removes a directory when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rows comparing a TLS node with the plaintext node `plain` is connected to (process
/// `plain_pid`, when known: then the CPU time TLS adds is reported too).
pub(super) async fn compare(
    args: &BenchArgs,
    plain_pid: Option<u32>,
    plain: &mut Client,
    options: &ClientOptions,
    data: &[u8],
    sink: &mut [u8],
) -> Result<Vec<Row>, String> {
    let state = TempDir(std::env::temp_dir().join(format!("vram-relay-bench-tls-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&state.0);
    let dir = state.0.to_str().ok_or("temporary directory is not UTF-8")?;
    let exe = args.node_exe.as_deref();
    let capacity = args.buffer + (64 << 20);
    let extra = ["--tls", "--state-dir", dir];
    let node = Spawned::node(exe, args.backend, capacity, args.buffer, args.node_threads, &extra).await?;
    let store = KnownNodes::new(state.0.join("known_nodes"));
    let tls_options = ClientOptions { tls: Some(TlsOptions::first_use(store)), ..options.clone() };
    let mut tls = Client::connect_with(node.addr, None, tls_options)
        .await
        .map_err(|e| format!("connect to the TLS node {}: {e}", node.addr))?;

    let (mut up_p, mut up_t, mut dn_p, mut dn_t) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let tls_pid = node.child.id();
    let (mut up_pc, mut up_tc) = (CpuUse::new(plain_pid), CpuUse::new(tls_pid));
    let (mut dn_pc, mut dn_tc) = (CpuUse::new(plain_pid), CpuUse::new(tls_pid));
    for _ in 0..args.repeat {
        up_p = up_p.min(up_pc.measure(relay_upload(plain, data, args.size)).await?);
        up_t = up_t.min(up_tc.measure(relay_upload(&mut tls, data, args.size)).await?);
        dn_p = dn_p.min(dn_pc.measure(relay_download(plain, sink, args.size)).await?);
        dn_t = dn_t.min(dn_tc.measure(relay_download(&mut tls, sink, args.size)).await?);
    }
    let mut rows = Vec::new();
    let mut tput = |what: &str, tls: Duration, plain: Duration| {
        rows.push(Row {
            metric: format!("TLS: {what} {} (vs the same node in plaintext)", human(args.size)),
            relay: mib_s(args.size, tls),
            baseline: Some(mib_s(args.size, plain)),
            unit: "MiB/s",
            ratio: Some(plain.as_secs_f64() / tls.as_secs_f64()),
        });
    };
    tput("upload WRITE", up_t, up_p);
    tput("download READ", dn_t, dn_p);
    for (what, tls, plain) in [("upload", up_tc, up_pc), ("download", dn_tc, dn_pc)] {
        let (Some((tc, ts, _)), Some((pc, ps, _))) = (tls.per_gib(args.size), plain.per_gib(args.size))
        else {
            continue;
        };
        let mut cpu = |side: &str, tls: f64, plain: f64| {
            let metric = format!("TLS: {what} CPU time, {side} (vs the same in plaintext)");
            rows.push(Row {
                metric,
                relay: tls,
                baseline: Some(plain),
                unit: "ms/GiB",
                ratio: Some(tls / plain),
            });
        };
        cpu("node process", ts, ps);
        cpu("client process", tc, pc);
    }

    let (mut rtt_p, mut rtt_t) = (Vec::with_capacity(args.pings), Vec::with_capacity(args.pings));
    while rtt_t.len() < args.pings {
        let block = 50.min(args.pings - rtt_t.len());
        for _ in 0..block {
            rtt_p.push(plain.ping().await.map_err(|e| e.to_string())?);
        }
        for _ in 0..block {
            rtt_t.push(tls.ping().await.map_err(|e| e.to_string())?);
        }
    }
    for p in [0.5, 0.99] {
        let (t, b) = (percentile(&mut rtt_t, p), percentile(&mut rtt_p, p));
        rows.push(Row {
            metric: format!("TLS: PING round trip p{} (vs the same node in plaintext)", (p * 100.0) as u32),
            relay: t,
            baseline: Some(b),
            unit: "µs",
            ratio: Some(t / b),
        });
    }
    tls.close().await.map_err(|e| e.to_string())?;
    drop(node);
    Ok(rows)
}
