//! `vram-relay bench-embed`: sentences per second through a node, with the same backend called
//! in-process beside it, in one run.
//!
//! For each backend and batch size, the same sentences are embedded (1) by a client through a
//! node on loopback (MODEL_LOAD once, then INFER; time taken on the client's side) and (2) by
//! `rela_models::Embedder` on the backend in this process. The ratio is the relay's overhead.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rela_client::Client;
use rela_models::{Embedder, ModelRepository};
use rela_node::{Node, NodeConfig};

use crate::backends::{self, BackendChoice};

/// `vram-relay bench-embed`.
#[derive(Debug, Args)]
pub(crate) struct EmbedBenchArgs {
    /// Model repository (the directory `hosts/models/fetch-model.sh` fills).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Model name.
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    model: String,
    /// Backends to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "host")]
    backend: Vec<BackendChoice>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Minimum seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

/// Sentences of everyday length (8–20 words), cycled to fill a batch.
const SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A relay node lends its GPU memory to phones that cannot hold the model.",
    "Quarterly revenue grew by four percent while costs stayed flat.",
    "She walked to the station in the rain and missed the last train home.",
    "Vectors close in embedding space usually share meaning.",
    "The museum opens at nine on weekdays and at ten on weekends.",
    "Fresh bread, cheese and olives made an easy dinner after a long day.",
    "Engineers measured the latency of every request under heavy load.",
];

fn batch(n: usize) -> Vec<&'static str> {
    SENTENCES.iter().copied().cycle().take(n).collect()
}

/// Whether a measurement of `runs` runs started at `t` has run long enough.
fn done(t: Instant, runs: u32, seconds: f64) -> bool {
    runs >= 2 && t.elapsed() >= Duration::from_secs_f64(seconds)
}

pub(crate) async fn run(args: EmbedBenchArgs) -> Result<(), String> {
    let repo = ModelRepository::open(&args.models).map_err(|e| e.to_string())?;
    let files = repo.files(&args.model).map_err(|e| e.to_string())?;
    println!(
        "{:<12} {:>6} {:>16} {:>16} {:>7}",
        "backend", "batch", "node (sent/s)", "in-proc (sent/s)", "ratio"
    );
    for &choice in &args.backend {
        // In-process: the backend and the embedder in this process.
        let mut local =
            backends::open(choice, 1 << 30, false).map_err(|e| format!("{}: {e}", choice.name()))?;
        let mut embedder = Embedder::load(&mut *local, &files).map_err(|e| e.to_string())?;
        // Through a node on the same kind of backend.
        let backend =
            backends::open(choice, 1 << 30, false).map_err(|e| format!("{}: {e}", choice.name()))?;
        let mut config = NodeConfig {
            listen: "127.0.0.1:0".parse().map_err(|_| "address")?,
            discovery: None,
            models: Some(args.models.clone()),
            ..NodeConfig::default()
        };
        config.session.quota = 1 << 30;
        let node = Node::start(config, backend).await.map_err(|e| e.to_string())?;
        let mut client = Client::connect(node.local_addr(), None).await.map_err(|e| e.to_string())?;
        let model = client.model_load(&args.model).await.map_err(|e| e.to_string())?;
        for &n in &args.batches {
            let texts = batch(n.max(1));
            // Each side: one warm-up run (grows working buffers), then at least `seconds`.
            client.infer(model, &texts).await.map_err(|e| e.to_string())?;
            let (t, mut runs) = (Instant::now(), 0u32);
            while !done(t, runs, args.seconds) {
                client.infer(model, &texts).await.map_err(|e| e.to_string())?;
                runs += 1;
            }
            let remote = (runs as usize * texts.len()) as f64 / t.elapsed().as_secs_f64();
            embedder.embed(&mut *local, &texts).map_err(|e| e.to_string())?;
            let (t, mut runs) = (Instant::now(), 0u32);
            while !done(t, runs, args.seconds) {
                embedder.embed(&mut *local, &texts).map_err(|e| e.to_string())?;
                runs += 1;
            }
            let inproc = (runs as usize * texts.len()) as f64 / t.elapsed().as_secs_f64();
            println!(
                "{:<12} {:>6} {:>16.2} {:>16.2} {:>7.3}",
                choice.name(),
                n,
                remote,
                inproc,
                remote / inproc
            );
        }
        client.close().await.map_err(|e| e.to_string())?;
        node.shutdown().await.map_err(|e| e.to_string())?;
        embedder.unload(&mut *local).map_err(|e| e.to_string())?;
    }
    println!("ratio: through the node / in-process (1.0 = no relay overhead)");
    Ok(())
}
