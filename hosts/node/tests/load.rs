//! A bounded load test: 256 concurrent clients on loopback doing mixed operations.
//!
//! Every client runs a fixed number of rounds of alloc / write / read-verify / copy / fill /
//! dispatch / ping / stats / free, checking every result. The test fails on any error, on a
//! leak (backend usage not back to zero) or if the node's RSS grows by more than 256 MiB (the
//! node runs in this process). It prints its figures to stderr for `docs/BENCHMARKS.md`; it
//! asserts nothing about speed.

mod common;

use common::{f32_bytes, pattern};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{config, wait_idle, within};
use rela_client::{Client, Kernel};
use rela_core::backend::{BackendKind, Usage};
use rela_core::session::SessionConfig;
use rela_node::{Node, NodeBackend, NodeConfig};

const MIB: usize = 1024 * 1024;
const CLIENTS: u32 = 256;
const ROUNDS: u32 = 20;
/// Room in the backend's block table for every client's buffers at once (3 each).
const BLOCKS: usize = 1024;
/// Upper bound for the whole run (it takes a few seconds on 2 cores in debug).
const LIMIT: Duration = Duration::from_secs(120);

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
    kb * 1024
}

/// One client: returns the number of requests it made (each one answered and checked).
async fn client(addr: SocketAddr, id: u32) -> u64 {
    let mut c = Client::connect(addr, None).await.expect("connect");
    let mut ops = 1u64; // HELLO
    for round in 0..ROUNDS {
        let seed = id * 1000 + round;
        let size = 256 + (seed % 16) as usize * 256;
        let data = pattern(seed, size);
        let a = c.alloc(size as u64).await.expect("alloc a");
        c.write(a, 0, &data).await.expect("write");
        assert_eq!(c.read(a, 0, size as u64).await.expect("read"), data, "client {id} round {round}");
        let b = c.alloc(size as u64).await.expect("alloc b");
        c.copy(a, 0, b, 0, size as u64).await.expect("copy");
        c.fill(b, 0, 32, 0xA5).await.expect("fill");
        let back = c.read(b, 0, size as u64).await.expect("read b");
        assert!(back[..32].iter().all(|x| *x == 0xA5) && back[32..] == data[32..], "client {id} copy/fill");
        // SCALE and ADD on 32 f32.
        let xs: Vec<f32> = (0..32).map(|i| (i as f32) * 0.5 + (id % 7) as f32).collect();
        let out = c.alloc(128).await.expect("alloc out");
        c.write(a, 0, &f32_bytes(&xs)).await.expect("write f32");
        c.dispatch(Kernel::Scale { x: a, out, n: 32, alpha: 2.0 }).await.expect("scale");
        c.dispatch(Kernel::Add { a: out, b: a, out: b, n: 32 }).await.expect("add");
        let want: Vec<f32> = xs.iter().map(|x| 2.0 * x + x).collect();
        assert_eq!(c.read(b, 0, 128).await.expect("read sum"), f32_bytes(&want), "client {id} kernels");
        c.ping().await.expect("ping");
        ops += 14;
        if round % 3 == 0 {
            let s = c.stats().await.expect("stats");
            assert_eq!((s.buffers, s.used), (3, 2 * size as u64 + 128));
            ops += 1;
        }
        for h in [a, b, out] {
            c.free(h).await.expect("free");
        }
        ops += 3;
    }
    c.close().await.expect("close");
    ops + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_mixed_operations() {
    let cfg = NodeConfig {
        discovery: None,
        max_sessions: CLIENTS as usize + 16,
        session: SessionConfig { quota: MIB as u64, max_buffers: 8, ..SessionConfig::default() },
        ..config()
    };
    // The host backend as `serve` runs it: WRITE data straight from the socket into place.
    let backend = NodeBackend::host::<BLOCKS>(64 * MIB).expect("arena");
    let node = within(Node::start(cfg, backend)).await.expect("node starts");
    let addr = node.local_addr();

    // Warm up once so one-time allocations are not counted as growth.
    let mut warm = within(Client::connect(addr, None)).await.expect("warm-up");
    assert_eq!(within(warm.device_info()).await.expect("info").backend, BackendKind::HOST);
    within(warm.close()).await.expect("close");
    wait_idle(&node).await;

    let rss_before = rss_bytes();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS).map(|id| tokio::spawn(client(addr, id))).collect();
    let run = async {
        let mut ops = 0u64;
        for t in tasks {
            ops += t.await.expect("client task (a panic is an unexpected error)");
        }
        ops
    };
    let ops = tokio::time::timeout(LIMIT, run).await.expect("load test finished within its limit");
    let elapsed = start.elapsed();
    let rss_peak_window = rss_bytes();

    let usage = wait_idle(&node).await;
    assert_eq!(usage, Usage::default(), "leak after the load");
    let final_usage = within(node.shutdown()).await.expect("shutdown");
    assert_eq!(final_usage, Usage::default());

    let secs = elapsed.as_secs_f64();
    let growth = rss_peak_window.saturating_sub(rss_before);
    eprintln!(
        "load: {CLIENTS} concurrent clients x {ROUNDS} rounds, {ops} requests in {secs:.2} s = {:.0} req/s \
         (debug build, loopback); node RSS before {:.1} MiB, after {:.1} MiB, growth {:.1} MiB",
        ops as f64 / secs,
        rss_before as f64 / MIB as f64,
        rss_peak_window as f64 / MIB as f64,
        growth as f64 / MIB as f64,
    );
    assert!(growth < 256 * MIB as u64, "RSS grew by {growth} bytes");
}
