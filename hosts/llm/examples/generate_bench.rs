//! Host forward-pass speed: prompt processing and greedy decode tokens/s on a GGUF model.
//!
//! `cargo run -p rela-llm --release --example generate_bench -- [MODEL.gguf] [PROMPT_TOKENS]
//! [DECODE_TOKENS] [THREADS] [RUNS] [STREAMS] [ACTIVATIONS]`
//!
//! `THREADS` sizes the forward pass's pool (`rela_llm::threads`; 0 or absent: `RELA_KERNEL_THREADS`,
//! else one per core). Each of `RUNS` runs (default 1) processes a fixed prompt into a fresh
//! cache for each of `STREAMS` sequences (default 1; each its own prompt), then decodes them
//! greedily, all sequences one token per step through `Model::forward_batch` (one sequence:
//! `Model::forward`), and prints one line with the totals over the sequences:
//! `threads T streams S prompt N tokens S s P tok/s decode M tokens S s D tok/s`, and
//! `activations q8` after it when `ACTIVATIONS` is `q8` (`rela_llm::Activations`; absent: the
//! `RELA_ACTIVATIONS` variable, which `serve --activations` reads too, else `f32`).

use std::time::Instant;

use rela_llm::generate::argmax;
use rela_llm::{Activations, GgufFile, Model};

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
    let streams = num(1)?.max(1);
    let activations: Activations = match args.next() {
        Some(a) => a.parse()?,
        None => std::env::var("RELA_ACTIVATIONS").as_deref().unwrap_or("f32").parse()?,
    };
    if threads > 0 {
        rela_llm::threads::set_threads(threads);
    }
    let file = GgufFile::open(&path)?;
    let model = Model::new(&file)?.with_activations(activations);
    let vocab = model.config.vocab_size;
    // Fixed, arbitrary prompts of ordinary token ids (at least one token each).
    let prompts: Vec<Vec<u32>> = (0..streams as u32)
        .map(|s| {
            (0..n_prompt.max(1) as u32)
                .map(|i| 200 + (i * 7919 + s * 104_729) % (vocab as u32 - 400))
                .collect()
        })
        .collect();
    let n_prompt: usize = prompts.iter().map(Vec::len).sum();
    for _ in 0..runs {
        let mut caches: Vec<_> = prompts.iter().map(|p| model.new_cache(p.len() + n_decode)).collect();
        let t = Instant::now();
        let mut logits = Vec::with_capacity(streams * vocab);
        for (p, c) in prompts.iter().zip(&mut caches) {
            logits.extend(model.prefill(p, c)?);
        }
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut next = vec![0u32; streams];
        for _ in 0..n_decode {
            for (n, l) in next.iter_mut().zip(logits.chunks_exact(vocab)) {
                *n = argmax(l) as u32;
            }
            if streams == 1 {
                model.forward(next[0], &mut caches[0], &mut logits)?;
            } else {
                let mut refs: Vec<_> = caches.iter_mut().collect();
                model.forward_batch(&next, &mut refs, &mut logits)?;
            }
        }
        let tg = t.elapsed().as_secs_f64();
        let decoded = n_decode * streams;
        println!(
            "threads {} streams {streams} prompt {n_prompt} tokens {pp:.3} s {:.1} tok/s decode {decoded} tokens {tg:.3} s {:.1} tok/s{}",
            rela_llm::threads::threads(),
            n_prompt as f64 / pp,
            decoded as f64 / tg,
            if activations == Activations::F32 {
                String::new()
            } else {
                format!(" activations {}", activations.name())
            }
        );
    }
    Ok(())
}
