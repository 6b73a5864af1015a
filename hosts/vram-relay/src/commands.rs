//! The subcommands other than `bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rela_client::{Client, ClientError, LoadStage};
use rela_core::config::{DEFAULT_DISCOVERY_PORT, MAX_PAYLOAD};
use rela_node::{Node, NodeConfig};

use crate::ConnectArgs;
use crate::backends::{self, BackendChoice};
use crate::util::{self, human, parse_size};

/// `vram-relay serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TCP address for sessions. Binding anything but loopback needs a token (or
    /// --allow-unauthenticated).
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// UDP address for discovery.
    #[arg(long, default_value = "127.0.0.1:8766")]
    discovery: SocketAddr,
    /// Do not answer discovery.
    #[arg(long)]
    no_discovery: bool,
    /// Backend: auto tries cuda, vulkan, wgpu, then host.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Device to use with --backend vulkan|wgpu|cuda: a name substring or an index (the log
    /// lists what is available).
    #[arg(long)]
    device: Option<String>,
    /// Memory the node lends in total (e.g. 1GiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    capacity: u64,
    /// Shared token; sessions must AUTH with it (prefer --token-file or AUTH_TOKEN).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Refuse to start without a token (REQUIRE_AUTH=1).
    #[arg(long, env = "REQUIRE_AUTH", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    require_auth: bool,
    /// Serve a non-loopback address without a token. Anyone who can reach it can use the GPU.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Memory one session may hold (e.g. 256MiB).
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    quota: u64,
    /// Buffers one session may hold (at most 256).
    #[arg(long, default_value_t = 64)]
    max_buffers: u16,
    /// Largest frame payload (at most 16MiB).
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    max_payload: u64,
    /// Seconds a client has to finish HELLO (and AUTH).
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds of silence before a session is closed (0: never).
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Enable the Khronos validation layer on the Vulkan backend.
    #[arg(long)]
    vk_validation: bool,
    /// Serve the models in this directory (one subdirectory per model with model.safetensors,
    /// tokenizer.json and config.json; see hosts/models/fetch-model.sh).
    #[arg(long)]
    models: Option<PathBuf>,
}

pub(crate) async fn serve(args: ServeArgs) -> Result<(), String> {
    let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
    if args.require_auth && token.is_none() {
        return Err("REQUIRE_AUTH is set but no token was given (AUTH_TOKEN, --token or --token-file)".into());
    }
    if args.max_payload > MAX_PAYLOAD as u64 {
        return Err(format!("--max-payload {} is above the protocol cap of 16 MiB", args.max_payload));
    }
    let mut config = NodeConfig {
        listen: args.listen,
        discovery: (!args.no_discovery).then_some(args.discovery),
        max_sessions: args.max_sessions,
        allow_unauthenticated: args.allow_unauthenticated,
        models: args.models.clone(),
        ..NodeConfig::default()
    };
    config.session.quota = args.quota;
    config.session.max_buffers = args.max_buffers;
    config.session.max_payload = args.max_payload as u32;
    config.session.handshake_timeout = rela_core::time::Duration::from_secs(args.handshake_timeout);
    config.session.idle_timeout = rela_core::time::Duration::from_secs(args.idle_timeout);
    if let Some(t) = &token {
        config = config.with_token(t);
    }
    config.validate().map_err(|e| format!("{e}; see --help"))?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "serving a non-loopback address WITHOUT AUTHENTICATION: anyone who can reach it can use this GPU"
        );
    }

    let backend = match args.backend {
        BackendChoice::Host => backends::host_for_node(args.capacity)?,
        BackendChoice::Auto => {
            let (b, choice) = backends::open_auto(args.capacity, args.vk_validation)
                .map_err(|why| format!("no backend could start: {why}"))?;
            tracing::info!(backend = choice.name(), "using backend");
            if choice == BackendChoice::Host {
                // Every device backend failed: the host backend, as the node shares it.
                drop(b);
                backends::host_for_node(args.capacity)?
            } else {
                b.into()
            }
        }
        other => backends::open_on(other, args.capacity, args.vk_validation, args.device.as_deref())
            .map_err(|why| format!("backend {} cannot start: {why}", other.name()))?
            .into(),
    };
    let info = backend.info();
    let node = Node::start(config, backend).await.map_err(|e| format!("cannot start the node: {e}"))?;
    tracing::info!(
        listen = %node.local_addr(),
        discovery = ?node.discovery_addr(),
        backend = %info.backend,
        device = %info.name,
        lends = %human(info.total),
        auth = token.is_some(),
        "node ready"
    );

    wait_for_signal().await;
    tracing::info!("shutting down: closing sessions and releasing memory");
    match node.shutdown().await {
        Ok(usage) if usage.used == 0 && usage.buffers == 0 => tracing::info!("stopped; all memory released"),
        Ok(usage) => {
            tracing::warn!(used = usage.used, buffers = usage.buffers, "stopped with memory still held")
        }
        Err(e) => return Err(format!("shutdown failed: {e}")),
    }
    Ok(())
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
    /// Seconds to wait for answers.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
    /// Where to send DISCOVER: a node's discovery address, or a broadcast address.
    #[arg(long, default_value_t = SocketAddr::from(([255, 255, 255, 255], DEFAULT_DISCOVERY_PORT)))]
    to: SocketAddr,
    /// Shared token: only nodes that prove they hold it are listed.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the shared token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn discover(args: DiscoverArgs) -> Result<(), String> {
    let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 60.0) {
        return Err("--timeout must be between 0 and 60 seconds".into());
    }
    let report =
        rela_client::discover_report(args.to, Duration::from_secs_f64(args.timeout), token.as_deref())
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
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "nodes": nodes, "rejected": report.rejected.len() }));
        return Ok(());
    }
    if report.nodes.is_empty() {
        println!("no nodes answered within {} s", args.timeout);
    } else {
        println!("{:<22} {:<8} {:<36} {:>12} {:>12}  auth", "address", "backend", "device", "free", "total");
        for n in &report.nodes {
            let auth = match (n.auth_required, n.verified) {
                (true, true) => "required (signature verified)",
                (true, false) => "required",
                (false, true) => "none (signature verified)",
                (false, false) => "none",
            };
            println!(
                "{:<22} {:<8} {:<36} {:>12} {:>12}  {auth}",
                n.addr.to_string(),
                n.backend.to_string(),
                n.device,
                human(n.free),
                human(n.total)
            );
        }
    }
    for r in &report.rejected {
        eprintln!("rejected an answer from {}: {}", r.from, r.error);
    }
    Ok(())
}

async fn connect(conn: &ConnectArgs) -> Result<Client, String> {
    let token = util::load_token(conn.token.as_deref(), conn.token_file.as_deref())?;
    Client::connect(conn.addr, token.as_deref()).await.map_err(|e| match e {
        ClientError::TokenRequired => format!("{} requires a token (--token-file or AUTH_TOKEN)", conn.addr),
        ClientError::AuthRejected => format!("{} rejected the token", conn.addr),
        e => format!("cannot connect to {}: {e}", conn.addr),
    })
}

pub(crate) async fn info(conn: ConnectArgs, json: bool) -> Result<(), String> {
    let mut c = connect(&conn).await?;
    let rtt = c.ping().await.map_err(|e| e.to_string())?;
    let d = c.device_info().await.map_err(|e| e.to_string())?;
    let w = *c.welcome();
    c.close().await.map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "addr": conn.addr.to_string(), "backend": d.backend.to_string(), "device": d.name, "vendor": d.vendor,
                "total": d.total, "free": d.free, "max_alloc": d.max_alloc, "protocol": w.version,
                "max_payload": w.max_payload, "max_buffers": w.max_buffers, "quota": w.quota,
                "auth_required": w.auth_required(), "rtt_us": rtt.as_micros() as u64,
            })
        );
    } else {
        println!("node        {}", conn.addr);
        println!("backend     {} ({})", d.backend, d.vendor);
        println!("device      {}", d.name);
        println!(
            "memory      {} free of {} (largest allocation {})",
            human(d.free),
            human(d.total),
            human(d.max_alloc)
        );
        println!(
            "session     quota {}, {} buffers, frames up to {}",
            human(w.quota),
            w.max_buffers,
            human(w.max_payload as u64)
        );
        println!("protocol    v{}, auth {}", w.version, if w.auth_required() { "required" } else { "off" });
        println!("round trip  {:.1} µs", rtt.as_secs_f64() * 1e6);
    }
    Ok(())
}

pub(crate) async fn put(conn: ConnectArgs, file: PathBuf, then_get: Option<PathBuf>) -> Result<(), String> {
    let data = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if data.is_empty() {
        return Err(format!("{} is empty: nothing to upload", file.display()));
    }
    let mut c = connect(&conn).await?;
    let h = c
        .alloc(data.len() as u64)
        .await
        .map_err(|e| format!("alloc of {} failed: {e}", human(data.len() as u64)))?;
    let bar = util::progress_bar(data.len() as u64, "put");
    let t = Instant::now();
    c.write_with_progress(h, 0, &data, Some(&mut |done, _| bar.set_position(done)))
        .await
        .map_err(|e| format!("upload failed: {e}"))?;
    let up = t.elapsed();
    bar.finish_and_clear();
    println!(
        "put {} ({}) into handle {:#010x}: {:.1} MiB/s",
        file.display(),
        human(data.len() as u64),
        h.raw(),
        data.len() as f64 / up.as_secs_f64() / (1 << 20) as f64
    );
    if let Some(out) = then_get {
        let mut back = vec![0u8; data.len()];
        let bar = util::progress_bar(data.len() as u64, "get");
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
        println!(
            "got it back into {}: {:.1} MiB/s, identical",
            out.display(),
            data.len() as f64 / down.as_secs_f64() / (1 << 20) as f64
        );
    }
    c.close().await.map_err(|e| e.to_string())?;
    Ok(())
}

pub(crate) async fn get(conn: ConnectArgs, out: PathBuf, size: u64, fill: Option<u8>) -> Result<(), String> {
    if size == 0 {
        return Err("--size must be at least 1 byte".into());
    }
    let len = usize::try_from(size).map_err(|_| "size does not fit in memory".to_string())?;
    let mut c = connect(&conn).await?;
    let h = c.alloc(size).await.map_err(|e| format!("alloc of {} failed: {e}", human(size)))?;
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
    c.close().await.map_err(|e| e.to_string())?;
    std::fs::write(&out, &data).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
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
) -> Result<(), String> {
    let file = match &weights {
        Some(path) => Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let mut c = connect(&conn).await?;
    if !c.serves_models() {
        return Err(format!("{} serves no models (start it with --models DIR)", conn.addr));
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
    let m = loading.map_err(|e| match &weights {
        Some(path) => format!("loading {} as {model} failed: {e}", path.display()),
        None => format!("loading {model} failed: {e}"),
    })?;
    let loaded = started.elapsed();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let vectors = c.infer(m, &refs).await.map_err(|e| format!("inference failed: {e}"))?;
    let inferred = started.elapsed();
    c.model_unload(m).await.map_err(|e| format!("unload failed: {e}"))?;
    c.close().await.map_err(|e| e.to_string())?;
    let sim: Vec<Vec<f32>> = vectors
        .iter()
        .map(|a| vectors.iter().map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect())
        .collect();
    if json {
        let out = serde_json::json!({
            "model": model, "dim": m.dim, "embeddings": vectors, "similarity": sim,
            "load_ms": loaded.as_millis() as u64, "infer_ms": inferred.as_millis() as u64,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{model}: {} dims, {} of weights loaded in {} ms, {} text(s) embedded in {} ms",
        m.dim,
        human(m.bytes),
        loaded.as_millis(),
        texts.len(),
        inferred.as_millis()
    );
    for (t, v) in texts.iter().zip(&vectors) {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
        println!("[{} …]  {t}", head.join(", "));
    }
    if texts.len() > 1 {
        println!("\ncosine similarity:");
        for (i, row) in sim.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|x| format!("{x:6.3}")).collect();
            println!("  [{i}] {}", cells.join(" "));
        }
    }
    Ok(())
}

/// `vram-relay conformance`.
#[derive(Debug, Args)]
pub(crate) struct ConformanceArgs {
    /// Backend(s) to certify: host, vulkan, wgpu (both APIs), wgpu-vulkan, wgpu-gl, cuda, or all.
    #[arg(long, conflicts_with = "node")]
    backend: Option<String>,
    /// Run the wire suite against a running node instead.
    #[arg(long)]
    node: Option<SocketAddr>,
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
}

fn backend_list(spec: &str) -> Result<Vec<BackendChoice>, String> {
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim) {
        let add: &[BackendChoice] = match name {
            "all" => &[
                BackendChoice::Host,
                BackendChoice::Vulkan,
                BackendChoice::WgpuVulkan,
                BackendChoice::WgpuGl,
                BackendChoice::Cuda,
            ],
            "host" => &[BackendChoice::Host],
            "vulkan" => &[BackendChoice::Vulkan],
            "wgpu" => &[BackendChoice::WgpuVulkan, BackendChoice::WgpuGl],
            "wgpu-vulkan" => &[BackendChoice::WgpuVulkan],
            "wgpu-gl" => &[BackendChoice::WgpuGl],
            "cuda" => &[BackendChoice::Cuda],
            other => {
                return Err(format!(
                    "unknown backend {other:?} (host, vulkan, wgpu, wgpu-vulkan, wgpu-gl, cuda, all)"
                ));
            }
        };
        for b in add {
            if !out.contains(b) {
                out.push(*b);
            }
        }
    }
    Ok(out)
}

pub(crate) async fn conformance(args: ConformanceArgs) -> Result<(), String> {
    if let Some(addr) = args.node {
        let token = util::load_token(args.token.as_deref(), args.token_file.as_deref())?;
        let report = rela_conformance::wire::run(addr, token.as_deref()).await;
        print!("{}", rela_conformance::render_table(std::slice::from_ref(&report)));
        write_json(args.json.as_ref(), std::slice::from_ref(&report))?;
        return if report.ok() { Ok(()) } else { Err("wire conformance failed".into()) };
    }
    let spec = args.backend.as_deref().unwrap_or("all");
    let choices = backend_list(spec)?;
    let vk_validation = args.vk_validation;
    let reports = tokio::task::spawn_blocking(move || {
        choices
            .iter()
            .map(|&choice| {
                let make = move || {
                    backends::open(choice, rela_conformance::SUITE_CAPACITY, vk_validation)
                        .map(|b| b as Box<dyn rela_core::backend::GpuBackend>)
                };
                rela_conformance::run_suite(choice.name(), &make)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("the suite crashed: {e}"))?;
    print!("{}", rela_conformance::render_table(&reports));
    write_json(args.json.as_ref(), &reports)?;
    let failed: Vec<_> = reports.iter().filter(|r| !r.ok()).map(|r| r.backend.clone()).collect();
    if failed.is_empty() { Ok(()) } else { Err(format!("conformance failed for: {}", failed.join(", "))) }
}

fn write_json(path: Option<&PathBuf>, reports: &[rela_conformance::BackendReport]) -> Result<(), String> {
    if let Some(p) = path {
        let json = serde_json::to_string_pretty(reports).map_err(|e| e.to_string())?;
        std::fs::write(p, json).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}
