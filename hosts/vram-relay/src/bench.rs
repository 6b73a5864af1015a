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
//! With `--tls` (and `--spawn`), a second node serving TLS is measured against the plaintext one
//! in the same run (`bench/tls.rs`).
//!
//! Noise control: every transfer measurement alternates relay and baseline `--repeat` times and
//! keeps the best of each; PINGs alternate in blocks of 50 so a burst of load on the machine hits
//! both sides alike. Every figure is taken in the same run, so ratios compare like with like.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rela_client::{Client, Handle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

use crate::backends::{self, BackendChoice};
use crate::util::{self, human, parse_size};

mod tls;

/// `vram-relay bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Node to measure. Omit with --spawn.
    #[arg(required_unless_present_any = ["spawn", "serve_raw"])]
    addr: Option<SocketAddr>,
    /// Spawn a local node (loopback) and measure its memory too.
    #[arg(long, conflicts_with_all = ["addr", "tls_fingerprint", "tls_ca", "known_nodes"])]
    spawn: bool,
    /// Backend of the spawned node; also driven directly in this process for comparison.
    #[arg(long, value_enum, default_value = "host", requires = "spawn")]
    backend: BackendChoice,
    /// `serve --threads` of the spawned node (connection threads; the backend has its own).
    #[arg(long, requires = "spawn", value_parser = clap::value_parser!(u16).range(1..))]
    node_threads: Option<u16>,
    /// Executable of the spawned node (default: this one), e.g. an older build to compare with
    /// under the same bench.
    #[arg(long, requires = "spawn")]
    node_exe: Option<PathBuf>,
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
    /// Payload bytes per WRITE and READ frame of the relay client (default: the client's,
    /// 4 MiB for WRITE and 1 MiB for READ), e.g. 1MiB. The backend driven directly gets the
    /// same pieces.
    #[arg(long, value_parser = parse_size)]
    chunk: Option<u64>,
    /// Repetitions of each transfer measurement; the best is kept for both sides.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// TLS to the node at ADDR, as for the other client commands (--tls, --tls-fingerprint,
    /// --tls-ca, --known-nodes). With --spawn, --tls instead also spawns the node serving TLS
    /// and compares it with plaintext: upload, download and PING latency, alternating between
    /// the two.
    #[command(flatten)]
    tls: crate::TlsArgs,
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

/// Most bytes one raw `write_all` / `read` call asks for.
const CHUNK: usize = 16 << 20;
/// Largest buffer the raw server allocates for one connection.
const RAW_BUFFER_MAX: u64 = 1 << 30;

/// The raw TCP baseline server. Each connection sends one operation (kind, count, buffer size),
/// the server makes a buffer of that size (every page written once, like the node's memory
/// after the first pass) and answers one byte, then runs it: `U` sinks `count` bytes into the
/// buffer, cycling through it the way the node cycles through its remote buffer; `D` sends
/// `count` bytes out of it; `P` echoes `count` 16-byte pings.
async fn baseline_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut op = [0u8; 17];
                if s.read_exact(&mut op).await.is_err() {
                    return;
                }
                let field = |at: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&op[at..at + 8]);
                    u64::from_le_bytes(b)
                };
                let (n, size) = (field(1), field(9).clamp(1, RAW_BUFFER_MAX));
                let mut buf = if matches!(op[0], b'U' | b'D') {
                    vec![1u8; usize::try_from(size).unwrap_or(CHUNK)]
                } else {
                    Vec::new()
                };
                if s.write_all(&[1]).await.is_err() {
                    return;
                }
                let _ = match op[0] {
                    b'U' => sink(&mut s, &mut buf, n).await,
                    b'D' => source(&mut s, &buf, n).await,
                    b'P' => echo(&mut s, n).await,
                    _ => Err(std::io::ErrorKind::InvalidData.into()),
                };
            });
        }
    });
    Ok(addr)
}

/// The lengths of the whole-buffer passes that move `total` bytes through a buffer of `len`
/// bytes, each pass from its start: `len`, `len`, …, then the rest.
fn passes(len: usize, total: u64) -> impl Iterator<Item = usize> {
    let mut left = total;
    std::iter::from_fn(move || {
        let n = len.min(usize::try_from(left).unwrap_or(usize::MAX));
        left -= n as u64;
        (n > 0).then_some(n)
    })
}

/// The next piece of a transfer that cycles through `len` bytes: (start, length).
fn piece(pos: usize, len: usize, left: u64) -> (usize, usize) {
    let pos = if pos >= len { 0 } else { pos };
    (pos, (len - pos).min(CHUNK).min(usize::try_from(left).unwrap_or(usize::MAX)))
}

async fn sink(s: &mut TcpStream, buf: &mut [u8], mut n: u64) -> std::io::Result<()> {
    let mut pos = 0;
    while n > 0 {
        let (at, want) = piece(pos, buf.len(), n);
        let got = s.read(&mut buf[at..at + want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pos = at + got;
        n -= got as u64;
    }
    s.write_all(&[1]).await
}

async fn source(s: &mut TcpStream, buf: &[u8], mut n: u64) -> std::io::Result<()> {
    let mut pos = 0;
    while n > 0 {
        let (at, want) = piece(pos, buf.len(), n);
        s.write_all(&buf[at..at + want]).await?;
        pos = at + want;
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

/// A raw connection that has sent its operation and got the server's ready byte.
async fn raw_conn(addr: SocketAddr, kind: u8, count: u64, buffer: usize) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut op = [0u8; 17];
    op[0] = kind;
    op[1..9].copy_from_slice(&count.to_le_bytes());
    op[9..].copy_from_slice(&(buffer as u64).to_le_bytes());
    s.write_all(&op).await.map_err(|e| e.to_string())?;
    let mut ready = [0u8; 1];
    s.read_exact(&mut ready).await.map_err(|e| e.to_string())?;
    Ok(s)
}

/// Uploads `total` bytes, cycling through `data` (as the relay upload does), into a server
/// buffer of `data.len()` bytes (as large as the relay's remote buffer).
async fn raw_upload(addr: SocketAddr, data: &[u8], total: u64) -> Result<Duration, String> {
    let s = raw_conn(addr, b'U', total, data.len()).await?;
    let t = Instant::now();
    raw_send(s, data, total).await?;
    Ok(t.elapsed())
}

/// The transfer of [`raw_upload`] on a connection that [`raw_conn`] set up, up to the server's
/// acknowledgement.
async fn raw_send(mut s: TcpStream, data: &[u8], total: u64) -> Result<(), String> {
    let (mut left, mut pos) = (total, 0);
    while left > 0 {
        let (at, n) = piece(pos, data.len(), left);
        s.write_all(&data[at..at + n]).await.map_err(|e| e.to_string())?;
        pos = at + n;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Downloads `total` bytes from a server buffer of `buf.len()` bytes, cycling through `buf`.
async fn raw_download(addr: SocketAddr, buf: &mut [u8], total: u64) -> Result<Duration, String> {
    let mut s = raw_conn(addr, b'D', total, buf.len()).await?;
    let t = Instant::now();
    let (mut left, mut pos) = (total, 0);
    while left > 0 {
        let (at, n) = piece(pos, buf.len(), left);
        s.read_exact(&mut buf[at..at + n]).await.map_err(|e| e.to_string())?;
        pos = at + n;
        left -= n as u64;
    }
    Ok(t.elapsed())
}

/// A raw connection in ping-pong mode.
async fn raw_pinger(addr: SocketAddr) -> Result<TcpStream, String> {
    raw_conn(addr, b'P', u64::MAX, 0).await
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
    relay_send(c, h, data, total).await?;
    let took = t.elapsed();
    c.free(h).await.map_err(|e| e.to_string())?;
    Ok(took)
}

/// Writes `total` bytes into `h` (of `data.len()` bytes), `data` over and over.
async fn relay_send(c: &mut Client, h: Handle, data: &[u8], total: u64) -> Result<(), String> {
    for n in passes(data.len(), total) {
        c.write(h, 0, &data[..n]).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The client's CRC pass over an upload of `total` bytes, alone: FastCrc32 over `data` in the
/// pieces the client frames it in (`chunk` payload bytes), as [`relay_send`] has the client do
/// before each WRITE frame. Best of `repeat` runs, on this thread (all compute, no waiting).
fn crc_pass(data: &[u8], total: u64, chunk: usize, repeat: usize) -> Duration {
    use rela_core::crc32::Crc32;
    let mut best = Duration::MAX;
    for _ in 0..repeat {
        let t = Instant::now();
        for n in passes(data.len(), total) {
            for piece in data[..n].chunks(chunk.max(1)) {
                std::hint::black_box(rela_client::FastCrc32::checksum(piece));
            }
        }
        best = best.min(t.elapsed());
    }
    best
}

async fn relay_download(c: &mut Client, buf: &mut [u8], total: u64) -> Result<Duration, String> {
    let h = c.alloc(buf.len() as u64).await.map_err(|e| e.to_string())?;
    let t = Instant::now();
    for n in passes(buf.len(), total) {
        c.read_into(h, 0, &mut buf[..n]).await.map_err(|e| e.to_string())?;
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
    async fn node(
        exe: Option<&std::path::Path>,
        backend: BackendChoice,
        capacity: u64,
        quota: u64,
        threads: Option<u16>,
        extra: &[&str],
    ) -> Result<Self, String> {
        // Reserve a free port, release it, and hand it to the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let exe = match exe {
            Some(exe) => exe.to_owned(),
            None => std::env::current_exe().map_err(|e| e.to_string())?,
        };
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["serve", "--backend", backend.name(), "--no-discovery", "--max-sessions", "128"])
            .args(["--listen", &addr.to_string(), "--capacity", &capacity.to_string()])
            .args(["--quota", &quota.to_string(), "--idle-timeout", "0"]);
        if let Some(n) = threads {
            cmd.args(["--threads", &n.to_string()]);
        }
        cmd.args(extra);
        let child = cmd
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

/// CPU time (user and system, nanosecond resolution) that the live threads of process `pid`
/// have run so far: the sum of the first field of `/proc/PID/task/*/schedstat`, in all and for
/// the threads named `rela-engine` (the node's backend thread). `None` where that is not
/// available (not Linux, or no scheduler statistics).
fn cpu_time(pid: u32) -> Option<(Duration, Duration)> {
    let (mut all, mut engine) = (0u64, 0u64);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        // A thread may exit between the listing and the read; it no longer runs either way.
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else { continue };
        let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
        all += ns;
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "rela-engine") {
            engine += ns;
        }
    }
    Some((Duration::from_nanos(all), Duration::from_nanos(engine)))
}

/// CPU time of the two processes of a measurement (client = this process, server = the node
/// or the raw server), taken around each repetition; the repetition with the least server CPU
/// is kept.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    server: Option<u32>,
    /// (client, server, server's backend thread) of the kept repetition.
    kept: Option<(Duration, Duration, Duration)>,
    /// (client, server) over every repetition.
    sum: (Duration, Duration),
    ok: bool,
}

impl CpuUse {
    const fn new(server: Option<u32>) -> Self {
        Self { server, kept: None, sum: (Duration::ZERO, Duration::ZERO), ok: server.is_some() }
    }

    fn sample(&self) -> Option<(Duration, (Duration, Duration))> {
        Some((cpu_time(std::process::id())?.0, cpu_time(self.server?)?))
    }

    /// Runs `f`, recording its CPU use.
    async fn measure<T>(&mut self, f: impl std::future::Future<Output = T>) -> T {
        let before = self.sample();
        let out = f.await;
        match (before, self.sample()) {
            (Some((c0, (s0, e0))), Some((c1, (s1, e1)))) => {
                let run = (c1.saturating_sub(c0), s1.saturating_sub(s0), e1.saturating_sub(e0));
                self.sum = (self.sum.0 + run.0, self.sum.1 + run.1);
                if self.kept.is_none_or(|k| run.1 < k.1) {
                    self.kept = Some(run);
                }
            }
            _ => self.ok = false,
        }
        out
    }

    /// (client, server, server's backend thread) CPU milliseconds per GiB moved, if measured.
    fn per_gib(&self, bytes: u64) -> Option<(f64, f64, f64)> {
        let per = |d: Duration| d.as_secs_f64() * 1e3 * (1u64 << 30) as f64 / bytes as f64;
        let (c, s, e) = self.kept.filter(|_| self.ok)?;
        Some((per(c), per(s), per(e)))
    }

    /// (client, server) CPU microseconds per operation over every repetition, if measured.
    fn per_op(&self, ops: usize) -> Option<(f64, f64)> {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
        self.ok.then(|| (per(self.sum.0), per(self.sum.1)))
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
    (up_piece, down_piece): (usize, usize),
) -> Result<(Duration, Duration), String> {
    let mut b = backends::open(choice, data.len() as u64 + (16 << 20), false)?;
    let id = b.alloc(data.len() as u64).map_err(|e| e.to_string())?;
    // Pieces of the client's frame size, so the backend sees the same calls.
    let (up_piece, down_piece) = (up_piece.max(1), down_piece.max(1));
    let (mut up, mut down) = (Duration::MAX, Duration::MAX);
    for _ in 0..repeat {
        let t = Instant::now();
        for n in passes(data.len(), total) {
            for (i, bytes) in data[..n].chunks(up_piece).enumerate() {
                b.write(id, (i * up_piece) as u64, bytes).map_err(|e| e.to_string())?;
            }
        }
        up = up.min(t.elapsed());
        let t = Instant::now();
        for n in passes(sink.len(), total) {
            for (i, bytes) in sink[..n].chunks_mut(down_piece).enumerate() {
                b.read(id, (i * down_piece) as u64, bytes).map_err(|e| e.to_string())?;
            }
        }
        down = down.min(t.elapsed());
    }
    b.free(id).map_err(|e| e.to_string())?;
    Ok((up, down))
}

/// ALLOCs timed per size in the report.
const ALLOC_TIMES: usize = 20;

/// The median time, in microseconds, of `n` ALLOCs of `size` bytes (each buffer freed before the
/// next ALLOC).
async fn alloc_time(c: &mut Client, size: u64, n: usize) -> Result<f64, String> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let h = c.alloc(size).await.map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        c.free(h).await.map_err(|e| e.to_string())?;
    }
    Ok(percentile(&mut times, 0.5))
}

/// Aggregate raw TCP upload of `n` concurrent connections, `each` bytes apiece from `chunk`
/// into a server buffer of `chunk.len()` bytes each. The clock starts once every connection is
/// set up and stops when the last upload is acknowledged.
async fn raw_concurrent(addr: SocketAddr, chunk: &[u8], n: usize, each: u64) -> Result<Duration, String> {
    let ready = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let chunk = chunk.to_vec();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let conn = raw_conn(addr, b'U', each, chunk.len()).await;
            // Every task reaches the barrier, failed or not, so none waits forever.
            ready.wait().await;
            raw_send(conn?, &chunk, each).await?;
            Ok::<_, String>(Instant::now())
        }));
    }
    finish(ready, tasks).await
}

/// Aggregate relay upload of `n` concurrent sessions, `each` bytes apiece from `chunk` into a
/// remote buffer of `chunk.len()` bytes each (all allocated at once, so the node holds
/// `n * chunk.len()` bytes). The clock starts once every session is ready and its buffer
/// allocated, and stops when the last upload is acknowledged.
async fn relay_concurrent(
    addr: SocketAddr,
    token: Option<Vec<u8>>,
    options: &rela_client::ClientOptions,
    chunk: &[u8],
    n: usize,
    each: u64,
) -> Result<Duration, String> {
    let ready = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let chunk = chunk.to_vec();
        let token = token.clone();
        let options = options.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let setup = async {
                let mut c =
                    Client::connect_with(addr, token.as_deref(), options).await.map_err(|e| e.to_string())?;
                let h = c.alloc(chunk.len() as u64).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((c, h))
            }
            .await;
            ready.wait().await;
            let (mut c, h) = setup?;
            relay_send(&mut c, h, &chunk, each).await?;
            let done = Instant::now();
            c.free(h).await.map_err(|e| e.to_string())?;
            c.close().await.map_err(|e| e.to_string())?;
            Ok(done)
        }));
    }
    finish(ready, tasks).await
}

/// Starts the clock at the barrier and stops it at the latest finishing time of `tasks`.
async fn finish(
    ready: Arc<Barrier>,
    tasks: Vec<tokio::task::JoinHandle<Result<Instant, String>>>,
) -> Result<Duration, String> {
    ready.wait().await;
    let t = Instant::now();
    let mut last = t;
    for task in tasks {
        last = last.max(task.await.map_err(|e| e.to_string())??);
    }
    Ok(last - t)
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
    // At least 4 MiB per session (one default frame; the client keeps several in flight), at
    // most the buffer the data comes from.
    let per_session = (args.buffer / max_sessions as u64).clamp(4 << 20, 16 << 20).min(args.buffer);
    let spawned = if args.spawn {
        let capacity = args.buffer.max(per_session * max_sessions as u64) + (64 << 20);
        let quota = args.buffer.max(per_session);
        let exe = args.node_exe.as_deref();
        Some(Spawned::node(exe, args.backend, capacity, quota, args.node_threads, &[]).await?)
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
    let options = rela_client::ClientOptions {
        chunk: args.chunk.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
        // A node at ADDR over TLS when asked; a spawned one serves plaintext (--tls compares).
        tls: if args.spawn { None } else { args.tls.options().map_err(|e| e.to_string())? },
        ..rela_client::ClientOptions::default()
    };
    let mut client = Client::connect_with(addr, token.as_deref(), options.clone())
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let info = client.device_info().await.map_err(|e| e.to_string())?;

    // Transfers: best of `repeat`, alternating sides so drift hits both. CPU time of both
    // processes is taken around each run (only where both are local processes).
    let (mut up_r, mut up_b, mut dn_r, mut dn_b) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let node_pid = spawned.as_ref().and_then(|s| s.child.id());
    let raw_pid = raw_child.as_ref().and_then(|r| r.child.id());
    let (mut up_rc, mut up_bc) = (CpuUse::new(node_pid), CpuUse::new(raw_pid));
    let (mut dn_rc, mut dn_bc) = (CpuUse::new(node_pid), CpuUse::new(raw_pid));
    for _ in 0..args.repeat {
        up_b = up_b.min(up_bc.measure(raw_upload(base, &data, args.size)).await?);
        up_r = up_r.min(up_rc.measure(relay_upload(&mut client, &data, args.size)).await?);
        dn_b = dn_b.min(dn_bc.measure(raw_download(base, &mut sink_buf, args.size)).await?);
        dn_r = dn_r.min(dn_rc.measure(relay_download(&mut client, &mut sink_buf, args.size)).await?);
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
    for (what, relay, raw) in [("upload", up_rc, up_bc), ("download", dn_rc, dn_bc)] {
        let (Some((rc, rs, re)), Some((bc, bs, _))) = (relay.per_gib(args.size), raw.per_gib(args.size))
        else {
            continue;
        };
        let mut cpu = |metric: String, relay: f64, base: Option<f64>| {
            let ratio = base.map(|b| relay / b);
            rows.push(Row { metric, relay, baseline: base, unit: "ms/GiB", ratio });
        };
        cpu(format!("{what} CPU time, server process (node vs raw server)"), rs, Some(bs));
        cpu(format!("{what} CPU time, of which the node's backend thread"), re, None);
        cpu(format!("{what} CPU time, client process (rela-client vs raw client)"), rc, Some(bc));
        if what == "upload" {
            // What the client's CPU time is made of: the CRC pass the protocol asks of it
            // (measured alone, on the same bytes in the same frames), and the rest against the
            // raw client's, which hands its buffer to the kernel untouched.
            let chunk = args.chunk.map_or(rela_client::DEFAULT_WRITE_CHUNK as usize, |c| c as usize);
            let chunk = chunk.saturating_sub(rela_core::wire::msg::WRITE_PREFIX_LEN);
            let crc = crc_pass(&data, args.size, chunk, args.repeat);
            let crc = crc.as_secs_f64() * 1e3 * (1u64 << 30) as f64 / args.size as f64;
            cpu("upload CPU time, of which the client's CRC pass (FastCrc32 alone)".into(), crc, None);
            cpu(
                "upload CPU time, client process less its CRC pass (vs raw client)".into(),
                rc - crc,
                Some(bc),
            );
        }
    }

    // Round trips, alternating blocks of 50 between the relay and each baseline.
    let mut relay_rtt = Vec::with_capacity(args.pings);
    let mut base_rtt = Vec::with_capacity(args.pings);
    let mut inproc_rtt = Vec::with_capacity(args.pings);
    let mut base_conn = raw_pinger(base).await?;
    let mut inproc_conn = raw_pinger(inproc).await?;
    let (mut relay_cpu, mut base_cpu) = (CpuUse::new(node_pid), CpuUse::new(raw_pid));
    while relay_rtt.len() < args.pings {
        let block = 50.min(args.pings - relay_rtt.len());
        relay_cpu
            .measure(async {
                for _ in 0..block {
                    relay_rtt.push(client.ping().await.map_err(|e| e.to_string())?);
                }
                Ok::<_, String>(())
            })
            .await?;
        base_cpu
            .measure(async {
                for _ in 0..block {
                    base_rtt.push(raw_ping(&mut base_conn).await?);
                }
                Ok::<_, String>(())
            })
            .await?;
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
    if let (Some((rc, rs)), Some((bc, bs))) = (relay_cpu.per_op(args.pings), base_cpu.per_op(args.pings)) {
        let mut cpu = |metric: &str, relay: f64, base: f64| {
            let metric = format!("PING CPU time per round trip, {metric}");
            rows.push(Row { metric, relay, baseline: Some(base), unit: "µs", ratio: Some(relay / base) });
        };
        cpu("server process (node vs raw server)", rs, bs);
        cpu("client process (rela-client vs raw client)", rc, bc);
    }
    // ALLOC answers once the buffer's memory is committed: what that costs a session, for a
    // small buffer and for one of the concurrent sessions' size.
    for size in [4096, per_session] {
        let us = alloc_time(&mut client, size, ALLOC_TIMES).await?;
        rows.push(Row {
            metric: format!("ALLOC of {} with its memory committed, median of {ALLOC_TIMES}", human(size)),
            relay: us,
            baseline: None,
            unit: "µs",
            ratio: None,
        });
    }
    if args.spawn && args.tls.tls {
        rows.extend(tls::compare(&args, node_pid, &mut client, &options, &data, &mut sink_buf).await?);
    }
    client.close().await.map_err(|e| e.to_string())?;
    // The node's peak so far held at most the one transfer buffer.
    let one_session_hwm = spawned.as_ref().and_then(Spawned::memory).map(|(_, hwm)| hwm);

    // Concurrency: aggregate upload throughput of N sessions, against N raw connections. Each
    // session has the client's default options, and TLS as the main one.
    let session =
        rela_client::ClientOptions { tls: options.tls.clone(), ..rela_client::ClientOptions::default() };
    let mut peak_stored = args.buffer;
    for &n in &args.sessions {
        let n = n.max(1);
        let each = (args.size / n as u64).max(per_session);
        let chunk = &data[..per_session as usize];
        let (mut relay, mut raw) = (Duration::MAX, Duration::MAX);
        for _ in 0..args.repeat.min(2) {
            raw = raw.min(raw_concurrent(base, chunk, n, each).await?);
            relay = relay.min(relay_concurrent(addr, token.clone(), &session, chunk, n, each).await?);
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
        let mut beyond = |metric: String, hwm: u64, stored: u64| {
            let relay = hwm.saturating_sub(stored) as f64 / MIB;
            rows.push(Row { metric, relay, baseline: None, unit: "MiB", ratio: None });
        };
        if let Some(one) = one_session_hwm {
            let metric =
                format!("node peak RSS beyond bytes stored, 1 session ({} stored)", human(args.buffer));
            beyond(metric, one, args.buffer);
        }
        let metric =
            format!("node peak RSS beyond bytes stored, whole run ({} stored at most)", human(peak_stored));
        beyond(metric, hwm, peak_stored);
    }
    drop(spawned);
    drop(raw_child);

    // The backend itself, in this process, moving the same bytes in the client's frame sizes.
    if args.spawn {
        let frame =
            |default: u32| usize::try_from(args.chunk.unwrap_or(u64::from(default))).unwrap_or(usize::MAX);
        let pieces = (frame(rela_client::DEFAULT_WRITE_CHUNK), frame(rela_client::DEFAULT_READ_CHUNK));
        let (up_d, dn_d) =
            backend_direct(args.backend, &data, &mut sink_buf, args.size, args.repeat, pieces)?;
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

#[cfg(test)]
mod tests {
    use super::passes;

    #[test]
    fn passes_cover_the_total_in_whole_buffers_then_the_rest() {
        assert_eq!(passes(4, 10).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(passes(4, 8).collect::<Vec<_>>(), [4, 4]);
        assert_eq!(passes(4, 3).collect::<Vec<_>>(), [3]);
        assert_eq!(passes(4, 0).count(), 0);
        assert_eq!(passes(0, 5).count(), 0, "an empty buffer moves nothing (and does not spin)");
    }
}
