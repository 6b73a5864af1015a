//! Loopback throughput: bulk WRITE and READ through a node (host-memory backend) against raw
//! tokio TCP moving the same bytes.
//!
//! ```text
//! cargo run --release -p rela-node --example throughput -- [MiB, default 1024]
//! # knobs: RELA_CHUNK_KIB (bulk frame payload), RELA_WINDOW (frames in flight)
//! ```

use std::time::Instant;

use rela_backend_host::OwnedHostBackend;
use rela_client::{Client, ClientOptions};
use rela_node::{Node, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 16 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let len = mib * 1024 * 1024;
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    let gib = len as f64 / (1u64 << 30) as f64;

    // Raw TCP: client → server, then server → client, 16 MiB writes.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < len {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        s.write_all(&[1]).await?;
        for _ in 0..len / CHUNK {
            s.write_all(&buf).await?;
        }
        s.write_all(&buf[..len % CHUNK]).await?;
        Ok::<_, std::io::Error>(())
    });
    let mut c = TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    let t = Instant::now();
    for piece in data.chunks(CHUNK) {
        c.write_all(piece).await?;
    }
    let mut ack = [0u8; 1];
    c.read_exact(&mut ack).await?;
    let raw_write = t.elapsed();
    let mut back = vec![0u8; len];
    back.fill(1); // fault the pages in before timing
    let t = Instant::now();
    c.read_exact(&mut back).await?;
    let raw_read = t.elapsed();
    server.await??;

    // Through the node.
    let config = NodeConfig {
        listen: "127.0.0.1:0".parse()?,
        discovery: None,
        session: rela_core::session::SessionConfig { quota: len as u64, ..Default::default() },
        ..NodeConfig::default()
    };
    let node = Node::start(config, Box::new(OwnedHostBackend::with_capacity(len))).await?;
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let mut options = ClientOptions::default();
    if let Some(kib) = env("RELA_CHUNK_KIB") {
        options.chunk = Some((kib * 1024) as u32);
    }
    if let Some(w) = env("RELA_WINDOW") {
        options.window = w;
    }
    let mut client = Client::connect_with(node.local_addr(), None, options).await?;
    let h = client.alloc(len as u64).await?;
    // Untimed first pass: faults in the backend arena and grows the connection's buffers.
    client.write(h, 0, &data).await?;
    let t = Instant::now();
    client.write(h, 0, &data).await?;
    let relay_write = t.elapsed();
    back.fill(0);
    let t = Instant::now();
    client.read_into(h, 0, &mut back).await?;
    let relay_read = t.elapsed();
    assert!(back == data, "round trip differs");
    client.close().await?;
    node.shutdown().await?;

    let rate = |d: std::time::Duration| gib / d.as_secs_f64();
    println!("{mib} MiB over loopback");
    println!("raw tcp  write {:6.2} GiB/s   read {:6.2} GiB/s", rate(raw_write), rate(raw_read));
    println!("relay    write {:6.2} GiB/s   read {:6.2} GiB/s", rate(relay_write), rate(relay_read));
    println!(
        "ratio    write {:6.2}×        read {:6.2}×",
        raw_write.as_secs_f64() / relay_write.as_secs_f64(),
        raw_read.as_secs_f64() / relay_read.as_secs_f64()
    );
    Ok(())
}
