//! The wire suite (`rela_conformance::wire`, the checks any node must pass) against
//! `serve_session` (see `common::Node`), with and without a token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::Node;
use rela_conformance::{Outcome, render_table, wire};
use rela_core::auth::AuthKey;
use rela_core::config::HEADER_LEN;
use rela_core::session::SessionConfig;
use rela_embassy::SessionEnd;

const MIB: usize = 1024 * 1024;
const TOKEN: &[u8] = b"wire conformance token";

/// The same small limits as the std node's wire test, so every limit case runs for real.
fn limited(auth: Option<AuthKey>) -> SessionConfig {
    SessionConfig {
        max_payload: MIB as u32,
        max_buffers: 32,
        quota: 4 * MIB as u64,
        auth,
        ..SessionConfig::default()
    }
}

async fn suite(token: Option<&[u8]>) -> rela_conformance::BackendReport {
    let node = Node::spawn(limited(token.map(AuthKey::new)), HEADER_LEN + MIB, 64 * MIB);
    let report = tokio::time::timeout(Duration::from_secs(240), wire::run(node.addr, token))
        .await
        .expect("wire suite finished in time");
    eprintln!("{}", render_table(std::slice::from_ref(&report)));
    // Every connection the suite made was answered, so it was accepted.
    let left = node.finish(0).await;
    assert_eq!(left.used, 0, "sessions left memory in the backend");
    assert!(left.arena_zero, "sessions left bytes in the arena");
    assert!(!left.ends.is_empty());
    assert!(!left.ends.contains(&SessionEnd::BuffersTooSmall));
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
    assert_eq!(report.counts().2, 2, "only model_upload_rules and model_list may skip with the token given");
}
