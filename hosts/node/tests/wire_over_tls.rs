//! The wire suite (`rela_conformance::wire`) against a node serving TLS. The suite speaks plain
//! TCP, so each of its connections goes through a small proxy here that opens a TLS session to
//! the node (certificate pinned) and copies bytes both ways, passing each side's close on to
//! the other: every case then exercises the node's TLS path, its framing checks, errors and
//! closes included.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{start, wait_idle, wire_suite_config, within};
use rela_conformance::{render_table, wire};
use rela_core::config::TLS_ALPN;
use rela_node::tls::TlsIdentity;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;
const TOKEN: &[u8] = b"wire over tls token";

/// Accepts plain connections on a loopback port and forwards each over TLS to `node`, trusting
/// only `cert` (a CA bundle of the self-signed certificate itself).
async fn tls_proxy(node: SocketAddr, cert: &[u8]) -> SocketAddr {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.to_vec())).expect("the node's certificate as a root");
    let mut config = rustls::ClientConfig::builder_with_provider(rela_client::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![TLS_ALPN.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((mut plain, _)) = listener.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                let _ = plain.set_nodelay(true);
                let Ok(tcp) = TcpStream::connect(node).await else { return };
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from("localhost").expect("name");
                let Ok(mut tls) = connector.connect(name, tcp).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_suite_passes_over_tls() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let mut cfg = wire_suite_config();
    cfg.tls = Some(identity.clone());
    let node = start(cfg.with_token(TOKEN), 64 * MIB).await;
    let proxy = tls_proxy(node.local_addr(), identity.certificate_der()).await;
    let report = tokio::time::timeout(Duration::from_secs(240), wire::run(proxy, Some(TOKEN)))
        .await
        .expect("wire suite finished in time");
    let table = render_table(std::slice::from_ref(&report));
    eprintln!("{table}");
    assert!(report.ok(), "wire conformance failures over TLS:\n{table}");
    assert_eq!(report.results.len(), wire::case_names().count());
    // Only the model upload rules and the model list skip (this node serves no models).
    assert_eq!(report.counts().2, 2, "{table}");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}
