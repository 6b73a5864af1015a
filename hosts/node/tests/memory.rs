//! The node's frame-buffer memory stays within its budget under many sessions with large
//! frames, nothing stays pinned per connection once they are done, and the memory a finished
//! session held goes back to the OS.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, pattern, start, wait_idle, within};
use rela_client::{Client, ClientOptions};
use rela_node::{DEFAULT_BUFFER_BUDGET, Node, NodeConfig, NodeHandle};

const MIB: usize = 1024 * 1024;
/// One full-size frame per transfer.
const FRAME: usize = 16 * MIB;
const SESSIONS: usize = 64;

/// The tests here take turns: resident memory is the whole process's, and one test's gigabyte
/// of sessions would show in another's reading.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident set size of this process (the node runs in it), from `/proc/self/status`.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kb: usize = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
    kb * 1024
}

/// Bytes in MiB, for messages.
fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// 64 sessions each write and read back one 16 MiB buffer in 16 MiB frames, several in flight
/// per session. Returns the node's peak frame-buffer bytes and its budget.
async fn sixty_four_sessions_of_16_mib_frames(node: NodeHandle) -> (usize, usize) {
    let addr = node.local_addr();
    let data: Arc<Vec<u8>> = Arc::new((0..FRAME).map(|i| (i * 131 + 17) as u8).collect());

    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            // 16 MiB frames (the node's max payload), several in flight per session.
            let options = ClientOptions { chunk: Some(u32::MAX), window: 4, ..ClientOptions::default() };
            let mut c = Client::connect_with(addr, None, options).await.expect("connect");
            let h = c.alloc(FRAME as u64).await.expect("alloc");
            c.write(h, 0, &data).await.expect("write");
            let back = c.read(h, 0, FRAME as u64).await.expect("read");
            assert!(back == *data, "session {s}: data differs");
            c.close().await.expect("close");
        }));
    }
    within(async {
        for t in tasks {
            t.await.expect("session task");
        }
    })
    .await;
    wait_idle(&node).await;

    let budget = node.buffer_budget();
    let peak = node.peak_buffer_bytes();
    assert!(node.buffer_bytes() <= budget);
    // Idle connections hold nothing: only the pool's cache remains, and it can be dropped.
    node.trim_buffers();
    assert_eq!(node.buffer_bytes(), 0, "no buffer is pinned once every session is done");
    let usage = node.shutdown().await.expect("shutdown");
    assert_eq!(usage.used, 0);
    (peak, budget)
}

fn node_config() -> NodeConfig {
    let mut cfg = config();
    cfg.max_sessions = SESSIONS;
    cfg.session.quota = FRAME as u64;
    assert_eq!(cfg.buffer_budget, DEFAULT_BUFFER_BUDGET);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_with_16_mib_frames_stay_within_the_buffer_budget() {
    let _alone = ALONE.lock().await;
    // A backend the node reaches only through `GpuBackend`: WRITE data and READ responses go
    // through pooled buffers.
    let backend = common::boxed_backend(SESSIONS * FRAME);
    let node = within(Node::start(node_config(), backend)).await.expect("node starts");
    let (peak, budget) = sixty_four_sessions_of_16_mib_frames(node).await;
    // 64 sessions × 4 frames in flight × 16 MiB would be 4 GiB of payload buffers unbounded.
    assert!(peak <= budget, "peak frame-buffer memory {peak} above the budget {budget}");
    assert!(peak >= FRAME, "the pool carried the large frames (peak {peak})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_arena_large_frames_need_no_frame_buffers_at_all() {
    let _alone = ALONE.lock().await;
    // The host backend as `serve` runs it: WRITE data is read straight into the buffer and READ
    // data is sent straight from it, so the pool never holds a payload.
    let node = start(node_config(), SESSIONS * FRAME).await;
    let (peak, _) = sixty_four_sessions_of_16_mib_frames(node).await;
    assert_eq!(peak, 0, "a payload went through a pooled buffer");
}

#[tokio::test]
async fn a_small_budget_still_serves_full_size_frames() {
    let _alone = ALONE.lock().await;
    // The smallest budget the configuration allows: exactly one largest frame.
    let mut cfg = config();
    cfg.buffer_budget = 17 * MIB;
    cfg.max_sessions = 4;
    let node = start(cfg, 8 * FRAME).await;
    let addr = node.local_addr();
    let mut tasks = Vec::new();
    for s in 0..4u8 {
        tasks.push(tokio::spawn(async move {
            let options = ClientOptions { chunk: Some(u32::MAX), window: 4, ..ClientOptions::default() };
            let mut c = Client::connect_with(addr, None, options).await.expect("connect");
            let data = vec![s; 2 * FRAME];
            let h = c.alloc(data.len() as u64).await.expect("alloc");
            c.write(h, 0, &data).await.expect("write");
            assert!(c.read(h, 0, data.len() as u64).await.expect("read") == data);
            c.close().await.expect("close");
        }));
    }
    within(async {
        for t in tasks {
            t.await.expect("session task");
        }
    })
    .await;
    assert!(node.peak_buffer_bytes() <= 17 * MIB);
    node.shutdown().await.expect("shutdown");
}

/// An ALLOC is answered once its memory is backed (`GpuBackend::commit`, on Linux): the pages
/// are resident before anything is written, so the OS's refusal shows as OUT_OF_MEMORY there and
/// a first WRITE pays no page faults; a FREE gives them back.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alloc_is_answered_with_its_memory_resident() {
    let _alone = ALONE.lock().await;
    const HELD: usize = 256 * MIB;
    const SLACK: usize = 32 * MIB;
    let mut cfg = config();
    cfg.session.quota = HELD as u64;
    let node = start(cfg, HELD + 64 * MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let before = rss_bytes();
    let h = within(c.alloc(HELD as u64)).await.expect("alloc");
    let held = rss_bytes();
    eprintln!("RSS {:.1} MiB before an ALLOC of {} MiB, {:.1} MiB after", mib(before), mib(HELD), mib(held));
    assert!(
        held + SLACK >= before + HELD,
        "an ALLOC of {:.1} MiB left RSS at {:.1} MiB from {:.1} MiB: its memory is not committed",
        mib(HELD),
        mib(held),
        mib(before)
    );
    assert_eq!(
        within(c.read(h, 0, 4096)).await.expect("read"),
        vec![0; 4096],
        "committed memory reads as zero"
    );
    within(c.free(h)).await.expect("free");
    let after = rss_bytes();
    assert!(after <= before + SLACK, "FREE kept the memory: {:.1} MiB after", mib(after));
    within(c.close()).await.expect("close");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_a_finished_session_held_goes_back_to_the_os() {
    let _alone = ALONE.lock().await;
    const HELD: usize = 512 * MIB;
    /// How far above where it started the process may stay once the session is gone (the
    /// client's own buffers, which its allocator may keep).
    const SLACK: usize = 64 * MIB;
    let mut cfg = config();
    cfg.session.quota = HELD as u64;
    // The host backend as `serve` runs it, with room for the session.
    let node = start(cfg, HELD + 64 * MIB).await;
    let addr = node.local_addr();
    let data = pattern(12, FRAME);
    let baseline = rss_bytes();

    let mut c = within(Client::connect(addr, None)).await.expect("connect");
    let h = within(c.alloc(HELD as u64)).await.expect("alloc");
    for i in 0..HELD / FRAME {
        within(c.write(h, (i * FRAME) as u64, &data)).await.expect("write");
    }
    let held = rss_bytes();
    assert!(
        held >= baseline + HELD - SLACK,
        "the session's {} MiB are not resident ({:.1} MiB before, {:.1} MiB now): this test would \
         show nothing",
        mib(HELD),
        mib(baseline),
        mib(held)
    );
    within(c.close()).await.expect("close");

    // The session's end frees its buffer; the pages go back to the OS within a second (a
    // deadline for the node to get there, polled; not a measure of how fast).
    let closed = Instant::now();
    let mut now = rss_bytes();
    while now > baseline + SLACK && closed.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        now = rss_bytes();
    }
    let took = closed.elapsed();
    eprintln!(
        "RSS: {:.1} MiB before the session, {:.1} MiB holding {} MiB, {:.1} MiB {} ms after it closed",
        mib(baseline),
        mib(held),
        mib(HELD),
        mib(now),
        took.as_millis()
    );
    assert!(
        now <= baseline + SLACK,
        "RSS still {:.1} MiB 1 s after the session ended ({:.1} MiB before it): freed memory stayed",
        mib(now),
        mib(baseline)
    );

    // The memory handed back reads as zeros in the next session's buffer.
    let mut c = within(Client::connect(addr, None)).await.expect("connect again");
    let h = within(c.alloc(HELD as u64)).await.expect("alloc again");
    for i in 0..HELD / FRAME {
        let back = within(c.read(h, (i * FRAME) as u64, FRAME as u64)).await.expect("read");
        if let Some(at) = back.iter().position(|&b| b != 0) {
            panic!("fresh buffer has {:#x} at byte {}", back[at], i * FRAME + at);
        }
    }
    within(c.close()).await.expect("close");
    wait_idle(&node).await;
    node.shutdown().await.expect("shutdown");
}
