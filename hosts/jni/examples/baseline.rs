//! The Rust client measured as `hosts/jvm/src/test/java/org/vramrelay/Bench.java` measures the
//! JNI path, for docs/BENCHMARKS.md: `cargo run --release -p rela-jni --example baseline --
//! HOST:PORT TOKEN_FILE`. Prints the median PING round trip and the best of five 64 MiB writes
//! and reads.

use std::time::{Duration, Instant};

use rela_client::{BlockingClient, ClientOptions};

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, token_file] = &args[..] else {
        return Err("usage: baseline HOST:PORT TOKEN_FILE".into());
    };
    let token = std::fs::read_to_string(token_file)?.trim().as_bytes().to_vec();
    let (mut c, _) = BlockingClient::connect_host(addr, Some(&token), ClientOptions::default())?;
    for _ in 0..200 {
        c.ping()?;
    }
    let mut rtt: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            c.ping().map(|_| t.elapsed())
        })
        .collect::<Result<_, _>>()?;
    rtt.sort();
    println!("ping p50 {:.1} us", rtt[rtt.len() / 2].as_secs_f64() * 1e6);

    let buf = c.alloc(SIZE as u64)?;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31) as u8).collect();
    let mut back = vec![0u8; SIZE];
    let (mut w, mut r) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        c.write(buf, 0, &data)?;
        w = w.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        c.read_into(buf, 0, &mut back)?;
        r = r.min(t.elapsed().as_secs_f64());
        assert!(back == data, "read back differs");
    }
    println!("write 64 MiB rust {:.0} MiB/s", 64.0 / w);
    println!("read 64 MiB rust {:.0} MiB/s", 64.0 / r);
    c.free(buf)?;
    c.close()?;
    Ok(())
}
