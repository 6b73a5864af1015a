//! `vram-relay`: run a VRAM relay node, find nodes, move data, benchmark and certify backends.
//!
//! Exit codes: `0` success; `1` the command failed (connection, protocol, a failed conformance
//! case, a bad file); `2` bad usage (unknown flag, invalid value).

mod backends;
mod bench;
mod commands;
mod embed_bench;
mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Lend this machine's GPU memory and compute to thin clients over RELA.
#[derive(Debug, Parser)]
#[command(name = "vram-relay", version, about, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Client-side connection options.
#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    /// Node address (`HOST:PORT`).
    addr: SocketAddr,
    /// Shared token (prefer --token-file or AUTH_TOKEN: command lines are visible to others).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// `vram-relay serve`: the node's options and the runtime that drives it.
#[derive(Debug, Args)]
struct ServeCli {
    #[command(flatten)]
    args: commands::ServeArgs,
    /// Threads running the node's connections: socket reads and writes, frame checks and CRCs
    /// (the backend has its own thread besides). 1 runs every connection on one thread, with the
    /// fewest wakeups between threads. Default: one fewer than the CPU cores, at least 1.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

impl ServeCli {
    /// The connection threads asked for, or the default for this machine.
    fn threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
            usize::from,
        )
    }
}

/// The runtime for `command`: for `serve`, its connection threads (one: a single-threaded
/// runtime); otherwise a worker per core.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match command {
        Command::Serve(serve) if serve.threads() == 1 => tokio::runtime::Builder::new_current_thread(),
        Command::Serve(serve) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(serve.threads());
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: TCP sessions and UDP discovery.
    Serve(ServeCli),
    /// Find nodes on the LAN (or ask one node) and list them.
    Discover(commands::DiscoverArgs),
    /// Show a node's device, limits and free memory.
    Info {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload a file into a fresh remote buffer (optionally read it back in the same session).
    ///
    /// A buffer lives as long as its session: when `put` exits, the node frees and zeroes it.
    /// Use `--then-get` for a round trip, or the client library to keep a session open.
    Put {
        #[command(flatten)]
        conn: ConnectArgs,
        /// File to upload.
        file: PathBuf,
        /// Read the buffer back into this file before the session ends, and check it matches.
        #[arg(long)]
        then_get: Option<PathBuf>,
    },
    /// Allocate remote memory (zeroed, or filled on the node) and download it into a file.
    Get {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Output file.
        out: PathBuf,
        /// Bytes to allocate and download (e.g. 64MiB).
        #[arg(long, value_parser = util::parse_size)]
        size: u64,
        /// Fill the buffer with this byte on the node first (default: leave the fresh zeroes).
        #[arg(long)]
        fill: Option<u8>,
    },
    /// Embed texts with a model on the node (all-MiniLM-L6-v2: 384 floats per text).
    ///
    /// Prints each embedding (first values) and, for several texts, their cosine similarity
    /// matrix; `--json` prints everything.
    Embed {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Model name in the node's repository.
        #[arg(long, default_value = "all-MiniLM-L6-v2")]
        model: String,
        /// Texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Print JSON (embeddings and similarity matrix).
        #[arg(long)]
        json: bool,
        /// Upload this safetensors file and run it with the architecture and tokenizer of
        /// `--model` (for example fine-tuned weights), instead of the repository's weights.
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
    },
    /// Benchmark a node against a raw TCP baseline in the same run.
    Bench(bench::BenchArgs),
    /// Embedding throughput through a node beside the same backend in-process (sentences/s).
    BenchEmbed(embed_bench::EmbedBenchArgs),
    /// Run the backend conformance suite, or the wire suite against a running node.
    Conformance(commands::ConformanceArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match runtime(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(serve) => commands::serve(serve.args).await,
            Command::Discover(args) => commands::discover(args).await,
            Command::Info { conn, json } => commands::info(conn, json).await,
            Command::Put { conn, file, then_get } => commands::put(conn, file, then_get).await,
            Command::Get { conn, out, size, fill } => commands::get(conn, out, size, fill).await,
            Command::Embed { conn, model, texts, json, weights } => {
                commands::embed(conn, model, texts, json, weights).await
            }
            Command::Bench(args) => bench::run(args).await,
            Command::BenchEmbed(args) => embed_bench::run(args).await,
            Command::Conformance(args) => commands::conformance(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn backend_names_are_stable() {
        use crate::backends::BackendChoice::*;
        let names: Vec<_> =
            [Auto, Cuda, Vulkan, Wgpu, WgpuVulkan, WgpuGl, Host].iter().map(|b| b.name()).collect();
        assert_eq!(names, ["auto", "cuda", "vulkan", "wgpu", "wgpu-vulkan", "wgpu-gl", "host"]);
    }
}
