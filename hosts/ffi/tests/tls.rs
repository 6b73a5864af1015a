//! `rela_connect` over TLS: a pinned fingerprint, trust on first use with a known-nodes file, a
//! CA file, and every refusal with its status (`RELA_ERR_TLS` for an untrusted node,
//! `RELA_ERR_INVALID_ARGUMENT` for options that do not make sense).
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::ffi::CString;

use common::{TestNode, connect, last_message};
use rela_ffi::{
    RELA_ERR_INVALID_ARGUMENT, RELA_ERR_TLS, RELA_OK, RELA_TLS_CA, RELA_TLS_FIRST_USE, RELA_TLS_PINNED,
    RelaConnectOptions,
};
use rela_node::NodeConfig;
use rela_node::tls::TlsIdentity;
use rela_test_support::ScratchDir;

const TOKEN: &[u8] = b"ffi-tls-token";

/// A node serving TLS with `identity`, with a token.
fn tls_node(identity: &TlsIdentity) -> TestNode {
    let identity = identity.clone();
    TestNode::start_with(Some(TOKEN), move |c| NodeConfig { tls: Some(identity), ..c })
}

/// Options for `mode` with the string field it reads set to `arg` (kept alive by the caller).
fn options(mode: u32, arg: Option<&CString>) -> RelaConnectOptions {
    let p = arg.map_or(std::ptr::null(), |a| a.as_ptr());
    let mut o = RelaConnectOptions { tls: mode, handshake_timeout_ms: 5_000, ..Default::default() };
    match mode {
        RELA_TLS_PINNED => o.tls_fingerprint = p,
        RELA_TLS_CA => o.tls_ca_file = p,
        _ => o.tls_known_nodes = p,
    }
    o
}

fn ping(client: rela_ffi::RelaClient) {
    let mut rtt = 0u64;
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { rela_ffi::rela_ping(client, &mut rtt) }, RELA_OK, "{}", last_message());
}

#[test]
fn a_pinned_fingerprint_connects_and_another_is_refused() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = tls_node(&identity);
    // Colons between bytes are accepted, as `vram-relay serve --tls` may print them.
    let hex = identity.fingerprint().to_string();
    let colons: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
    for text in [hex.clone(), colons.join(":")] {
        let fp = CString::new(text).expect("no NUL");
        let (status, client) = connect(node.port, Some(TOKEN), Some(options(RELA_TLS_PINNED, Some(&fp))));
        assert_eq!(status, RELA_OK, "pinned connect: {}", last_message());
        ping(client);
        assert_eq!(rela_ffi::rela_close(client), RELA_OK);
    }

    let other =
        CString::new(TlsIdentity::self_signed().expect("other").fingerprint().to_string()).expect("hex");
    let (status, _) = connect(node.port, Some(TOKEN), Some(options(RELA_TLS_PINNED, Some(&other))));
    assert_eq!(status, RELA_ERR_TLS);
    assert!(last_message().contains("not the pinned"), "{}", last_message());
    node.wait_idle();
}

#[test]
fn trust_on_first_use_remembers_the_node_and_refuses_a_changed_certificate() {
    let scratch = ScratchDir::new("ffi-tofu");
    let store = CString::new(scratch.path().join("known_nodes").to_str().expect("utf-8")).expect("no NUL");
    let first = TlsIdentity::self_signed().expect("identity");
    let mut node = tls_node(&first);
    let port = node.port;
    for _ in 0..2 {
        let (status, client) = connect(port, Some(TOKEN), Some(options(RELA_TLS_FIRST_USE, Some(&store))));
        assert_eq!(status, RELA_OK, "first-use connect: {}", last_message());
        ping(client);
        assert_eq!(rela_ffi::rela_close(client), RELA_OK);
    }
    let remembered = std::fs::read_to_string(scratch.path().join("known_nodes")).expect("store written");
    assert!(remembered.contains(&first.fingerprint().to_string()), "{remembered}");
    node.stop();

    // Another certificate at the same address: refused, and the store keeps the first.
    let second = TlsIdentity::self_signed().expect("identity");
    let listen = format!("127.0.0.1:{port}").parse().expect("addr");
    let node = TestNode::start_with(Some(TOKEN), move |c| NodeConfig { tls: Some(second), listen, ..c });
    let (status, _) = connect(node.port, Some(TOKEN), Some(options(RELA_TLS_FIRST_USE, Some(&store))));
    assert_eq!(status, RELA_ERR_TLS);
    assert!(last_message().contains("CHANGED"), "{}", last_message());
}

#[test]
fn a_ca_file_that_is_missing_or_does_not_vouch_for_the_node_is_refused() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = tls_node(&identity);
    let scratch = ScratchDir::new("ffi-ca");
    let missing = CString::new(scratch.path().join("none.pem").to_str().expect("utf-8")).expect("no NUL");
    let (status, _) = connect(node.port, Some(TOKEN), Some(options(RELA_TLS_CA, Some(&missing))));
    assert_eq!(status, RELA_ERR_TLS, "{}", last_message());
    assert!(last_message().contains("CA bundle"), "{}", last_message());

    // Another node's certificate as the CA: it vouches for nothing this node presents.
    let other_dir = scratch.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("dir");
    TlsIdentity::load_or_generate(&other_dir).expect("another identity, written as PEM");
    let pem_path = other_dir.join(rela_node::tls::CERT_FILE);
    let pem = CString::new(pem_path.to_str().expect("utf-8")).expect("no NUL");
    let (status, _) = connect(node.port, Some(TOKEN), Some(options(RELA_TLS_CA, Some(&pem))));
    assert_eq!(status, RELA_ERR_TLS, "{}", last_message());
}

#[test]
fn tls_options_that_make_no_sense_are_invalid_arguments() {
    let identity = TlsIdentity::self_signed().expect("identity");
    let node = tls_node(&identity);
    // A pin or a CA without its string, an unknown mode, a fingerprint that is not 64 hex digits.
    for o in [options(RELA_TLS_PINNED, None), options(RELA_TLS_CA, None), options(9, None)] {
        let (status, _) = connect(node.port, Some(TOKEN), Some(o));
        assert_eq!(status, RELA_ERR_INVALID_ARGUMENT, "{}", last_message());
    }
    let short = CString::new("abcd").expect("no NUL");
    let (status, _) = connect(node.port, Some(TOKEN), Some(options(RELA_TLS_PINNED, Some(&short))));
    assert_eq!(status, RELA_ERR_INVALID_ARGUMENT);
    assert!(last_message().contains("64 hex digits"), "{}", last_message());
    // Plaintext against a TLS node does not get a session.
    let (status, _) = connect(
        node.port,
        Some(TOKEN),
        Some(RelaConnectOptions { handshake_timeout_ms: 2_000, ..Default::default() }),
    );
    assert_ne!(status, RELA_OK);
    node.wait_idle();
}
