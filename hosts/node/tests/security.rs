//! Authentication, discovery (signed and spoofed), framing errors and timeouts.

mod common;

use std::time::Duration;

use common::{assert_closed, config, connect_retrying, error_code, read_raw_frame, start, wait_idle, within};
use rela_client::{Client, ClientError, FastCrc32, discover, discover_report};
use rela_core::auth::AuthKey;
use rela_core::backend::BackendKind;
use rela_core::config::HEADER_LEN;
use rela_core::discovery::{Announce, Discover, DiscoveryError};
use rela_core::session::SessionConfig;
use rela_core::time::Duration as CoreDuration;
use rela_core::wire::msg::{Hello, Message};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_node::NodeConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

const MIB: usize = 1024 * 1024;
const TOKEN: &[u8] = b"correct horse battery staple";

fn auth_config() -> NodeConfig {
    NodeConfig { auth_backoff: Duration::from_millis(20), ..config() }.with_token(TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_off_accepts_anyone() {
    let node = start(config(), MIB).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("no token");
    within(c.ping()).await.expect("ping");
    // A token the node does not ask for is simply unused.
    let mut d = within(Client::connect(node.local_addr(), Some(b"whatever"))).await.expect("token");
    within(d.ping()).await.expect("ping");
    drop((c, d));
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_on_right_wrong_and_missing_token() {
    let node = start(auth_config(), MIB).await;
    let addr = node.local_addr();

    let mut good = within(Client::connect(addr, Some(TOKEN))).await.expect("right token");
    assert!(good.welcome().auth_required());
    let h = within(good.alloc(1024)).await.expect("alloc");
    within(good.write(h, 0, b"hello")).await.expect("write");

    let e = within(Client::connect(addr, Some(b"wrong token"))).await.expect_err("wrong token");
    assert!(matches!(e, ClientError::AuthRejected), "{e:?}");
    // Right after a failure the address is turned away for a moment: that is waited out.
    let e = connect_retrying(addr, None).await.expect_err("no token");
    assert!(matches!(e, ClientError::TokenRequired), "{e:?}");

    // Raw: the node answers a bad AUTH with ERROR(AUTH_FAILED) and closes the connection.
    let mut raw = within(TcpStream::connect(addr)).await.expect("raw connect");
    let mut buf = vec![0u8; 256];
    let mut body = [0u8; 64];
    let hello = Hello { min_version: 1, max_version: 1, caps: Default::default() };
    let n = hello.emit(&mut body).expect("hello");
    let frame =
        encode_frame::<FastCrc32>(&mut buf, Kind::HELLO, Flags::NONE, 1, &body[..n]).expect("frame").to_vec();
    within(raw.write_all(&frame)).await.expect("send hello");
    let (h, _) = read_raw_frame(&mut raw).await.expect("welcome");
    assert_eq!(h.kind, Kind::HELLO);
    let frame =
        encode_frame::<FastCrc32>(&mut buf, Kind::AUTH, Flags::NONE, 2, &[0u8; 32]).expect("frame").to_vec();
    within(raw.write_all(&frame)).await.expect("send auth");
    let (h, p) = read_raw_frame(&mut raw).await.expect("error");
    assert_eq!(error_code(&h, &p), ErrorCode::AUTH_FAILED);
    assert_eq!(h.seq, 2);
    assert_closed(&mut raw).await;

    // After several failures the right token still gets in, once the node's wait is over.
    let mut again = connect_retrying(addr, Some(TOKEN)).await.expect("right token after failures");
    within(again.ping()).await.expect("ping");
    within(good.ping()).await.expect("first session unaffected");
    drop((good, again));
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_are_answered_then_closed() {
    let mut cfg = config();
    cfg.session = SessionConfig { max_payload: 64 * 1024, ..SessionConfig::default() };
    let node = start(cfg, MIB).await;

    // Garbage header.
    let mut raw = within(TcpStream::connect(node.local_addr())).await.expect("connect");
    within(raw.write_all(b"GARBAGE-GARBAGE-GARBAGE")).await.expect("send");
    let (h, p) = read_raw_frame(&mut raw).await.expect("error frame");
    assert_eq!(error_code(&h, &p), ErrorCode::BAD_FRAME);
    assert_closed(&mut raw).await;

    // A header announcing more than max_payload is refused before any payload is read.
    let mut raw = within(TcpStream::connect(node.local_addr())).await.expect("connect");
    let mut hdr = [0u8; HEADER_LEN];
    hdr[..4].copy_from_slice(b"RELA");
    hdr[4] = Kind::WRITE.0;
    hdr[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
    within(raw.write_all(&hdr)).await.expect("send");
    let (h, p) = read_raw_frame(&mut raw).await.expect("error frame");
    assert_eq!(error_code(&h, &p), ErrorCode::PAYLOAD_TOO_LARGE);
    assert_closed(&mut raw).await;

    // A CRC mismatch.
    let mut raw = within(TcpStream::connect(node.local_addr())).await.expect("connect");
    let mut buf = [0u8; 64];
    let mut frame =
        encode_frame::<FastCrc32>(&mut buf, Kind::PING, Flags::NONE, 1, b"ping").expect("f").to_vec();
    frame[HEADER_LEN] ^= 1;
    within(raw.write_all(&frame)).await.expect("send");
    let (h, p) = read_raw_frame(&mut raw).await.expect("error frame");
    assert_eq!(error_code(&h, &p), ErrorCode::BAD_FRAME);
    assert_closed(&mut raw).await;

    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_silent_connections() {
    let mut cfg = config();
    cfg.session.handshake_timeout = CoreDuration::from_millis(200);
    let node = start(cfg, MIB).await;
    let mut raw = within(TcpStream::connect(node.local_addr())).await.expect("connect");
    let (h, p) = read_raw_frame(&mut raw).await.expect("timeout error");
    assert_eq!(error_code(&h, &p), ErrorCode::TIMEOUT);
    assert_eq!(h.seq, 0);
    assert_closed(&mut raw).await;
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_without_token() {
    let node = start(config(), 2 * MIB).await;
    let target = node.discovery_addr().expect("discovery enabled");

    // Garbage is ignored; the responder keeps answering.
    let junk = within(UdpSocket::bind("127.0.0.1:0")).await.expect("bind");
    within(junk.send_to(b"not a frame", target)).await.expect("send");

    let nodes = within(discover(target, Duration::from_millis(500), None)).await.expect("discover");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let n = &nodes[0];
    assert_eq!(n.addr, node.local_addr());
    assert_eq!(n.backend, BackendKind::HOST);
    assert!(!n.auth_required && !n.verified);
    assert_eq!(n.total, 2 * MIB as u64);

    // With a token, an unsigned announcement is rejected.
    let report =
        within(discover_report(target, Duration::from_millis(500), Some(TOKEN))).await.expect("report");
    assert!(report.nodes.is_empty());
    assert!(matches!(report.rejected.as_slice(), [r] if r.error == DiscoveryError::Unsigned), "{report:?}");
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_with_token_is_signed() {
    let node = start(auth_config(), 2 * MIB).await;
    let target = node.discovery_addr().expect("discovery enabled");
    let nodes = within(discover(target, Duration::from_millis(500), Some(TOKEN))).await.expect("discover");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(nodes[0].verified && nodes[0].auth_required);
    assert_eq!(nodes[0].addr, node.local_addr());

    // The free figure follows allocations.
    let mut c = within(Client::connect(node.local_addr(), Some(TOKEN))).await.expect("connect");
    within(c.alloc(MIB as u64)).await.expect("alloc");
    let nodes = within(discover(target, Duration::from_millis(300), Some(TOKEN))).await.expect("discover");
    assert_eq!(nodes[0].free, MIB as u64);

    // Another token: the signature does not verify.
    let report =
        within(discover_report(target, Duration::from_millis(300), Some(b"other"))).await.expect("report");
    assert!(report.nodes.is_empty());
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].error, DiscoveryError::BadSignature);
    drop(c);
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_announce_is_rejected() {
    // A fake node that answers every DISCOVER with a forged (wrong key) and an unsigned ANNOUNCE.
    let fake = within(UdpSocket::bind("127.0.0.1:0")).await.expect("bind");
    let target = fake.local_addr().expect("addr");
    let forger = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let (n, from) = fake.recv_from(&mut buf).await.expect("probe");
        let probe = Discover::parse::<FastCrc32>(&buf[..n]).expect("DISCOVER");
        let a = Announce::new(probe.nonce, [7; 16], 9, BackendKind::CUDA, true, 1 << 40, 1 << 40, "evil");
        let mut out = [0u8; 256];
        let n = a.emit::<FastCrc32>(Some(&AuthKey::new(b"forger")), &mut out).expect("emit");
        fake.send_to(&out[..n], from).await.expect("send forged");
        let n = a.emit::<FastCrc32>(None, &mut out).expect("emit");
        fake.send_to(&out[..n], from).await.expect("send unsigned");
    });
    let report =
        within(discover_report(target, Duration::from_millis(500), Some(TOKEN))).await.expect("report");
    within(forger).await.expect("forger");
    assert!(report.nodes.is_empty(), "{report:?}");
    let errors: Vec<_> = report.rejected.iter().map(|r| r.error).collect();
    assert!(errors.contains(&DiscoveryError::BadSignature), "{errors:?}");
    assert!(errors.contains(&DiscoveryError::Unsigned), "{errors:?}");
}
