//! `vram-relay bench`: the relay against a raw TCP baseline, side by side in one run.
//!
//! Baseline: a plain tokio TCP server that sinks uploads, sources downloads and echoes 16-byte
//! pings. With `--spawn` it runs in a child process, exactly like the node it is compared with
//! (`bench --serve-raw`); a second copy in this process is measured too for PING (a same-process
//! ping-pong can skip the cross-process wakeup, so it is the harder bar). Relay: the same
//! transfers as RELA WRITE / READ / PING through a node, either the one at ADDR or one this
//! command spawns (`--spawn`, loopback, `--backend`, host memory by default) so its memory can be
//! measured. With `--spawn` the chosen backend is also opened in this process and driven
//! directly, so the node's overhead over the backend itself shows up in the same run.
//!
//! Noise control: every transfer measurement alternates relay and baseline `--repeat` times and
//! keeps the best of each; PINGs alternate in blocks of 50 so a burst of load on the machine hits
//! both sides alike. Every figure is taken in the same run, so ratios compare like with like.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use rela_client::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backends::{self, BackendChoice};
use crate::util::{self, human, parse_size};

/// `vram-relay bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Node to measure. Omit with --spawn.
    #[arg(required_unless_present_any = ["spawn", "serve_raw"])]
    addr: Option<SocketAddr>,
    /// Spawn a local node (loopback) and measure its memory too.
    #[arg(long, conflicts_with = "addr")]
    spawn: bool,
    /// Backend of the spawned node; also driven directly in this process for comparison.
    #[arg(long, value_enum, default_value = "host", requires = "spawn")]
    backend: BackendChoice,
    /// Internal: run only the raw TCP baseline server, print its port, serve until stdin closes.
    #[arg(long, hide = true)]
    serve_raw: bool,
    /// Bytes moved per transfer measurement (e.g. 1GiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    size: u64,
    /// Remote buffer written and read repeatedly to move --size bytes.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    buffer: u64,
    /// PING round trips measured (each side).
    #[arg(long, default_value_t = 2000)]
    pings: usize,
    /// Concurrent-session counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    sessions: Vec<usize>,
    /// Token for ADDR.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Repetitions of each transfer measurement; the best is kept for both sides.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    metric: String,
    relay: f64,
    baseline: Option<f64>,
    unit: &'static str,
    /// relay / baseline for throughput (higher is better); relay / baseline for latency (lower is
    /// better).
    ratio: Option<f64>,
}

const CHUNK: usize = 16 << 20;

/// The raw TCP baseline server.
async fn baseline_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let mut op = [0u8; 9];
                    if s.read_exact(&mut op).await.is_err() {
                        return;
                    }
                    let n = u64::from_le_bytes([op[1], op[2], op[3], op[4], op[5], op[6], op[7], op[8]]);
                    let ok = match op[0] {
                        b'U' => sink(&mut s, &mut buf, n).await,
                        b'D' => source(&mut s, &buf, n).await,
                        b'P' => echo(&mut s, n).await,
                        _ => Err(std::io::ErrorKind::InvalidData.into()),
                    };
                    if ok.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn sink(s: &mut TcpStream, buf: &mut [u8], mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let got = s.read(&mut buf[..want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n -= got as u64;
    }
    s.write_all(&[1]).await
}

async fn source(s: &mut TcpStream, buf: &[u8], mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        s.write_all(&buf[..want]).await?;
        n -= want as u64;
    }
    Ok(())
}

async fn echo(s: &mut TcpStream, count: u64) -> std::io::Result<()> {
    let mut b = [0u8; 16];
    for _ in 0..count {
        s.read_exact(&mut b).await?;
        s.write_all(&b).await?;
    }
    Ok(())
}

async fn raw_conn(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

async fn raw_upload(addr: SocketAddr, data: &[u8], total: u64) -> Result<Duration, String> {
    let mut s = raw_conn(addr).await?;
    let t = Instant::now();
    let mut op = vec![b'U'];
    op.extend_from_slice(&total.to_le_bytes());
    s.write_all(&op).await.map_err(|e| e.to_string())?;
    let mut left = total;
    while left > 0 {
        let n = data.len().min(CHUNK).min(usize::try_from(left).unwrap_or(usize::MAX));
        s.write_all(&data[..n]).await.map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.map_err(|e| e.to_string())?;
    Ok(t.elapsed())
}

async fn raw_download(addr: SocketAddr, buf: &mut [u8], total: u64) -> Result<Duration, String> {
    let mut s = raw_conn(addr).await?;
    let t = Instant::now();
    let mut op = vec![b'D'];
    op.extend_from_slice(&total.to_le_bytes());
    s.write_all(&op).await.map_err(|e| e.to_string())?;
    let mut left = total;
    while left > 0 {
        let n = buf.len().min(CHUNK).min(usize::try_from(left).unwrap_or(usize::MAX));
        s.read_exact(&mut buf[..n]).await.map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    Ok(t.elapsed())
}

/// A raw connection in ping-pong mode.
async fn raw_pinger(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = raw_conn(addr).await?;
    let mut op = vec![b'P'];
    op.extend_from_slice(&u64::MAX.to_le_bytes());
    s.write_all(&op).await.map_err(|e| e.to_string())?;
    Ok(s)
}

/// One 16-byte round trip on a [`raw_pinger`] connection.
async fn raw_ping(s: &mut TcpStream) -> Result<Duration, String> {
    let mut b = [7u8; 16];
    let t = Instant::now();
    s.write_all(&b).await.map_err(|e| e.to_string())?;
    s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok(t.elapsed())
}

async fn relay_upload(c: &mut Client, data: &[u8], total: u64) -> Result<Duration, String> {
    let h = c.alloc(data.len() as u64).await.map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        c.write(h, 0, &data[..n]).await.map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let took = t.elapsed();
    c.free(h).await.map_err(|e| e.to_string())?;
    Ok(took)
}

async fn relay_download(c: &mut Client, buf: &mut [u8], total: u64) -> Result<Duration, String> {
    let h = c.alloc(buf.len() as u64).await.map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        c.read_into(h, 0, &mut buf[..n]).await.map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let took = t.elapsed();
    c.free(h).await.map_err(|e| e.to_string())?;
    Ok(took)
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    if samples.is_empty() {
        return f64::NAN;
    }
    let idx = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[idx].as_secs_f64() * 1e6
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

/// A child process (node or raw server), stopped on drop.
struct Spawned {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Spawned {
    /// A node serving `backend` on a free loopback port.
    async fn node(backend: BackendChoice, capacity: u64, quota: u64) -> Result<Self, String> {
        // Reserve a free port, release it, and hand it to the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(exe)
            .args(["serve", "--backend", backend.name(), "--no-discovery", "--max-sessions", "128"])
            .args(["--listen", &addr.to_string(), "--capacity", &capacity.to_string()])
            .args(["--quota", &quota.to_string(), "--idle-timeout", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot spawn a node: {e}"))?;
        // GPU backends take a while to open (shader compilation on lavapipe).
        for _ in 0..1200 {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(Self { child, addr });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("the spawned node did not start listening".into())
    }

    /// The raw TCP baseline server in a child process (`bench --serve-raw`).
    async fn raw() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .args(["bench", "--serve-raw"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot spawn the raw server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout from the raw server")?;
        let mut line = String::new();
        let mut lines = tokio::io::BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut line))
            .await
            .map_err(|_| "the raw server did not start".to_string())?
            .map_err(|e| e.to_string())?;
        let addr = line.trim().parse().map_err(|e| format!("raw server address {line:?}: {e}"))?;
        Ok(Self { child, addr })
    }

    /// (VmRSS, VmHWM) in bytes, from /proc.
    fn memory(&self) -> Option<(u64, u64)> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// `bench --serve-raw`: the baseline server alone, until stdin closes.
async fn serve_raw() -> Result<(), String> {
    let addr = baseline_server().await.map_err(|e| e.to_string())?;
    println!("{addr}");
    // The parent holds our stdin; it closes when the parent exits or drops us.
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await
    .map_err(|e| e.to_string())
}

/// The backend itself, driven in this process: best-of-`repeat` (upload, download) times for
/// `total` bytes moved through a buffer of `data.len()` bytes.
fn backend_direct(
    choice: BackendChoice,
    data: &[u8],
    sink: &mut [u8],
    total: u64,
    repeat: usize,
) -> Result<(Duration, Duration), String> {
    let mut b = backends::open(choice, data.len() as u64 + (16 << 20), false)?;
    let id = b.alloc(data.len() as u64).map_err(|e| e.to_string())?;
    // Same frame size as the client's bulk transfers (1 MiB), so the backend sees the same calls.
    const PIECE: usize = 1 << 20;
    let (mut up, mut down) = (Duration::MAX, Duration::MAX);
    for _ in 0..repeat {
        let t = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            for (i, piece) in data[..n].chunks(PIECE).enumerate() {
                b.write(id, (i * PIECE) as u64, piece).map_err(|e| e.to_string())?;
            }
            left -= n as u64;
        }
        up = up.min(t.elapsed());
        let t = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = sink.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            for (i, piece) in sink[..n].chunks_mut(PIECE).enumerate() {
                b.read(id, (i * PIECE) as u64, piece).map_err(|e| e.to_string())?;
            }
            left -= n as u64;
        }
        down = down.min(t.elapsed());
    }
    b.free(id).map_err(|e| e.to_string())?;
    Ok((up, down))
}

/// Aggregate raw TCP upload of `n` concurrent connections, `each` bytes apiece.
async fn raw_concurrent(addr: SocketAddr, chunk: &[u8], n: usize, each: u64) -> Result<Duration, String> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move { raw_upload(addr, &chunk, each).await }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(t.elapsed())
}

/// Aggregate relay upload of `n` concurrent sessions, `each` bytes apiece.
async fn relay_concurrent(
    addr: SocketAddr,
    token: Option<Vec<u8>>,
    chunk: &[u8],
    n: usize,
    each: u64,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let chunk = chunk.to_vec();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, token.as_deref()).await.map_err(|e| e.to_string())?;
            relay_upload(&mut c, &chunk, each).await?;
            c.close().await.map_err(|e| e.to_string())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(t.elapsed())
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), String> {
    if args.serve_raw {
        return serve_raw().await;
    }
    if args.buffer == 0 || args.size == 0 || args.repeat == 0 {
        return Err("--size, --buffer and --repeat must be positive".into());
    }
    let buffer = usize::try_from(args.buffer).map_err(|_| "--buffer too large".to_string())?;
    let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
    let max_sessions = args.sessions.iter().copied().max().unwrap_or(1).max(1);
    // At least 4 MiB per session, so each session keeps several 1 MiB frames in flight.
    let per_session = (args.buffer / max_sessions as u64).clamp(4 << 20, 16 << 20);
    let spawned = if args.spawn {
        let capacity = args.buffer.max(per_session * max_sessions as u64) + (64 << 20);
        Some(Spawned::node(args.backend, capacity, args.buffer.max(per_session)).await?)
    } else {
        None
    };
    let addr = spawned.as_ref().map(|s| s.addr).or(args.addr).ok_or("no node address")?;
    // The baseline a node is compared with: a raw server in its own process when the node is
    // one too, else (remote node) the in-process one.
    let raw_child = if args.spawn { Some(Spawned::raw().await?) } else { None };
    let inproc = baseline_server().await.map_err(|e| e.to_string())?;
    let base = raw_child.as_ref().map_or(inproc, |r| r.addr);
    let base_name = if raw_child.is_some() { "raw tcp, child process" } else { "raw tcp, in-process" };
    let mut rows = Vec::new();

    let data: Vec<u8> = (0..buffer).map(|i| (i * 31 + 7) as u8).collect();
    let mut sink_buf = vec![0u8; buffer];
    let mut client =
        Client::connect(addr, token.as_deref()).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let info = client.device_info().await.map_err(|e| e.to_string())?;

    // Transfers: best of `repeat`, alternating sides so drift hits both.
    let (mut up_r, mut up_b, mut dn_r, mut dn_b) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..args.repeat {
        up_b = up_b.min(raw_upload(base, &data, args.size).await?);
        up_r = up_r.min(relay_upload(&mut client, &data, args.size).await?);
        dn_b = dn_b.min(raw_download(base, &mut sink_buf, args.size).await?);
        dn_r = dn_r.min(relay_download(&mut client, &mut sink_buf, args.size).await?);
    }
    let tput = |metric: String, relay: Duration, base: Duration, unit_base: &str| Row {
        metric: format!("{metric} (vs {unit_base})"),
        relay: mib_s(args.size, relay),
        baseline: Some(mib_s(args.size, base)),
        unit: "MiB/s",
        ratio: Some(base.as_secs_f64() / relay.as_secs_f64()),
    };
    rows.push(tput(format!("upload {} WRITE", human(args.size)), up_r, up_b, base_name));
    rows.push(tput(format!("download {} READ", human(args.size)), dn_r, dn_b, base_name));

    // Round trips, alternating blocks of 50 between the relay and each baseline.
    let mut relay_rtt = Vec::with_capacity(args.pings);
    let mut base_rtt = Vec::with_capacity(args.pings);
    let mut inproc_rtt = Vec::with_capacity(args.pings);
    let mut base_conn = raw_pinger(base).await?;
    let mut inproc_conn = raw_pinger(inproc).await?;
    while relay_rtt.len() < args.pings {
        let block = 50.min(args.pings - relay_rtt.len());
        for _ in 0..block {
            relay_rtt.push(client.ping().await.map_err(|e| e.to_string())?);
        }
        for _ in 0..block {
            base_rtt.push(raw_ping(&mut base_conn).await?);
        }
        if raw_child.is_some() {
            for _ in 0..block {
                inproc_rtt.push(raw_ping(&mut inproc_conn).await?);
            }
        }
    }
    for p in [0.5, 0.99] {
        let r = percentile(&mut relay_rtt, p);
        let mut lat = |name: &str, samples: &mut Vec<Duration>| {
            let b = percentile(samples, p);
            rows.push(Row {
                metric: format!("PING round trip p{} (vs {name})", (p * 100.0) as u32),
                relay: r,
                baseline: Some(b),
                unit: "µs",
                ratio: Some(r / b),
            });
        };
        lat(base_name, &mut base_rtt);
        if raw_child.is_some() {
            lat("raw tcp, in-process", &mut inproc_rtt);
        }
    }
    client.close().await.map_err(|e| e.to_string())?;

    // Concurrency: aggregate upload throughput of N sessions, against N raw connections.
    let mut peak_stored = args.buffer;
    for &n in &args.sessions {
        let n = n.max(1);
        let each = (args.size / n as u64).max(per_session);
        let chunk = &data[..per_session as usize];
        let (mut relay, mut raw) = (Duration::MAX, Duration::MAX);
        for _ in 0..args.repeat.min(2) {
            raw = raw.min(raw_concurrent(base, chunk, n, each).await?);
            relay = relay.min(relay_concurrent(addr, token.clone(), chunk, n, each).await?);
        }
        peak_stored = peak_stored.max(per_session * n as u64);
        let bytes = each * n as u64;
        rows.push(Row {
            metric: format!("{n} concurrent session(s), aggregate upload (vs {base_name})"),
            relay: mib_s(bytes, relay),
            baseline: Some(mib_s(bytes, raw)),
            unit: "MiB/s",
            ratio: Some(raw.as_secs_f64() / relay.as_secs_f64()),
        });
    }

    if let Some((rss, hwm)) = spawned.as_ref().and_then(Spawned::memory) {
        let raw_rss = raw_child.as_ref().and_then(Spawned::memory).map(|(_, hwm)| hwm as f64 / MIB);
        rows.push(Row {
            metric: "node RSS now (vs raw server peak RSS)".into(),
            relay: rss as f64 / MIB,
            baseline: raw_rss,
            unit: "MiB",
            ratio: None,
        });
        rows.push(Row {
            metric: format!("node peak RSS beyond peak bytes stored ({})", human(peak_stored)),
            relay: hwm.saturating_sub(peak_stored) as f64 / MIB,
            baseline: None,
            unit: "MiB",
            ratio: None,
        });
    }
    drop(spawned);
    drop(raw_child);

    // The backend itself, in this process, moving the same bytes in the same 1 MiB pieces.
    if args.spawn {
        let (up_d, dn_d) = backend_direct(args.backend, &data, &mut sink_buf, args.size, args.repeat)?;
        let name = args.backend.name();
        let mut direct = |metric: String, relay: Duration, direct: Duration| {
            rows.push(Row {
                metric: format!("{metric} through the node (vs {name} backend called directly)"),
                relay: mib_s(args.size, relay),
                baseline: Some(mib_s(args.size, direct)),
                unit: "MiB/s",
                ratio: Some(direct.as_secs_f64() / relay.as_secs_f64()),
            });
        };
        direct("upload".into(), up_r, up_d);
        direct("download".into(), dn_r, dn_d);
    }

    if args.json {
        let out = serde_json::json!({
            "node": addr.to_string(), "backend": info.backend.to_string(), "device": info.name, "rows": rows,
        });
        println!("{out}");
    } else {
        println!("node {addr}: {} on {} ({} free)", info.backend, info.name, human(info.free));
        println!("{:<78} {:>10} {:>10} {:>6} {:>7}", "measurement", "relay", "baseline", "unit", "ratio");
        for r in &rows {
            let b = r.baseline.map_or("-".to_string(), |b| format!("{b:.1}"));
            let ratio = r.ratio.map_or("-".to_string(), |x| format!("{x:.3}"));
            println!("{:<78} {:>10.1} {:>10} {:>6} {:>7}", r.metric, r.relay, b, r.unit, ratio);
        }
        println!(
            "ratio: relay/baseline for throughput (higher is better), relay/baseline for latency (lower is better)"
        );
    }
    Ok(())
}

const MIB: f64 = (1u64 << 20) as f64;
