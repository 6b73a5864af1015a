//! Sessions over TLS: the certificate pinned, wrong, or changed since first use; the node's
//! certificate kept across restarts; the fingerprint in the signed ANNOUNCE; AUTH and LZ4
//! inside TLS; a client and a node that disagree about TLS fail with an error, not a hang.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{config, start, within};
use rela_client::tls::{Fingerprint, KnownNodes, TlsError, TlsOptions, TlsTrust};
use rela_client::{BlockingClient, Client, ClientError, ClientOptions};
use rela_node::NodeConfig;
use rela_node::tls::TlsIdentity;
use rela_test_support::{ScratchDir, pattern};

const TOKEN: &[u8] = b"tls-token";
const ARENA: usize = 64 << 20;

fn tls_config(identity: &TlsIdentity) -> NodeConfig {
    NodeConfig { tls: Some(identity.clone()), ..config() }.with_token(TOKEN)
}

fn pinned(fp: Fingerprint) -> ClientOptions {
    ClientOptions::default().with_tls(TlsOptions::pinned(fp))
}

#[tokio::test]
async fn a_pinned_session_moves_data_and_authenticates_inside_tls() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = start(tls_config(&identity), ARENA).await;
    assert_eq!(node.tls_fingerprint(), Some(identity.fingerprint()));
    let mut client =
        within(Client::connect_with(node.local_addr(), Some(TOKEN), pinned(identity.fingerprint())))
            .await
            .expect("TLS session");
    assert_eq!(client.tls_fingerprint(), Some(identity.fingerprint()));
    // Bulk data both ways, over several frames.
    let data = pattern(17, 3 << 20);
    let h = client.alloc(data.len() as u64).await.expect("alloc");
    within(client.write(h, 0, &data)).await.expect("write");
    let back = within(client.read(h, 0, data.len() as u64)).await.expect("read");
    assert!(back == data, "data came back changed");
    client.ping().await.expect("ping");
    client.close().await.expect("bye");

    // A wrong token is refused inside TLS as over TCP.
    let refused =
        within(Client::connect_with(node.local_addr(), Some(b"wrong"), pinned(identity.fingerprint())))
            .await
            .expect_err("wrong token");
    assert!(matches!(refused, ClientError::AuthRejected), "{refused}");
    let usage = node.shutdown().await.expect("shutdown");
    assert_eq!(usage.used, 0);
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_with_both_fingerprints() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = start(tls_config(&identity), ARENA).await;
    let other = TlsIdentity::self_signed().expect("another identity").fingerprint();
    let err = within(Client::connect_with(node.local_addr(), Some(TOKEN), pinned(other)))
        .await
        .expect_err("a certificate that is not the pinned one");
    match err {
        ClientError::Tls(TlsError::FingerprintMismatch { expected, presented }) => {
            assert_eq!(expected, other);
            assert_eq!(presented, identity.fingerprint());
        }
        other => panic!("expected a fingerprint mismatch, got {other}"),
    }
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn first_use_remembers_the_certificate_and_refuses_a_changed_one() {
    let state = ScratchDir::new("tls-tofu");
    let store = KnownNodes::new(state.path().join("known_nodes"));
    let first = TlsIdentity::self_signed().expect("identity");
    let node = start(tls_config(&first), ARENA).await;
    let addr = node.local_addr();
    let tofu = || ClientOptions::default().with_tls(TlsOptions::first_use(store.clone()));
    // First use: trusted and remembered; the second time it must match, and does.
    for _ in 0..2 {
        let client = within(Client::connect_with(addr, Some(TOKEN), tofu())).await.expect("TLS session");
        client.close().await.expect("bye");
    }
    assert_eq!(store.lookup(&addr.to_string()).expect("store"), Some(first.fingerprint()));
    node.shutdown().await.expect("shutdown");

    // The same address with another certificate.
    let second = TlsIdentity::self_signed().expect("identity");
    let node = start(NodeConfig { listen: addr, ..tls_config(&second) }, ARENA).await;
    let err =
        within(Client::connect_with(addr, Some(TOKEN), tofu())).await.expect_err("a changed certificate");
    match err {
        ClientError::Tls(TlsError::FingerprintChanged { node: name, known, presented, store: path }) => {
            assert_eq!(name, addr.to_string());
            assert_eq!(known, first.fingerprint());
            assert_eq!(presented, second.fingerprint());
            assert_eq!(path, store.path());
        }
        other => panic!("expected a changed fingerprint, got {other}"),
    }
    // The store still holds the first certificate.
    assert_eq!(store.lookup(&addr.to_string()).expect("store"), Some(first.fingerprint()));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_generated_certificate_survives_a_restart() {
    let state = ScratchDir::new("tls-state");
    let (made, fresh) = TlsIdentity::load_or_generate(state.path()).expect("made");
    assert!(fresh);
    let node = start(tls_config(&made), ARENA).await;
    let addr = node.local_addr();
    node.shutdown().await.expect("shutdown");

    let (loaded, fresh) = TlsIdentity::load_or_generate(state.path()).expect("loaded");
    assert!(!fresh, "the certificate in the state directory is reused");
    assert_eq!(loaded.fingerprint(), made.fingerprint());
    let node = start(NodeConfig { listen: addr, ..tls_config(&loaded) }, ARENA).await;
    let client = within(Client::connect_with(addr, Some(TOKEN), pinned(made.fingerprint())))
        .await
        .expect("the fingerprint pinned before the restart still matches");
    client.close().await.expect("bye");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_signed_announce_carries_the_fingerprint_a_client_can_pin() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = start(tls_config(&identity), ARENA).await;
    let discovery = node.discovery_addr().expect("discovery on");
    let nodes = within(rela_client::discover(discovery, Duration::from_secs(5), Some(TOKEN)))
        .await
        .expect("discovery");
    let [found] = nodes.as_slice() else { panic!("one node expected, got {nodes:?}") };
    assert!(found.verified, "the announcement is signed with the token");
    assert_eq!(found.tls_fingerprint, Some(identity.fingerprint().0));
    // Pin what discovery said.
    let fp = Fingerprint(found.tls_fingerprint.expect("fingerprint"));
    let client = within(Client::connect_with(found.addr, Some(TOKEN), pinned(fp))).await.expect("pinned");
    client.close().await.expect("bye");
    node.shutdown().await.expect("shutdown");

    // A node without TLS announces no fingerprint.
    let node = start(config().with_token(TOKEN), ARENA).await;
    let nodes = within(rela_client::discover(
        node.discovery_addr().expect("on"),
        Duration::from_secs(5),
        Some(TOKEN),
    ))
    .await
    .expect("discovery");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].tls_fingerprint, None);
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_ca_bundle_vouches_for_the_names_the_certificate_carries() {
    let state = ScratchDir::new("tls-ca");
    let (identity, _) = TlsIdentity::load_or_generate(state.path()).expect("identity");
    let node = start(tls_config(&identity), ARENA).await;
    // The self-signed certificate is its own CA; it names `localhost`.
    let bundle = state.path().join("tls").join(rela_node::tls::CERT_FILE);
    let ca = || {
        ClientOptions::default().with_tls(TlsOptions { trust: TlsTrust::ca_file(&bundle).expect("bundle") })
    };
    let host = format!("localhost:{}", node.local_addr().port());
    let (client, _) = within(Client::connect_host(&host, Some(TOKEN), ca())).await.expect("vouched for");
    assert_eq!(client.tls_fingerprint(), Some(identity.fingerprint()));
    client.close().await.expect("bye");
    // By IP address: the certificate does not name 127.0.0.1.
    let err =
        within(Client::connect_with(node.local_addr(), Some(TOKEN), ca())).await.expect_err("wrong name");
    assert!(matches!(err, ClientError::Tls(TlsError::Handshake(_))), "{err}");
    // A bundle of another CA.
    let other = ScratchDir::new("tls-ca-other");
    TlsIdentity::load_or_generate(other.path()).expect("another identity");
    let foreign = other.path().join("tls").join(rela_node::tls::CERT_FILE);
    let options =
        ClientOptions::default().with_tls(TlsOptions { trust: TlsTrust::ca_file(&foreign).expect("bundle") });
    let err = within(Client::connect_host(&host, Some(TOKEN), options)).await.expect_err("not vouched for");
    assert!(matches!(err, ClientError::Tls(TlsError::Handshake(_))), "{err}");
    // A bundle that holds no certificate.
    let empty = state.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    assert!(matches!(TlsTrust::ca_file(&empty), Err(TlsError::CaBundle(_))));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn lz4_and_tls_together() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = start(tls_config(&identity), ARENA).await;
    let options = ClientOptions { compress: true, ..pinned(identity.fingerprint()) };
    let mut client =
        within(Client::connect_with(node.local_addr(), Some(TOKEN), options)).await.expect("session");
    assert!(client.compressing(), "the node offers LZ4 over TLS too");
    // Zero-heavy data compresses; a random tail does not.
    let mut data = vec![0u8; 2 << 20];
    data.extend(pattern(5, 1 << 20));
    let h = client.alloc(data.len() as u64).await.expect("alloc");
    within(client.write(h, 0, &data)).await.expect("write");
    let back = within(client.read(h, 0, data.len() as u64)).await.expect("read");
    assert!(back == data, "data came back changed");
    client.close().await.expect("bye");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tls_and_plain_ends_fail_cleanly() {
    // A TLS client at a plaintext node.
    let node = start(config().with_token(TOKEN), ARENA).await;
    let err = within(Client::connect_with(node.local_addr(), Some(TOKEN), pinned(Fingerprint([0; 32]))))
        .await
        .expect_err("no TLS there");
    assert!(matches!(err, ClientError::Tls(TlsError::Handshake(_))), "{err}");
    node.shutdown().await.expect("shutdown");

    // A plaintext client at a TLS node: an error, not a hang.
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = start(tls_config(&identity), ARENA).await;
    let options = ClientOptions::default().with_timeout(Duration::from_secs(5));
    let err =
        within(Client::connect_with(node.local_addr(), Some(TOKEN), options)).await.expect_err("TLS only");
    assert!(!matches!(err, ClientError::Timeout { .. }), "the node should close, not stall: {err}");
    // The node still serves TLS clients afterwards.
    let client = within(Client::connect_with(node.local_addr(), Some(TOKEN), pinned(identity.fingerprint())))
        .await
        .expect("session");
    client.close().await.expect("bye");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_silent_tls_client_is_cut_by_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let identity = TlsIdentity::self_signed().expect("identity");
    let mut cfg = tls_config(&identity);
    cfg.session.handshake_timeout = rela_core::time::Duration::from_millis(300);
    let node = start(cfg, ARENA).await;
    // Connects and never sends a ClientHello: the node closes once the timeout passes.
    let mut stream = tokio::net::TcpStream::connect(node.local_addr()).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = within(stream.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "the node should close the connection, got {read:?}");
    common::wait_idle(&node).await;
    assert_eq!(node.sessions(), 0);
    node.shutdown().await.expect("shutdown");
}

#[test]
fn the_blocking_client_speaks_tls() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = rt.block_on(start(tls_config(&identity), ARENA));
    let addr = node.local_addr();
    let fp = identity.fingerprint();
    let worker = std::thread::spawn(move || {
        let mut client = BlockingClient::connect_with(addr, Some(TOKEN), pinned(fp)).expect("session");
        let h = client.alloc(4096).expect("alloc");
        let data = pattern(9, 4096);
        client.write(h, 0, &data).expect("write");
        assert_eq!(client.read(h, 0, 4096).expect("read"), data);
        client.close().expect("bye");
    });
    worker.join().expect("the blocking client's thread");
    rt.block_on(node.shutdown()).expect("shutdown");
}
