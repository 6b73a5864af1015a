//! Discovery rounds end early: once every unicast target has answered, or once answers stop
//! coming for the settle time. The rounds below are given a long timeout; waiting it out would
//! run into the outer deadline of each test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use rela_client::{FastCrc32, discover_targets};
use rela_core::backend::BackendKind;
use rela_core::discovery::{Announce, Discover};
use tokio::net::UdpSocket;

/// Far longer than any test may take.
const LONG: Duration = Duration::from_secs(600);
/// The outer bound that waiting out [`LONG`] would run into.
const HANG: Duration = Duration::from_secs(30);

/// A fake node that answers every DISCOVER with an unsigned ANNOUNCE for TCP port `port`.
async fn responder(port: u16) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            let Ok(probe) = Discover::parse::<FastCrc32>(&buf[..n]) else { continue };
            let a = Announce::new(
                probe.nonce,
                [port as u8; 16],
                port,
                BackendKind::HOST,
                false,
                1 << 20,
                1 << 20,
                "fake",
            );
            let mut out = [0u8; 256];
            let n = a.emit::<FastCrc32>(None, &mut out).unwrap();
            let _ = socket.send_to(&out[..n], from).await;
        }
    });
    addr
}

/// A UDP port where nothing answers (bound, so no ICMP error either).
async fn silent() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f).await.expect("discovery waited out its whole timeout")
}

#[tokio::test]
async fn unicast_targets_stop_once_each_answered() {
    let (a, b) = (responder(1001).await, responder(1002).await);
    let report = bounded(discover_targets(&[a, b], LONG, None, None)).await.unwrap();
    let mut ports: Vec<u16> = report.nodes.iter().map(|n| n.addr.port()).collect();
    ports.sort_unstable();
    assert_eq!(ports, [1001, 1002]);
}

#[tokio::test]
async fn settle_ends_the_round_after_the_last_answer() {
    let node = responder(1003).await;
    let (_keep, quiet) = silent().await;
    // The silent target never answers, so only the settle time can end the round early.
    let report = bounded(discover_targets(&[node, quiet], LONG, Some(Duration::from_millis(200)), None))
        .await
        .unwrap();
    assert_eq!(report.nodes.len(), 1, "{report:?}");
    assert_eq!(report.nodes[0].addr.port(), 1003);
}

#[tokio::test]
async fn nothing_to_send_to_is_an_error() {
    assert!(discover_targets(&[], LONG, None, None).await.is_err());
    let mixed: [SocketAddr; 2] = ["127.0.0.1:1".parse().unwrap(), "[::1]:1".parse().unwrap()];
    assert!(discover_targets(&mixed, LONG, None, None).await.is_err());
}
