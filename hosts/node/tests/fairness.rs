//! Long requests run as jobs that share the backend a step at a time: a light session is served
//! while another session's long DISPATCH runs, long results are still right, per-request cost
//! limits hold, and shutdown ends running jobs.
//!
//! The scheduler's fairness itself is tested on a virtual clock (`engine::sched`); these tests
//! check the node around it, by order of completion rather than by timing.

mod common;

use common::{STEP, config, start, wait_idle, within};
use rela_client::{Client, ClientError, Handle, Kernel};
use rela_core::wire::ErrorCode;

const MIB: usize = 1024 * 1024;

/// Side of the square MATMUL that makes a long request: 2048³ ≈ 8.6 G multiply-adds, hundreds
/// of milliseconds at least on any CPU, against microseconds for a PING.
const SIDE: u32 = 2048;

/// A session holding `a`, `b` (filled with 0x3c bytes) and `out` for a SIDE³ MATMUL.
async fn heavy_session(addr: std::net::SocketAddr) -> (Client, Kernel) {
    let mut c = within(Client::connect(addr, None)).await.expect("connect");
    let bytes = u64::from(SIDE) * u64::from(SIDE) * 4;
    let a = within(c.alloc(bytes)).await.expect("a");
    let b = within(c.alloc(bytes)).await.expect("b");
    let out = within(c.alloc(bytes)).await.expect("out");
    within(c.fill(a, 0, bytes, 0x3c)).await.expect("fill a");
    within(c.fill(b, 0, bytes, 0x3c)).await.expect("fill b");
    (c, Kernel::Matmul { a, b, out, m: SIDE, k: SIDE, n: SIDE })
}

/// A light session's work: a PING, then `rounds` rounds of PING, 4 KiB WRITE and READ back.
async fn light_requests(light: &mut Client, h: Handle, rounds: u8) {
    within(light.ping()).await.expect("ping");
    for i in 0..rounds {
        within(light.ping()).await.expect("ping");
        let data = vec![i; 4096];
        within(light.write(h, 0, &data)).await.expect("write");
        assert_eq!(within(light.read(h, 0, 4096)).await.expect("read"), data);
    }
}

/// Every output element is Σ a·b over SIDE equal terms.
fn check_result(bytes: &[u8]) {
    let x = f64::from(f32::from_le_bytes([0x3c; 4]));
    let want = x * x * f64::from(SIDE);
    for (i, v) in bytes.chunks_exact(4).enumerate() {
        let v = f64::from(f32::from_le_bytes([v[0], v[1], v[2], v[3]]));
        assert!((v - want).abs() <= 1e-4 * want, "element {i} is {v}, expected {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_session_is_served_while_a_long_dispatch_runs() {
    let node = start(config(), 64 * MIB).await;
    let addr = node.local_addr();
    let (mut heavy, call) = heavy_session(addr).await;
    let Kernel::Matmul { out, .. } = call else { unreachable!("built as a MATMUL") };
    let mut light = within(Client::connect(addr, None)).await.expect("light connect");
    let h = within(light.alloc(4096)).await.expect("light alloc");

    let running = tokio::spawn(async move {
        heavy.dispatch(call).await.expect("the long MATMUL");
        heavy
    });
    // Let the DISPATCH reach the node, then do a light session's work while it runs.
    light_requests(&mut light, h, 20).await;
    assert!(
        !running.is_finished(),
        "the light session's 60 requests waited for the other session's long DISPATCH"
    );
    let mut heavy = within(running).await.expect("heavy task");
    check_result(&within(heavy.read(out, 0, u64::from(SIDE) * u64::from(SIDE) * 4)).await.expect("read out"));
    within(heavy.close()).await.expect("close heavy");
    within(light.close()).await.expect("close light");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

/// An ALLOC of [`BIG`] bytes: committing it takes a tenth of a second or more.
#[cfg(target_os = "linux")]
const BIG: u64 = 1 << 30;

/// A node on the host backend with room for one session to allocate [`BIG`] bytes.
#[cfg(target_os = "linux")]
async fn big_alloc_node() -> rela_node::NodeHandle {
    let mut cfg = config();
    cfg.session.quota = BIG;
    start(cfg, BIG as usize + 64 * MIB).await
}

/// An ALLOC commits its buffer's memory before it is answered (a host backend faults the pages
/// in: a gigabyte takes a tenth of a second or more); a large one does so in steps, so a light
/// session is served meanwhile, and the buffer reads as zero.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_session_is_served_while_a_large_alloc_commits() {
    let node = big_alloc_node().await;
    let addr = node.local_addr();
    let mut heavy = within(Client::connect(addr, None)).await.expect("heavy connect");
    let mut light = within(Client::connect(addr, None)).await.expect("light connect");
    let h = within(light.alloc(4096)).await.expect("light alloc");

    let running = tokio::spawn(async move {
        let big = heavy.alloc(BIG).await.expect("the large ALLOC");
        (heavy, big)
    });
    // One round, then the check: committing a gigabyte takes a tenth of a second or more, a
    // round a few milliseconds even on a busy machine, unless it waits for the whole commit.
    light_requests(&mut light, h, 1).await;
    assert!(
        !running.is_finished(),
        "the light session's requests waited for the other session's large ALLOC"
    );
    light_requests(&mut light, h, 19).await;
    let (mut heavy, big) = within(running).await.expect("heavy task");
    assert_eq!(within(heavy.read(big, BIG - 4096, 4096)).await.expect("read"), vec![0; 4096]);
    within(heavy.close()).await.expect("close heavy");
    within(light.close()).await.expect("close light");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

/// A client that goes away while its large ALLOC commits leaves nothing allocated: the job is
/// cancelled between two steps and the half-committed buffer is freed.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_alloc_cancelled_by_its_session_ending_leaves_nothing() {
    let node = big_alloc_node().await;
    let addr = node.local_addr();
    for wait_ms in [0, 5, 20] {
        let mut c = within(Client::connect(addr, None)).await.expect("connect");
        let alloc = tokio::spawn(async move {
            let _ = c.alloc(BIG).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        // Dropping the task drops the client: the connection closes mid-ALLOC.
        alloc.abort();
        let _ = alloc.await;
        wait_idle(&node).await;
    }
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_long_dispatches_share_the_backend_and_both_are_right() {
    let node = start(config(), 128 * MIB).await;
    let addr = node.local_addr();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (mut c, call) = heavy_session(addr).await;
        runs.push(tokio::spawn(async move {
            c.dispatch(call).await.expect("MATMUL");
            let Kernel::Matmul { out, .. } = call else { unreachable!("built as a MATMUL") };
            let bytes = c.read(out, 0, u64::from(SIDE) * u64::from(SIDE) * 4).await.expect("read out");
            c.close().await.expect("close");
            bytes
        }));
    }
    for r in runs {
        check_result(&within(r).await.expect("task"));
    }
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_over_the_cost_limit_is_refused_and_the_session_goes_on() {
    let node = start(rela_node::NodeConfig { max_dispatch_cost: 1_000, ..config() }, 8 * MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let (a, b, out) = (
        within(c.alloc(16 * 16 * 4)).await.expect("a"),
        within(c.alloc(16 * 16 * 4)).await.expect("b"),
        within(c.alloc(16 * 16 * 4)).await.expect("out"),
    );
    // 16³ = 4096 multiply-adds: over the limit.
    let err =
        within(c.dispatch(Kernel::Matmul { a, b, out, m: 16, k: 16, n: 16 })).await.expect_err("refused");
    assert!(
        matches!(&err, ClientError::Server { code, .. } if *code == ErrorCode::LIMIT_EXCEEDED),
        "expected LIMIT_EXCEEDED, got {err}"
    );
    // 256 multiply-adds: under it, and the session is still usable.
    within(c.dispatch(Kernel::Add { a, b, out, n: 256 })).await.expect("small dispatch");
    within(c.ping()).await.expect("ping");
    within(c.close()).await.expect("close");
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_running_job_and_frees_everything() {
    let node = start(config(), 64 * MIB).await;
    let (mut heavy, call) = heavy_session(node.local_addr()).await;
    let running = tokio::spawn(async move { heavy.dispatch(call).await });
    // The DISPATCH is on its way; the node stops while it runs (or right after it started).
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let usage =
        tokio::time::timeout(STEP, node.shutdown()).await.expect("shutdown in time").expect("shutdown");
    assert_eq!(usage.used, 0, "buffers left after shutdown: {usage:?}");
    assert_eq!(usage.buffers, 0);
    // The client learns that the node went away (or, if the MATMUL won the race, got its answer).
    let _ = within(running).await.expect("task");
}
