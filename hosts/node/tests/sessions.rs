//! Sessions through a real node on loopback: calls, pipelining, limits, cleanup, shutdown.

mod common;

use common::{f32_bytes, pattern};

use std::time::Duration;

use common::{STEP, config, start, wait_idle, within};
use rela_client::{BlockingClient, Client, ClientError, ClientOptions, Kernel};
use rela_core::backend::BackendKind;
use rela_core::wire::{ErrorCode, Kind};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_round_trips() {
    let node = start(config(), 8 * MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    assert!(!c.welcome().auth_required());
    within(c.ping()).await.expect("ping");

    let info = within(c.device_info()).await.expect("device info");
    assert_eq!(info.backend, BackendKind::HOST);
    assert_eq!(info.total, 8 * MIB as u64);

    let a = within(c.alloc(4096)).await.expect("alloc");
    assert_eq!(a.size(), 4096);
    let data = pattern(1, 4096);
    within(c.write(a, 0, &data)).await.expect("write");
    assert_eq!(within(c.read(a, 0, 4096)).await.expect("read"), data);
    let mut part = [0u8; 100];
    within(c.read_into(a, 1000, &mut part)).await.expect("read_into");
    assert_eq!(&part[..], &data[1000..1100]);

    within(c.fill(a, 10, 20, 0xAB)).await.expect("fill");
    let b = within(c.alloc(4096)).await.expect("alloc b");
    within(c.copy(a, 0, b, 100, 64)).await.expect("copy");
    let got = within(c.read(b, 100, 64)).await.expect("read b");
    let mut want = data[..64].to_vec();
    want[10..30].fill(0xAB);
    assert_eq!(got, want);

    // ADD on f32.
    let x = within(c.alloc(16)).await.expect("x");
    let y = within(c.alloc(16)).await.expect("y");
    let z = within(c.alloc(16)).await.expect("z");
    within(c.write(x, 0, &f32_bytes(&[1.0, 2.0, 3.0, 4.0]))).await.expect("write x");
    within(c.write(y, 0, &f32_bytes(&[10.0, 20.0, 30.0, 40.0]))).await.expect("write y");
    within(c.dispatch(Kernel::Add { a: x, b: y, out: z, n: 4 })).await.expect("dispatch");
    let z_bytes = within(c.read(z, 0, 16)).await.expect("read z");
    assert_eq!(z_bytes, f32_bytes(&[11.0, 22.0, 33.0, 44.0]));

    let stats = within(c.stats()).await.expect("stats");
    assert_eq!(stats.buffers, 5);
    assert_eq!(stats.used, 4096 * 2 + 48);
    within(c.free(b)).await.expect("free");
    assert_eq!(within(c.stats()).await.expect("stats").buffers, 4);

    within(c.close()).await.expect("bye");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_errors_are_typed_and_the_session_survives() {
    let node = start(config(), 4 * MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let a = within(c.alloc(1024)).await.expect("alloc");

    let e = within(c.read(a, 1000, 100)).await.expect_err("out of bounds");
    assert!(
        matches!(&e, ClientError::Server { code, request, .. } if *code == ErrorCode::OUT_OF_BOUNDS && *request == Kind::READ),
        "{e:?}"
    );
    let bogus = rela_client::Handle::from_raw(a.raw() ^ 0x5555, 16);
    let e = within(c.write(bogus, 0, b"x")).await.expect_err("no such buffer");
    assert_eq!(e.code(), Some(ErrorCode::NO_SUCH_BUFFER));
    let e = within(c.alloc(0)).await.expect_err("zero alloc");
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT));

    // A pipelined write that runs off the end: the first frames land, the rest fail, and every
    // in-flight answer is collected so the session stays in sync.
    let mut small = Client::connect_with(
        node.local_addr(),
        None,
        ClientOptions { chunk: Some(4096), window: 4, ..ClientOptions::default() },
    )
    .await
    .expect("connect small");
    let h = within(small.alloc(32 * 1024)).await.expect("alloc");
    let data = pattern(2, 64 * 1024);
    let e = within(small.write(h, 0, &data)).await.expect_err("runs off the end");
    assert_eq!(e.code(), Some(ErrorCode::OUT_OF_BOUNDS));
    within(small.ping()).await.expect("still usable");
    let back = within(small.read(h, 0, 16 * 1024)).await.expect("read");
    assert_eq!(back, data[..16 * 1024]);

    within(c.ping()).await.expect("still usable");
    drop(small);
    drop(c);
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_clients() {
    let node = start(config(), 64 * MIB).await;
    let addr = node.local_addr();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u32 {
        tasks.spawn(async move {
            let mut c = Client::connect(addr, None).await.expect("connect");
            for round in 0..4u32 {
                let len = 64 * 1024 + (i as usize * 997) % 4096;
                let h = c.alloc(len as u64).await.expect("alloc");
                let data = pattern(i * 31 + round, len);
                c.write(h, 0, &data).await.expect("write");
                let back = c.read(h, 0, len as u64).await.expect("read");
                assert_eq!(back, data, "client {i} round {round}");
                c.free(h).await.expect("free");
            }
            c.close().await.expect("bye");
        });
    }
    within(async {
        while let Some(r) = tasks.join_next().await {
            r.expect("client task");
        }
    })
    .await;
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_mib_round_trip_splits_into_frames() {
    let node = start(config(), 48 * MIB).await;
    // Full-size frames: the node's max payload (16 MiB), so WRITE data is 16 MiB - 12 per frame
    // and READ answers carry exactly 16 MiB.
    let options = ClientOptions { chunk: Some(u32::MAX), ..ClientOptions::default() };
    let mut c = within(Client::connect_with(node.local_addr(), None, options)).await.expect("connect");
    let len = 40 * MIB;
    let data = pattern(7, len);
    let h = within(c.alloc(len as u64)).await.expect("alloc");

    let mut calls = Vec::new();
    let mut progress = |done: u64, total: u64| calls.push((done, total));
    within(c.write_with_progress(h, 0, &data, Some(&mut progress))).await.expect("write");
    assert!(calls.len() >= 3, "40 MiB must take several frames: {calls:?}");
    assert_eq!(calls.last(), Some(&(len as u64, len as u64)));

    let mut back = vec![0u8; len];
    let mut reads = 0;
    let mut progress = |_: u64, _: u64| reads += 1;
    within(c.read_into_with_progress(h, 0, &mut back, Some(&mut progress))).await.expect("read");
    assert_eq!(reads, 3);
    assert!(back == data, "40 MiB round trip differs");

    // Default frames (4 MiB WRITE, 1 MiB READ), at an unaligned offset.
    let mut d = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let h2 = within(d.alloc(5 * MIB as u64 + 3)).await.expect("alloc");
    within(d.write(h2, 3, &data[..5 * MIB])).await.expect("write");
    assert!(within(d.read(h2, 3, 5 * MIB as u64)).await.expect("read") == data[..5 * MIB]);
    drop(d);

    let stats = within(c.stats()).await.expect("stats");
    assert!(stats.bytes_in >= len as u64 && stats.bytes_out >= len as u64);
    within(c.close()).await.expect("bye");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_buffer_cap() {
    let mut cfg = config();
    cfg.session.quota = 1024 * 1024;
    cfg.session.max_buffers = 4;
    let node = start(cfg, 8 * MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    assert_eq!(c.welcome().quota, 1024 * 1024);
    assert_eq!(c.welcome().max_buffers, 4);

    let big = within(c.alloc(512 * 1024)).await.expect("alloc");
    let e = within(c.alloc(768 * 1024)).await.expect_err("over quota");
    assert_eq!(e.code(), Some(ErrorCode::QUOTA_EXCEEDED));
    within(c.ping()).await.expect("session usable after QUOTA_EXCEEDED");
    let mut small = vec![];
    for _ in 0..3 {
        small.push(within(c.alloc(1024)).await.expect("small alloc"));
    }
    let e = within(c.alloc(1024)).await.expect_err("buffer cap");
    assert_eq!(e.code(), Some(ErrorCode::TOO_MANY_BUFFERS));
    within(c.free(big)).await.expect("free");
    let again = within(c.alloc(700 * 1024)).await.expect("fits again after free");
    within(c.write(again, 0, &[1u8; 1000])).await.expect("write");
    within(c.close()).await.expect("bye");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_session_frees_everything() {
    let node = start(config(), 16 * MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    for i in 0..3 {
        let h = within(c.alloc(MIB as u64)).await.expect("alloc");
        within(c.write(h, 0, &pattern(i, MIB))).await.expect("write");
    }
    assert_eq!(node.usage().await.expect("usage").buffers, 3);
    drop(c); // no BYE: the node sees EOF and aborts the session
    let usage = wait_idle(&node).await;
    assert_eq!(usage.used, 0);

    // A fresh session sees zeroed memory.
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let h = within(c.alloc(MIB as u64)).await.expect("alloc");
    assert!(within(c.read(h, 0, MIB as u64)).await.expect("read").iter().all(|b| *b == 0));
    drop(c);
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cap_answers_busy() {
    let node = start(rela_node::NodeConfig { max_sessions: 2, ..config() }, 4 * MIB).await;
    let addr = node.local_addr();
    let a = within(Client::connect(addr, None)).await.expect("first");
    let mut b = within(Client::connect(addr, None)).await.expect("second");
    let e = within(Client::connect(addr, None)).await.expect_err("third is refused");
    assert!(matches!(&e, ClientError::Server { code, .. } if *code == ErrorCode::BUSY), "{e:?}");
    within(b.ping()).await.expect("existing sessions unaffected");

    drop(a);
    // Once the first session is gone there is room again (bounded retries, no timing).
    let mut third = None;
    for _ in 0..200 {
        match within(Client::connect(addr, None)).await {
            Ok(c) => {
                third = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::BUSY), "{e:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let mut third = third.expect("a slot frees up");
    within(third.ping()).await.expect("ping");
    drop((b, third));
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_live_sessions() {
    let node = start(config(), 16 * MIB).await;
    let addr = node.local_addr();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = within(Client::connect(addr, None)).await.expect("connect");
        let h = within(c.alloc(MIB as u64)).await.expect("alloc");
        within(c.write(h, 0, &pattern(i, MIB))).await.expect("write");
        clients.push(c);
    }
    assert_eq!(node.usage().await.expect("usage").buffers, 3);

    let shutdown = tokio::spawn(node.shutdown());
    for mut c in clients {
        // Keep calling until the node's SHUTTING_DOWN arrives (bounded).
        let mut seen = None;
        for _ in 0..1000 {
            match within(c.ping()).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => {
                    seen = Some(e);
                    break;
                }
            }
        }
        let e = seen.expect("the session is closed by shutdown");
        assert!(matches!(&e, ClientError::Server { code, .. } if *code == ErrorCode::SHUTTING_DOWN), "{e:?}");
        assert!(matches!(within(c.ping()).await, Err(ClientError::Closed)));
    }
    let usage = within(shutdown).await.expect("join").expect("shutdown");
    assert_eq!(usage.used, 0);
    assert_eq!(usage.buffers, 0);
}

#[test]
fn blocking_client_from_a_plain_thread() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let node = rt.block_on(start(config(), 4 * MIB));
    let addr = node.local_addr();
    let worker = std::thread::spawn(move || {
        let mut c = BlockingClient::connect(addr, None).expect("connect");
        c.ping().expect("ping");
        let h = c.alloc(3 * MIB as u64).expect("alloc");
        let data = pattern(9, 3 * MIB);
        c.write(h, 0, &data).expect("write");
        assert_eq!(c.read(h, 0, data.len() as u64).expect("read"), data);
        c.free(h).expect("free");
        c.close().expect("bye");
    });
    let deadline = std::time::Instant::now() + STEP;
    while !worker.is_finished() {
        assert!(std::time::Instant::now() < deadline, "blocking client timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
    worker.join().expect("worker");
    rt.block_on(async {
        wait_idle(&node).await;
        within(node.shutdown()).await.expect("shutdown");
    });
}
