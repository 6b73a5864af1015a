//! The `vram-relay` binary end to end: serve, discover, info, put --then-get, get, the exit
//! codes scripts rely on, timeouts, messages, and a graceful stop on SIGTERM. Loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Served, free_port, run, run_within, stderr};

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
    // Host names work, whichever address `localhost` resolves to first.
    let port = node.addr.rsplit_once(':').unwrap().1;
    let out = run(&["info", &format!("localhost:{port}")]);
    assert!(out.status.success(), "{}", stderr(&out));

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
    // Past the session quota: the message states the quota, in human units.
    let out = run(&["get", &node.addr, zeros.to_str().unwrap(), "--size", "300MiB"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("QUOTA_EXCEEDED") && stderr(&out).contains("quota is 256.00 MiB"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // A reader that goes away (`| head`) ends the command quietly, with status 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["info", &node.addr])
        .env_remove("AUTH_TOKEN")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

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
    // Every command has --help, and the top-level help lists each one.
    let commands = [
        "serve",
        "discover",
        "info",
        "put",
        "get",
        "embed",
        "bench",
        "bench-embed",
        "conformance",
        "completions",
        "manpage",
    ];
    let top = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    for cmd in commands {
        assert!(run(&[cmd, "--help"]).status.success(), "{cmd} --help");
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "--help lists {cmd}: {top}"
        );
    }
    // Plain `bench` says how to run it without a node.
    let out = run(&["bench"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--spawn"), "{}", stderr(&out));
}

#[test]
fn validation_failures_exit_2_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["conformance", "--backend", "foo"], "unknown backend \"foo\""),
        (&["get", "127.0.0.1:1", "/nonexistent/out", "--size", "0"], "at least 1 byte"),
        (&["serve", "--max-buffers", "1000"], "1000 is not in 1..=256"),
        (&["serve", "--max-payload", "32MiB"], "above the protocol cap of 16.00 MiB"),
        (&["serve", "--compute-priority", "high"], "[possible values: idle, normal]"),
        (&["discover", "--timeout", "0"], "more than 0 and at most 60 seconds"),
        (&["info", "host:port"], "invalid port"),
    ];
    for (args, why) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
    // Every serve flag has an environment variable, checked like the flag.
    let out = Command::new(BIN)
        .args(["serve"])
        .env_remove("AUTH_TOKEN")
        .env("RELA_MAX_BUFFERS", "1000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("1000 is not in 1..=256"), "{}", stderr(&out));
}

#[test]
fn info_against_a_silent_server_times_out() {
    // Accepts every connection and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let out = run_within(Duration::from_secs(60), &["info", &addr, "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("timed out after 500 ms") && err.contains("handshake"), "{err}");
}

#[test]
fn version_completions_and_man_page() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("vram-relay ") && v.contains("build: ") && v.contains("backends: "), "{v}");
    for b in ["cuda", "vulkan", "wgpu", "host"] {
        assert!(v.contains(b), "{v}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("bench-embed"), "{shell} completions");
    }
    let out = run(&["manpage"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH vram-relay 1"));
}

#[test]
fn serve_names_the_clashing_port_and_checks_models_before_the_backend() {
    let node = Served::start(&[]);
    // The session port is free, discovery is not.
    let out = run_within(
        Duration::from_secs(60),
        &[
            "serve",
            "--backend",
            "host",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--discovery",
            &node.discovery,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("discovery (UDP) port {}", node.discovery)) && err.contains("--no-discovery"),
        "{err}"
    );
    // And the other way round.
    let out = run_within(
        Duration::from_secs(60),
        &[
            "serve",
            "--backend",
            "host",
            "--listen",
            &node.addr,
            "--discovery",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("session (TCP) port {}", node.addr)) && err.contains("--listen"), "{err}");

    // A model's own folder given as the repository: refused, naming the folder to give.
    let repo = std::env::temp_dir().join(format!("vram-relay-models-{}", std::process::id()));
    let model = repo.join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(model.join(f), b"{}").unwrap();
    }
    let out = run_within(
        Duration::from_secs(60),
        &[
            "serve",
            "--backend",
            "host",
            "--no-discovery",
            "--listen",
            "127.0.0.1:0",
            "--models",
            model.to_str().unwrap(),
        ],
    );
    std::fs::remove_dir_all(&repo).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("a model's own folder") && err.contains(&format!("--models {}", repo.display())),
        "{err}"
    );
}

#[test]
fn unusable_model_folders_are_logged_with_their_cause() {
    let repo = std::env::temp_dir().join(format!("vram-relay-badmodels-{}", std::process::id()));
    let model = repo.join("broken");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(model.join(f), b"{}").unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["serve", "--backend", "host", "--no-discovery", "--listen", "127.0.0.1:0", "--models"])
        .arg(&repo)
        .env_remove("AUTH_TOKEN")
        .env_remove("REQUIRE_AUTH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let seen: Vec<String> = lines.take_while(|l| !l.contains("node ready")).collect();
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&repo).unwrap();
    let seen = seen.expect("the node started").join("\n");
    assert!(
        seen.contains("not a usable model") && seen.contains("broken") && seen.contains("hidden_size"),
        "{seen}"
    );
    assert!(seen.contains("no usable model"), "{seen}");
}

#[test]
fn conformance_that_checks_nothing_does_not_pass() {
    // CUDA: exit 3 exactly when nothing was checked (no CUDA here), 0 when it ran and passed.
    let out = run(&["conformance", "--backend", "cuda"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = table.lines().find(|l| l.starts_with("cuda ")).expect("a cuda row");
    let passed: usize = row.split_whitespace().rev().nth(2).unwrap().parse().unwrap();
    if passed == 0 {
        assert_eq!(out.status.code(), Some(3), "{table}{}", stderr(&out));
        assert!(stderr(&out).contains("nothing was checked"), "{}", stderr(&out));
    } else {
        assert_eq!(out.status.code(), Some(0), "{table}{}", stderr(&out));
    }

    let dir = std::env::temp_dir().join(format!("vram-relay-cli-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    std::fs::write(&good, "the right token\n").unwrap();
    std::fs::write(&bad, "a wrong token\n").unwrap();
    let node = Served::start(&["--token-file", good.to_str().unwrap()]);
    // A wrong token: one clear line, no case run.
    let out = run_within(
        Duration::from_secs(60),
        &["conformance", "--node", &node.addr, "--token-file", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("rejected the token (AUTH_FAILED)"), "{err}");
    // No token: the session cases are skipped, so the run is incomplete. The failed AUTH above
    // throttles this address for 250 ms (PROTOCOL.md §3): wait that out as a client would.
    let mut out = run_within(Duration::from_secs(240), &["conformance", "--node", &node.addr]);
    for _ in 0..20 {
        if !stderr(&out).contains("retry after") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        out = run_within(Duration::from_secs(240), &["conformance", "--node", &node.addr]);
    }
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no token was given"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Plain `serve` and plain `discover` find each other (on the default ports, when they are free
/// here).
#[test]
fn plain_discover_finds_plain_serve() {
    let free =
        TcpListener::bind("127.0.0.1:8765").is_ok() && std::net::UdpSocket::bind("127.0.0.1:8766").is_ok();
    if !free {
        eprintln!("*** SKIPPED plain discover: ports 8765/8766 are in use on this machine ***");
        return;
    }
    let mut child = Command::new(BIN)
        .args(["serve", "--backend", "host", "--capacity", "16MiB"])
        .env_remove("AUTH_TOKEN")
        .env_remove("REQUIRE_AUTH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr_lines {
            if line.contains("node ready") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let out = ready.is_ok().then(|| run_within(Duration::from_secs(60), &["discover"]));
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.is_ok(), "plain serve did not start");
    let out = out.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("127.0.0.1:8765"), "{text}");
}

#[test]
fn conformance_command_reports_the_host_backend() {
    let out = run(&["conformance", "--backend", "host"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("host") && table.contains("passed"), "{table}");
}

/// `conformance --records`: the report from the records the conformance tests write, judged
/// strictly (a missing case is incomplete, a failed one fails), without running the suite.
#[test]
fn conformance_report_from_records() {
    use rela_conformance::records::{self, CaseRecord, NO_RECORD};
    use rela_conformance::{CASES, Outcome};

    let dir = std::env::temp_dir().join(format!("vram-relay-cli-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let record = |backend: &str, case: &str, outcome: Outcome| CaseRecord {
        backend: backend.into(),
        device: Some("host memory (vram-relay)".into()),
        test: case.into(),
        case: case.into(),
        outcome,
        millis: 1,
    };
    let mut paths = Vec::new();
    for case in CASES {
        paths.push(records::write(&dir, &record("host", case.name, Outcome::Passed)).unwrap());
    }
    let report = |extra: &[&str]| {
        let mut args = vec!["conformance", "--records", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = report(&["--backend", "host"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = table.lines().find(|l| l.starts_with("host ")).expect("a host row");
    assert!(row.contains("host memory (vram-relay)"), "{table}");
    assert_eq!(row.split_whitespace().rev().nth(2), Some(CASES.len().to_string().as_str()), "{table}");

    // Under `all`, the backends without records are incomplete, not passed.
    let out = report(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SKIPPED vulkan (all cases): no record"));

    // One case without its record: incomplete.
    std::fs::remove_file(&paths[2]).unwrap();
    let out = report(&["--backend", "host"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(NO_RECORD), "{}", stderr(&out));

    // A failed record: failed, with its message in the table.
    records::write(&dir, &record("host", CASES[2].name, Outcome::Failed("byte 3 differs".into()))).unwrap();
    let out = report(&["--backend", "host"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("byte 3 differs"));

    // A directory that is not there: an error, not an empty pass.
    let out = run(&["conformance", "--records", dir.join("none").to_str().unwrap(), "--backend", "host"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
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

    // The node's models, listed; an unknown name is answered with the ones that exist.
    let out = run(&["models", node.addr.as_str(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = model.file_name().unwrap().to_str().unwrap();
    assert!(
        listed.as_array().unwrap().iter().any(|m| m["name"] == name && m["kind"] == "embedding"),
        "{listed}"
    );
    let out = run(&["embed", node.addr.as_str(), "--model", "nope", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("NO_SUCH_MODEL") && err.contains("this node serves:") && err.contains(name),
        "{err}"
    );
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

#[test]
fn tls_serve_pins_trusts_on_first_use_and_keeps_its_certificate() {
    let dir = std::env::temp_dir().join(format!("vram-relay-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (state, known) = (dir.join("state"), dir.join("known_nodes"));
    let (state, known) = (state.to_str().unwrap(), known.to_str().unwrap());
    let node = Served::start(&["--tls", "--state-dir", state, "--token", "t"]);
    // First use: trusted and remembered.
    let out = run(&["info", &node.addr, "--token", "t", "--tls", "--known-nodes", known]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = std::fs::read_to_string(known).unwrap();
    let fingerprint = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(line.starts_with(&node.addr) && fingerprint.len() == 64, "{line}");
    // The signed ANNOUNCE carries the same fingerprint.
    let out = run(&["discover", "--to", &node.discovery, "--token", "t", "--json"]);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["nodes"][0]["tls_fingerprint"], fingerprint.as_str());
    // Pinned: the right fingerprint works, another is refused by name.
    let out = run(&["info", &node.addr, "--token", "t", "--tls-fingerprint", &fingerprint]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wrong = "00".repeat(32);
    let out = run(&["info", &node.addr, "--token", "t", "--tls-fingerprint", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not the pinned"), "{}", stderr(&out));
    // A plaintext client gets an error, not a hang.
    let out = run_within(Duration::from_secs(30), &["info", &node.addr, "--token", "t", "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(node.terminate().success());

    // Restarted with the same state directory: the same certificate.
    let again = Served::start(&["--tls", "--state-dir", state, "--token", "t"]);
    let out = run(&["info", &again.addr, "--token", "t", "--tls-fingerprint", &fingerprint]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(again);

    // A node whose address is remembered with another certificate: trust on first use refuses.
    let other = dir.join("other-state");
    let third = Served::start(&["--tls", "--state-dir", other.to_str().unwrap(), "--token", "t"]);
    let mut store = std::fs::OpenOptions::new().append(true).open(known).unwrap();
    std::io::Write::write_all(&mut store, format!("{} {fingerprint}\n", third.addr).as_bytes()).unwrap();
    let out = run(&["info", &third.addr, "--token", "t", "--tls", "--known-nodes", known]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("CHANGED"), "{}", stderr(&out));
    drop(third);

    // A public address without TLS is refused, naming the way out.
    let out = run(&["serve", "--backend", "host", "--listen", "0.0.0.0:0", "--no-discovery", "--token", "t"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("plain TCP"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `conformance --node` over TLS: the wire suite runs inside TLS sessions to a `serve --tls`
/// node (small limits, so its limit cases run), trusting it on first use; a wrong pinned
/// fingerprint and a plaintext run each stop at once with one clear error. `bench ADDR` reaches
/// the same node with its certificate pinned.
#[test]
fn conformance_and_bench_run_over_tls() {
    let dir = std::env::temp_dir().join(format!("vram-relay-cli-conf-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (state, known, json) = (dir.join("state"), dir.join("known_nodes"), dir.join("report.json"));
    let (state, known, json) = (state.to_str().unwrap(), known.to_str().unwrap(), json.to_str().unwrap());
    let limits = ["--quota", "4MiB", "--max-buffers", "32", "--max-payload", "1MiB"];
    let node = Served::start(&[&["--tls", "--state-dir", state, "--token", "t"][..], &limits[..]].concat());
    let suite = ["conformance", "--node", &node.addr, "--token", "t"];

    let wrong = "00".repeat(32);
    let out = run_within(Duration::from_secs(60), &[&suite[..], &["--tls-fingerprint", &wrong]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("is not the pinned"), "{}", stderr(&out));
    let out = run_within(Duration::from_secs(60), &suite);
    assert_eq!(out.status.code(), Some(1), "a plaintext run against a TLS node: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));

    let out = run_within(
        Duration::from_secs(300),
        &[&suite[..], &["--tls", "--known-nodes", known, "--json", json]].concat(),
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{table}{}", stderr(&out));
    // Trusted on first use, and remembered.
    assert!(std::fs::read_to_string(known).unwrap().starts_with(&node.addr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let results = report[0]["results"].as_array().unwrap();
    let passed = results.iter().filter(|r| r["outcome"] == "Passed").count();
    let skipped: Vec<_> = results.iter().filter(|r| r["outcome"].get("Skipped").is_some()).collect();
    assert_eq!(passed + skipped.len(), results.len(), "{table}");
    // Only what a node without models cannot do is skipped.
    assert!(skipped.len() <= 2, "{table}");
    assert!(
        skipped.iter().all(|r| r["outcome"]["Skipped"] == "the node does not advertise MODELS"),
        "{table}"
    );

    // `bench ADDR` takes the same options: here the fingerprint remembered above, pinned, for
    // the main session and the concurrent ones.
    let line = std::fs::read_to_string(known).unwrap();
    let fingerprint = line.split_whitespace().nth(1).unwrap().to_owned();
    let bench = ["bench", &node.addr, "--token", "t", "--size", "4MiB", "--buffer", "2MiB"];
    let quick = ["--sessions", "2", "--pings", "10", "--repeat", "1", "--json"];
    let out = run_within(
        Duration::from_secs(120),
        &[&bench[..], &quick[..], &["--tls-fingerprint", &fingerprint]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    for metric in ["upload 4.00 MiB WRITE", "download 4.00 MiB READ", "2 concurrent session(s)"] {
        let row = rows.iter().find(|r| r["metric"].as_str().unwrap().starts_with(metric));
        assert!(row.is_some_and(|r| r["relay"].as_f64().unwrap() > 0.0), "{metric} in {rows:#?}");
    }
    let out = run_within(
        Duration::from_secs(120),
        &[&bench[..], &quick[..], &["--tls-fingerprint", &wrong]].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not the pinned"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The directory holding SmolLM2-135M-Instruct Q4_1 as a `.gguf` file, if present; without it
/// the caller skips loudly, unless `RELA_REQUIRE_GGUF=1`.
fn gguf_dir(test: &str) -> Option<std::path::PathBuf> {
    let file = std::env::var_os("RELA_GGUF").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if file.is_file() {
        return file.parent().map(std::path::Path::to_path_buf);
    }
    let why = format!("{} is absent (run hosts/models/fetch-model.sh)", file.display());
    assert!(std::env::var_os("RELA_REQUIRE_GGUF").is_none_or(|v| v != "1"), "RELA_REQUIRE_GGUF=1 but {why}");
    eprintln!("*** SKIPPED {test}: {why} ***");
    None
}

fn generation_fixture() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../llm/tests/fixtures/generation_fixture.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn generate_prints_the_fixtures_tokens_as_text_and_json() {
    let Some(dir) = gguf_dir("generate_prints_the_fixtures_tokens_as_text_and_json") else { return };
    let node = Served::start(&["--models", dir.to_str().unwrap()]);
    let fx = generation_fixture();
    let case =
        |name: &str| fx["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let model = "SmolLM2-135M-Instruct.Q4_1";

    // A raw prompt, --json: the fixture's input ids and its first 8 greedy ids (no near tie
    // among them), finish reason length.
    let raw = case("raw_capital");
    let text = raw["text"].as_str().unwrap();
    let out = run_within(
        Duration::from_secs(120),
        &["generate", &node.addr, "--model", model, "--max-tokens", "8", "--json", text],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input_ids"], raw["input_ids"]);
    assert_eq!(v["generated_ids"].as_array().unwrap()[..], raw["generated_ids"].as_array().unwrap()[..8]);
    assert_eq!(v["finish_reason"], "length");
    let full = raw["generated_text"].as_str().unwrap();
    assert!(full.starts_with(v["text"].as_str().unwrap()), "{v}");

    // The same prompt as text: what is printed is the generated text.
    let out = run_within(
        Duration::from_secs(120),
        &["generate", &node.addr, "--model", model, "--max-tokens", "8", text],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), v["text"].as_str().unwrap());

    // A conversation from --messages: rendered with the model's template, the fixture's ids.
    let chat = case("chat_capital");
    let file = std::env::temp_dir().join(format!("rela-cli-messages-{}.json", std::process::id()));
    std::fs::write(&file, chat["messages"].to_string()).unwrap();
    let want = chat["generated_ids"].as_array().unwrap();
    let max = want.len().to_string();
    let out = run_within(
        Duration::from_secs(120),
        &[
            "generate",
            &node.addr,
            "--model",
            model,
            "--messages",
            file.to_str().unwrap(),
            "--max-tokens",
            &max,
            "--json",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input_ids"], chat["input_ids"]);
    assert_eq!(v["generated_ids"], chat["generated_ids"]);
    assert_eq!(v["finish_reason"], chat["finish_reason"]);

    // Errors exit 1 with the node's reason.
    let out = run(&["generate", &node.addr, "--model", "no-such-model", "hi"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no such model"), "{}", stderr(&out));
    // ...and the language models that do exist.
    assert!(stderr(&out).contains(&format!("this node serves: {model}")), "{}", stderr(&out));
}
