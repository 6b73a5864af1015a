//! `vram-relay`: run a VRAM relay node, find nodes, move data, benchmark and certify backends.
//!
//! Exit codes: `0` success; `1` the command failed (connection, protocol, a failed conformance
//! case, a bad file); `2` bad usage (unknown flag, invalid value); `3` a conformance run that
//! failed nothing but checked nothing, or skipped cases that leave requirements unchecked.

mod addr;
mod backends;
mod bench;
mod commands;
mod contention_bench;
mod embed_bench;
mod error;
mod generate;
mod mdns;
mod models_cmd;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rela_client::tls::{Fingerprint, KnownNodes, TlsOptions, TlsTrust};

use crate::addr::NodeAddr;
use crate::error::CliError;

/// `--version`: the version, the build, and the backends compiled in.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nbuild: ",
    env!("VRAM_RELAY_BUILD"),
    "\nbackends: cuda (driver loaded at run time), vulkan, wgpu (vulkan, gl), host",
    "\nprotocol: RELA v1"
);

/// What the top-level help says after the command list.
const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 the command failed, 2 bad usage, 3 conformance checked nothing (or \
skipped required cases).
Every command has --help. Shell completions: `vram-relay completions bash`; man page: \
`vram-relay manpage`.";

/// Lend this machine's GPU memory and compute to thin clients over RELA: run a node, find
/// nodes, move data, embed text, benchmark and certify backends.
#[derive(Debug, Parser)]
#[command(
    name = "vram-relay",
    version,
    long_version = LONG_VERSION,
    propagate_version = true,
    after_help = AFTER_HELP
)]
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
    /// Node address: `HOST[:PORT]`, e.g. `localhost`, `192.168.1.20:8765` (default port 8765).
    #[arg(value_parser = NodeAddr::parse)]
    addr: NodeAddr,
    /// Shared token (prefer --token-file or AUTH_TOKEN: command lines are visible to others).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Seconds to wait for the node at each step before giving up: the connection, the
    /// handshake, and each request [default: 10, 10 and 60].
    #[arg(long, value_name = "SECONDS", value_parser = |s: &str| util::parse_seconds(s, 3600.0))]
    timeout: Option<Duration>,
    /// Compress WRITE and upload data with LZ4 frame by frame when that pays, and ask for READ
    /// answers compressed, where the node offers it. Pays on slow links with compressible data.
    #[arg(long, env = "RELA_COMPRESS")]
    compress: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How a client command talks TLS to the node (docs/SECURITY.md, "TLS").
#[derive(Debug, Clone, Args)]
struct TlsArgs {
    /// Talk to the node over TLS (a node started with `serve --tls`). Without --tls-fingerprint
    /// or --tls-ca, the node's certificate is trusted on first use and must stay the same
    /// afterwards (remembered in --known-nodes).
    #[arg(long, env = "RELA_TLS", value_parser = BoolishValueParser::new())]
    tls: bool,
    /// Trust only the node certificate with this SHA-256 fingerprint: 64 hex digits, colons
    /// allowed, as `serve --tls` logs it and `discover` prints it. Implies --tls.
    #[arg(long, env = "RELA_TLS_FINGERPRINT", value_name = "HEX", conflicts_with = "tls_ca",
          value_parser = |s: &str| s.parse::<Fingerprint>().map_err(|e| e.to_string()))]
    tls_fingerprint: Option<Fingerprint>,
    /// Trust node certificates that chain to a CA in this PEM file and name the host given.
    /// Implies --tls.
    #[arg(long, env = "RELA_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The trust-on-first-use store: one `ADDRESS FINGERPRINT` line per node [default:
    /// $XDG_STATE_HOME/vram-relay/known_nodes, else ~/.local/state/vram-relay/known_nodes].
    #[arg(long, env = "RELA_KNOWN_NODES", value_name = "FILE")]
    known_nodes: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS options these arguments ask for; `None`: plain TCP.
    fn options(&self) -> Result<Option<TlsOptions>, CliError> {
        if let Some(fp) = self.tls_fingerprint {
            return Ok(Some(TlsOptions::pinned(fp)));
        }
        if let Some(ca) = &self.tls_ca {
            let trust = TlsTrust::ca_file(ca).map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
            return Ok(Some(TlsOptions { trust }));
        }
        if !self.tls {
            return Ok(None);
        }
        let store = self.known_nodes.clone().map_or_else(KnownNodes::default_location, KnownNodes::new);
        Ok(Some(TlsOptions::first_use(store)))
    }
}

impl ConnectArgs {
    /// The client options these arguments ask for.
    fn options(&self) -> Result<rela_client::ClientOptions, CliError> {
        let options = rela_client::ClientOptions {
            compress: self.compress,
            tls: self.tls.options()?,
            ..Default::default()
        };
        Ok(match self.timeout {
            Some(t) => options.with_timeout(t),
            None => options,
        })
    }
}

/// `vram-relay serve`: the node's options and the runtime that drives it.
#[derive(Debug, Args)]
struct ServeCli {
    #[command(flatten)]
    args: commands::ServeArgs,
    /// Threads running the node's connections: socket reads and writes, frame checks and CRCs
    /// (the backend has its own thread besides). 1 runs every connection on one thread, with the
    /// fewest wakeups between threads. Default: one fewer than the CPU cores, but 2 on a
    /// machine of 2 cores (many concurrent uploads need both) and 1 on a machine of one.
    #[arg(long, env = "RELA_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

impl ServeCli {
    /// The connection threads asked for, or the default for this machine.
    fn threads(&self) -> usize {
        self.threads.map_or_else(
            || default_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
            usize::from,
        )
    }
}

/// The connection threads `serve` runs on a machine of `cores` cores when `--threads` is not
/// given: one fewer than the cores, but at least 2 where there are 2. On 2 cores one thread
/// for every connection kept single uploads and PINGs as fast, but 8 concurrent uploads reached
/// 0.70-0.87 of one upload's rate where two threads reach 0.99-1.05 (docs/BENCHMARKS.md,
/// "Concurrent sessions").
fn default_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(2).min(cores.max(1))
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
        /// Bytes to allocate and download (e.g. 64MiB; at least 1 byte).
        #[arg(long, value_parser = util::parse_nonzero_size)]
        size: u64,
        /// Fill the buffer with this byte on the node first (default: leave the fresh zeroes).
        #[arg(long)]
        fill: Option<u8>,
    },
    /// List the models a node serves (name and kind: embedding or generation).
    Models {
        #[command(flatten)]
        conn: ConnectArgs,
        /// Print a JSON array of `{"name", "kind"}`.
        #[arg(long)]
        json: bool,
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
    /// Generate text with a language model on the node (a `.gguf` file in its --models DIR),
    /// printed as it arrives; `--json` prints the ids, the text and why it ended.
    #[command(
        override_usage = "vram-relay generate <ADDR> --model NAME [--chat] [--system TEXT] [--messages FILE] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--json] [PROMPT]"
    )]
    Generate(generate::GenerateArgs),
    /// Benchmark a node (or one it spawns with --spawn) against a raw TCP baseline in the same run.
    #[command(
        override_usage = "vram-relay bench <ADDR> [OPTIONS]\n       vram-relay bench --spawn [--backend B] [OPTIONS]"
    )]
    Bench(bench::BenchArgs),
    /// Embedding throughput through a node beside the same backend in-process (sentences/s).
    BenchEmbed(embed_bench::EmbedBenchArgs),
    /// A light session's latency while heavy sessions run MATMUL (and INFER, MODEL_LOAD with
    /// --models) on a spawned node, next to its idle figures; heavy throughput shared vs alone.
    BenchContention(contention_bench::ContentionArgs),
    /// Run the backend conformance suite, or the wire suite against a running node.
    Conformance(commands::ConformanceArgs),
    /// Print a shell completion script (e.g. `vram-relay completions bash > /etc/bash_completion.d/vram-relay`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `vram-relay manpage > vram-relay.1`.
    Manpage,
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

/// Writes the completion script for `shell` to stdout.
fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vram-relay", &mut buf);
    util::write_out(format_args!("{}", String::from_utf8_lossy(&buf)))
}

/// Writes the man page to stdout.
fn manpage() -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| CliError::Failed(format!("cannot render the man page: {e}")))?;
    util::write_out(format_args!("{}", String::from_utf8_lossy(&buf)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => return exit(completions(shell)),
        Command::Manpage => return exit(manpage()),
        _ => {}
    }
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
            Command::Models { conn, json } => models_cmd::run(conn, json).await,
            Command::Embed { conn, model, texts, json, weights } => {
                commands::embed(conn, model, texts, json, weights).await
            }
            Command::Generate(args) => generate::run(args).await,
            Command::Bench(args) => bench::run(args).await.map_err(CliError::from),
            Command::BenchEmbed(args) => embed_bench::run(args).await.map_err(CliError::from),
            Command::BenchContention(args) => contention_bench::run(args).await.map_err(CliError::from),
            Command::Conformance(args) => commands::conformance(args).await,
            Command::Completions { .. } | Command::Manpage => Ok(()),
        }
    });
    exit(result)
}

/// The exit status for a command's result, with its message on stderr.
fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::ClosedPipe) => ExitCode::SUCCESS,
        Err(e) => {
            let what = if matches!(e, CliError::Incomplete(_)) { "incomplete" } else { "error" };
            eprintln!("{what}: {e}");
            ExitCode::from(e.exit_code())
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

    #[test]
    fn default_connection_threads() {
        let by_cores: Vec<usize> = [0, 1, 2, 3, 4, 16].into_iter().map(super::default_threads).collect();
        assert_eq!(by_cores, [1, 1, 2, 2, 3, 15]);
    }
}
