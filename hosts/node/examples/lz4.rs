//! LZ4 on and off through a node (host-memory backend), side by side in one run: WRITE then
//! READ of zero-heavy f16 weights, English-like text and random bytes, over loopback and over a
//! link limited to a rate each way (an in-process shaping proxy in front of the node), or to a
//! node that runs elsewhere, behind a real link (`scripts/bench/lz4-veth.sh` serves one behind
//! a `tc`-shaped veth pair in a network namespace).
//!
//! ```text
//! cargo run --release -p rela-node --example lz4 -- [MiB, default 64] [Mbit/s, default 1000] [NODE]
//! ```
//!
//! With NODE (`HOST:PORT` of a running node without a token), the second link is that node
//! instead of the proxy, and Mbit/s only labels it.

use std::time::{Duration, Instant};

use rela_client::{Client, ClientOptions};
use rela_node::{Node, NodeBackend, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn xorshift(seed: u32) -> impl FnMut() -> u32 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    }
}

/// f16 weights, 60 % of them exactly zero (pruned), the rest small normal values.
fn weights(len: usize) -> Vec<u8> {
    let mut r = xorshift(1);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let x = r();
        let h: u16 = if x % 10 < 6 { 0 } else { (x >> 16) as u16 & 0x83ff | 0x2c00 };
        v.extend_from_slice(&h.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Words from a small vocabulary in a random order: text that compresses about as prose does.
fn text(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "relay", "node", "lends", "memory", "to", "a", "phone", "on", "shared", "wifi", "and",
        "tensors", "flow", "through", "frames", "of", "data", "while", "model", "weights", "stay", "in",
        "device", "buffers", "until", "session", "ends", "with", "every", "byte", "zeroed",
    ];
    let mut r = xorshift(2);
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        let x = r();
        v.extend_from_slice(WORDS[x as usize % WORDS.len()].as_bytes());
        v.push(if x.is_multiple_of(13) { b'.' } else { b' ' });
    }
    v.truncate(len);
    v
}

fn random(len: usize) -> Vec<u8> {
    let mut r = xorshift(3);
    (0..len).map(|_| r() as u8).collect()
}

/// Bytes a shaped link may send ahead of its rate: one read. Idle time earns no more credit than
/// this, and a sleep that overshoots (the timer's millisecond) is made up from it, so the link
/// runs at its rate on average instead of below it.
const BURST: usize = 256 * 1024;

/// Copies `from` to `to` at most `rate` bytes per second on average (a token bucket of
/// [`BURST`] bytes).
async fn shaped(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: f64,
) {
    let mut buf = vec![0u8; BURST];
    let credit = Duration::from_secs_f64(BURST as f64 / rate);
    // When the bytes sent so far are due, by the rate.
    let mut due = Instant::now();
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let now = Instant::now();
        due = due.max(now.checked_sub(credit).unwrap_or(now)) + Duration::from_secs_f64(n as f64 / rate);
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let _ = to.shutdown().await;
}

/// A proxy to `node` limited to `mbit` Mbit/s each way; returns its address.
async fn proxy(node: std::net::SocketAddr, mbit: f64) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rate = mbit * 1e6 / 8.0;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(node).await else { continue };
            let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::spawn(shaped(cr, uw, rate));
            tokio::spawn(shaped(ur, cw, rate));
        }
    });
    Ok(addr)
}

/// WRITE then READ of `data`; MB/s of each.
async fn run(
    addr: std::net::SocketAddr,
    data: &[u8],
    compress: bool,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let options = ClientOptions { compress, ..ClientOptions::default() };
    let mut c = Client::connect_with(addr, None, options).await?;
    assert_eq!(c.compressing(), compress);
    let h = c.alloc(data.len() as u64).await?;
    let t = Instant::now();
    c.write(h, 0, data).await?;
    let up = data.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
    let mut back = vec![1u8; data.len()];
    let t = Instant::now();
    c.read_into(h, 0, &mut back).await?;
    let down = data.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert!(back == data, "data came back changed");
    c.close().await?;
    Ok((up, down))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let mbit: f64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1000.0);
    let len = mib * 1024 * 1024;
    let mut config = NodeConfig { listen: "127.0.0.1:0".parse()?, discovery: None, ..NodeConfig::default() };
    config.session.quota = 2 * len as u64;
    let backend = NodeBackend::host::<{ rela_backend_host::MAX_BLOCKS }>(2 * len)?;
    let node = Node::start(config, backend).await?;
    let far = match std::env::args().nth(3) {
        Some(remote) => (format!("{mbit} Mbit/s link to {remote}"), remote.parse()?),
        None => (format!("{mbit} Mbit/s"), proxy(node.local_addr(), mbit).await?),
    };
    let links = [("loopback".to_owned(), node.local_addr()), far];
    println!("{mib} MiB per transfer, MB/s (plain -> LZ4)\n");
    println!("| link | data | LZ4 ratio | WRITE plain | WRITE LZ4 | x | READ plain | READ LZ4 | x |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (link, addr) in &links {
        for (name, data) in
            [("f16 weights, 60% zeros", weights(len)), ("text", text(len)), ("random", random(len))]
        {
            let ratio = data.len() as f64 / lz4_flex::block::compress(&data).len() as f64;
            let (wp, rp) = run(*addr, &data, false).await?;
            let (wz, rz) = run(*addr, &data, true).await?;
            println!(
                "| {link} | {name} | {ratio:.2} | {wp:.0} | {wz:.0} | {:.2}x | {rp:.0} | {rz:.0} | {:.2}x |",
                wz / wp,
                rz / rp
            );
        }
    }
    node.shutdown().await?;
    Ok(())
}
