//! The forward pass's and the generation loop's pieces on their own: RMSNorm, RoPE, softmax,
//! sampling and the UTF-8 streaming decoder. No model file needed.

use rela_llm::forward::{rms_norm, rope_inv_freq, rope_norm, silu, softmax};
use rela_llm::generate::{Sampler, SamplingParams, Utf8Stream, argmax, top2_margin};

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn rms_norm_matches_the_formula_and_ignores_scale() {
    let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3).collect();
    let w: Vec<f32> = (0..64).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
    let eps = 1e-5f32;
    let mut out = vec![0.0; 64];
    rms_norm(&x, &w, eps, &mut out);
    let ms: f32 = x.iter().map(|v| v * v).sum::<f32>() / 64.0;
    for i in 0..64 {
        let want = x[i] / (ms + eps).sqrt() * w[i];
        assert!(close(out[i], want, 1e-5), "{i}: {} vs {want}", out[i]);
    }
    let scaled: Vec<f32> = x.iter().map(|v| v * 1000.0).collect();
    let mut out2 = vec![0.0; 64];
    rms_norm(&scaled, &w, eps, &mut out2);
    for i in 0..64 {
        assert!(close(out[i], out2[i], 1e-4), "{i}");
    }
    // Unit weights give a vector of root mean square 1.
    let mut out3 = vec![0.0; 64];
    rms_norm(&x, &[1.0; 64], 0.0, &mut out3);
    let rms = (out3.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
    assert!(close(rms, 1.0, 1e-5), "{rms}");
}

/// Hugging Face's rotary embedding ("rotate_half", NEOX style): dimension `i` pairs with
/// `i + d/2`.
fn rope_neox(head: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = head.len() / 2;
    for (i, &f) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = a * sin + b * cos;
    }
}

/// llama.cpp's converter's permutation of a q/k head: GGUF dimension `2i` is HF's `i`, `2i+1` is
/// HF's `i + d/2`.
fn permute(hf: &[f32]) -> Vec<f32> {
    let half = hf.len() / 2;
    (0..hf.len()).map(|j| if j % 2 == 0 { hf[j / 2] } else { hf[j / 2 + half] }).collect()
}

#[test]
fn rope_rotates_pairs_by_position_times_frequency() {
    let d = 64;
    let inv = rope_inv_freq(d, 10_000.0);
    assert_eq!(inv.len(), 32);
    assert_eq!(inv[0], 1.0);
    assert!(close(inv[1], 10_000f32.powf(-2.0 / 64.0), 1e-6));
    // Position 0 is the identity.
    let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).sin()).collect();
    let mut y = x.clone();
    rope_norm(&mut y, 0, &inv);
    assert_eq!(x, y);
    // A unit vector in pair i turns by pos·inv[i] within that pair only.
    for i in [0, 1, 5, 31] {
        let mut e = vec![0f32; d];
        e[2 * i] = 1.0;
        rope_norm(&mut e, 7, &inv);
        let th = 7.0 * inv[i];
        assert!(close(e[2 * i], th.cos(), 1e-6) && close(e[2 * i + 1], th.sin(), 1e-6), "pair {i}");
        assert_eq!(e.iter().filter(|v| **v != 0.0).count(), 2, "pair {i} leaks");
    }
}

#[test]
fn rope_keeps_norms_and_scores_depend_on_relative_position() {
    let d = 64;
    let inv = rope_inv_freq(d, 100_000.0);
    let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).cos()).collect();
    let k: Vec<f32> = (0..d).map(|i| (i as f32 * 0.91).sin()).collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let rot = |v: &[f32], p| {
        let mut v = v.to_vec();
        rope_norm(&mut v, p, &inv);
        v
    };
    assert!(close(dot(&rot(&q, 123), &rot(&q, 123)), dot(&q, &q), 1e-5));
    let s1 = dot(&rot(&q, 10), &rot(&k, 3));
    let s2 = dot(&rot(&q, 107), &rot(&k, 100));
    assert!(close(s1, s2, 1e-4), "{s1} vs {s2}");
}

#[test]
fn rope_norm_on_permuted_weights_equals_neox_on_hugging_face_layout() {
    // Scores between a permuted (GGUF) q and k rotated by the normal style equal the scores of
    // the unpermuted (HF) q and k rotated by rotate_half: the reason GGUF q/k rows are permuted.
    let d = 64;
    let inv = rope_inv_freq(d, 10_000.0);
    let q: Vec<f32> = (0..d).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.25).collect();
    let k: Vec<f32> = (0..d).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
    for (pq, pk) in [(5usize, 2usize), (40, 39), (300, 0)] {
        let (mut qh, mut kh) = (q.clone(), k.clone());
        rope_neox(&mut qh, pq, &inv);
        rope_neox(&mut kh, pk, &inv);
        let (mut qg, mut kg) = (permute(&q), permute(&k));
        rope_norm(&mut qg, pq, &inv);
        rope_norm(&mut kg, pk, &inv);
        assert_eq!(permute(&qh).len(), qg.len());
        for (a, b) in permute(&qh).iter().zip(&qg) {
            assert!(close(*a, *b, 1e-5), "({pq},{pk}): {a} vs {b}");
        }
        // Rotating the unpermuted layout with the normal style is not the same thing.
        let mut wrong = q.clone();
        rope_norm(&mut wrong, pq, &inv);
        assert!(wrong.iter().zip(&qh).any(|(a, b)| !close(*a, *b, 1e-3)) || pq == 0);
    }
}

#[test]
fn softmax_sums_to_one_shift_invariant_no_overflow() {
    let mut a = vec![1.0f32, 2.0, 3.0, -4.0];
    softmax(&mut a);
    assert!(close(a.iter().sum(), 1.0, 1e-6));
    let e: Vec<f32> = [1.0f32, 2.0, 3.0, -4.0].iter().map(|v| v.exp()).collect();
    let s: f32 = e.iter().sum();
    for (x, y) in a.iter().zip(&e) {
        assert!(close(*x, y / s, 1e-6));
    }
    let mut b = vec![1001.0f32, 1002.0, 1003.0, 996.0];
    softmax(&mut b);
    for (x, y) in a.iter().zip(&b) {
        assert!(close(*x, *y, 1e-5), "{x} vs {y}");
    }
    let mut c = vec![f32::NEG_INFINITY, 0.0];
    softmax(&mut c);
    assert_eq!(c, vec![0.0, 1.0]);
    let mut empty: Vec<f32> = vec![];
    softmax(&mut empty);
    assert!(close(silu(0.0), 0.0, 0.0) && close(silu(2.0), 2.0 / (1.0 + (-2f32).exp()), 1e-6));
}

#[test]
fn argmax_and_margin() {
    assert_eq!(argmax(&[0.5, 3.0, -1.0, 3.0]), 1, "lowest id on ties");
    assert_eq!(top2_margin(&[0.5, 3.0, -1.0, 2.25]), 0.75);
    assert_eq!(top2_margin(&[2.0, 2.0]), 0.0);
}

fn logits() -> Vec<f32> {
    // Probabilities (temperature 1) roughly 0.50, 0.30, 0.15, 0.05 on ids 3, 0, 2, 1.
    [0.30f32, 0.05, 0.15, 0.50].iter().map(|p| p.ln()).collect()
}

#[test]
fn greedy_is_argmax_whatever_the_seed() {
    for seed in 0..20 {
        let mut s = Sampler::new(SamplingParams { seed, ..SamplingParams::GREEDY });
        assert_eq!(s.sample(&logits()), 3);
    }
}

#[test]
fn seeded_sampling_is_deterministic_and_seeds_differ() {
    let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 42 };
    let run = |p: SamplingParams| {
        let mut s = Sampler::new(p);
        (0..200).map(|_| s.sample(&logits())).collect::<Vec<_>>()
    };
    assert_eq!(run(p), run(p));
    assert_ne!(run(p), run(SamplingParams { seed: 43, ..p }));
    // Frequencies follow the probabilities (4000 draws; a fixed seed keeps this deterministic).
    let mut s = Sampler::new(p);
    let mut n = [0usize; 4];
    for _ in 0..4000 {
        n[s.sample(&logits()) as usize] += 1;
    }
    for (id, want) in [(3, 0.50), (0, 0.30), (2, 0.15), (1, 0.05)] {
        let got = n[id] as f64 / 4000.0;
        assert!((got - want).abs() < 0.03, "id {id}: {got} vs {want}");
    }
}

#[test]
fn top_k_keeps_the_k_highest() {
    let p = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 1 };
    let c = Sampler::new(p).candidates(&logits());
    assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 0]);
    assert!(close(c[0].1, 0.5 / 0.8, 1e-5) && close(c[1].1, 0.3 / 0.8, 1e-5));
    let mut s = Sampler::new(p);
    let draws: Vec<u32> = (0..500).map(|_| s.sample(&logits())).collect();
    assert!(draws.iter().all(|&t| t == 3 || t == 0));
    assert!(draws.contains(&0) && draws.contains(&3));
    let mut one = Sampler::new(SamplingParams { top_k: 1, temperature: 5.0, ..p });
    assert!((0..100).all(|_| one.sample(&logits()) == 3));
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    let ids = |top_p| {
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p, seed: 0 };
        Sampler::new(p).candidates(&logits()).iter().map(|x| x.0).collect::<Vec<_>>()
    };
    assert_eq!(ids(0.4), vec![3]);
    assert_eq!(ids(0.7), vec![3, 0]);
    assert_eq!(ids(0.9), vec![3, 0, 2]);
    assert_eq!(ids(1.0), vec![3, 0, 2, 1]);
    let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.7, seed: 0 };
    let c = Sampler::new(p).candidates(&logits());
    assert!(close(c.iter().map(|x| x.1).sum(), 1.0, 1e-6));
}

#[test]
fn temperature_sharpens_and_flattens() {
    let p = |t| SamplingParams { temperature: t, top_k: 0, top_p: 1.0, seed: 0 };
    let top = |t| Sampler::new(p(t)).candidates(&logits())[0].1;
    assert!(close(top(1.0), 0.5, 1e-5));
    // Temperature 1/2 squares the probabilities: 0.25 / (0.25 + 0.09 + 0.0225 + 0.0025).
    assert!(close(top(0.5), 0.25 / 0.365, 1e-5), "{}", top(0.5));
    assert!(top(10.0) < 0.3);
}

#[test]
fn utf8_stream_holds_partial_characters() {
    let mut s = Utf8Stream::new();
    assert_eq!(s.push(b"ab"), "ab");
    let e = "é".as_bytes();
    assert_eq!(s.push(&e[..1]), "");
    assert_eq!(s.push(&e[1..]), "é");
    let emoji = "🙂".as_bytes();
    assert_eq!(s.push(&emoji[..1]), "");
    assert_eq!(s.push(&emoji[1..3]), "");
    let mut rest = emoji[3..].to_vec();
    rest.extend_from_slice("x日".as_bytes());
    rest.push("本".as_bytes()[0]);
    assert_eq!(s.push(&rest), "🙂x日");
    assert_eq!(s.push(&"本".as_bytes()[1..]), "本");
    // Invalid bytes become U+FFFD and do not stall what follows.
    assert_eq!(s.push(&[0xFF, b'z']), "\u{FFFD}z");
    assert_eq!(s.push(&[0xC3, b'z']), "\u{FFFD}z");
    // A character left unfinished at the end is U+FFFD.
    assert_eq!(s.push(&[0xE6, 0x97]), "");
    assert_eq!(s.finish(), "\u{FFFD}");
    assert_eq!(s.finish(), "");
    // Any split of a mixed string gives back the string.
    let text = "Noël · 日本語 🙂 ok";
    let b = text.as_bytes();
    for cut1 in 0..b.len() {
        for cut2 in cut1..b.len() {
            let mut s = Utf8Stream::new();
            let mut out = s.push(&b[..cut1]);
            out += &s.push(&b[cut1..cut2]);
            out += &s.push(&b[cut2..]);
            out += &s.finish();
            assert_eq!(out, text, "{cut1} {cut2}");
        }
    }
}
