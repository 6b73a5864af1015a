//! mDNS/DNS-SD on the loopback interface: `serve --mdns` advertises `_rela._tcp.local.` with
//! the TXT record PROTOCOL.md lists, `discover --mdns` finds it, confirms it with a signed
//! ANNOUNCE when given the token and drops it with the wrong one, and a loopback node started
//! without `--mdns` is not advertised.
//!
//! Needs multicast on `lo`, which Linux leaves off: `sudo ip link set lo multicast on`
//! (scripts/ci/mdns.sh does that in CI). Without it the test prints a SKIPPED line, unless
//! `RELA_REQUIRE_MDNS=1`, when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::{BIN, Served};

const TOKEN: &str = "an mDNS test token, long enough";

/// Whether `lo` can carry multicast (IFF_MULTICAST in /sys/class/net/lo/flags).
fn loopback_multicast() -> bool {
    let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap_or_default();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    let on = flags & 0x1000 != 0;
    if !on {
        let why = "multicast is off on the loopback interface (run `sudo ip link set lo multicast on`)";
        assert!(
            std::env::var_os("RELA_REQUIRE_MDNS").is_none_or(|v| v != "1"),
            "RELA_REQUIRE_MDNS=1 but {why}"
        );
        eprintln!("*** SKIPPED mDNS on loopback: {why} ***");
    }
    on
}

/// A node with the token in `token_file` and `extra` arguments.
fn served(token_file: &std::path::Path, extra: &[&str]) -> Served {
    let mut args = vec!["--token-file", token_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Served::start_with("8MiB", &args)
}

/// `discover --mdns --json` with `token_file`: the nodes listed, and stderr.
fn discover(token_file: &std::path::Path) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(BIN)
        .args(["discover", "--mdns", "--json", "--timeout", "8", "--settle", "2", "--token-file"])
        .arg(token_file)
        .env_remove("AUTH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "discover --mdns failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (json["nodes"].as_array().cloned().unwrap_or_default(), stderr)
}

#[test]
fn serve_mdns_is_found_verified_and_described() {
    if !loopback_multicast() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("rela-mdns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token, wrong) = (dir.join("token"), dir.join("wrong"));
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::write(&wrong, "not the token").unwrap();

    let advertised = served(&token, &["--mdns"]);
    let quiet = served(&token, &[]);

    let (nodes, stderr) = discover(&token);
    let ours: Vec<_> = nodes.iter().filter(|n| n["addr"] == advertised.addr.as_str()).collect();
    assert_eq!(ours.len(), 1, "the --mdns node is found once: {nodes:?} {stderr}");
    let n = ours[0];
    assert_eq!(n["verified"], true, "signed ANNOUNCE from the advertised discovery port");
    assert_eq!(n["proto"], 1);
    assert_eq!(n["backend"], "host");
    assert_eq!(n["total"], 8 << 20);
    assert_eq!(n["free"], 8 << 20);
    assert_eq!(n["auth_required"], true);
    assert_eq!(n["discovery_port"], advertised.discovery_port());
    let id = n["node_id"].as_str().unwrap();
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "node id {id}");
    assert!(
        n["name"].as_str().unwrap().ends_with("._rela._tcp.local."),
        "instance of _rela._tcp.local.: {}",
        n["name"]
    );
    // A loopback node without --mdns is not advertised.
    assert!(
        !nodes.iter().any(|n| n["addr"] == quiet.addr.as_str()),
        "a loopback node advertises only with --mdns: {nodes:?}"
    );

    // With the wrong token the node cannot prove itself and is not listed.
    let (nodes, stderr) = discover(&wrong);
    assert!(!nodes.iter().any(|n| n["addr"] == advertised.addr.as_str()), "listed without proof: {nodes:?}");
    assert!(stderr.contains("did not prove it holds the token"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_node_advertises_the_fingerprint_its_signed_announce_carries() {
    if !loopback_multicast() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("rela-mdns-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let state = dir.join("state");
    let node = served(&token, &["--mdns", "--tls", "--state-dir", state.to_str().unwrap()]);
    // The fingerprint as UDP discovery reports it from the signed ANNOUNCE.
    let out = Command::new(BIN)
        .args(["discover", "--json", "--to", &node.discovery, "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    let udp: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let signed = udp["nodes"][0]["tls_fingerprint"].as_str().expect("a fingerprint").to_owned();
    let (nodes, stderr) = discover(&token);
    let ours: Vec<_> = nodes.iter().filter(|n| n["addr"] == node.addr.as_str()).collect();
    assert_eq!(ours.len(), 1, "the TLS node is found once: {nodes:?} {stderr}");
    assert_eq!(ours[0]["tls_fingerprint"], signed.as_str());
    assert_eq!(ours[0]["verified"], true, "the record's fingerprint agrees with the signed ANNOUNCE");
    let _ = std::fs::remove_dir_all(&dir);
}
