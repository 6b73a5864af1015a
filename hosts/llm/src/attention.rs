//! Grouped-query attention over a layer's KV cache for a run of consecutive tokens: one token
//! when decoding, a whole prompt (causally masked) when processing one.
//!
//! Query `t` of the run sits at position `pos0 + t` and attends to positions `0..=pos0 + t`;
//! head `h` reads the keys and values of KV head `h / (n_heads / n_kv_heads)`. The keys are
//! stored transposed (element `d` of every position in a row of `stride`), so scores come
//! [`KEY_CHUNK`] positions at a time as sums of `q[d] · keys[d][p..p + 16]`, with no horizontal
//! sums. Scores are scaled by `1/sqrt(head_dim)` and go through a softmax (max subtracted,
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

    /// One head of attention over keys and values stored as `Self`, compiled for the best
    /// instruction set the CPU has.
    fn run_head(head: Head<'_, Self>);
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

    fn run_head(head: Head<'_, Self>) {
        dispatch(Widened { head, widen: Same });
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

    fn run_head(head: Head<'_, Self>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(Widened { head, widen: CvtPh(simd) });
        }
        dispatch(Widened { head, widen: SoftF16 });
    }
}

/// Sixteen stored values as f32, exactly.
trait Widen<E>: Copy {
    fn w16(self, x: &[E; 16]) -> [f32; 16];
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
}

/// Positions scored at once: the keys' rows are padded to a multiple of it ([`key_stride`]).
pub(crate) const KEY_CHUNK: usize = 16;

/// The length of the transposed keys' rows for `capacity` positions: `capacity` rounded up to
/// [`KEY_CHUNK`], so a chunk of positions that starts below `capacity` ends within the row.
pub(crate) fn key_stride(capacity: usize) -> usize {
    capacity.next_multiple_of(KEY_CHUNK)
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
/// least `pos0 + tokens` of them): `keys` transposed, `n_kv_heads·head_dim` rows of a
/// [`key_stride`] each; `values` a position at a time, `n_kv_heads·head_dim` each. `scores` is
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
    let padded = n_pos.next_multiple_of(KEY_CHUNK);
    let work = tokens * (pos0 + tokens.div_ceil(2)) * q_dim * 2;
    if work < PAR_MIN || threads::threads() == 1 {
        return serial(shape, q, keys, values, pos0, out, scores);
    }
    // One task per (token, head): causal rows differ in length, so many small tasks balance.
    let mut heads: Vec<&mut [f32]> = out.chunks_exact_mut(shape.head_dim).collect();
    threads::for_each_mut(&mut heads, |i, out| {
        let (t, h) = (i / shape.n_heads, i % shape.n_heads);
        let q = &q[t * q_dim..(t + 1) * q_dim];
        SCORES.with_borrow_mut(|scores| {
            let scores = grown(scores, padded);
            E::run_head(Head { shape, q, keys, values, n_pos: pos0 + t + 1, h, scores, out });
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

/// Every head of every token of a checked [`attend`] call, in order, on the calling thread.
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
    let scores = grown(scores, (pos0 + q.len() / q_dim).next_multiple_of(KEY_CHUNK));
    for (t, (q, out)) in q.chunks_exact(q_dim).zip(out.chunks_exact_mut(q_dim)).enumerate() {
        for h in 0..shape.n_heads {
            let scores = &mut *scores;
            E::run_head(Head { shape, q, keys, values, n_pos: pos0 + t + 1, h, scores, out });
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
    /// Each pool thread's scratch for one head's scores, kept between calls. A task holds it
    /// only while its heads run ([`Head`]), which call nothing on the pool.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One query head over the first `n_pos` positions; `out` is the head's `head_dim` outputs
/// (or, on the serial path, the token's whole row, of which the head's part is written).
pub(crate) struct Head<'a, E> {
    shape: Heads,
    q: &'a [f32],
    keys: &'a [E],
    values: &'a [E],
    n_pos: usize,
    h: usize,
    scores: &'a mut [f32],
    out: &'a mut [f32],
}

/// A [`Head`] with the way its stored keys and values become f32.
struct Widened<'a, E, W> {
    head: Head<'a, E>,
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
        let Self { head: Head { shape, q, keys, values, n_pos, h, scores, out }, widen } = self;
        let hd = shape.head_dim;
        let kv_dim = shape.n_kv_heads * hd;
        let stride = keys.len() / kv_dim;
        let off = (h / (shape.n_heads / shape.n_kv_heads)) * hd;
        let q = &q[h * hd..(h + 1) * hd];
        let out = if out.len() == hd { out } else { &mut out[h * hd..(h + 1) * hd] };
        let scale = 1.0 / (hd as f32).sqrt();
        // This KV head's key rows, one per element of a head.
        let keys = &keys[off * stride..(off + hd) * stride];
        // Whole chunks of positions; those past `n_pos` are scored and then ignored.
        let scores = &mut scores[..n_pos.next_multiple_of(KEY_CHUNK)];
        let (fours, rest) = scores.as_chunks_mut::<{ 4 * KEY_CHUNK }>();
        for (c, s) in fours.iter_mut().enumerate() {
            // Four chunks at once: four independent chains of multiply-adds.
            let p = c * 4 * KEY_CHUNK;
            let mut acc = [[0f32; KEY_CHUNK]; 4];
            for (row, &qd) in keys.chunks_exact(stride).zip(q) {
                let k: &[E; 4 * KEY_CHUNK] = row[p..p + 4 * KEY_CHUNK].try_into().expect("a run of chunks");
                for (a, k) in acc.iter_mut().zip(k.as_chunks::<KEY_CHUNK>().0) {
                    let k = widen.w16(k);
                    for i in 0..KEY_CHUNK {
                        a[i] = M::madd(qd, k[i], a[i]);
                    }
                }
            }
            for (s, a) in s.as_chunks_mut::<KEY_CHUNK>().0.iter_mut().zip(&acc) {
                for i in 0..KEY_CHUNK {
                    s[i] = a[i] * scale;
                }
            }
        }
        let p0 = fours.len() * 4 * KEY_CHUNK;
        for (c, s) in rest.as_chunks_mut::<KEY_CHUNK>().0.iter_mut().enumerate() {
            let p = p0 + c * KEY_CHUNK;
            let mut acc = [0f32; KEY_CHUNK];
            for (row, &qd) in keys.chunks_exact(stride).zip(q) {
                let k = widen.w16(row[p..p + KEY_CHUNK].try_into().expect("a chunk"));
                for i in 0..KEY_CHUNK {
                    acc[i] = M::madd(qd, k[i], acc[i]);
                }
            }
            for i in 0..KEY_CHUNK {
                s[i] = acc[i] * scale;
            }
        }
        let scores = &mut scores[..n_pos];
        softmax(scores);
        // Sixteen outputs at a time, their sums held in registers over every position.
        let values = &values[..n_pos * kv_dim];
        let (chunks, rest) = out.as_chunks_mut::<16>();
        for (c, o) in chunks.iter_mut().enumerate() {
            let at = off + c * 16;
            let mut acc = [0f32; 16];
            for (v, &p) in values.chunks_exact(kv_dim).zip(scores.iter()) {
                let v = widen.w16(v[at..at + 16].try_into().expect("16 values"));
                for i in 0..16 {
                    acc[i] = M::madd(p, v[i], acc[i]);
                }
            }
            *o = acc;
        }
        let at = off + chunks.len() * 16;
        for (i, o) in rest.iter_mut().enumerate() {
            *o = 0.0;
            for (v, &p) in values.chunks_exact(kv_dim).zip(scores.iter()) {
                *o = M::madd(p, E::widen1(v[at + i]), *o);
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
        // Grouped heads (3 per KV head) as in SmolLM2, one KV head per query head, and a head
        // size that is not a multiple of 16.
        for shape in [
            Heads { n_heads: 6, n_kv_heads: 2, head_dim: 64 },
            Heads { n_heads: 2, n_kv_heads: 2, head_dim: 32 },
            Heads { n_heads: 2, n_kv_heads: 1, head_dim: 40 },
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
                // Transposed, with garbage past the positions held (it must be ignored).
                let mut kt = vec![E::store(65504.0); kv_dim * stride];
                for j in 0..n_pos {
                    for d in 0..kv_dim {
                        kt[d * stride + j] = keys[j * kv_dim + d];
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
    fn attention_over_transposed_keys_matches_the_reference() {
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
