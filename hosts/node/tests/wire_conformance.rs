//! The wire suite (`rela_conformance::wire`) against our own node, with and without a token.

mod common;

use std::time::Duration;

use common::{start, wait_idle, wire_suite_config, within};
use rela_conformance::{BackendReport, Outcome, render_table, wire};

const MIB: usize = 1024 * 1024;
const TOKEN: &[u8] = b"wire conformance token";

fn assert_clean(report: &BackendReport) {
    let table = render_table(std::slice::from_ref(report));
    eprintln!("{table}");
    assert!(report.ok(), "wire conformance failures:\n{table}");
    assert_eq!(report.results.len(), wire::case_names().count());
    assert!(report.device.as_deref().is_some_and(|d| d.contains("host memory")), "{:?}", report.device);
}

fn outcome<'a>(report: &'a BackendReport, name: &str) -> &'a Outcome {
    &report.results.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no case {name}")).outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_suite_passes_without_token() {
    // A model repository: the node advertises MODELS, so the upload rules and the model list run
    // too. It lists an embedding-model folder and a `.gguf` file (listing does not load them).
    let models = std::env::temp_dir().join(format!("rela-wire-models-{}", std::process::id()));
    std::fs::create_dir_all(models.join("a-model")).expect("temp dir");
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(models.join("a-model").join(f), b"{}").expect("model file");
    }
    std::fs::write(models.join("b-model.gguf"), b"GGUF").expect("gguf file");
    let mut cfg = wire_suite_config();
    cfg.models = Some(models.clone());
    let node = start(cfg, 64 * MIB).await;
    let report = tokio::time::timeout(Duration::from_secs(240), wire::run(node.local_addr(), None))
        .await
        .expect("wire suite finished in time");
    assert_clean(&report);
    // Only the AUTH cases may skip, and only because this node has no token.
    for r in &report.results {
        if let Outcome::Skipped(why) = &r.outcome {
            assert!(why.contains("does not require AUTH"), "{} skipped: {why}", r.name);
        }
    }
    assert_eq!(outcome(&report, "quota_enforced"), &Outcome::Passed);
    assert_eq!(outcome(&report, "max_buffers_enforced"), &Outcome::Passed);
    assert_eq!(outcome(&report, "max_payload_accepted"), &Outcome::Passed);
    assert_eq!(outcome(&report, "model_upload_rules"), &Outcome::Passed);
    assert_eq!(outcome(&report, "model_list"), &Outcome::Passed);
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
    let _ = std::fs::remove_dir_all(models);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_suite_passes_with_token() {
    let node = start(wire_suite_config().with_token(TOKEN), 64 * MIB).await;
    let report = tokio::time::timeout(Duration::from_secs(240), wire::run(node.local_addr(), Some(TOKEN)))
        .await
        .expect("wire suite finished in time");
    assert_clean(&report);
    for name in ["auth_right_token", "auth_wrong_token", "wrong_state_before_auth"] {
        assert_eq!(outcome(&report, name), &Outcome::Passed, "{name}");
    }
    // This node serves no models; every other case runs with the token given.
    for name in ["model_upload_rules", "model_list"] {
        assert_eq!(outcome(&report, name), &Outcome::Skipped("the node does not advertise MODELS".into()));
    }
    assert_eq!(report.counts().2, 2, "nothing else may skip with the token given");
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_suite_without_the_nodes_token_skips_and_fails_nothing() {
    let node = start(wire_suite_config().with_token(TOKEN), 64 * MIB).await;
    let report = tokio::time::timeout(Duration::from_secs(240), wire::run(node.local_addr(), None))
        .await
        .expect("wire suite finished in time");
    let table = render_table(std::slice::from_ref(&report));
    assert!(report.ok(), "{table}");
    assert_eq!(report.device, None);
    for name in ["auth_right_token", "auth_wrong_token", "ping_echo"] {
        assert!(
            matches!(outcome(&report, name), Outcome::Skipped(why) if why.contains("no token")),
            "{name}: {:?}",
            outcome(&report, name)
        );
    }
    // Checks that need no token still run.
    for name in ["hello_version_mismatch", "wrong_state_before_hello", "wrong_state_before_auth"] {
        assert_eq!(outcome(&report, name), &Outcome::Passed, "{name}");
    }
    wait_idle(&node).await;
    within(node.shutdown()).await.expect("shutdown");
}
