//! SmolLM2-135M-Instruct Q4_1: the forward pass's two paths agree. A prompt processed as one
//! batch (or in pieces) gives the logits and the cache that token-by-token steps give, and a
//! refused step changes nothing. Skipped loudly without the file unless RELA_REQUIRE_GGUF=1.

// Only the model is read here, not the JSON fixtures.
#[allow(dead_code)]
mod common;

use rela_llm::generate::argmax;
use rela_llm::{Activations, ForwardError, GgufTokenizer, KvCache, Model};

/// Largest logit difference allowed between the paths, as a fraction of the logit range: both
/// are f32 with sums in another order (measured below 1e-6).
const TOL: f32 = 1e-5;

fn close(a: &[f32], b: &[f32]) -> Result<(), String> {
    let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = a.iter().copied().fold(f32::INFINITY, f32::min);
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    if worst > TOL * (max - min) {
        return Err(format!("logits differ by {worst} (range {})", max - min));
    }
    Ok(())
}

/// Greedy continuation of `n` tokens from `logits` and `cache`.
fn continue_greedy(model: &Model<'_>, cache: &mut KvCache, mut logits: Vec<f32>, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits) as u32;
        out.push(next);
        model.forward(next, cache, &mut logits).expect("step");
    }
    out
}

#[test]
fn batched_prefill_equals_token_by_token_steps() {
    let Some(f) = common::model("batched_prefill_equals_token_by_token_steps") else { return };
    let model = Model::new(f).expect("model");
    let tok = GgufTokenizer::from_gguf(&f.gguf).expect("tokenizer");
    let ids = tok
        .encode(
            "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts flew to the Moon and",
            false,
        )
        .expect("encode");
    assert!(ids.len() > 16, "{} ids", ids.len());
    let vocab = model.config.vocab_size;

    let mut stepped = model.new_cache(ids.len() + 8);
    let mut l_step = vec![0f32; vocab];
    for &t in &ids {
        model.forward(t, &mut stepped, &mut l_step).expect("step");
    }
    let mut batched = model.new_cache(ids.len() + 8);
    let l_batch = model.prefill(&ids, &mut batched).expect("prefill");
    assert_eq!(batched.len(), ids.len());
    close(&l_step, &l_batch).expect("one batch");

    // In pieces: a single token, a short batch, the rest.
    let mut pieces = model.new_cache(ids.len() + 8);
    let mut l_pieces = Vec::new();
    for r in [0..1, 1..8, 8..ids.len()] {
        l_pieces = model.prefill(&ids[r], &mut pieces).expect("prefill piece");
    }
    close(&l_step, &l_pieces).expect("in pieces");

    // The caches carry on alike.
    let a = continue_greedy(&model, &mut stepped, l_step, 8);
    let b = continue_greedy(&model, &mut batched, l_batch, 8);
    let c = continue_greedy(&model, &mut pieces, l_pieces, 8);
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[test]
fn refused_steps_leave_the_cache_unchanged() {
    let Some(f) = common::model("refused_steps_leave_the_cache_unchanged") else { return };
    let model = Model::new(f).expect("model");
    let vocab = model.config.vocab_size as u32;
    let mut cache = model.new_cache(8);
    model.prefill(&[1, 2, 3], &mut cache).expect("prefill");
    assert_eq!(model.prefill(&[5, vocab, 6], &mut cache), Err(ForwardError::BadToken(vocab)));
    assert_eq!(cache.len(), 3);
    assert_eq!(model.prefill(&[5; 6], &mut cache), Err(ForwardError::ContextFull(8)));
    assert_eq!(cache.len(), 3);
    let mut logits = vec![0f32; vocab as usize];
    assert_eq!(model.forward(vocab + 7, &mut cache, &mut logits), Err(ForwardError::BadToken(vocab + 7)));
    assert_eq!(cache.len(), 3);
    // What fits still runs.
    model.prefill(&[5; 5], &mut cache).expect("prefill to the end");
    assert_eq!(cache.len(), 8);
    assert_eq!(model.forward(5, &mut cache, &mut logits), Err(ForwardError::ContextFull(8)));
}

#[test]
fn a_batch_of_sequences_steps_as_each_would_alone() {
    let Some(f) = common::model("a_batch_of_sequences_steps_as_each_would_alone") else { return };
    let tok = GgufTokenizer::from_gguf(&f.gguf).expect("tokenizer");
    batch_steps_as_alone(&Model::new(f).expect("model"), &tok);
}

#[test]
fn with_eight_bit_activations_a_batch_of_sequences_steps_as_each_would_alone() {
    let name = "with_eight_bit_activations_a_batch_of_sequences_steps_as_each_would_alone";
    let Some(f) = common::model(name) else { return };
    if !common::q8_runs_here(name) {
        return;
    }
    let tok = GgufTokenizer::from_gguf(&f.gguf).expect("tokenizer");
    batch_steps_as_alone(&Model::new(f).expect("model").with_activations(Activations::Q8), &tok);
}

/// Three sequences stepped one at a time and together through `forward_batch` get the same
/// logits (up to f32 rounding) and the same greedy tokens; a refused batch runs nothing.
fn batch_steps_as_alone(model: &Model<'_>, tok: &GgufTokenizer) {
    let vocab = model.config.vocab_size;
    let prompts = [
        "Once upon a time",
        "def fibonacci(n):\n    ",
        "The capital of France is Paris. The capital of Italy",
    ];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, false).expect("encode")).collect();
    let mut alone: Vec<KvCache> = ids.iter().map(|i| model.new_cache(i.len() + 8)).collect();
    let mut batched: Vec<KvCache> = ids.iter().map(|i| model.new_cache(i.len() + 8)).collect();
    let mut l_alone: Vec<Vec<f32>> = Vec::new();
    for ((i, a), b) in ids.iter().zip(&mut alone).zip(&mut batched) {
        l_alone.push(model.prefill(i, a).expect("prefill"));
        model.prefill(i, b).expect("prefill");
    }
    let mut l_batch: Vec<f32> = l_alone.concat();
    for step in 0..6 {
        let next: Vec<u32> = l_batch.chunks_exact(vocab).map(|l| argmax(l) as u32).collect();
        for ((n, c), l) in next.iter().zip(&mut alone).zip(&mut l_alone) {
            model.forward(*n, c, l).expect("step");
        }
        let mut refs: Vec<&mut KvCache> = batched.iter_mut().collect();
        model.forward_batch(&next, &mut refs, &mut l_batch).expect("batch step");
        for (i, (a, b)) in l_alone.iter().zip(l_batch.chunks_exact(vocab)).enumerate() {
            close(a, b).unwrap_or_else(|e| panic!("step {step}, sequence {i}: {e}"));
            assert_eq!(argmax(a), argmax(b), "step {step}, sequence {i}");
        }
    }
    for (a, b) in alone.iter().zip(&batched) {
        assert_eq!(a.len(), b.len());
    }

    // A refused batch runs nothing.
    let lens: Vec<usize> = batched.iter().map(KvCache::len).collect();
    let mut refs: Vec<&mut KvCache> = batched.iter_mut().collect();
    let bad = [5, vocab as u32, 6];
    assert_eq!(model.forward_batch(&bad, &mut refs, &mut l_batch), Err(ForwardError::BadToken(vocab as u32)));
    assert_eq!(batched.iter().map(KvCache::len).collect::<Vec<_>>(), lens);
}
