//! `vram-relay bench-contention`: does one session's heavy work stall another's small requests?
//!
//! Spawns a node (a child process, like `bench --spawn`) and measures, in one run:
//!
//! 1. **idle**: a light session alone, alternating PING and a 4 KiB WRITE+READ round trip;
//! 2. **one heavy**: one heavy session alone, its requests back to back;
//! 3. **loaded**: `--heavy` heavy sessions back to back, with the light session beside them.
//!
//! Heavy work is MATMUL (`--matmul` cubed, by default 1024), and with `--models DIR` also INFER
//! (64 long texts) and MODEL_LOAD + MODEL_UNLOAD of the first model in DIR; with `--generate
//! NAME` it is instead a greedy GENERATE of `--tokens` tokens with the GGUF model NAME in DIR.
//! It reports the light session's p50 and p99 under load next to its idle figures, and the heavy
//! sessions' combined rate next to one heavy session alone.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rela_client::{Client, ClientError, GenerateEvent, GenerateRequest, Kernel};
use rela_core::wire::generate::{Prompt, Sampling};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::backends::BackendChoice;
use crate::commands::ComputeClass;

/// Arguments of `bench-contention`.
#[derive(Debug, clap::Args)]
pub(crate) struct ContentionArgs {
    /// Backend of the spawned node.
    #[arg(long, value_enum, default_value = "host")]
    backend: BackendChoice,
    /// Heavy sessions running beside the light one.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    heavy: u16,
    /// Side of the square MATMUL each heavy request runs.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=4096))]
    matmul: u32,
    /// Serve the models in DIR and add INFER and MODEL_LOAD/UNLOAD to the heavy work.
    #[arg(long, value_name = "DIR")]
    models: Option<std::path::PathBuf>,
    /// The model in DIR the heavy sessions load and run.
    #[arg(long, default_value = "all-MiniLM-L6-v2", requires = "models")]
    model: String,
    /// Heavy work is text generation instead: each request a greedy GENERATE with this GGUF
    /// model in DIR (MATMUL, INFER and MODEL_LOAD are then left out).
    #[arg(long, value_name = "NAME", requires = "models")]
    generate: Option<String>,
    /// Tokens each GENERATE asks for.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    tokens: u32,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Runs the heavy phases (one session alone, then all with the light one) this many times
    /// each, alternating, and reports totals over all of them: on a machine whose speed drifts
    /// (a shared VM), the ratio then compares phases run side by side rather than one of each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Scheduling class of the spawned node's compute threads (`serve --compute-priority`).
    #[arg(long, value_enum, default_value_t = ComputeClass::Idle)]
    compute_priority: ComputeClass,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Latencies of the light session.
#[derive(Debug, Serialize)]
struct Light {
    ops: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The whole run.
#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    /// The node's `--compute-priority`.
    compute_priority: &'static str,
    heavy_sessions: u16,
    heavy_work: Vec<String>,
    /// Rounds of the heavy phases (`--rounds`); the rates are over all of them.
    rounds: u32,
    idle: Light,
    loaded: Light,
    /// Heavy requests per second, one heavy session alone.
    one_heavy_rate: f64,
    /// Heavy requests per second, all heavy sessions together (with the light one beside).
    combined_heavy_rate: f64,
    /// `loaded.p99_ms - idle.p99_ms`.
    p99_increase_ms: f64,
    /// `combined_heavy_rate / one_heavy_rate`.
    heavy_ratio: f64,
}

/// A node in a child process.
struct Node {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

impl Node {
    async fn spawn(args: &ContentionArgs) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["serve", "--backend", args.backend.name(), "--no-discovery", "--idle-timeout", "0"])
            .args(["--compute-priority", args.compute_priority.name()])
            .args(["--listen", &addr.to_string(), "--quota", &(4u64 << 30).to_string()]);
        if let Some(dir) = &args.models {
            cmd.arg("--models").arg(dir);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot spawn a node: {e}"))?;
        for _ in 0..1200 {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(Self { _child: child, addr });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("the spawned node did not start listening".into())
    }
}

/// Long texts for INFER (about 100 tokens each).
fn texts() -> Vec<String> {
    (0..64)
        .map(|i| {
            format!(
                "Document {i}: the relay node lends the memory and compute of one machine to thin \
                 clients on the local network, schedules every session fairly so that no client \
                 can stall another, frees and zeroes whatever a session held when it ends, and \
                 reports progress on long work such as loading model weights or embedding many \
                 long passages of text at once for retrieval."
            )
        })
        .collect()
}

/// What each heavy session runs.
#[derive(Debug, Clone)]
enum Work {
    /// MATMUL of this side, then (with a model) INFER and MODEL_UNLOAD + MODEL_LOAD.
    Compute { side: u32, model: Option<String> },
    /// Greedy GENERATE of `tokens` tokens with this model.
    Generate { model: String, tokens: u32 },
}

impl Work {
    fn of(args: &ContentionArgs) -> Self {
        match &args.generate {
            Some(model) => Self::Generate { model: model.clone(), tokens: args.tokens },
            None => {
                Self::Compute { side: args.matmul, model: args.models.as_ref().map(|_| args.model.clone()) }
            }
        }
    }

    fn describe(&self) -> Vec<String> {
        match self {
            Self::Compute { side, model } => {
                let mut work = vec![format!("MATMUL {side}x{side}x{side}")];
                if model.is_some() {
                    work.push("INFER 64 texts".into());
                    work.push("MODEL_LOAD + MODEL_UNLOAD".into());
                }
                work
            }
            Self::Generate { model, tokens } => vec![format!("GENERATE {tokens} tokens of {model}, greedy")],
        }
    }
}

/// One heavy session: its requests back to back until `stop`. Returns how many completed.
async fn heavy(addr: SocketAddr, work: Work, stop: Arc<AtomicBool>) -> Result<u64, ClientError> {
    let mut c = Client::connect(addr, None).await?;
    let done = match work {
        Work::Compute { side, model } => compute(&mut c, side, model, &stop).await?,
        Work::Generate { model, tokens } => generate(&mut c, &model, tokens, &stop).await?,
    };
    c.close().await?;
    Ok(done)
}

/// MATMULs (and INFER, MODEL_UNLOAD + MODEL_LOAD) until `stop`.
async fn compute(
    c: &mut Client,
    side: u32,
    model: Option<String>,
    stop: &AtomicBool,
) -> Result<u64, ClientError> {
    let bytes = u64::from(side) * u64::from(side) * 4;
    let (a, b, out) = (c.alloc(bytes).await?, c.alloc(bytes).await?, c.alloc(bytes).await?);
    c.fill(a, 0, bytes, 0x3c).await?;
    c.fill(b, 0, bytes, 0x3c).await?;
    let texts = texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let name = model;
    let mut model = match &name {
        Some(n) => Some(c.model_load(n).await?),
        None => None,
    };
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        c.dispatch(Kernel::Matmul { a, b, out, m: side, k: side, n: side }).await?;
        done += 1;
        if let Some(m) = model {
            c.infer(m, &texts).await?;
            done += 1;
            c.model_unload(m).await?;
            model = Some(c.model_load(name.as_deref().unwrap_or_default()).await?);
            done += 1;
        }
    }
    Ok(done)
}

/// Greedy generations of `tokens` tokens until `stop`; each must produce at least one token.
async fn generate(c: &mut Client, model: &str, tokens: u32, stop: &AtomicBool) -> Result<u64, ClientError> {
    let model = c.model_load(model).await?;
    let req = GenerateRequest {
        model: model.id,
        prompt: Prompt::Text("Write a short story about a relay node that lends its memory to phones."),
        max_tokens: tokens,
        sampling: Sampling::GREEDY,
        stops: &[],
    };
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut stream = c.generate(&req).await?;
        let mut produced = 0usize;
        while let Some(event) = stream.next().await? {
            if let GenerateEvent::Token { ids, .. } = event {
                produced += ids.len();
            }
        }
        if produced == 0 {
            return Err(ClientError::Protocol("a generation produced no tokens".into()));
        }
        done += 1;
    }
    Ok(done)
}

/// The light session until `stop`: PING and 4 KiB WRITE+READ, each timed.
async fn light(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<Vec<Duration>, ClientError> {
    let mut c = Client::connect(addr, None).await?;
    let h = c.alloc(4096).await?;
    let data = vec![0xa5u8; 4096];
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        c.ping().await?;
        samples.push(t.elapsed());
        let t = Instant::now();
        c.write(h, 0, &data).await?;
        let back = c.read(h, 0, 4096).await?;
        samples.push(t.elapsed());
        if back != data {
            return Err(ClientError::Protocol("the light session read back other bytes".into()));
        }
        // A user's pace, not a flood: the light session asks, then thinks briefly.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.close().await?;
    Ok(samples)
}

fn summarize(mut samples: Vec<Duration>) -> Light {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Light { ops: samples.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
}

/// What one phase measured: the light session's samples (when it ran) and the heavy
/// sessions' completed requests over the phase's seconds.
struct Measured {
    light: Option<Vec<Duration>>,
    requests: u64,
    seconds: f64,
}

/// Heavy requests and seconds summed over phases.
#[derive(Default)]
struct Tally {
    requests: u64,
    seconds: f64,
}

impl Tally {
    fn add(&mut self, m: &Measured) {
        self.requests += m.requests;
        self.seconds += m.seconds;
    }

    /// Requests per second over every phase added.
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.requests as f64 / self.seconds } else { 0.0 }
    }
}

/// Runs `heavy_sessions` heavy sessions (and the light one, with `with_light`) for
/// `args.seconds`.
async fn phase(
    addr: SocketAddr,
    args: &ContentionArgs,
    heavy_sessions: u16,
    with_light: bool,
) -> Result<Measured, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..heavy_sessions {
        tasks.push(tokio::spawn(heavy(addr, Work::of(args), stop.clone())));
    }
    let light_task = with_light.then(|| tokio::spawn(light(addr, stop.clone())));
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0u64;
    for t in tasks {
        requests += t.await.map_err(|e| e.to_string())?.map_err(|e| format!("heavy session: {e}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let light = match light_task {
        Some(t) => Some(t.await.map_err(|e| e.to_string())?.map_err(|e| format!("light session: {e}"))?),
        None => None,
    };
    Ok(Measured { light, requests, seconds })
}

/// Runs the benchmark and prints its report.
pub(crate) async fn run(args: ContentionArgs) -> Result<(), String> {
    let node = Node::spawn(&args).await?;
    let addr = node.addr;
    let work = Work::of(&args).describe();
    eprintln!("idle: the light session alone for {} s", args.seconds);
    let idle = summarize(phase(addr, &args, 0, true).await?.light.unwrap_or_default());
    let (mut alone, mut together) = (Tally::default(), Tally::default());
    let mut loaded = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}: one heavy session alone for {} s", args.rounds, args.seconds);
        alone.add(&phase(addr, &args, 1, false).await?);
        eprintln!(
            "round {round}/{}: {} heavy sessions and the light one for {} s",
            args.rounds, args.heavy, args.seconds
        );
        let m = phase(addr, &args, args.heavy, true).await?;
        together.add(&m);
        loaded.extend(m.light.unwrap_or_default());
    }
    let loaded = summarize(loaded);
    let (one, combined) = (alone.rate(), together.rate());
    let report = Report {
        backend: args.backend.name(),
        compute_priority: args.compute_priority.name(),
        heavy_sessions: args.heavy,
        heavy_work: work,
        rounds: args.rounds,
        p99_increase_ms: loaded.p99_ms - idle.p99_ms,
        heavy_ratio: if one > 0.0 { combined / one } else { 0.0 },
        idle,
        loaded,
        one_heavy_rate: one,
        combined_heavy_rate: combined,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "backend {} (compute threads: {}), heavy work: {}",
        report.backend,
        report.compute_priority,
        report.heavy_work.join(", ")
    );
    println!("| light session (PING, 4 KiB WRITE+READ) | ops | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, l) in [("idle", &report.idle), ("beside the heavy sessions", &report.loaded)] {
        println!("| {name} | {} | {:.3} | {:.3} | {:.3} |", l.ops, l.p50_ms, l.p99_ms, l.max_ms);
    }
    println!("p99 under load - idle p99: {:+.3} ms", report.p99_increase_ms);
    println!(
        "heavy requests/s: one session alone {:.3}, {} together {:.3} (ratio {:.2})",
        report.one_heavy_rate, report.heavy_sessions, report.combined_heavy_rate, report.heavy_ratio
    );
    Ok(())
}
