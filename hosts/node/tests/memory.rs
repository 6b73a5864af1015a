//! The node's frame-buffer memory stays within its budget under many sessions with large
//! frames, and nothing stays pinned per connection once they are done.

mod common;

use std::sync::Arc;

use common::{config, start, wait_idle, within};
use rela_client::{Client, ClientOptions};
use rela_node::{DEFAULT_BUFFER_BUDGET, Node, NodeConfig, NodeHandle};

const MIB: usize = 1024 * 1024;
/// One full-size frame per transfer.
const FRAME: usize = 16 * MIB;
const SESSIONS: usize = 64;

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
    // The host backend as `serve` runs it: WRITE data is read straight into the buffer and READ
    // data is sent straight from it, so the pool never holds a payload.
    let node = start(node_config(), SESSIONS * FRAME).await;
    let (peak, _) = sixty_four_sessions_of_16_mib_frames(node).await;
    assert_eq!(peak, 0, "a payload went through a pooled buffer");
}

#[tokio::test]
async fn a_small_budget_still_serves_full_size_frames() {
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
