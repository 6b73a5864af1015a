//! Fault injection behind a live node: a [`FaultyBackend`] that fails or stalls every Nth
//! operation, and clients killed in the middle of a transfer.
//!
//! Clients must get typed errors (`BACKEND`, `OUT_OF_MEMORY`), the node must not panic (its
//! engine keeps answering), the session's STATS must agree with the backend's usage, and once
//! every session has ended the backend must hold nothing.

mod common;

use common::{f32_bytes, pattern};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_closed, config, read_raw_frame, wait_idle, within};
use rela_backend_host::OwnedHostBackend;
use rela_client::{Client, ClientError, FastCrc32, Handle, Kernel};
use rela_conformance::faults::{FaultLog, FaultyBackend, OpClass};
use rela_core::backend::{BackendError, GpuBackend, Usage};
use rela_core::config::HEADER_LEN;
use rela_core::wire::msg::{Alloc, Allocated, Caps, Hello, Message, Read};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_node::{Node, NodeConfig, NodeHandle};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

fn node_config() -> NodeConfig {
    NodeConfig { discovery: None, ..config() }
}

async fn start_faulty(
    cfg: NodeConfig,
    backend: FaultyBackend<OwnedHostBackend>,
) -> (NodeHandle, Arc<FaultLog>) {
    let log = backend.log();
    let node = within(Node::start(cfg, Box::new(backend))).await.expect("node starts");
    (node, log)
}

/// Errors the clients saw, per operation class.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    alloc: u64,
    write: u64,
    read: u64,
    copy: u64,
    fill: u64,
    dispatch: u64,
}

/// `Ok` passes through; an injected fault must arrive as `want` and leaves `None`.
fn injected<T>(r: Result<T, ClientError>, want: ErrorCode, count: &mut u64, what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert_eq!(e.code(), Some(want), "{what}: {e:?}");
            *count += 1;
            None
        }
    }
}

/// One client's workload under faults: allocations, transfers, copies, fills and kernels,
/// every result checked, every failure typed. Returns what it saw and the buffers it still
/// holds (with their sizes).
async fn faulted_workload(addr: SocketAddr, seed: u32) -> (Client, Seen, Vec<Handle>) {
    let mut c = within(Client::connect(addr, None)).await.expect("connect");
    let mut seen = Seen::default();
    let mut held: Vec<Handle> = Vec::new();
    for i in 0..24u32 {
        let size = 1024 + u64::from((seed * 31 + i * 97) % 8) * 512;
        let Some(a) =
            injected(within(c.alloc(size)).await, ErrorCode::OUT_OF_MEMORY, &mut seen.alloc, "alloc")
        else {
            continue;
        };
        held.push(a);
        let data = pattern(seed * 1000 + i, size as usize);
        let wrote =
            injected(within(c.write(a, 0, &data)).await, ErrorCode::BACKEND, &mut seen.write, "write");
        if let Some(back) =
            injected(within(c.read(a, 0, size)).await, ErrorCode::BACKEND, &mut seen.read, "read")
            && wrote.is_some()
        {
            assert!(back == data, "read-back differs");
        }
        injected(within(c.fill(a, 0, 16, 0xEE)).await, ErrorCode::BACKEND, &mut seen.fill, "fill");
        injected(within(c.copy(a, 0, a, size / 2, 64)).await, ErrorCode::BACKEND, &mut seen.copy, "copy");
        if held.len() >= 2 {
            // Every buffer holds at least 64 f32.
            let x = held[held.len() - 2];
            let k = Kernel::Scale { x, out: a, n: 64, alpha: 2.0 };
            injected(within(c.dispatch(k)).await, ErrorCode::BACKEND, &mut seen.dispatch, "dispatch");
        }
        within(c.ping()).await.expect("the session survives injected faults");
        if i % 3 == 2 {
            let h = held.remove(0);
            within(c.free(h)).await.expect("free (not faulted here)");
        }
    }
    (c, seen, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_every_nth_operation_gives_typed_errors_and_leaks_nothing() {
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(32 * MIB))
        .fail_every(OpClass::Alloc, 5, BackendError::OutOfMemory)
        .fail_every(OpClass::Write, 3, BackendError::DeviceLost)
        .fail_every(OpClass::Read, 4, BackendError::DeviceLost)
        .fail_every(OpClass::Copy, 2, BackendError::DeviceLost)
        .fail_every(OpClass::Fill, 3, BackendError::DeviceLost)
        .fail_every(OpClass::Dispatch, 2, BackendError::DeviceLost);
    let (node, log) = start_faulty(node_config(), backend).await;
    let addr = node.local_addr();
    let tasks: Vec<_> = (1..=6u32).map(|seed| tokio::spawn(faulted_workload(addr, seed))).collect();
    let mut clients = Vec::new();
    let mut total = Seen::default();
    for t in tasks {
        let (c, seen, held) = within(t).await.expect("workload task");
        total.alloc += seen.alloc;
        total.write += seen.write;
        total.read += seen.read;
        total.copy += seen.copy;
        total.fill += seen.fill;
        total.dispatch += seen.dispatch;
        clients.push((c, held));
    }
    // Every injected fault reached a client as a typed error, and nothing else failed.
    assert_eq!(total.alloc, log.failed(OpClass::Alloc), "{total:?}");
    assert_eq!(total.write, log.failed(OpClass::Write), "{total:?}");
    assert_eq!(total.read, log.failed(OpClass::Read), "{total:?}");
    assert_eq!(total.copy, log.failed(OpClass::Copy), "{total:?}");
    assert_eq!(total.fill, log.failed(OpClass::Fill), "{total:?}");
    assert_eq!(total.dispatch, log.failed(OpClass::Dispatch), "{total:?}");
    assert!(log.total_failed() > 50, "too few faults injected: {total:?}");

    // Accounting: each session's STATS matches what it holds, and together the backend's usage.
    let mut sum = Usage::default();
    for (c, held) in &mut clients {
        let s = within(c.stats()).await.expect("stats");
        assert_eq!(s.buffers as usize, held.len());
        assert_eq!(s.used, held.iter().map(|h| h.size()).sum::<u64>());
        sum.used += s.used;
        sum.buffers += s.buffers;
    }
    assert_eq!(node.usage().await.expect("the engine is alive"), sum);

    // Half close politely, half vanish.
    for (i, (c, _)) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            within(c.close()).await.expect("close");
        } else {
            drop(c);
        }
    }
    assert_eq!(wait_idle(&node).await, Usage::default());
    assert_eq!(within(node.shutdown()).await.expect("shutdown"), Usage::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_allocations_are_out_of_memory_and_charge_nothing() {
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(8 * MIB)).fail_every(
        OpClass::Alloc,
        1,
        BackendError::OutOfMemory,
    );
    let (node, log) = start_faulty(node_config(), backend).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    for size in [1u64, 4096, MIB as u64] {
        let e = within(c.alloc(size)).await.expect_err("every alloc fails");
        assert_eq!(e.code(), Some(ErrorCode::OUT_OF_MEMORY), "{e:?}");
    }
    let s = within(c.stats()).await.expect("stats");
    assert_eq!((s.buffers, s.used), (0, 0), "failed allocations are not charged to the quota");
    log.set_armed(false);
    let h = within(c.alloc(4096)).await.expect("disarmed");
    within(c.write(h, 0, &[1; 4096])).await.expect("write");
    within(c.close()).await.expect("close");
    assert_eq!(log.failed(OpClass::Alloc), 3);
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

/// A buffer the device cannot back (its commit fails) is an ALLOC answered OUT_OF_MEMORY, with
/// the buffer freed again and nothing charged: small ones committed on the engine thread and
/// large ones committed in steps by a job alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_the_device_cannot_back_is_out_of_memory_and_is_freed() {
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(16 * MIB)).fail_every(
        OpClass::Commit,
        1,
        BackendError::OutOfMemory,
    );
    let (node, log) = start_faulty(node_config(), backend).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    for size in [1u64, 4096, MIB as u64, 6 * MIB as u64] {
        let e = within(c.alloc(size)).await.expect_err("every commit fails");
        assert_eq!(e.code(), Some(ErrorCode::OUT_OF_MEMORY), "{size}: {e:?}");
        assert_eq!(node.usage().await.expect("usage"), Usage::default(), "{size}: the buffer was freed");
    }
    let s = within(c.stats()).await.expect("stats");
    assert_eq!((s.buffers, s.used), (0, 0), "failed allocations are not charged to the quota");
    assert_eq!(log.failed(OpClass::Commit), 4);
    log.set_armed(false);
    let h = within(c.alloc(6 * MIB as u64)).await.expect("disarmed");
    within(c.write(h, 0, &[1; 4096])).await.expect("write");
    within(c.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

/// A FREE the device refuses once: the session must not forget the buffer, or nobody can ever
/// release it. The handle stays valid after a failed FREE, and closing the session retries the
/// free, so nothing stays allocated for the node's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transiently_failing_free_does_not_leak() {
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(8 * MIB)).fail_every(
        OpClass::Free,
        2,
        BackendError::DeviceLost,
    );
    let (node, log) = start_faulty(node_config(), backend).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let a = within(c.alloc(4096)).await.expect("alloc a");
    let b = within(c.alloc(4096)).await.expect("alloc b");
    within(c.free(a)).await.expect("first free succeeds");
    let e = within(c.free(b)).await.expect_err("second free is failed by injection");
    assert_eq!(e.code(), Some(ErrorCode::BACKEND), "{e:?}");
    assert_eq!(log.failed(OpClass::Free), 1);
    within(c.close()).await.expect("close");
    // The device works again: ending the session must release what it still holds.
    let usage = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let u = node.usage().await.expect("usage");
            if u == Usage::default() {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    let last = within(node.shutdown()).await.expect("shutdown");
    assert!(usage.is_ok(), "the refused buffer leaked: backend still holds {last:?} at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_slow_things_down_but_break_nothing() {
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(16 * MIB))
        .delay_all_every(3, Duration::from_millis(15))
        .delay_every(OpClass::Read, 2, Duration::from_millis(40));
    let (node, log) = start_faulty(node_config(), backend).await;
    let addr = node.local_addr();
    let tasks: Vec<_> = (0..8u32)
        .map(|seed| {
            tokio::spawn(async move {
                let mut c = within(Client::connect(addr, None)).await.expect("connect");
                for i in 0..6u32 {
                    let data = pattern(seed * 100 + i, 8192);
                    let a = within(c.alloc(8192)).await.expect("alloc");
                    let b = within(c.alloc(8192)).await.expect("alloc");
                    within(c.write(a, 0, &data)).await.expect("write");
                    within(c.copy(a, 0, b, 0, 8192)).await.expect("copy");
                    within(c.fill(b, 0, 8, 0)).await.expect("fill");
                    let back = within(c.read(b, 0, 8192)).await.expect("read");
                    assert!(back[..8] == [0; 8] && back[8..] == data[8..], "data under delays");
                    let x = within(c.alloc(256)).await.expect("alloc x");
                    within(c.write(x, 0, &f32_bytes(&[1.5; 64]))).await.expect("write x");
                    within(c.dispatch(Kernel::Scale { x, out: a, n: 64, alpha: 2.0 })).await.expect("scale");
                    let y = within(c.read(a, 0, 256)).await.expect("read y");
                    assert_eq!(y, f32_bytes(&[3.0; 64]));
                    for h in [a, b, x] {
                        within(c.free(h)).await.expect("free");
                    }
                }
                within(c.close()).await.expect("close");
            })
        })
        .collect();
    for t in tasks {
        within(t).await.expect("client task");
    }
    assert!(log.total_delayed() > 0);
    assert_eq!(log.total_failed(), 0);
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

// Clients killed mid-transfer.

fn enc<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut v).expect("encode");
    v.truncate(n);
    v
}

fn frame(kind: Kind, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    encode_frame::<FastCrc32>(&mut buf, kind, Flags::NONE, seq, payload).expect("frame").to_vec()
}

/// A raw ready session (no token) holding one buffer of `size` bytes.
async fn raw_with_buffer(addr: SocketAddr, size: u64) -> (TcpStream, u32) {
    let mut s = within(TcpStream::connect(addr)).await.expect("connect");
    let hello = enc(&Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
    within(s.write_all(&frame(Kind::HELLO, 1, &hello))).await.expect("hello");
    let (h, _) = read_raw_frame(&mut s).await.expect("welcome");
    assert_eq!(h.kind, Kind::HELLO);
    within(s.write_all(&frame(Kind::ALLOC, 2, &enc(&Alloc { size })))).await.expect("alloc");
    let (h, p) = read_raw_frame(&mut s).await.expect("allocated");
    assert_eq!(h.kind, Kind::ALLOC);
    (s, Allocated::parse(&p).expect("Allocated").handle)
}

/// Polls until the backend holds exactly `want` (bounded).
async fn wait_usage(node: &NodeHandle, want: Usage) {
    let mut last = Usage::default();
    for _ in 0..400 {
        last = node.usage().await.expect("the engine is alive");
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("usage stayed {last:?}, expected {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_in_the_middle_of_a_write_is_cleaned_up() {
    // A slow device too, so the kill lands while the engine is busy.
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(64 * MIB)).delay_every(
        OpClass::Write,
        1,
        Duration::from_millis(20),
    );
    let (node, _log) = start_faulty(node_config(), backend).await;
    let addr = node.local_addr();
    let mut witness = within(Client::connect(addr, None)).await.expect("witness");
    let wh = within(witness.alloc(4096)).await.expect("witness alloc");
    within(witness.write(wh, 0, &[0x42; 4096])).await.expect("witness write");
    let witness_usage = Usage { used: 4096, buffers: 1 };

    for (announced, sent) in [(4 * MIB, MIB), (8 * MIB, 3 * MIB + 5), (64 * 1024, 12)] {
        let (mut s, h) = raw_with_buffer(addr, 8 * MIB as u64).await;
        // A few whole WRITEs first, pipelined, then a frame cut short.
        let mut head = Vec::new();
        for seq in 10..14u16 {
            let mut p = h.to_le_bytes().to_vec();
            p.extend_from_slice(&(u64::from(seq) * 4096).to_le_bytes());
            p.extend_from_slice(&[seq as u8; 4096]);
            head.extend_from_slice(&frame(Kind::WRITE, seq, &p));
        }
        let mut p = h.to_le_bytes().to_vec();
        p.extend_from_slice(&0u64.to_le_bytes());
        p.resize(announced, 0x77);
        let big = frame(Kind::WRITE, 20, &p);
        head.extend_from_slice(&big[..HEADER_LEN + sent]);
        within(s.write_all(&head)).await.expect("send");
        drop(s);
        wait_usage(&node, witness_usage).await;
    }
    within(witness.ping()).await.expect("witness alive");
    assert_eq!(within(witness.read(wh, 0, 4096)).await.expect("read"), vec![0x42; 4096]);
    within(witness.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_in_the_middle_of_a_read_is_cleaned_up() {
    let backend = FaultyBackend::new(OwnedHostBackend::with_capacity(64 * MIB)).delay_every(
        OpClass::Read,
        2,
        Duration::from_millis(20),
    );
    let (node, _log) = start_faulty(node_config(), backend).await;
    let addr = node.local_addr();
    for round in 0..3u16 {
        let size = 16 * MIB as u32;
        let (mut s, h) = raw_with_buffer(addr, u64::from(size)).await;
        // Several 16 MiB READs pipelined; none of the answers is read.
        let mut reqs = Vec::new();
        for seq in 0..(2 + round) {
            reqs.extend_from_slice(&frame(
                Kind::READ,
                100 + seq,
                &enc(&Read { handle: h, offset: 0, len: size }),
            ));
        }
        within(s.write_all(&reqs)).await.expect("send reads");
        if round == 1 {
            // Read just part of the first answer, then vanish.
            let mut part = vec![0u8; 100_000];
            within(tokio::io::AsyncReadExt::read_exact(&mut s, &mut part)).await.expect("part");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        wait_usage(&node, Usage::default()).await;
    }
    // And a session that says BYE with an unread READ answer in flight closes cleanly.
    let (mut s, h) = raw_with_buffer(addr, MIB as u64).await;
    let mut two = frame(Kind::READ, 7, &enc(&Read { handle: h, offset: 0, len: MIB as u32 }));
    two.extend_from_slice(&frame(Kind::BYE, 8, &[]));
    within(s.write_all(&two)).await.expect("send");
    let (hd, p) = read_raw_frame(&mut s).await.expect("read answer");
    assert_eq!((hd.kind, p.len()), (Kind::READ, MIB));
    let (hd, _) = read_raw_frame(&mut s).await.expect("bye answer");
    assert_eq!(hd.kind, Kind::BYE);
    assert_closed(&mut s).await;
    assert_eq!(wait_idle(&node).await, Usage::default());
    within(node.shutdown()).await.expect("shutdown");
}

/// The backend can also be used directly: the wrapper is a plain `GpuBackend`.
#[test]
fn faulty_backend_is_object_safe_behind_the_node_box() {
    let b: Box<dyn GpuBackend + Send> = Box::new(FaultyBackend::new(OwnedHostBackend::with_capacity(4096)));
    assert_eq!(b.usage(), Usage::default());
}
