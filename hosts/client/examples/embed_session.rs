//! A persistent embedding session for benchmark drivers (`scripts/bench/embed-peers.sh`): one
//! connection and one MODEL_LOAD, then timed INFER requests on command.
//!
//! ```text
//! cargo run --release -p rela-client --example embed_session -- ADDR MODEL TEXTS_FILE
//! ```
//!
//! `TEXTS_FILE` holds one text per line. Commands arrive on standard input, one per line, and
//! each answer ends with a line starting `ok` (or `error ...`):
//!
//! - `bench B SECONDS`: embeds the texts in batches of `B` (batch `i` holds texts
//!   `(i·B + j) mod count` for `j < B`), for at least `SECONDS` and at least one batch; answers
//!   `ok SENTENCES ELAPSED_SECONDS`.
//! - `one I REPS`: embeds text `I` alone `REPS` times; answers `ok` and the seconds of each run.
//! - `vectors`: embeds every text (batches of at most 32); answers one line of floats per text,
//!   then `ok`.
//! - `quit`.
//!
//! Times are taken here, on the client's side, around each request.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::Instant;

use rela_client::{BlockingClient, ClientError};

fn main() {
    if let Err(e) = run() {
        eprintln!("embed_session: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, model, file] = args.as_slice() else {
        return Err("usage: embed_session ADDR MODEL TEXTS_FILE".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let texts = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let texts: Vec<&str> = texts.lines().collect();
    if texts.is_empty() {
        return Err(format!("{file}: no texts"));
    }
    let err = |e: ClientError| e.to_string();
    let mut client = BlockingClient::connect(addr, None).map_err(err)?;
    let model = client.model_load(model, None).map_err(err)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: &str| -> Result<(), String> {
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| e.to_string())
    };
    say(&mut out, "ready")?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["bench", b, seconds] => {
                let (Ok(b), Ok(seconds)) = (b.parse::<usize>(), seconds.parse::<f64>()) else {
                    say(&mut out, "error bench B SECONDS")?;
                    continue;
                };
                let b = b.max(1);
                let (t, mut sent, mut i) = (Instant::now(), 0usize, 0usize);
                while sent == 0 || t.elapsed().as_secs_f64() < seconds {
                    let batch: Vec<&str> = (0..b).map(|j| texts[(i * b + j) % texts.len()]).collect();
                    client.infer(model, &batch).map_err(err)?;
                    sent += b;
                    i += 1;
                }
                say(&mut out, &format!("ok {sent} {:.6}", t.elapsed().as_secs_f64()))?;
            }
            ["one", i, reps] => {
                let (Ok(i), Ok(reps)) = (i.parse::<usize>(), reps.parse::<usize>()) else {
                    say(&mut out, "error one I REPS")?;
                    continue;
                };
                let text = [texts[i % texts.len()]];
                let mut times = Vec::with_capacity(reps);
                for _ in 0..reps {
                    let t = Instant::now();
                    client.infer(model, &text).map_err(err)?;
                    times.push(format!("{:.6}", t.elapsed().as_secs_f64()));
                }
                say(&mut out, &format!("ok {}", times.join(" ")))?;
            }
            ["vectors"] => {
                for chunk in texts.chunks(32) {
                    for v in client.infer(model, chunk).map_err(err)? {
                        let line: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
                        say(&mut out, &line.join(" "))?;
                    }
                }
                say(&mut out, "ok")?;
            }
            ["quit"] => break,
            _ => say(&mut out, &format!("error unknown command {line:?}"))?,
        }
    }
    client.close().map_err(err)
}
