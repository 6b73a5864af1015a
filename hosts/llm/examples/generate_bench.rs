//! Host reference path speed: prompt processing and greedy decode tokens/s on a GGUF model.
//!
//! `cargo run -p rela-llm --release --example generate_bench -- [MODEL.gguf] [PROMPT_TOKENS] [DECODE_TOKENS]`
//! (threads: rayon's default, or `RAYON_NUM_THREADS`).

use std::time::Instant;

use rela_llm::generate::argmax;
use rela_llm::{GgufFile, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let n_prompt: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let n_decode: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let file = GgufFile::open(&path)?;
    let model = Model::new(&file)?;
    let vocab = model.config.vocab_size as u32;
    // A fixed, arbitrary prompt of ordinary token ids.
    let prompt: Vec<u32> = (0..n_prompt as u32).map(|i| 200 + (i * 7919) % (vocab - 400)).collect();
    let mut cache = model.new_cache(n_prompt + n_decode);
    let t = Instant::now();
    let mut logits = model.prefill(&prompt, &mut cache)?;
    let pp = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n_decode {
        let next = argmax(&logits) as u32;
        model.forward(next, &mut cache, &mut logits)?;
    }
    let tg = t.elapsed().as_secs_f64();
    println!(
        "threads {}: prompt {n_prompt} tokens in {pp:.2} s = {:.1} tok/s; decode {n_decode} tokens in {tg:.2} s = {:.1} tok/s",
        rayon::current_num_threads(),
        n_prompt as f64 / pp,
        n_decode as f64 / tg
    );
    Ok(())
}
