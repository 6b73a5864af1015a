//! The wire suite (`rela_conformance::wire`, the checks any node must pass) against
//! `serve_session`: one session per TCP connection, all on one thread sharing one host backend
//! through a `RefCell`, exactly as embassy tasks would. With and without a token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use rela_backend_host::OwnedHostBackend;
use rela_client::FastCrc32;
use rela_conformance::{Outcome, render_table, wire};
use rela_core::auth::AuthKey;
use rela_core::backend::GpuBackend;
use rela_core::config::HEADER_LEN;
use rela_core::session::SessionConfig;
use rela_embassy::{FrameBuffers, SessionEnd, serve_session};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const MIB: usize = 1024 * 1024;
const TOKEN: &[u8] = b"wire conformance token";

/// Bytes the backend still held once every session ended, and how each ended.
type Leftovers = (u64, Vec<SessionEnd>);

/// A node of `serve_session`s on a loopback port until `stop` fires; then it waits for its
/// sessions to end and reports the bytes its backend still holds and how each session ended.
fn node(auth: Option<AuthKey>) -> (SocketAddr, oneshot::Sender<()>, std::thread::JoinHandle<Leftovers>) {
    // The same small limits as the std node's wire test, so every limit case runs for real.
    let config = SessionConfig {
        max_payload: MIB as u32,
        max_buffers: 32,
        quota: 4 * MIB as u64,
        auth,
        ..SessionConfig::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, mut stop) = oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let backend = Rc::new(RefCell::new(OwnedHostBackend::<64>::with_block_table(
                vec![0u8; 64 * MIB].into_boxed_slice(),
            )));
            let ends = Rc::new(RefCell::new(Vec::new()));
            let mut sessions = Vec::new();
            let mut nonce = 0u8;
            loop {
                let stream = tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                nonce = nonce.wrapping_add(1);
                let (backend, ends, config) = (backend.clone(), ends.clone(), config.clone());
                sessions.push(tokio::task::spawn_local(async move {
                    let mut stream = FromTokio::new(stream);
                    let (mut rx, mut tx) = (vec![0u8; HEADER_LEN + MIB], vec![0u8; HEADER_LEN + MIB]);
                    let bufs = FrameBuffers { rx: &mut rx, tx: &mut tx };
                    let end =
                        serve_session::<_, _, FastCrc32>(&mut stream, &*backend, &config, [nonce; 32], bufs)
                            .await;
                    ends.borrow_mut().push(end);
                }));
            }
            for s in sessions {
                s.await.unwrap();
            }
            let used = backend.borrow().usage().used;
            (used, ends.borrow().clone())
        })
    });
    (addr, stop_tx, thread)
}

async fn suite(token: Option<&[u8]>) -> rela_conformance::BackendReport {
    let auth = token.map(AuthKey::new);
    let (addr, stop, thread) = node(auth);
    let report = tokio::time::timeout(Duration::from_secs(240), wire::run(addr, token))
        .await
        .expect("wire suite finished in time");
    eprintln!("{}", render_table(std::slice::from_ref(&report)));
    stop.send(()).unwrap();
    let (used, ends) = tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
    assert_eq!(used, 0, "sessions left memory in the backend");
    assert!(!ends.is_empty());
    assert!(!ends.contains(&SessionEnd::BuffersTooSmall));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_suite_passes_without_token() {
    let report = suite(None).await;
    assert!(report.ok(), "wire conformance failures");
    assert_eq!(report.results.len(), wire::case_names().count());
    assert!(report.device.as_deref().is_some_and(|d| d.contains("host memory")), "{:?}", report.device);
    for r in &report.results {
        if let Outcome::Skipped(why) = &r.outcome {
            // No token here, and the front-end serves no models.
            assert!(
                why.contains("does not require AUTH") || why.contains("MODELS"),
                "{} skipped: {why}",
                r.name
            );
        }
    }
    for name in ["quota_enforced", "max_buffers_enforced", "max_payload_accepted", "pipelining_in_order"] {
        let r = report.results.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no case {name}"));
        assert_eq!(r.outcome, Outcome::Passed, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_suite_passes_with_token() {
    let report = suite(Some(TOKEN)).await;
    assert!(report.ok(), "wire conformance failures");
    for name in ["auth_right_token", "auth_wrong_token", "wrong_state_before_auth"] {
        let r = report.results.iter().find(|r| r.name == name).unwrap();
        assert_eq!(r.outcome, Outcome::Passed, "{name}");
    }
    assert_eq!(report.counts().2, 1, "only model_upload_rules may skip with the token given");
}
