//! Grouped-query attention over a layer's KV cache for a run of consecutive tokens: one token
//! when decoding, a whole prompt (causally masked) when processing one.
//!
//! Query `t` of the run sits at position `pos0 + t` and attends to positions `0..=pos0 + t`;
//! head `h` reads the keys and values of KV head `h / (n_heads / n_kv_heads)`. Scores are
//! scaled by `1/sqrt(head_dim)` and go through [`softmax`] (max subtracted, `exp` from the
//! standard library), so the arithmetic is the reference's but for the order of the sums. Tokens
//! and heads are split across the pool of [`threads`] when there is enough work.

use crate::forward::softmax;
use crate::simd::{Kernel, Madd, dispatch, hsum};
use crate::threads;

/// Multiply-adds below which attention runs on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// The shape of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// Query heads.
    pub(crate) n_heads: usize,
    /// Key/value heads (dividing `n_heads`).
    pub(crate) n_kv_heads: usize,
    /// Elements per head.
    pub(crate) head_dim: usize,
}

/// `out` (`tokens × n_heads·head_dim`) = attention of the queries `q` (same shape, RoPE
/// applied) at positions `pos0..pos0 + tokens` over `keys` and `values` (positions from 0, at
/// least `pos0 + tokens` of them, `n_kv_heads·head_dim` each). `scores` is scratch for the
/// calling thread (grown as needed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    shape: Heads,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    tokens: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let q_dim = shape.n_heads * shape.head_dim;
    let kv_dim = shape.n_kv_heads * shape.head_dim;
    let n_pos = pos0 + tokens;
    assert_eq!(q.len(), tokens * q_dim, "attention queries");
    assert_eq!(out.len(), tokens * q_dim, "attention output");
    assert!(keys.len() >= n_pos * kv_dim && values.len() >= n_pos * kv_dim, "attention cache");
    let work = tokens * (pos0 + tokens.div_ceil(2)) * q_dim * 2;
    if work < PAR_MIN || threads::threads() == 1 {
        if scores.len() < n_pos {
            scores.resize(n_pos, 0.0);
        }
        for (t, (q, out)) in q.chunks_exact(q_dim).zip(out.chunks_exact_mut(q_dim)).enumerate() {
            for h in 0..shape.n_heads {
                let scores = scores.as_mut_slice();
                let job = Head { shape, q, keys, values, n_pos: pos0 + t + 1, h, scores, out };
                dispatch(job);
            }
        }
        return;
    }
    // One task per (token, head): causal rows differ in length, so many small tasks balance.
    let mut heads: Vec<&mut [f32]> = out.chunks_exact_mut(shape.head_dim).collect();
    threads::for_each_mut(&mut heads, |i, out| {
        let (t, h) = (i / shape.n_heads, i % shape.n_heads);
        let q = &q[t * q_dim..(t + 1) * q_dim];
        SCORES.with_borrow_mut(|scores| {
            if scores.len() < n_pos {
                scores.resize(n_pos, 0.0);
            }
            let job = Head { shape, q, keys, values, n_pos: pos0 + t + 1, h, scores, out };
            dispatch(job);
        });
    });
}

std::thread_local! {
    /// Each pool thread's scratch for one head's scores, kept between calls. A task holds it
    /// only while [`Head`] runs, which calls nothing on the pool.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One query head over the first `n_pos` positions; `out` is the head's `head_dim` outputs
/// (or, on the serial path, the token's whole row, of which the head's part is written).
struct Head<'a> {
    shape: Heads,
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    n_pos: usize,
    h: usize,
    scores: &'a mut [f32],
    out: &'a mut [f32],
}

impl Kernel for Head<'_> {
    type Output = ();

    #[inline(always)]
    fn run<M: Madd>(self) {
        let Self { shape, q, keys, values, n_pos, h, scores, out } = self;
        let hd = shape.head_dim;
        let kv_dim = shape.n_kv_heads * hd;
        let off = (h / (shape.n_heads / shape.n_kv_heads)) * hd;
        let q = &q[h * hd..(h + 1) * hd];
        let out = if out.len() == hd { out } else { &mut out[h * hd..(h + 1) * hd] };
        let scale = 1.0 / (hd as f32).sqrt();
        let scores = &mut scores[..n_pos];
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot::<M>(q, &keys[j * kv_dim + off..j * kv_dim + off + hd]) * scale;
        }
        softmax(scores);
        out.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let v = &values[j * kv_dim + off..j * kv_dim + off + hd];
            for (o, &vi) in out.iter_mut().zip(v) {
                *o = M::madd(p, vi, *o);
            }
        }
    }
}

/// `a · b` over 16 lanes.
#[inline(always)]
fn dot<M: Madd>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] = M::madd(x[i], y[i], acc[i]);
        }
    }
    let mut s = hsum(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s = M::madd(*x, *y, s);
    }
    s
}
