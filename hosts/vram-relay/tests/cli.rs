//! The `vram-relay` binary end to end: serve, discover, info, put --then-get, get, the exit
//! codes scripts rely on, and a graceful stop on SIGTERM. Loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vram-relay");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("AUTH_TOKEN").env_remove("REQUIRE_AUTH").output().unwrap()
}

/// A `serve` child on free loopback ports, killed on drop.
struct Served {
    child: Child,
    addr: String,
    discovery: String,
}

impl Served {
    fn start(extra: &[&str]) -> Self {
        Self::start_with("64MiB", extra)
    }

    fn start_with(capacity: &str, extra: &[&str]) -> Self {
        let (port, dport) = (free_port(), free_port());
        let (addr, discovery) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{dport}"));
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--backend",
                "host",
                "--capacity",
                capacity,
                "--listen",
                &addr,
                "--discovery",
                &discovery,
            ])
            .args(extra)
            .env_remove("AUTH_TOKEN")
            .env_remove("REQUIRE_AUTH")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the "node ready" log line (bounded).
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("node ready") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("node ready within 30 s");
        Self { child, addr, discovery }
    }

    /// Sends SIGTERM and returns the exit status (bounded wait).
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "node did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_discover_info_put_get_and_stop() {
    let node = Served::start(&[]);
    let out = run(&["discover", "--to", &node.discovery, "--timeout", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&node.addr) && text.contains("host memory"), "{text}");

    let out = run(&["info", &node.addr, "--json"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["backend"], "host");
    assert_eq!(info["total"], 64 << 20);

    let dir = std::env::temp_dir().join(format!("vram-relay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, back, zeros) = (dir.join("src"), dir.join("back"), dir.join("zeros"));
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let out = run(&["put", &node.addr, src.to_str().unwrap(), "--then-get", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let out = run(&["get", &node.addr, zeros.to_str().unwrap(), "--size", "1MiB"]);
    assert!(out.status.success());
    let z = std::fs::read(&zeros).unwrap();
    assert_eq!(z.len(), 1 << 20);
    assert!(z.iter().all(|b| *b == 0), "fresh memory reads as zeros, after the earlier put was freed");
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(node.terminate().success(), "SIGTERM stops the node with status 0");
}

#[test]
fn tokens_are_enforced_end_to_end() {
    let dir = std::env::temp_dir().join(format!("vram-relay-cli-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    std::fs::write(&good, "correct horse battery staple\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    let node = Served::start(&["--token-file", good.to_str().unwrap()]);
    let ok = run(&["info", &node.addr, "--token-file", good.to_str().unwrap()]);
    assert!(ok.status.success());
    let missing = run(&["info", &node.addr]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("requires a token"));
    let wrong = run(&["info", &node.addr, "--token-file", bad.to_str().unwrap()]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("rejected the token"));
    let discovered = run(&["discover", "--to", &node.discovery, "--token-file", good.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&discovered.stdout).contains("signature verified"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_codes_and_safe_defaults() {
    // Bad usage is 2.
    assert_eq!(run(&["info"]).status.code(), Some(2));
    assert_eq!(run(&["serve", "--no-such-flag"]).status.code(), Some(2));
    // A failed command is 1, with a message.
    let port = free_port();
    let out = run(&["info", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    // A public bind without a token is refused.
    let out = run(&["serve", "--backend", "host", "--listen", "0.0.0.0:0", "--no-discovery"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));
    // REQUIRE_AUTH without a token is refused.
    let out =
        Command::new(BIN).args(["serve", "--backend", "host"]).env("REQUIRE_AUTH", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Every command has --help.
    for cmd in ["serve", "discover", "info", "put", "get", "embed", "bench", "bench-embed", "conformance"] {
        assert!(run(&[cmd, "--help"]).status.success(), "{cmd} --help");
    }
}

#[test]
fn conformance_command_reports_the_host_backend() {
    let out = run(&["conformance", "--backend", "host"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("host") && table.contains("passed"), "{table}");
}

/// The model directory (`RELA_MODEL_DIR`, or `models/all-MiniLM-L6-v2`) if its files are there;
/// otherwise a SKIPPED line, or a failure under `RELA_REQUIRE_MODEL=1`.
fn model_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("RELA_MODEL_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
    });
    if ["model.safetensors", "tokenizer.json", "config.json"].iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    let why = format!("model files not found in {} (run hosts/models/fetch-model.sh)", dir.display());
    assert!(
        std::env::var_os("RELA_REQUIRE_MODEL").is_none_or(|v| v != "1"),
        "RELA_REQUIRE_MODEL=1 but {why}"
    );
    eprintln!("*** SKIPPED embed through the CLI: {why} ***");
    None
}

#[test]
fn embed_by_name_and_with_uploaded_weights() {
    let Some(model) = model_dir() else { return };
    let repo = model.parent().unwrap().to_str().unwrap().to_owned();
    let node = Served::start_with("512MiB", &["--models", &repo]);
    let texts = ["A cat sits on the mat.", "Stock markets fell sharply today."];
    let embed = |extra: &[&str]| {
        let mut args = vec!["embed", node.addr.as_str(), "--json"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&texts);
        run(&args)
    };
    let by_name = embed(&[]);
    assert!(by_name.status.success(), "{}", String::from_utf8_lossy(&by_name.stderr));
    let by_name: serde_json::Value = serde_json::from_slice(&by_name.stdout).unwrap();
    assert_eq!(by_name["dim"], 384);
    // The similarity matrix: n × n, and each entry the cosine of the printed embeddings.
    let vectors: Vec<Vec<f64>> = by_name["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    assert_eq!(vectors.len(), texts.len());
    let sim = by_name["similarity"].as_array().expect("a similarity matrix");
    assert_eq!(sim.len(), texts.len());
    for (i, row) in sim.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), texts.len());
        for (j, got) in row.iter().enumerate() {
            let dot: f64 = vectors[i].iter().zip(&vectors[j]).map(|(a, b)| a * b).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let want = dot / (norm(&vectors[i]) * norm(&vectors[j]));
            let got = got.as_f64().unwrap();
            assert!((got - want).abs() < 1e-4, "similarity[{i}][{j}] = {got}, cosine is {want}");
        }
    }
    let cross = sim[0][1].as_f64().unwrap();
    assert!(cross < 0.9, "unrelated sentences came out alike ({cross})");

    let weights = model.join("model.safetensors");
    let uploaded = embed(&["--weights", weights.to_str().unwrap()]);
    assert!(uploaded.status.success(), "{}", String::from_utf8_lossy(&uploaded.stderr));
    let uploaded: serde_json::Value = serde_json::from_slice(&uploaded.stdout).unwrap();
    assert_eq!(by_name["embeddings"], uploaded["embeddings"], "the same weights give the same floats");

    // A file that is not safetensors: a clear error and exit status 1.
    let junk = std::env::temp_dir().join(format!("vram-relay-junk-{}.safetensors", std::process::id()));
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    let out = embed(&["--weights", junk.to_str().unwrap()]);
    std::fs::remove_file(&junk).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVALID_INPUT") && err.contains("safetensors"), "{err}");
    let missing = embed(&["--weights", "/nonexistent/weights.safetensors"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(node.terminate().success());
}

/// `bench --spawn --json` end to end on a small size: every measurement present once, each
/// throughput a positive figure against a positive baseline, and the client's upload CPU split
/// into its CRC pass and the rest, which add up. (No timing is asserted beyond "it moved".)
#[test]
fn bench_spawn_json_reports_every_row() {
    let out = run(&[
        "bench",
        "--spawn",
        "--size",
        "8MiB",
        "--buffer",
        "4MiB",
        "--sessions",
        "1,2",
        "--pings",
        "20",
        "--repeat",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "host");
    let rows = v["rows"].as_array().unwrap();
    let find = |prefix: &str| {
        let hits: Vec<_> =
            rows.iter().filter(|r| r["metric"].as_str().unwrap().starts_with(prefix)).collect();
        assert_eq!(hits.len(), 1, "one row starting {prefix:?} in {rows:#?}");
        hits[0].clone()
    };
    for metric in
        ["upload 8.00 MiB WRITE", "download 8.00 MiB READ", "PING round trip p50 (vs raw tcp, child"]
    {
        let r = find(metric);
        let (relay, base) = (r["relay"].as_f64().unwrap(), r["baseline"].as_f64().unwrap());
        assert!(relay > 0.0 && base > 0.0, "{r}");
        // Throughput rows are relay/baseline in MiB/s, latency rows relay/baseline in µs.
        let ratio = r["ratio"].as_f64().unwrap();
        assert!((ratio - relay / base).abs() < 1e-6 * ratio, "{r}");
    }
    for n in [1, 2] {
        find(&format!("{n} concurrent session(s), aggregate upload"));
    }
    // The CPU rows need /proc/PID/task/*/schedstat; where they exist, they are consistent.
    if rows.iter().any(|r| r["metric"].as_str().unwrap().starts_with("upload CPU time, client process (")) {
        let client = find("upload CPU time, client process (")["relay"].as_f64().unwrap();
        let crc = find("upload CPU time, of which the client's CRC pass")["relay"].as_f64().unwrap();
        let rest = find("upload CPU time, client process less its CRC pass");
        assert!(crc > 0.0, "the CRC pass took no time");
        assert!((rest["relay"].as_f64().unwrap() - (client - crc)).abs() < 1e-6, "{rest}");
    }
}
