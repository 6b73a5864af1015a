//! The subcommands other than `bench`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use clap::builder::BoolishValueParser;
use rela_client::tls::{Fingerprint, TlsOptions};
use rela_client::{Client, ClientError, LoadStage};
use rela_core::config::{DEFAULT_DISCOVERY_PORT, MAX_BUFFERS, MAX_PAYLOAD};
use rela_core::wire::ErrorCode;
use rela_core::wire::model_list::ModelKind;
use rela_kernels::fast::priority::{self, ComputePriority, set_compute_priority};
use rela_node::tls::TlsIdentity;
use rela_node::{ConfigError, Node, NodeConfig};

use crate::ConnectArgs;
use crate::addr::NodeAddr;
use crate::backends::{self, BackendChoice};
use crate::error::CliError;
use crate::mdns;
use crate::util::{self, human, outln, parse_size};

/// `vram-relay serve`. Every flag can also be set by the environment variable its help names
/// (the flag wins).
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TCP address for sessions. Binding anything but loopback needs a token (or
    /// --allow-unauthenticated) and TLS (or --allow-plaintext).
    #[arg(long, env = "RELA_LISTEN", default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Serve sessions over TLS 1.3 (ALPN rela/1). Without --tls-cert and --tls-key, a
    /// self-signed certificate is made on the first start and kept in --state-dir, so its
    /// fingerprint stays the same; the fingerprint is logged and sent in signed ANNOUNCEs.
    #[arg(long, env = "RELA_TLS", value_parser = BoolishValueParser::new())]
    tls: bool,
    /// Certificate chain for --tls (PEM, the node's certificate first). Implies --tls.
    #[arg(long, env = "RELA_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RELA_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Directory of the node's state: the self-signed TLS certificate and key (tls/) [default:
    /// $XDG_STATE_HOME/vram-relay, else ~/.local/state/vram-relay].
    #[arg(long, env = "RELA_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve a non-loopback address without TLS. Anyone on the network path can read the
    /// session (data, prompts, results) and alter it.
    #[arg(long, env = "RELA_ALLOW_PLAINTEXT", value_parser = BoolishValueParser::new())]
    allow_plaintext: bool,
    /// UDP address for discovery (`vram-relay discover` asks 127.0.0.1:8766 and the LAN's
    /// broadcast address by default).
    #[arg(long, env = "RELA_DISCOVERY", default_value = "127.0.0.1:8766")]
    discovery: SocketAddr,
    /// Do not answer discovery.
    #[arg(long, env = "RELA_NO_DISCOVERY", value_parser = BoolishValueParser::new())]
    no_discovery: bool,
    /// Advertise the node over mDNS/DNS-SD as `_rela._tcp.local.` (found by `discover --mdns`
    /// and Android's NsdManager). On by default when --listen is not a loopback address.
    #[arg(long, env = "RELA_MDNS", value_parser = BoolishValueParser::new(), conflicts_with = "no_mdns")]
    mdns: bool,
    /// Do not advertise over mDNS, whatever --listen is.
    #[arg(long, env = "RELA_NO_MDNS", value_parser = BoolishValueParser::new())]
    no_mdns: bool,
    /// Backend: auto tries cuda, vulkan, wgpu, then host.
    #[arg(long, env = "RELA_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Device: a name substring or an index (Vulkan devices, wgpu adapters) or a CUDA ordinal.
    /// With --backend auto, the first of cuda, vulkan, wgpu that has it; an error if none has.
    #[arg(long, env = "RELA_DEVICE")]
    device: Option<String>,
    /// Memory the node lends in total (e.g. 1GiB).
    #[arg(long, env = "RELA_CAPACITY", value_parser = util::parse_nonzero_size, default_value = "1GiB")]
    capacity: u64,
    /// Shared token; sessions must AUTH with it (prefer --token-file or AUTH_TOKEN).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "RELA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Refuse to start without a token (REQUIRE_AUTH=1).
    #[arg(long, env = "REQUIRE_AUTH", value_parser = BoolishValueParser::new(), default_value = "false")]
    require_auth: bool,
    /// Serve a non-loopback address without a token. Anyone who can reach it can use the GPU.
    #[arg(long, env = "RELA_ALLOW_UNAUTHENTICATED", value_parser = BoolishValueParser::new())]
    allow_unauthenticated: bool,
    /// Most concurrent sessions.
    #[arg(long, env = "RELA_MAX_SESSIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions: u32,
    /// Most concurrent sessions from one IP address (loopback clients, which share one address,
    /// count only against --max-sessions).
    #[arg(long, env = "RELA_MAX_SESSIONS_PER_ADDRESS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions_per_address: u32,
    /// Memory one session may hold (e.g. 256MiB).
    #[arg(long, env = "RELA_QUOTA", value_parser = util::parse_nonzero_size, default_value = "256MiB")]
    quota: u64,
    /// Buffers one session may hold (1 to 256).
    #[arg(long, env = "RELA_MAX_BUFFERS", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=MAX_BUFFERS as i64))]
    max_buffers: u16,
    /// Largest frame payload (at most 16MiB).
    #[arg(long, env = "RELA_MAX_PAYLOAD", value_parser = parse_max_payload, default_value = "16MiB")]
    max_payload: u32,
    /// Seconds a client has to finish HELLO (and AUTH).
    #[arg(long, env = "RELA_HANDSHAKE_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,
    /// Seconds of silence before a session is closed (0: never).
    #[arg(long, env = "RELA_IDLE_TIMEOUT", default_value_t = 300)]
    idle_timeout: u64,
    /// Enable the Khronos validation layer on the Vulkan backend.
    #[arg(long, env = "RELA_VK_VALIDATION", value_parser = BoolishValueParser::new())]
    vk_validation: bool,
    /// Serve the models in this directory: the folder that holds one folder per embedding model,
    /// each with model.safetensors, tokenizer.json and config.json, and language models as
    /// `.gguf` files, each served under its file name without `.gguf` (`--models models` after
    /// hosts/models/fetch-model.sh).
    #[arg(long, env = "RELA_MODELS")]
    models: Option<PathBuf>,
    /// Most multiply-adds one DISPATCH may cost (MATMUL m·k·n); past it the request gets
    /// ERROR(LIMIT_EXCEEDED). The default, 2^34, bounds one request to seconds on a CPU.
    #[arg(long, env = "RELA_MAX_DISPATCH_COST", default_value_t = rela_node::DEFAULT_MAX_DISPATCH_COST,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_dispatch_cost: u64,
    /// Load these repository models (comma-separated names) at start and keep them until the
    /// node stops; every session that loads one shares that copy.
    #[arg(long, env = "RELA_PRELOAD", value_delimiter = ',', requires = "models")]
    preload: Vec<String>,
    /// Most tokens one INFER may embed over all its texts; past it the request gets
    /// ERROR(LIMIT_EXCEEDED). The default is what the embedding model takes at most.
    #[arg(long, env = "RELA_MAX_INFER_TOKENS", default_value_t = rela_node::DEFAULT_MAX_INFER_TOKENS,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_infer_tokens: u64,
    /// Most tokens one GENERATE may ask for; past it the request gets ERROR(LIMIT_EXCEEDED).
    #[arg(long, env = "RELA_MAX_GENERATE_TOKENS", default_value_t = rela_node::DEFAULT_MAX_GENERATE_TOKENS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_generate_tokens: u32,
    /// Most positions (prompt and generated tokens) of one generation, below each model's own
    /// context length; it bounds the KV cache, which is charged to the session's quota.
    #[arg(long, env = "RELA_MAX_CONTEXT", default_value_t = rela_node::DEFAULT_MAX_CONTEXT,
          value_parser = clap::value_parser!(u32).range(2..))]
    max_context: u32,
    /// Threads of the one pool that the host backend's kernels and language models' forward pass
    /// run on (GEMM, attention...; the node's connection threads are --threads). 0: one per CPU
    /// core.
    #[arg(long, env = "RELA_KERNEL_THREADS", default_value_t = 0)]
    kernel_threads: usize,
    /// How language models' forward passes on the host backend treat activations: f32 (exact:
    /// the path checked against the reference) or q8 (rounded to 8 bits before the Q4_0,
    /// Q4_1 and Q4_K products, as llama.cpp does: faster, less exact). See docs/BENCHMARKS.md.
    #[arg(long, env = "RELA_ACTIVATIONS", default_value = "f32")]
    activations: rela_llm::Activations,
    /// Scheduling class of the node's compute threads (kernel pool, jobs, generation batchers):
    /// idle (Linux SCHED_IDLE: they run on the cycles the threads that answer requests leave,
    /// so a light request does not queue behind compute for a core; any other busy program on
    /// the machine also comes first) or normal (compete with every thread as equals).
    #[arg(long, env = "RELA_COMPUTE_PRIORITY", value_enum, default_value_t = ComputeClass::Idle)]
    compute_priority: ComputeClass,
}

/// `serve --compute-priority`: [`rela_kernels::fast::priority::ComputePriority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ComputeClass {
    /// Below every normal thread (Linux `SCHED_IDLE`).
    Idle,
    /// As the node's other threads.
    Normal,
}

impl ComputeClass {
    /// The name `--compute-priority` takes.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Normal => "normal",
        }
    }
}

impl From<ComputeClass> for ComputePriority {
    fn from(c: ComputeClass) -> Self {
        match c {
            ComputeClass::Idle => Self::Idle,
            ComputeClass::Normal => Self::Normal,
        }
    }
}

/// The TLS identity `serve` asks for: `--tls-cert`/`--tls-key`, or with `--tls` alone the
/// self-signed one in the state directory (made on first use). `None` without TLS.
fn tls_identity(args: &ServeArgs) -> Result<Option<TlsIdentity>, CliError> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let identity = TlsIdentity::from_pem_files(cert, key)
            .map_err(|e| CliError::Failed(format!("--tls-cert: {e}")))?;
        return Ok(Some(identity));
    }
    if !args.tls {
        return Ok(None);
    }
    let dir = args.state_dir.clone().unwrap_or_else(rela_client::tls::default_state_dir);
    let (identity, made) = TlsIdentity::load_or_generate(&dir).map_err(|e| {
        CliError::Failed(format!("TLS certificate in the state directory: {e} (--state-dir)"))
    })?;
    if made {
        tracing::info!(dir = %dir.join("tls").display(), "made a self-signed TLS certificate");
    }
    Ok(Some(identity))
}

/// `--max-payload`: a size of at most 16 MiB.
fn parse_max_payload(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_PAYLOAD)
        .ok_or_else(|| format!("{} is above the protocol cap of {}", human(n), human(u64::from(MAX_PAYLOAD))))
}

pub(crate) async fn serve(args: ServeArgs) -> Result<(), CliError> {
    // One pool for the host kernels and language models' forward pass (`rela_llm::threads`).
    rela_kernels::fast::set_threads(args.kernel_threads);
    // Before any compute thread starts: each applies the class when it starts. A thread made
    // the same way tells whether the system allows it.
    set_compute_priority(args.compute_priority.into());
    if args.compute_priority == ComputeClass::Idle
        && !priority::spawn("rela-probe".into(), || priority::this_thread_is_idle() == Some(true))
            .is_ok_and(|t| t.join().unwrap_or(false))
    {
        tracing::warn!("this system refused the idle scheduling class: compute threads run as normal ones");
    }
    if !args.activations.runs_here() {
        tracing::warn!(
            activations = args.activations.name(),
            "this CPU has no AVX-512: language models run with f32 activations"
        );
    }
    let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
    if args.require_auth && token.is_none() {
        return Err("REQUIRE_AUTH is set but no token was given (AUTH_TOKEN, --token or --token-file)".into());
    }
    let mut config = NodeConfig {
        listen: args.listen,
        discovery: (!args.no_discovery).then_some(args.discovery),
        max_sessions: args.max_sessions as usize,
        allow_unauthenticated: args.allow_unauthenticated,
        models: args.models.clone(),
        max_dispatch_cost: args.max_dispatch_cost,
        preload: args.preload.clone(),
        max_infer_tokens: args.max_infer_tokens,
        max_generate_tokens: args.max_generate_tokens,
        max_context: args.max_context,
        activations: args.activations,
        ..NodeConfig::default()
    };
    config.session.quota = args.quota;
    config.session.max_buffers = args.max_buffers;
    config.session.max_payload = args.max_payload;
    config.session.handshake_timeout = rela_core::time::Duration::from_secs(args.handshake_timeout);
    config.session.idle_timeout = rela_core::time::Duration::from_secs(args.idle_timeout);
    config.max_sessions_per_address = args.max_sessions_per_address as usize;
    if let Some(t) = &token {
        config = config.with_token(t);
    }
    config.tls = tls_identity(&args)?;
    config.allow_plaintext = args.allow_plaintext;
    config.validate().map_err(|e| match e {
        // A policy refusal, not a malformed value.
        ConfigError::UnauthenticatedBind(_) | ConfigError::PlaintextBind(_) => {
            CliError::Failed(format!("{e}; see --help"))
        }
        _ => CliError::Usage(format!("{e}; see --help")),
    })?;
    if config.tls.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "serving a non-loopback address over PLAIN TCP: anyone on the network path can read and alter the sessions"
        );
    }
    if token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "serving a non-loopback address WITHOUT AUTHENTICATION: anyone who can reach it can use this GPU"
        );
    }
    // Before the backend starts (which can take seconds and a device): are the ports free?
    check_ports(&config)?;
    if let Some(dir) = &args.models {
        check_models(dir)?;
    }

    let backend = open_backend(&args)?;
    let info = backend.info();
    if backends::runs_on_cpu(&info.name) {
        tracing::warn!(
            device = %info.name,
            "this device is a software rasterizer: it runs on the CPU, not on a GPU"
        );
    }
    let node_id = config.node_id;
    let node = Node::start(config, backend).await.map_err(|e| match e {
        rela_node::NodeError::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse => {
            format!(
                "cannot start the node: {io} (--listen {} or --discovery {})",
                args.listen, args.discovery
            )
        }
        e => format!("cannot start the node: {e}"),
    })?;
    let discovery = node.discovery_addr().map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        listen = %node.local_addr(),
        discovery = %discovery,
        backend = %info.backend,
        device = %info.name,
        lends = %human(info.total),
        auth = token.is_some(),
        tls_fingerprint = %node.tls_fingerprint().map_or_else(|| "off".to_owned(), |f| f.to_string()),
        compute_priority = args.compute_priority.name(),
        "node ready"
    );
    let mut advertiser = (args.mdns || (!args.no_mdns && !args.listen.ip().is_loopback()))
        .then(|| {
            let advert = mdns::Advert {
                listen: node.local_addr(),
                discovery: node.discovery_addr(),
                node_id,
                backend: info.backend,
                device: info.name.to_string(),
                total: info.total,
                auth: token.is_some(),
                tls_fingerprint: node.tls_fingerprint().map(|f| f.to_string()),
            };
            // mDNS is a convenience beside UDP discovery: a network without multicast only
            // loses it.
            mdns::Advertiser::start(advert, info.total)
                .inspect_err(|e| tracing::warn!(error = %e, "not advertising over mDNS"))
                .ok()
        })
        .flatten();

    tokio::select! {
        () = wait_for_signal() => {}
        () = mdns::keep_fresh(advertiser.as_mut(), &node) => {}
        () = node.stopped() => {
            // The engine thread ended on its own; the log says why.
            let _ = node.shutdown().await;
            return Err("the node's engine stopped (see the log above); the node is down".into());
        }
    }
    tracing::info!("shutting down: closing sessions and releasing memory");
    match node.shutdown().await {
        Ok(usage) if usage.used == 0 && usage.buffers == 0 => tracing::info!("stopped; all memory released"),
        Ok(usage) => {
            tracing::warn!(used = %human(usage.used), buffers = usage.buffers, "stopped with memory still held")
        }
        Err(e) => return Err(format!("shutdown failed: {e}").into()),
    }
    Ok(())
}

/// Binds the session and discovery ports once and lets them go, so that a clash is reported
/// (naming the port and the flag) before the backend is opened.
fn check_ports(config: &NodeConfig) -> Result<(), CliError> {
    let clash = |what: &str, addr: SocketAddr, flag: &str, e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(" (another node running? choose another with {flag})")
        } else {
            String::new()
        };
        CliError::Failed(format!("cannot bind the {what} port {addr}: {e}{hint}"))
    };
    if config.listen.port() != 0 {
        std::net::TcpListener::bind(config.listen)
            .map_err(|e| clash("session (TCP)", config.listen, "--listen", e))?;
    }
    if let Some(d) = config.discovery.filter(|d| d.port() != 0) {
        std::net::UdpSocket::bind(d)
            .map_err(|e| clash("discovery (UDP)", d, "--discovery ADDR or --no-discovery", e))?;
    }
    Ok(())
}

/// Looks at a `--models` directory before the node opens it: refuses a model's own folder
/// (naming the folder to give instead), warns about every subfolder that is not a usable model
/// and why, and says which models will be served.
fn check_models(dir: &Path) -> Result<(), CliError> {
    use rela_models::{CONFIG_FILE, SAFETENSORS_FILE, TOKENIZER_FILE};
    let files = [SAFETENSORS_FILE, TOKENIZER_FILE, CONFIG_FILE];
    if files.iter().any(|f| dir.join(f).is_file()) {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".."));
        let name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        return Err(CliError::Usage(format!(
            "--models {} is a model's own folder; give the folder that holds it: --models {} (serves {name:?})",
            dir.display(),
            parent.display()
        )));
    }
    let repo =
        rela_models::ModelRepository::open(dir).map_err(|e| format!("--models {}: {e}", dir.display()))?;
    let entries = std::fs::read_dir(repo.root()).map_err(|e| format!("--models {}: {e}", dir.display()))?;
    let mut usable = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        // A GGUF language model is served under its file name without `.gguf` (checked whole
        // when a session first loads it).
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            if let Some(stem) = path.file_stem() {
                usable.push(stem.to_string_lossy().into_owned());
            }
            continue;
        }
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let checked = repo.files(&name).and_then(|f| {
            let bytes = std::fs::read(&f.config)
                .map_err(|source| rela_models::ModelError::Io { path: f.config.clone(), source })?;
            rela_models::BertConfig::from_json(&bytes).map(|_| ())
        });
        match checked {
            Ok(()) => usable.push(name),
            Err(why) => {
                tracing::warn!(folder = %entry.path().display(), reason = %why, "not a usable model; skipped")
            }
        }
    }
    usable.sort();
    if usable.is_empty() {
        tracing::warn!(dir = %dir.display(), "no usable model in --models: the node will serve none");
    } else {
        tracing::info!(dir = %dir.display(), models = %usable.join(", "), "models found");
    }
    Ok(())
}

/// Opens the backend `serve` asked for, honouring `--device` with every backend choice.
fn open_backend(args: &ServeArgs) -> Result<rela_node::NodeBackend, CliError> {
    let device = args.device.as_deref();
    match (args.backend, device) {
        (BackendChoice::Host, Some(d)) => {
            tracing::warn!(device = d, "--device is ignored by the host backend");
            Ok(backends::host_for_node(args.capacity)?)
        }
        (BackendChoice::Host, None) => Ok(backends::host_for_node(args.capacity)?),
        (BackendChoice::Auto, Some(d)) => {
            let (b, choice) = backends::open_auto_on(args.capacity, args.vk_validation, d)
                .map_err(|why| format!("no backend has a device matching --device {d:?}: {why}"))?;
            tracing::info!(backend = choice.name(), "using backend");
            Ok(b.into())
        }
        (BackendChoice::Auto, None) => {
            let (b, choice) = backends::open_auto(args.capacity, args.vk_validation)
                .map_err(|why| format!("no backend could start: {why}"))?;
            tracing::info!(backend = choice.name(), "using backend");
            if choice == BackendChoice::Host {
                // Every device backend failed: the host backend, as the node shares it.
                drop(b);
                Ok(backends::host_for_node(args.capacity)?)
            } else {
                Ok(b.into())
            }
        }
        (other, _) => Ok(backends::open_on(other, args.capacity, args.vk_validation, device)
            .map_err(|why| format!("backend {} cannot start: {why}", other.name()))?
            .into()),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `vram-relay discover`.
#[derive(Debug, Args)]
pub(crate) struct DiscoverArgs {
    /// Longest wait for answers, in seconds (more than 0, at most 60).
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = |s: &str| util::parse_seconds(s, 60.0))]
    timeout: Duration,
    /// Stop this many seconds after the last new answer (nodes on a LAN answer within
    /// milliseconds); asking only nodes by address (--to) stops once each has answered.
    #[arg(long, value_name = "SECONDS", default_value = "0.5", value_parser = |s: &str| util::parse_seconds(s, 60.0))]
    settle: Duration,
    /// Where to send DISCOVER: a node's discovery address, or a broadcast address (repeatable).
    /// Default: the LAN's broadcast address and 127.0.0.1, port 8766, where a node started
    /// with the defaults listens.
    #[arg(long, value_name = "ADDR")]
    to: Vec<SocketAddr>,
    /// Shared token: only nodes that prove they hold it are listed.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Browse mDNS/DNS-SD (`_rela._tcp.local.`) instead of sending DISCOVER. With a token,
    /// each node must also prove it holds it with a signed ANNOUNCE from the discovery port
    /// its record names.
    #[arg(long, conflicts_with = "to")]
    mdns: bool,
}

pub(crate) async fn discover(args: DiscoverArgs) -> Result<(), CliError> {
    let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
    if args.mdns {
        return mdns::discover(args.timeout, args.settle, token.as_deref(), args.json).await;
    }
    let targets = if args.to.is_empty() {
        vec![
            SocketAddr::from((Ipv4Addr::BROADCAST, DEFAULT_DISCOVERY_PORT)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_DISCOVERY_PORT)),
        ]
    } else {
        args.to.clone()
    };
    let report = rela_client::discover_targets(&targets, args.timeout, Some(args.settle), token.as_deref())
        .await
        .map_err(|e| format!("discovery failed: {e}"))?;
    if args.json {
        let nodes: Vec<_> = report
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "addr": n.addr.to_string(),
                    "backend": n.backend.to_string(),
                    "device": n.device,
                    "total": n.total,
                    "free": n.free,
                    "auth_required": n.auth_required,
                    "verified": n.verified,
                    "tls_fingerprint": n.tls_fingerprint.map(|f| Fingerprint(f).to_string()),
                })
            })
            .collect();
        outln!("{}", serde_json::json!({ "nodes": nodes, "rejected": report.rejected.len() }));
        return Ok(());
    }
    if report.nodes.is_empty() {
        let asked: Vec<String> = targets.iter().map(ToString::to_string).collect();
        outln!(
            "no nodes answered within {} s (asked {}); for a node serving discovery elsewhere, give --to ADDR",
            args.timeout.as_secs_f64(),
            asked.join(" and ")
        );
    } else {
        outln!("{:<22} {:<8} {:<36} {:>12} {:>12}  auth", "address", "backend", "device", "free", "total");
        for n in &report.nodes {
            let auth = match (n.auth_required, n.verified) {
                (true, true) => "required (signature verified)",
                (true, false) => "required",
                (false, true) => "none (signature verified)",
                (false, false) => "none",
            };
            outln!(
                "{:<22} {:<8} {:<36} {:>12} {:>12}  {auth}",
                n.addr.to_string(),
                n.backend.to_string(),
                n.device,
                human(n.free),
                human(n.total)
            );
            if let Some(fp) = n.tls_fingerprint {
                // Worth pinning only when the token vouched for the announcement.
                let pin = if n.verified { "--tls-fingerprint" } else { "unverified, do not pin" };
                outln!("{:<22} TLS {} ({pin})", "", Fingerprint(fp));
            }
        }
    }
    for r in &report.rejected {
        eprintln!("rejected an answer from {}: {}", r.from, r.error);
    }
    Ok(())
}

/// Connects as `conn` asks, with messages that say what to do.
pub(crate) async fn connect(conn: &ConnectArgs) -> Result<Client, CliError> {
    let token = util::load_token(conn.token.as_deref(), conn.token_file.as_deref())?;
    let addr = &conn.addr;
    let (client, _) = Client::connect_host(&addr.to_string(), token.as_deref(), conn.options()?)
        .await
        .map_err(|e| match e {
            ClientError::TokenRequired => format!("{addr} requires a token (--token-file or AUTH_TOKEN)"),
            ClientError::AuthRejected => format!("{addr} rejected the token"),
            e @ ClientError::Timeout { .. } => {
                format!("cannot connect to {addr}: {e} (is it a RELA node? --timeout sets the limit)")
            }
            e => format!("cannot connect to {addr}: {e}"),
        })?;
    Ok(client)
}

/// Ends the session with BYE. The command's work is done by then, and the node frees the
/// session's memory whether or not BYE arrives, so a failure here is only a warning.
async fn bye(client: Client, addr: &NodeAddr) {
    if let Err(e) = client.close().await {
        eprintln!(
            "warning: {addr}: the session ended without a BYE exchange ({e}); the node frees it anyway"
        );
    }
}

/// An ALLOC failure, with the session's quota when the quota was the problem.
fn alloc_failed(client: &Client, size: u64, e: &ClientError) -> String {
    let quota = if e.code() == Some(ErrorCode::QUOTA_EXCEEDED) {
        format!(" (this node's session quota is {})", human(client.welcome().quota))
    } else {
        String::new()
    };
    format!("alloc of {} failed: {e}{quota}", human(size))
}

pub(crate) async fn info(conn: ConnectArgs, json: bool) -> Result<(), CliError> {
    let mut c = connect(&conn).await?;
    let rtt = c.ping().await.map_err(|e| e.to_string())?;
    let d = c.device_info().await.map_err(|e| e.to_string())?;
    let w = *c.welcome();
    bye(c, &conn.addr).await;
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "addr": conn.addr.to_string(), "backend": d.backend.to_string(), "device": d.name, "vendor": d.vendor,
                "total": d.total, "free": d.free, "max_alloc": d.max_alloc, "shared_models": d.shared_models, "protocol": w.version,
                "max_payload": w.max_payload, "max_buffers": w.max_buffers, "quota": w.quota,
                "auth_required": w.auth_required(), "rtt_us": rtt.as_micros() as u64,
            })
        );
    } else {
        outln!("node        {}", conn.addr);
        outln!("backend     {} ({})", d.backend, d.vendor);
        outln!("device      {}", d.name);
        outln!(
            "memory      {} free of {} (largest allocation {})",
            human(d.free),
            human(d.total),
            human(d.max_alloc)
        );
        if d.shared_models > 0 {
            outln!("models      {} held once for every session that loads them", human(d.shared_models));
        }
        outln!(
            "session     quota {}, {} buffers, frames up to {}",
            human(w.quota),
            w.max_buffers,
            human(w.max_payload as u64)
        );
        outln!("protocol    v{}, auth {}", w.version, if w.auth_required() { "required" } else { "off" });
        outln!("round trip  {:.1} µs", rtt.as_secs_f64() * 1e6);
    }
    Ok(())
}

pub(crate) async fn put(conn: ConnectArgs, file: PathBuf, then_get: Option<PathBuf>) -> Result<(), CliError> {
    let data = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if data.is_empty() {
        return Err(format!("{} is empty: nothing to upload", file.display()).into());
    }
    let mut c = connect(&conn).await?;
    let size = data.len() as u64;
    let h = match c.alloc(size).await {
        Ok(h) => h,
        Err(e) => return Err(alloc_failed(&c, size, &e).into()),
    };
    let bar = util::progress_bar(size, "put");
    let t = Instant::now();
    c.write_with_progress(h, 0, &data, Some(&mut |done, _| bar.set_position(done)))
        .await
        .map_err(|e| format!("upload failed: {e}"))?;
    let up = t.elapsed();
    bar.finish_and_clear();
    outln!(
        "put {} ({}) into handle {:#010x}: {:.1} MiB/s",
        file.display(),
        human(size),
        h.raw(),
        data.len() as f64 / up.as_secs_f64() / (1 << 20) as f64
    );
    if let Some(out) = then_get {
        let mut back = vec![0u8; data.len()];
        let bar = util::progress_bar(size, "get");
        let t = Instant::now();
        c.read_into_with_progress(h, 0, &mut back, Some(&mut |done, _| bar.set_position(done)))
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        let down = t.elapsed();
        bar.finish_and_clear();
        std::fs::write(&out, &back).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        if back != data {
            return Err("the bytes read back differ from the bytes written".into());
        }
        outln!(
            "got it back into {}: {:.1} MiB/s, identical",
            out.display(),
            data.len() as f64 / down.as_secs_f64() / (1 << 20) as f64
        );
    }
    bye(c, &conn.addr).await;
    Ok(())
}

pub(crate) async fn get(
    conn: ConnectArgs,
    out: PathBuf,
    size: u64,
    fill: Option<u8>,
) -> Result<(), CliError> {
    let len = usize::try_from(size)
        .map_err(|_| CliError::Usage(format!("{} does not fit in memory", human(size))))?;
    let mut c = connect(&conn).await?;
    let h = match c.alloc(size).await {
        Ok(h) => h,
        Err(e) => return Err(alloc_failed(&c, size, &e).into()),
    };
    if let Some(v) = fill {
        c.fill(h, 0, size, v).await.map_err(|e| format!("fill failed: {e}"))?;
    }
    let mut data = vec![0u8; len];
    let bar = util::progress_bar(size, "get");
    let t = Instant::now();
    c.read_into_with_progress(h, 0, &mut data, Some(&mut |done, _| bar.set_position(done)))
        .await
        .map_err(|e| format!("download failed: {e}"))?;
    let took = t.elapsed();
    bar.finish_and_clear();
    bye(c, &conn.addr).await;
    std::fs::write(&out, &data).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    outln!(
        "got {} into {}: {:.1} MiB/s",
        human(size),
        out.display(),
        size as f64 / took.as_secs_f64() / (1 << 20) as f64
    );
    Ok(())
}

pub(crate) async fn embed(
    conn: ConnectArgs,
    model: String,
    texts: Vec<String>,
    json: bool,
    weights: Option<PathBuf>,
) -> Result<(), CliError> {
    let file = match &weights {
        Some(path) => Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let mut c = connect(&conn).await?;
    if !c.serves_models() {
        return Err(format!("{} serves no models (start it with --models DIR)", conn.addr).into());
    }
    let started = Instant::now();
    // One bar per stage: the file going to the node, then the weights going into device memory.
    let mut bar: Option<(LoadStage, indicatif::ProgressBar)> = None;
    let mut report = |stage: LoadStage, done: u64, total: u64| {
        if bar.as_ref().is_none_or(|(s, _)| *s != stage) {
            if let Some((_, old)) = bar.take() {
                old.finish_and_clear();
            }
            let what = if stage == LoadStage::Upload { "upload" } else { "load" };
            bar = Some((stage, util::progress_bar(total, what)));
        }
        if let Some((_, b)) = &bar {
            b.set_position(done);
        }
    };
    let loading = match &file {
        Some(bytes) => c.model_upload(&model, bytes, Some(&mut report)).await,
        None => c.model_load_with_progress(&model, Some(&mut report)).await,
    };
    if let Some((_, b)) = bar.take() {
        b.finish_and_clear();
    }
    let m = match loading {
        Ok(m) => m,
        Err(e) => {
            let quota = if e.code() == Some(ErrorCode::QUOTA_EXCEEDED) {
                format!(" (this node's session quota is {})", human(c.welcome().quota))
            } else {
                crate::models_cmd::unknown_model_hint(&mut c, &e, ModelKind::EMBEDDING).await
            };
            return Err(match &weights {
                Some(path) => format!("loading {} as {model} failed: {e}{quota}", path.display()),
                None => format!("loading {model} failed: {e}{quota}"),
            }
            .into());
        }
    };
    let loaded = started.elapsed();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let vectors = c.infer(m, &refs).await.map_err(|e| format!("inference failed: {e}"))?;
    let inferred = started.elapsed();
    c.model_unload(m).await.map_err(|e| format!("unload failed: {e}"))?;
    bye(c, &conn.addr).await;
    let sim: Vec<Vec<f32>> = vectors
        .iter()
        .map(|a| vectors.iter().map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect())
        .collect();
    if json {
        let out = serde_json::json!({
            "model": model, "dim": m.dim, "embeddings": vectors, "similarity": sim,
            "load_ms": loaded.as_millis() as u64, "infer_ms": inferred.as_millis() as u64,
        });
        outln!("{out}");
        return Ok(());
    }
    outln!(
        "{model}: {} dims, {} of weights loaded in {} ms, {} text(s) embedded in {} ms",
        m.dim,
        human(m.bytes),
        loaded.as_millis(),
        texts.len(),
        inferred.as_millis()
    );
    for (t, v) in texts.iter().zip(&vectors) {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
        outln!("[{} …]  {t}", head.join(", "));
    }
    if texts.len() > 1 {
        outln!("\ncosine similarity:");
        for (i, row) in sim.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|x| format!("{x:6.3}")).collect();
            outln!("  [{i}] {}", cells.join(" "));
        }
    }
    Ok(())
}

/// `vram-relay conformance`.
#[derive(Debug, Args)]
pub(crate) struct ConformanceArgs {
    /// Backend(s) to certify, comma-separated: host, vulkan, wgpu (both APIs), wgpu-vulkan,
    /// wgpu-gl, cuda, or all (default). A backend named here that cannot run on this machine
    /// makes the run incomplete (exit status 3); under `all` (or `wgpu`) it is skipped, unless
    /// RELA_REQUIRE_BACKENDS names it.
    #[arg(long, conflicts_with = "node", value_parser = BackendSet::parse)]
    backend: Option<BackendSet>,
    /// Run the wire suite against a running node (`HOST[:PORT]`) instead.
    #[arg(long, value_parser = NodeAddr::parse)]
    node: Option<NodeAddr>,
    /// Token for --node.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token for --node.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Enable the Khronos validation layer on the Vulkan backend.
    #[arg(long)]
    vk_validation: bool,
    /// Build the report from the records the conformance tests wrote to DIR (run with
    /// RELA_CONFORMANCE_RECORDS=DIR, an absolute path) instead of running the suite again.
    /// Every backend of --backend (default all) must have a record of every case: a missing
    /// case, or a backend without records, leaves the run incomplete.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["node", "vk_validation"])]
    records: Option<PathBuf>,
    /// TLS to the node of --node, as for the other client commands: every connection of the
    /// wire suite then runs inside a TLS session.
    #[command(flatten)]
    tls: crate::TlsArgs,
}

/// The backends a conformance run certifies, and which of them came from a group name (`all`,
/// `wgpu`) and so may be absent from this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSet {
    list: Vec<BackendChoice>,
    grouped: Vec<BackendChoice>,
}

impl BackendSet {
    /// Parses a comma-separated list of backend names.
    fn parse(spec: &str) -> Result<Self, String> {
        let mut set = Self { list: Vec::new(), grouped: Vec::new() };
        for name in spec.split(',').map(str::trim) {
            let (add, group): (&[BackendChoice], bool) = match name {
                "all" => (
                    &[
                        BackendChoice::Host,
                        BackendChoice::Vulkan,
                        BackendChoice::WgpuVulkan,
                        BackendChoice::WgpuGl,
                        BackendChoice::Cuda,
                    ],
                    true,
                ),
                "host" => (&[BackendChoice::Host], false),
                "vulkan" => (&[BackendChoice::Vulkan], false),
                "wgpu" => (&[BackendChoice::WgpuVulkan, BackendChoice::WgpuGl], true),
                "wgpu-vulkan" => (&[BackendChoice::WgpuVulkan], false),
                "wgpu-gl" => (&[BackendChoice::WgpuGl], false),
                "cuda" => (&[BackendChoice::Cuda], false),
                other => {
                    return Err(format!(
                        "unknown backend {other:?} (host, vulkan, wgpu, wgpu-vulkan, wgpu-gl, cuda, all)"
                    ));
                }
            };
            for b in add {
                if !set.list.contains(b) {
                    set.list.push(*b);
                }
            }
            if group {
                set.grouped.extend_from_slice(add);
            }
        }
        // A backend named on its own is expected here even if a group named it too.
        let named: Vec<BackendChoice> =
            spec.split(',').filter_map(|n| set.list.iter().copied().find(|b| b.name() == n.trim())).collect();
        set.grouped.retain(|b| !named.contains(b));
        Ok(set)
    }
}

pub(crate) async fn conformance(args: ConformanceArgs) -> Result<(), CliError> {
    let tls = args.tls.options()?;
    if let Some(addr) = &args.node {
        return conformance_node(addr, &args, tls).await;
    }
    if tls.is_some() {
        return Err(CliError::Usage("the TLS options apply to --node".into()));
    }
    let set = match &args.backend {
        Some(set) => set.clone(),
        // "all" always parses.
        None => BackendSet::parse("all").map_err(CliError::Usage)?,
    };
    if let Some(dir) = &args.records {
        return conformance_records(dir, &set, args.json.as_ref());
    }
    let choices = set.list.clone();
    let vk_validation = args.vk_validation;
    let reports = tokio::task::spawn_blocking(move || {
        choices
            .iter()
            .map(|&choice| {
                let make = move || {
                    // The host backend with its arena in view, so that zero_after_free reads
                    // what `free` left behind; the others through `GpuBackend` alone.
                    if choice == BackendChoice::Host {
                        let capacity = rela_conformance::SUITE_CAPACITY as usize;
                        let host = rela_backend_host::OwnedHostBackend::with_capacity(capacity);
                        return Ok(rela_conformance::Tested::inspectable(host));
                    }
                    backends::open(choice, rela_conformance::SUITE_CAPACITY, vk_validation)
                        .map(rela_conformance::Tested::from)
                };
                rela_conformance::run_suite(choice.name(), &make)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("the suite crashed: {e}"))?;
    backend_verdict(&reports, &set, args.json.as_ref())
}

/// `conformance --records DIR`: the reports of `set`'s backends (and any other backend with
/// records) from the records the conformance tests wrote, judged as a run of the suite is.
fn conformance_records(dir: &Path, set: &BackendSet, json: Option<&PathBuf>) -> Result<(), CliError> {
    let records = rela_conformance::records::read_dir(dir).map_err(|e| e.to_string())?;
    let expected: Vec<&str> = set.list.iter().map(|b| b.name()).collect();
    let reports = rela_conformance::records::reports(&records, &expected);
    backend_verdict(&reports, set, json)
}

/// Prints the table of backend reports, writes them as JSON if asked, and judges them: a
/// backend that `set` named through a group (`all`, `wgpu`) may be absent from this machine.
fn backend_verdict(
    reports: &[rela_conformance::BackendReport],
    set: &BackendSet,
    json: Option<&PathBuf>,
) -> Result<(), CliError> {
    util::write_out(format_args!("{}", rela_conformance::render_table(reports)))?;
    write_json(json, reports)?;
    let may_be_absent = |name: &str| set.grouped.iter().any(|b| b.name() == name);
    match rela_conformance::verdict(reports, &may_be_absent) {
        rela_conformance::Verdict::Passed => Ok(()),
        rela_conformance::Verdict::Failed => {
            let failed: Vec<_> = reports.iter().filter(|r| !r.ok()).map(|r| r.backend.clone()).collect();
            Err(format!("conformance failed for: {}", failed.join(", ")).into())
        }
        rela_conformance::Verdict::Incomplete(why) => Err(CliError::Incomplete(why.join("\n  "))),
    }
}

/// `conformance --node`: checks the token first (a wrong one stops the run at once, instead of
/// failing every case and tripping the node's AUTH throttle), and the node's certificate over
/// TLS (trusted on first use there, when that is the choice), then runs the wire suite, over
/// TLS when `tls` says so.
async fn conformance_node(
    addr: &NodeAddr,
    args: &ConformanceArgs,
    tls: Option<TlsOptions>,
) -> Result<(), CliError> {
    let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
    let host = addr.to_string();
    let candidates: Vec<SocketAddr> =
        tokio::net::lookup_host(&host).await.map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    let mut last = format!("cannot resolve {host}");
    let mut resolved = None;
    for candidate in candidates {
        let options = rela_client::ClientOptions { tls: tls.clone(), ..Default::default() };
        match Client::connect_named(candidate, &host, token.as_deref(), options).await {
            Ok(client) => {
                bye(client, addr).await;
                resolved = Some(candidate);
                break;
            }
            Err(ClientError::AuthRejected) => {
                return Err(format!("{addr} rejected the token (AUTH_FAILED): no case was run").into());
            }
            // An untrusted certificate: every case would fail the same way.
            Err(e @ ClientError::Tls(_)) => return Err(format!("{addr}: {e}").into()),
            Err(ClientError::TokenRequired) => {
                eprintln!(
                    "note: {addr} requires a token and none was given (--token-file or AUTH_TOKEN): \
                     the cases that need a session will be skipped"
                );
                resolved = Some(candidate);
                break;
            }
            // Not reachable at this address; the name may have another.
            Err(e) => last = format!("cannot run the wire suite against {addr}: {e}"),
        }
    }
    let Some(resolved) = resolved else { return Err(last.into()) };
    let dial = match tls {
        Some(tls) => tls_dialer(host, tls),
        None => rela_conformance::wire::tcp_dialer(),
    };
    let report = rela_conformance::wire::run_with(resolved, token.as_deref(), dial).await;
    let reports = std::slice::from_ref(&report);
    util::write_out(format_args!("{}", rela_conformance::render_table(reports)))?;
    write_json(args.json.as_ref(), reports)?;
    match rela_conformance::verdict(reports, &|_| false) {
        rela_conformance::Verdict::Passed => Ok(()),
        rela_conformance::Verdict::Failed => Err("wire conformance failed".into()),
        rela_conformance::Verdict::Incomplete(why) => Err(CliError::Incomplete(why.join("\n  "))),
    }
}

/// The wire suite's connections over TLS to `host`, trusting its certificate as `tls` says.
fn tls_dialer(host: String, tls: TlsOptions) -> rela_conformance::wire::Dialer {
    let host: Arc<str> = host.into();
    Arc::new(move |addr| {
        let (host, tls) = (host.clone(), tls.clone());
        Box::pin(async move {
            let (stream, _) =
                rela_client::tls::open(addr, Some(&host), &tls).await.map_err(std::io::Error::other)?;
            Ok(Box::new(stream) as Box<dyn rela_conformance::wire::NodeStream>)
        })
    })
}

fn write_json(path: Option<&PathBuf>, reports: &[rela_conformance::BackendReport]) -> Result<(), CliError> {
    if let Some(p) = path {
        let json = serde_json::to_string_pretty(reports).map_err(|e| e.to_string())?;
        std::fs::write(p, json).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}
