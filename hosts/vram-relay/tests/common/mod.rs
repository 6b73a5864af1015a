//! What the `vram-relay` binary's tests share: running the binary with bounded waits, and a
//! `serve` child on free loopback ports.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_vram-relay");

/// A loopback port free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the binary with `args` (no token from the environment) to its end.
pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("AUTH_TOKEN").env_remove("REQUIRE_AUTH").output().unwrap()
}

/// Runs the binary, failing the test if it is still running after `limit` (a hang).
pub(crate) fn run_within(limit: Duration, args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("AUTH_TOKEN")
        .env_remove("REQUIRE_AUTH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("vram-relay {args:?} still running after {limit:?}");
        }
    }
}

/// A finished command's stderr, as text.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `serve` child on the host backend and free loopback ports, killed on drop.
pub(crate) struct Served {
    child: Child,
    /// Its session address, `127.0.0.1:PORT`.
    pub(crate) addr: String,
    /// Its discovery address, `127.0.0.1:PORT`.
    pub(crate) discovery: String,
}

impl Served {
    /// `serve` with 64 MiB and `extra` arguments, once it logged "node ready".
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_with("64MiB", extra)
    }

    /// `serve --capacity capacity` with `extra` arguments, once it logged "node ready".
    pub(crate) fn start_with(capacity: &str, extra: &[&str]) -> Self {
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
            .env_remove("RELA_MDNS")
            // Tests run beside each other: a node whose compute is in the idle class (the
            // default) would wait on other tests' busy threads. The idle class itself is
            // checked in hosts/node/tests/compute_priority.rs.
            .env("RELA_COMPUTE_PRIORITY", "normal")
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

    /// The discovery port.
    pub(crate) fn discovery_port(&self) -> u16 {
        self.discovery.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap()
    }

    /// Sends SIGTERM and returns the exit status (bounded wait).
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
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
