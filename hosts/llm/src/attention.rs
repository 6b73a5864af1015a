//! Grouped-query attention over a layer's KV cache for a run of consecutive tokens: one token
//! when decoding, a whole prompt (causally masked) when processing one.
//!
//! Query `t` of the run sits at position `pos0 + t` and attends to positions `0..=pos0 + t`;
//! head `h` reads the keys and values of KV head `h / (n_heads / n_kv_heads)`. The keys are
//! stored transposed in tiles ([`key_at`]): for each KV head and chunk of [`KEY_CHUNK`]
//! positions, element `d` of the chunk's sixteen keys side by side, `d` after `d`. Scores then
//! come sixteen positions at a time as sums of `q[d] · keys[d][p..p + 16]`, with no horizontal
//! sums, and a head's keys are read in one sequential run (a row per element, as before the
//! tiles, made as many short runs as a head has elements, which the caches' prefetchers did not
//! follow). The query heads that share a KV head are computed together, so each key and value
//! is read and widened once for all of them. Scores are scaled by `1/sqrt(head_dim)` and go through a softmax (max subtracted,
//! [`exp`] in a form that vectorizes, within 4e-7 of the standard library's), so the
//! arithmetic is the reference's but for the order of the sums and `exp`'s last bits. Tokens and
//! heads are split across the pool of [`threads`] when there is enough work.
//!
//! A cache stores its keys and values as f32 or as f16 ([`KvElem`]): f16 halves the memory a
//! cache takes and the bytes each step reads (what bounds attention over long contexts), at
//! the cost of rounding each key and value to 11 significant bits, as llama.cpp's default cache
//! does. The arithmetic is f32 either way: f16 values are widened sixteen at a time (one
//! `vcvtph2ps` with AVX-512, exact bit operations elsewhere).

use rela_kernels::fast::exp;

use crate::simd::{Fused, Kernel, Madd, dispatch, f16_widen};
use crate::threads;

/// How a KV cache stores a key or value: `f32`, or `u16` holding an f16's bits.
pub(crate) trait KvElem: Copy + Default + Send + Sync + 'static {
    /// `x` as stored (an f16 rounded to nearest, ties to even).
    fn store(x: f32) -> Self;

    /// `src` as stored, into `dst` (of the same length).
    fn store_slice(dst: &mut [Self], src: &[f32]);

    /// A stored value as f32, exactly.
    fn widen1(self) -> f32;

    /// One group of query heads over keys and values stored as `Self`, compiled for the best
    /// instruction set the CPU has.
    fn run_group(group: Group<'_, Self>);
}

impl KvElem for f32 {
    #[inline(always)]
    fn store(x: f32) -> Self {
        x
    }

    fn store_slice(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }

    #[inline(always)]
    fn widen1(self) -> f32 {
        self
    }

    fn run_group(group: Group<'_, Self>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(Widened { group, widen: SamePrefetched(simd) });
        }
        dispatch(Widened { group, widen: Same });
    }
}

impl KvElem for u16 {
    #[inline(always)]
    fn store(x: f32) -> Self {
        half::f16::from_f32(x).to_bits()
    }

    fn store_slice(dst: &mut [Self], src: &[f32]) {
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        dst.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(src);
    }

    #[inline(always)]
    fn widen1(self) -> f32 {
        f16_widen(self)
    }

    fn run_group(group: Group<'_, Self>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(Widened { group, widen: CvtPh(simd) });
        }
        dispatch(Widened { group, widen: SoftF16 });
    }
}

/// Sixteen stored values as f32, exactly.
trait Widen<E>: Copy {
    fn w16(self, x: &[E; 16]) -> [f32; 16];

    /// Asks for the cache line at `at` (which need not be in bounds: nothing is read) to be
    /// brought closer, where the instruction set has a way to.
    #[inline(always)]
    fn prefetch(self, at: *const E) {
        let _ = at;
    }
}

/// f32 as stored.
#[derive(Clone, Copy)]
struct Same;

impl Widen<f32> for Same {
    #[inline(always)]
    fn w16(self, x: &[f32; 16]) -> [f32; 16] {
        *x
    }
}

/// f32 as stored, with AVX-512's way to prefetch.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct SamePrefetched(pulp::x86::V4);

#[cfg(target_arch = "x86_64")]
impl Widen<f32> for SamePrefetched {
    #[inline(always)]
    fn w16(self, x: &[f32; 16]) -> [f32; 16] {
        *x
    }

    #[inline(always)]
    fn prefetch(self, at: *const f32) {
        self.0.sse._mm_prefetch::<3>(at.cast::<i8>());
    }
}

/// f16 bits widened with integer operations and one multiply per value, with no branch, so the
/// loop vectorizes ([`f16_widen`]).
#[derive(Clone, Copy)]
struct SoftF16;

impl Widen<u16> for SoftF16 {
    #[inline(always)]
    fn w16(self, x: &[u16; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        for (o, &h) in out.iter_mut().zip(x) {
            *o = f16_widen(h);
        }
        out
    }
}

/// f16 bits widened by AVX-512's conversion instruction.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct CvtPh(pulp::x86::V4);

#[cfg(target_arch = "x86_64")]
impl Widen<u16> for CvtPh {
    #[inline(always)]
    fn w16(self, x: &[u16; 16]) -> [f32; 16] {
        pulp::cast(self.0.avx512f._mm512_cvtph_ps(pulp::cast(*x)))
    }

    #[inline(always)]
    fn prefetch(self, at: *const u16) {
        self.0.sse._mm_prefetch::<3>(at.cast::<i8>());
    }
}

/// Positions scored at once, and the chunks of the keys' tiles: the keys hold room for a multiple
/// of it ([`key_stride`]).
pub(crate) const KEY_CHUNK: usize = 16;

/// Key positions a layer's keys hold room for, per element, for `capacity` positions:
/// `capacity` rounded up to [`KEY_CHUNK`], so a chunk of positions that starts below `capacity`
/// lies whole within the keys.
pub(crate) fn key_stride(capacity: usize) -> usize {
    capacity.next_multiple_of(KEY_CHUNK)
}

/// Where element `e` (of `n_kv_heads · head_dim`) of the key at position `p` lies in a layer's
/// keys of [`key_stride`] `stride`: KV head `e / head_dim`'s `head_dim · stride` values hold,
/// chunk after chunk of [`KEY_CHUNK`] positions, the chunk's tile of `head_dim` runs of sixteen
/// (element `d` of each of its positions).
pub(crate) fn key_at(head_dim: usize, stride: usize, e: usize, p: usize) -> usize {
    let (kv, d) = (e / head_dim, e % head_dim);
    kv * head_dim * stride + p / KEY_CHUNK * head_dim * KEY_CHUNK + d * KEY_CHUNK + p % KEY_CHUNK
}

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
/// least `pos0 + tokens` of them): `keys` in tiles ([`key_at`]), `n_kv_heads·head_dim` times a
/// [`key_stride`] in all; `values` a position at a time, `n_kv_heads·head_dim` each. `scores` is
/// scratch for the calling thread (grown as needed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<E: KvElem>(
    shape: Heads,
    q: &[f32],
    keys: &[E],
    values: &[E],
    pos0: usize,
    tokens: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    check(shape, q, keys, values, pos0, tokens, out);
    let q_dim = shape.n_heads * shape.head_dim;
    let n_pos = pos0 + tokens;
    let work = tokens * (pos0 + tokens.div_ceil(2)) * q_dim * 2;
    if work < PAR_MIN || threads::threads() == 1 {
        return serial(shape, q, keys, values, pos0, out, scores);
    }
    // One task per (token, KV head): causal rows differ in length, so many small tasks balance.
    let group_dim = q_dim / shape.n_kv_heads;
    let mut groups: Vec<&mut [f32]> = out.chunks_exact_mut(group_dim).collect();
    threads::for_each_mut(&mut groups, |i, out| {
        let (t, kv) = (i / shape.n_kv_heads, i % shape.n_kv_heads);
        let q = &q[t * q_dim..(t + 1) * q_dim];
        SCORES.with_borrow_mut(|scores| {
            let scores = grown(scores, Group::<E>::scratch_len(shape, n_pos));
            E::run_group(Group { shape, q, keys, values, n_pos: pos0 + t + 1, kv, scores, out });
        });
    });
}

/// [`attend`] on the calling thread alone, with the thread's own scratch for the scores: what a
/// task of a parallel job runs (one sequence of a batched decode step).
pub(crate) fn attend_on_this_thread<E: KvElem>(
    shape: Heads,
    q: &[f32],
    keys: &[E],
    values: &[E],
    pos0: usize,
    tokens: usize,
    out: &mut [f32],
) {
    check(shape, q, keys, values, pos0, tokens, out);
    SCORES.with_borrow_mut(|scores| serial(shape, q, keys, values, pos0, out, scores));
}

/// Every head of every token of a checked [`attend`] call, a group of heads at a time, on the
/// calling thread.
fn serial<E: KvElem>(
    shape: Heads,
    q: &[f32],
    keys: &[E],
    values: &[E],
    pos0: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let q_dim = shape.n_heads * shape.head_dim;
    let group_dim = q_dim / shape.n_kv_heads;
    let scores = grown(scores, Group::<E>::scratch_len(shape, pos0 + q.len() / q_dim));
    for (t, (q, out)) in q.chunks_exact(q_dim).zip(out.chunks_exact_mut(q_dim)).enumerate() {
        for (kv, out) in out.chunks_exact_mut(group_dim).enumerate() {
            let scores = &mut *scores;
            E::run_group(Group { shape, q, keys, values, n_pos: pos0 + t + 1, kv, scores, out });
        }
    }
}

/// `scores`, grown to at least `len` values (a thread's scratch keeps its largest size).
fn grown(scores: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if scores.len() < len {
        scores.resize(len, 0.0);
    }
    scores
}

/// The shapes [`attend`] needs (a caller's bug otherwise).
fn check<E>(shape: Heads, q: &[f32], keys: &[E], values: &[E], pos0: usize, tokens: usize, out: &[f32]) {
    let q_dim = shape.n_heads * shape.head_dim;
    let kv_dim = shape.n_kv_heads * shape.head_dim;
    let n_pos = pos0 + tokens;
    assert_eq!(q.len(), tokens * q_dim, "attention queries");
    assert_eq!(out.len(), tokens * q_dim, "attention output");
    let stride = keys.len() / kv_dim.max(1);
    assert!(
        stride.is_multiple_of(KEY_CHUNK) && keys.len() == kv_dim * stride && stride >= n_pos,
        "attention keys"
    );
    assert!(values.len() >= n_pos * kv_dim, "attention values");
}

std::thread_local! {
    /// Each pool thread's scratch for one group's scores, kept between calls. A task holds it
    /// only while its heads run ([`Group`]), which call nothing on the pool.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The query heads that share one KV head, for one token, over the first `n_pos` positions.
/// Each key and value is read and widened once for all of them.
pub(crate) struct Group<'a, E> {
    shape: Heads,
    /// The token's queries, every head (RoPE applied).
    q: &'a [f32],
    keys: &'a [E],
    values: &'a [E],
    n_pos: usize,
    /// The KV head.
    kv: usize,
    /// Scratch for the scores: at least [`Group::scratch_len`] values.
    scores: &'a mut [f32],
    /// The group's heads' outputs, `head_dim` each, in order (heads `kv · group..`).
    out: &'a mut [f32],
}

impl<E> Group<'_, E> {
    /// Scratch the scores of a group need: `n_pos` rounded up to [`KEY_CHUNK`] per query head
    /// of a group.
    fn scratch_len(shape: Heads, n_pos: usize) -> usize {
        shape.n_heads / shape.n_kv_heads * n_pos.next_multiple_of(KEY_CHUNK)
    }
}

/// Query heads whose scores and sums are kept in registers at once; a larger group runs in
/// parts of this many.
const MAX_PART: usize = 4;

/// A [`Group`] with the way its stored keys and values become f32.
struct Widened<'a, E, W> {
    group: Group<'a, E>,
    widen: W,
}

// A closure calling `#[inline(always)]` code is not always inlined into the AVX-512 function
// `vectorize` makes; this trait method is.
#[cfg(target_arch = "x86_64")]
impl<E: KvElem, W: Widen<E>> pulp::NullaryFnOnce for Widened<'_, E, W> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.run::<Fused>();
    }
}

impl<E: KvElem, W: Widen<E>> Kernel for Widened<'_, E, W> {
    type Output = ();

    #[inline(always)]
    fn run<M: Madd>(self) {
        let Self { group: Group { shape, q, keys, values, n_pos, kv, scores, out }, widen } = self;
        let hd = shape.head_dim;
        let kv_dim = shape.n_kv_heads * hd;
        let group = shape.n_heads / shape.n_kv_heads;
        let stride = keys.len() / kv_dim;
        let padded = n_pos.next_multiple_of(KEY_CHUNK);
        let part = Part {
            widen,
            // This KV head's tiles of keys, a chunk of positions each.
            keys: &keys[kv * hd * stride..(kv + 1) * hd * stride],
            values: &values[..n_pos * kv_dim],
            kv_dim,
            off: kv * hd,
            hd,
            n_pos,
            padded,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut h = 0;
        while h < group {
            let g = (group - h).min(MAX_PART);
            let q = &q[(kv * group + h) * hd..][..g * hd];
            let out = &mut out[h * hd..][..g * hd];
            let scores = &mut scores[..g * padded];
            // Chunks of positions scored at once: about eight chains of multiply-adds.
            match g {
                1 => part.run::<M, 1, 8>(q, scores, out),
                2 => part.run::<M, 2, 4>(q, scores, out),
                3 => part.run::<M, 3, 3>(q, scores, out),
                _ => part.run::<M, MAX_PART, 2>(q, scores, out),
            }
            h += g;
        }
    }
}

/// What the heads of a part of a [`Group`] share: their KV head's keys and values.
#[derive(Clone, Copy)]
struct Part<'a, E, W> {
    widen: W,
    /// Tiles of `hd · KEY_CHUNK` keys ([`key_at`]), one per chunk of positions.
    keys: &'a [E],
    /// `n_pos` positions of `kv_dim`; the KV head's at `off..off + hd`.
    values: &'a [E],
    kv_dim: usize,
    off: usize,
    hd: usize,
    n_pos: usize,
    /// `n_pos` rounded up to [`KEY_CHUNK`]: each head's stretch of the scores.
    padded: usize,
    scale: f32,
}

impl<E: KvElem, W: Widen<E>> Part<'_, E, W> {
    /// `G` query heads (`q`: `G · hd`) into `out` (`G · hd`), scoring `C` chunks of positions
    /// at a time; `scores` holds `G` stretches of `padded`.
    #[inline(always)]
    fn run<M: Madd, const G: usize, const C: usize>(self, q: &[f32], scores: &mut [f32], out: &mut [f32]) {
        let chunks = self.padded / KEY_CHUNK;
        let whole = chunks / C * C;
        for c in (0..whole).step_by(C) {
            self.score::<M, G, C>(q, c, scores);
        }
        for c in whole..chunks {
            self.score::<M, G, 1>(q, c, scores);
        }
        for s in scores.chunks_exact_mut(self.padded) {
            softmax(&mut s[..self.n_pos]);
        }
        // Sums of values: four vectors of outputs per head at once, then one, then the rest.
        let vectors = self.hd / 16;
        let mut v = 0;
        while v + 4 <= vectors {
            self.sum_values::<M, G, 4>(scores, v, out);
            v += 4;
        }
        while v < vectors {
            self.sum_values::<M, G, 1>(scores, v, out);
            v += 1;
        }
        for g in 0..G {
            let s = &scores[g * self.padded..][..self.n_pos];
            for i in vectors * 16..self.hd {
                let mut o = 0.0;
                for (v, &p) in self.values.chunks_exact(self.kv_dim).zip(s) {
                    o = M::madd(p, v[self.off + i].widen1(), o);
                }
                out[g * self.hd + i] = o;
            }
        }
    }

    /// Scores of chunks `c0..c0 + C` of positions for the `G` heads: each run of sixteen keys'
    /// element `d` is widened once and multiplied by every head's element `d` of the query.
    #[inline(always)]
    fn score<M: Madd, const G: usize, const C: usize>(&self, q: &[f32], c0: usize, scores: &mut [f32]) {
        let p = c0 * KEY_CHUNK;
        let tile = self.hd * KEY_CHUNK;
        let run = &self.keys[c0 * tile..(c0 + C) * tile];
        let tiles: [&[[E; KEY_CHUNK]]; C] = core::array::from_fn(|c| run[c * tile..][..tile].as_chunks().0);
        // The next run's tiles, a run of sixteen keys per tile and element ahead: a head's keys
        // are read once per step, long after the last, so they come from memory.
        let next = self.keys.as_ptr().wrapping_add((c0 + C) * tile);
        let mut acc = [[[0f32; KEY_CHUNK]; C]; G];
        for d in 0..self.hd {
            for (c, tile) in tiles.iter().enumerate() {
                self.widen.prefetch(next.wrapping_add(c * self.hd * KEY_CHUNK + d * KEY_CHUNK));
                let k = self.widen.w16(&tile[d]);
                for g in 0..G {
                    let qd = q[g * self.hd + d];
                    for i in 0..KEY_CHUNK {
                        acc[g][c][i] = M::madd(qd, k[i], acc[g][c][i]);
                    }
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            let s = &mut scores[g * self.padded + p..][..C * KEY_CHUNK];
            for (s, a) in s.as_chunks_mut::<KEY_CHUNK>().0.iter_mut().zip(acc) {
                for i in 0..KEY_CHUNK {
                    s[i] = a[i] * self.scale;
                }
            }
        }
    }

    /// Outputs `16 · v0..16 · (v0 + V)` of the `G` heads: the sums over positions of score
    /// times value, each value widened once for every head, `G · V` chains of multiply-adds.
    #[inline(always)]
    fn sum_values<M: Madd, const G: usize, const V: usize>(
        &self,
        scores: &[f32],
        v0: usize,
        out: &mut [f32],
    ) {
        let at = self.off + v0 * 16;
        let mut acc = [[[0f32; 16]; V]; G];
        for (p, row) in self.values.chunks_exact(self.kv_dim).enumerate() {
            let run = &row[at..at + V * 16];
            // The same values eight positions ahead, a cache line at a time.
            let ahead = run.as_ptr().wrapping_add(8 * self.kv_dim);
            for c in (0..V * 16).step_by(64 / core::mem::size_of::<E>()) {
                self.widen.prefetch(ahead.wrapping_add(c));
            }
            for (c, v) in run.as_chunks::<16>().0.iter().enumerate() {
                let v = self.widen.w16(v);
                for g in 0..G {
                    let s = scores[g * self.padded + p];
                    for i in 0..16 {
                        acc[g][c][i] = M::madd(s, v[i], acc[g][c][i]);
                    }
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            let o = &mut out[g * self.hd + v0 * 16..][..V * 16];
            for (o, a) in o.as_chunks_mut::<16>().0.iter_mut().zip(acc) {
                *o = *a;
            }
        }
    }
}

/// `x` made a probability distribution: `e^(x − max)`, normalized; [`exp`] so that the loop
/// vectorizes.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // Sixteen lanes for the max and the sum, so both loops vectorize.
    let (chunks, rest) = x.as_chunks::<16>();
    let mut lanes = [f32::NEG_INFINITY; 16];
    for c in chunks {
        for i in 0..16 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    let max = rest.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let (chunks, rest) = x.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for c in chunks {
        for i in 0..16 {
            lanes[i] += c[i];
        }
    }
    let sum = crate::simd::hsum(&lanes) + rest.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Attention as written in the papers, in f64 over keys stored a position at a time.
    fn reference(
        shape: Heads,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        pos0: usize,
        tokens: usize,
    ) -> Vec<f64> {
        let (hd, q_dim, kv_dim) =
            (shape.head_dim, shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
        let mut out = vec![0f64; tokens * q_dim];
        for t in 0..tokens {
            for h in 0..shape.n_heads {
                let off = (h / (shape.n_heads / shape.n_kv_heads)) * hd;
                let q = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                let scores: Vec<f64> = (0..=pos0 + t)
                    .map(|j| {
                        let k = &keys[j * kv_dim + off..j * kv_dim + off + hd];
                        q.iter().zip(k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    for d in 0..hd {
                        out[t * q_dim + h * hd + d] += p / sum * f64::from(values[j * kv_dim + off + d]);
                    }
                }
            }
        }
        out
    }

    /// Attention over a cache of `E`s against the reference over the values that cache holds
    /// (each key and value as stored, widened back).
    fn matches_the_reference<E: KvElem>() {
        let mut rng = StdRng::seed_from_u64(30);
        // Grouped heads (3 per KV head) as in SmolLM2, one KV head per query head, a head
        // size that is not a multiple of 16, and groups of 5 (run as parts of 4 and 1) with
        // 128-element heads (two runs of four vectors of outputs).
        for shape in [
            Heads { n_heads: 6, n_kv_heads: 2, head_dim: 64 },
            Heads { n_heads: 2, n_kv_heads: 2, head_dim: 32 },
            Heads { n_heads: 2, n_kv_heads: 1, head_dim: 40 },
            Heads { n_heads: 10, n_kv_heads: 2, head_dim: 128 },
        ] {
            let (q_dim, kv_dim) = (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
            // Decode steps at positions across chunk boundaries, and a prompt's run of tokens.
            for (pos0, tokens, capacity) in
                [(0, 1, 1), (14, 1, 20), (63, 1, 64), (64, 1, 100), (130, 1, 131), (5, 40, 45)]
            {
                let n_pos = pos0 + tokens;
                let stored = |rng: &mut StdRng| -> Vec<E> {
                    (0..n_pos * kv_dim).map(|_| E::store(rng.random_range(-1.0..1.0))).collect()
                };
                let (keys, values) = (stored(&mut rng), stored(&mut rng));
                let q: Vec<f32> = (0..tokens * q_dim).map(|_| rng.random_range(-2.0..2.0)).collect();
                let stride = key_stride(capacity);
                // In tiles, with garbage past the positions held (it must be ignored).
                let mut kt = vec![E::store(65504.0); kv_dim * stride];
                for j in 0..n_pos {
                    for e in 0..kv_dim {
                        kt[key_at(shape.head_dim, stride, e, j)] = keys[j * kv_dim + e];
                    }
                }
                let mut out = vec![f32::NAN; tokens * q_dim];
                attend(shape, &q, &kt, &values, pos0, tokens, &mut out, &mut Vec::new());
                let widen = |x: &[E]| x.iter().map(|&e| e.widen1()).collect::<Vec<f32>>();
                let want = reference(shape, &q, &widen(&keys), &widen(&values), pos0, tokens);
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-5,
                        "{shape:?} pos0 {pos0} tokens {tokens}: [{i}] {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_over_keys_in_tiles_matches_the_reference() {
        matches_the_reference::<f32>();
    }

    #[test]
    fn attention_over_an_f16_cache_matches_the_reference() {
        matches_the_reference::<u16>();
    }

    /// Every f16 widens to exactly the value `half` gives it, by every path the kernels take.
    #[test]
    fn f16_values_widen_exactly() {
        let same = |got: f32, h: u16| {
            let want = half::f16::from_bits(h).to_f32();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got:e} ({:#010x}) vs {want:e}",
                got.to_bits()
            );
        };
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for chunk in all.as_chunks::<16>().0 {
            for (&h, got) in chunk.iter().zip(SoftF16.w16(chunk)) {
                same(got, h);
                same(h.widen1(), h);
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = pulp::x86::V4::try_new() {
                for (&h, got) in chunk.iter().zip(CvtPh(simd).w16(chunk)) {
                    same(got, h);
                }
            }
        }
        // Storing rounds to nearest, ties to even, and saturates to infinity past f16's range.
        // An f16 step at 1 is 4/4096: a quarter step rounds down, three quarters up, and the
        // halves go to the even neighbour.
        assert_eq!(u16::store(1.0 + 1.0 / 4096.0), 0x3C00);
        assert_eq!(u16::store(1.0 + 3.0 / 4096.0), 0x3C01);
        assert_eq!(u16::store(1.0 + 2.0 / 4096.0), 0x3C00);
        assert_eq!(u16::store(1.0 + 6.0 / 4096.0), 0x3C02);
        assert_eq!(u16::store(1e6), 0x7C00);
        let mut dst = [0u16; 3];
        u16::store_slice(&mut dst, &[1.0, -2.5, 65504.0]);
        assert_eq!(dst, [0x3C00, 0xC100, 0x7BFF]);
    }
}
