//! Text generation through a node with 1, 4, 8... concurrent sessions: the combined decode rate
//! (tokens/s over all sessions), the time to first token and the per-token latency (p50, p99 of
//! the gaps between TOKEN frames), in one run.
//!
//! `cargo run --release -p rela-node --example generate_sessions -- [--json] MODELS_DIR [TOKENS]
//! [SESSIONS...]` serves `MODELS_DIR` (which holds `SmolLM2-135M-Instruct.Q4_1.gguf`) on
//! loopback; with `--addr HOST:PORT` in place of `MODELS_DIR` it uses a running node instead
//! (`vram-relay serve --models DIR`). For each session count (default 1 4 8) it starts that many
//! sessions at once, each generating TOKENS greedy tokens (default 64) from its own short prompt
//! (fewer where it reaches EOS first). The rate counts every session's tokens over the wall time
//! from the sessions' start (connection, MODEL_LOAD, prompt) to the last one's end. One more
//! session holds the model throughout, so the timed loads take shares of a loaded model.
//! `RELA_KERNEL_THREADS` sizes the forward pass's threads, and `RELA_ACTIVATIONS=q8` runs it
//! with 8-bit activations (`NodeConfig::activations`; with `--addr`, the node's own setting). Each row's token counts and slowest
//! first token go to stderr; `--json` prints one JSON object per session count instead of the
//! table (`scripts/bench/generate_peers.py` reads it).
//!
//! Besides that end-to-end rate, each row has the sessions' combined decode rate: the sum over
//! sessions of the tokens after the first over the time from the first token to the last (each
//! session's own decode rate, its prompt and its wait for a first token left out, the other
//! sessions' prompts that ran meanwhile left in).

use std::time::{Duration, Instant};

use rela_client::{Client, GenerateEvent, GenerateRequest};
use rela_core::wire::generate::{Prompt, Sampling};
use rela_node::{Node, NodeBackend, NodeConfig};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three laws of motion are",
    "My favourite recipe for bread starts with",
    "In 1969, the first people to walk on the Moon",
    "A good way to learn a new language is",
    "The weather today is",
];

/// One session's measurements.
struct Run {
    tokens: usize,
    first: Duration,
    gaps: Vec<Duration>,
    /// Tokens after those of the first TOKEN frame, and the time from that frame to the last.
    decoded: usize,
    decoding: Duration,
}

impl Run {
    /// Tokens per second from the first token to the last (0 with fewer than two frames).
    fn decode_rate(&self) -> f64 {
        if self.decoding.is_zero() { 0.0 } else { self.decoded as f64 / self.decoding.as_secs_f64() }
    }
}

async fn session(addr: std::net::SocketAddr, prompt: &'static str, tokens: u32) -> Result<Run, String> {
    let mut c = Client::connect(addr, None).await.map_err(|e| e.to_string())?;
    let m = c.model_load(MODEL).await.map_err(|e| e.to_string())?;
    let req = GenerateRequest {
        model: m.id,
        prompt: Prompt::Text(prompt),
        max_tokens: tokens,
        sampling: Sampling::GREEDY,
        stops: &[],
    };
    let started = Instant::now();
    let mut stream = c.generate(&req).await.map_err(|e| e.to_string())?;
    let (mut first, mut last, mut gaps, mut count, mut first_ids) = (None, started, Vec::new(), 0, 0);
    while let Some(event) = stream.next().await.map_err(|e| e.to_string())? {
        if let GenerateEvent::Token { ids, .. } = event {
            let now = Instant::now();
            match first {
                None => {
                    first = Some(now - started);
                    first_ids = ids.len();
                }
                Some(_) => gaps.push(now - last),
            }
            last = now;
            count += ids.len();
        }
    }
    drop(stream);
    c.close().await.map_err(|e| e.to_string())?;
    let first = first.unwrap_or_default();
    let decoding = (last - started).saturating_sub(first);
    Ok(Run { tokens: count, first, gaps, decoded: count - first_ids, decoding })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str =
        "usage: generate_sessions [--json] (MODELS_DIR | --addr HOST:PORT) [TOKENS] [SESSIONS...]";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.first().is_some_and(|a| a == "--json");
    if json {
        args.remove(0);
    }
    let external = args.first().is_some_and(|a| a == "--addr");
    if external {
        args.remove(0);
    }
    let target = args.first().ok_or(USAGE)?.clone();
    let tokens: u32 = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let counts: Vec<usize> = if args.len() > 2 {
        args[2..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?
    } else {
        vec![1, 4, 8]
    };
    let node = if external {
        None
    } else {
        let config = NodeConfig {
            listen: "127.0.0.1:0".parse()?,
            discovery: None,
            models: Some(target.clone().into()),
            max_sessions: 64,
            activations: std::env::var("RELA_ACTIVATIONS").as_deref().unwrap_or("f32").parse()?,
            ..NodeConfig::default()
        };
        Some(Node::start(config, NodeBackend::host::<{ rela_backend_host::MAX_BLOCKS }>(64 << 20)?).await?)
    };
    let addr = match &node {
        Some(node) => node.local_addr(),
        None => target.parse()?,
    };
    // One session holds the model for the whole run, as a node with clients keeps it: the first
    // load parses the file, the timed sessions' loads take shares of it.
    let mut holder = Client::connect(addr, None).await?;
    holder.model_load(MODEL).await?;
    session(addr, PROMPTS[0], 1).await?;
    if !json {
        println!(
            "| sessions | tok/s, all sessions, end to end | per session | decode tok/s, all sessions | first token p50 | token gap p50 | token gap p99 |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
    }
    for &n in &counts {
        let started = Instant::now();
        let tasks: Vec<_> =
            (0..n).map(|i| tokio::spawn(session(addr, PROMPTS[i % PROMPTS.len()], tokens))).collect();
        let mut runs = Vec::new();
        for t in tasks {
            runs.push(t.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        let total: usize = runs.iter().map(|r| r.tokens).sum();
        let mut firsts: Vec<Duration> = runs.iter().map(|r| r.first).collect();
        firsts.sort();
        let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.iter().copied()).collect();
        gaps.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let decode: f64 = runs.iter().map(Run::decode_rate).sum();
        eprintln!(
            "{n} sessions: {total} tokens in {wall:.2} s, first token at most {:.0} ms, tokens per session {:?}",
            firsts.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            runs.iter().map(|r| r.tokens).collect::<Vec<_>>()
        );
        if json {
            println!(
                "{{\"sessions\": {n}, \"tokens\": {total}, \"wall_s\": {wall:.4}, \"first_ms\": [{}], \
                 \"decode_tok_s\": {decode:.3}, \"gap_ms_p50\": {:.3}, \"gap_ms_p99\": {:.3}}}",
                firsts.iter().map(|d| format!("{:.3}", ms(*d))).collect::<Vec<_>>().join(", "),
                ms(percentile(&gaps, 0.5)),
                ms(percentile(&gaps, 0.99)),
            );
            continue;
        }
        println!(
            "| {n} | {:.1} | {:.1} | {decode:.1} | {:.0} ms | {:.1} ms | {:.1} ms |",
            total as f64 / wall,
            total as f64 / wall / n as f64,
            ms(percentile(&firsts, 0.5)),
            ms(percentile(&gaps, 0.5)),
            ms(percentile(&gaps, 0.99)),
        );
    }
    holder.close().await?;
    if let Some(node) = node {
        node.shutdown().await?;
    }
    Ok(())
}
