//! Host forward-pass speed: prompt processing and greedy decode tokens/s on a GGUF model.
//!
//! `cargo run -p rela-llm --release --example generate_bench -- [MODEL.gguf] [PROMPT_TOKENS]
//! [DECODE_TOKENS] [THREADS] [RUNS]`
//!
//! `THREADS` sizes the forward pass's pool (`rela_llm::threads`; 0 or absent: `RELA_KERNEL_THREADS`,
//! else one per core). Each of `RUNS` runs (default 1) processes the same fixed prompt into a
//! fresh cache, then decodes greedily, and prints one line:
//! `threads T prompt N tokens S s P tok/s decode M tokens S s D tok/s`.

use std::time::Instant;

use rela_llm::generate::argmax;
use rela_llm::{GgufFile, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let mut num = |default: usize| -> Result<usize, std::num::ParseIntError> {
        args.next().map(|s| s.parse()).transpose().map(|v| v.unwrap_or(default))
    };
    let n_prompt = num(128)?;
    let n_decode = num(64)?;
    let threads = num(0)?;
    let runs = num(1)?;
    if threads > 0 {
        rela_llm::threads::set_threads(threads);
    }
    let file = GgufFile::open(&path)?;
    let model = Model::new(&file)?;
    let vocab = model.config.vocab_size as u32;
    // A fixed, arbitrary prompt of ordinary token ids (at least one token).
    let prompt: Vec<u32> = (0..n_prompt.max(1) as u32).map(|i| 200 + (i * 7919) % (vocab - 400)).collect();
    for _ in 0..runs {
        let mut cache = model.new_cache(prompt.len() + n_decode);
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
            "threads {} prompt {} tokens {pp:.3} s {:.1} tok/s decode {n_decode} tokens {tg:.3} s {:.1} tok/s",
            rela_llm::threads::threads(),
            prompt.len(),
            prompt.len() as f64 / pp,
            n_decode as f64 / tg
        );
    }
    Ok(())
}
