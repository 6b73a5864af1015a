//! Q4_0, Q4_1 and Q4_K matrices times a few inputs with the inputs rounded to 8 bits, as
//! llama.cpp does for its Q4 products: the faster, less exact path of [`Activations::Q8`].
//!
//! Each input is rounded per block of 32 values to signed 8-bit integers and a scale `d =
//! max|x| / 127` ([`Q8Inputs`]). Sixteen weight rows are then multiplied at once, one row per
//! 32-bit lane of an AVX-512 vector: a block's sixteen rows are loaded (two 16-byte loads per
//! row) and transposed so that a vector holds four consecutive 4-bit quants of every row, and
//! `vpmaddubsw` multiplies 64 weight quants with 64 input quants per instruction (an f32
//! multiply-add does 16). Eight such products sum a row's block in 16-bit lanes (at most
//! `8 · 2 · 15 · 127 = 30480`, so they cannot saturate), `vpmaddwd` widens them, and the block's
//! scales are applied in f32: `d_w · d_x · Σ q_w q_x`, plus `m · d_x · Σ q_x` for Q4_1's offset
//! (or `−8 · d_w · d_x · Σ q_x` for Q4_0's; for a Q4_K sub-block, `d_w` is `d · sc` and the
//! offset `−dmin · m`, its 6-bit scale and min unpacked for sixteen rows at once). A lane ends
//! with its row's whole dot product, so no
//! horizontal sum is needed; the transposition, the unpacking and the weight scales are paid
//! once per sixteen rows and block for up to [`GROUP`] inputs.
//!
//! Results: the dot product of each dequantized row with the input as rounded, in f32 with the
//! integer sums exact; an input's results do not depend on which or how many other inputs share
//! its batch, nor on which lane or run of rows computes a row. Against the f32 inputs the
//! rounding adds up to `Σ_blocks d_x / 2 · Σ |w|` per row.
//!
//! [`Activations::Q8`]: crate::forward::Activations::Q8

use core::arch::x86_64::{__m128i, __m512, __m512i};

use pulp::x86::V4;

use crate::gguf::GgmlType;
use crate::qmatmul::{QMat, by_row_runs_many};
use crate::simd::with_group_size;

/// Inputs per pass of the kernel (8 of AVX-512's 32 vector registers hold their sums, 8 more
/// the weight quants of a block).
const GROUP: usize = 8;

/// Weight rows per vector: one per 32-bit lane.
const LANES: usize = 16;

/// Lane `l` of the kernel's vectors holds row `ROW_OF_LANE[l]` of its sixteen (the transposition
/// interleaves them).
const ROW_OF_LANE: [usize; LANES] = {
    let mut p = [0; LANES];
    let mut l = 0;
    while l < LANES {
        p[l] = 4 * (l % 4) + l / 4;
        l += 1;
    }
    p
};

/// Whether [`matmul`] takes matrices of `ty` (on a CPU with AVX-512).
pub(crate) fn takes(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K)
}

/// `y = x · mᵀ` with `x` rounded to 8 bits, if this path applies to `m` on this CPU (else
/// `false`, and nothing is written): `x` is `tokens × cols` (one input per row), `y` is
/// `tokens × rows`. Runs of rows (multiples of sixteen) are split across the pool's threads.
///
/// # Panics
/// If `x` or `y` is not of that size.
#[cfg(test)]
pub(crate) fn matmul(m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) -> bool {
    matmul_many(&[m], x, tokens, &mut [y])
}

/// [`matmul`] for several matrices of the same input width (`ys[i]` for `ms[i]`), the inputs
/// rounded once and the row runs of all of them one parallel job; `false` (nothing written) if
/// the path does not apply to every one of them.
///
/// # Panics
/// If `ms` and `ys` differ in number, or `x` or a `ys[i]` is not of its size.
pub(crate) fn matmul_many(ms: &[QMat<'_>], x: &[f32], tokens: usize, ys: &mut [&mut [f32]]) -> bool {
    assert_eq!(ms.len(), ys.len(), "one output per matrix");
    let Some(cols) = ms.first().map(|m| m.cols) else { return true };
    assert_eq!(x.len(), tokens * cols, "matmul input length");
    for (m, y) in ms.iter().zip(ys.iter()) {
        assert_eq!(y.len(), tokens * m.rows, "matmul output length");
    }
    let Some(simd) = V4::try_new() else { return false };
    if ms.iter().any(|m| !takes(m.ty) || m.rows == 0 || m.cols != cols) {
        return false;
    }
    let q = Q8Inputs::new(simd, x, cols);
    by_row_runs_many(ms, tokens, LANES, ys, |i, first, out| {
        let n = out.first().map_or(0, |o| o.len());
        simd.vectorize(Rows { simd, m: ms[i], first, n, q: &q, out });
    });
    true
}

/// Inputs rounded per block of 32 values: quants `q`, four to an `i32` (little-endian, the
/// order of the values), and per block the scale `d` and `d · Σ q`.
#[derive(Debug)]
pub(crate) struct Q8Inputs {
    /// `tokens × cols / 4`: the quants of block `b` of input `t` are `q[(t · blocks + b) · 8..][..8]`.
    q: Vec<i32>,
    /// `tokens × blocks` scales: an input value is about `d · q`.
    d: Vec<f32>,
    /// `tokens × blocks`: `d · Σ q` over the block.
    ds: Vec<f32>,
    /// Blocks per input.
    blocks: usize,
}

impl Q8Inputs {
    /// `x` (inputs of `cols` values, `cols` a multiple of 32) rounded: per block, `d = max|x| / 127`
    /// and each value to the nearest integer of `x / d` (ties to even), so `|q| ≤ 127`.
    pub(crate) fn new(simd: V4, x: &[f32], cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(32) && x.len().is_multiple_of(cols));
        let n = x.len() / 32;
        let mut out = Self { q: vec![0; n * 8], d: vec![0.0; n], ds: vec![0.0; n], blocks: cols / 32 };
        simd.vectorize(|| {
            let f = &simd.avx512f;
            let blocks = x.as_chunks::<32>().0.iter().zip(out.q.as_chunks_mut::<8>().0);
            for (i, (xb, q)) in blocks.enumerate() {
                let v0: __m512 = pulp::cast(<[f32; 16]>::try_from(&xb[..16]).expect("16 of 32"));
                let v1: __m512 = pulp::cast(<[f32; 16]>::try_from(&xb[16..]).expect("16 of 32"));
                let amax = f._mm512_reduce_max_ps(f._mm512_max_ps(f._mm512_abs_ps(v0), f._mm512_abs_ps(v1)));
                let d = amax / 127.0;
                let id = f._mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
                let q0 = f._mm512_cvtps_epi32(f._mm512_mul_ps(v0, id));
                let q1 = f._mm512_cvtps_epi32(f._mm512_mul_ps(v1, id));
                let sum = f._mm512_reduce_add_epi32(f._mm512_add_epi32(q0, q1));
                let lo: [i32; 4] = pulp::cast(f._mm512_cvtepi32_epi8(q0));
                let hi: [i32; 4] = pulp::cast(f._mm512_cvtepi32_epi8(q1));
                q[..4].copy_from_slice(&lo);
                q[4..].copy_from_slice(&hi);
                out.d[i] = d;
                out.ds[i] = d * sum as f32;
            }
        });
        out
    }
}

/// `out[t][i] = row(first + i) · x[t]` for `i < n` and every input `t` of `q`: rows sixteen
/// at a time (the last group's missing rows repeat row `first + n − 1`, and are not written).
struct Rows<'a, 'o, 'y> {
    simd: V4,
    m: QMat<'a>,
    first: usize,
    n: usize,
    q: &'o Q8Inputs,
    out: &'o mut [&'y mut [f32]],
}

impl pulp::NullaryFnOnce for Rows<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        match self.m.ty {
            GgmlType::Q4_0 => self.run::<18, Q4_0>(),
            GgmlType::Q4_1 => self.run::<20, Q4_1>(),
            // `matmul` admits only the types `takes` names.
            _ => self.run::<144, Q4_K>(),
        }
    }
}

/// The block layouts [`Rows::run`] reads: Q4_0 and Q4_1 (32 quants a block, element `j` in the
/// low nibble of byte `j` of 16 and element `j + 16` in its high nibble, after one f16 scale,
/// or for Q4_1 a scale and an offset), and Q4_K (256 quants a block in eight sub-blocks of 32,
/// see [`crate::quant`]).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q4_K: u8 = 2;

impl Rows<'_, '_, '_> {
    /// For blocks of `BB` bytes laid out as `KIND` says.
    #[inline(always)]
    fn run<const BB: usize, const KIND: u8>(mut self) {
        let tokens = self.q.d.len() / self.q.blocks;
        let mut g0 = 0;
        while g0 < self.n {
            let rows: [&[[u8; BB]]; LANES] = core::array::from_fn(|k| {
                self.m.row(self.first + (g0 + k).min(self.n - 1)).as_chunks::<BB>().0
            });
            let mut t0 = 0;
            while t0 < tokens {
                let g = (tokens - t0).min(GROUP);
                with_group_size!(g, G => self.group::<BB, KIND, G>(&rows, g0, t0));
                t0 += g;
            }
            g0 += LANES;
        }
    }

    /// Rows `g0..g0 + 16` (of `rows`) times inputs `t0..t0 + G`.
    #[inline(always)]
    fn group<const BB: usize, const KIND: u8, const G: usize>(
        &mut self,
        rows: &[&[[u8; BB]]; LANES],
        g0: usize,
        t0: usize,
    ) {
        let simd = self.simd;
        let f = &simd.avx512f;
        let mut acc = [f._mm512_setzero_ps(); G];
        // The next sixteen rows, block by block as these are read.
        let ahead = LANES * self.m.row_bytes;
        for (b, _) in rows[0].iter().enumerate() {
            // Q4_0 and Q4_1: every third block of a row is within a cache line of the one before;
            // a Q4_K block spans three.
            if KIND == Q4_K || b % 3 == 0 {
                for row in rows {
                    for line in (0..BB).step_by(64) {
                        let at = row[b].as_ptr().wrapping_add(ahead + line);
                        simd.sse._mm_prefetch::<3>(at.cast::<i8>());
                    }
                }
            }
            if KIND == Q4_K {
                self.super_block::<BB, G>(rows, b, t0, &mut acc);
                continue;
            }
            // Bytes 0..16 of each row's block (its scales first), and its 16 bytes of quants.
            let head = transpose(simd, core::array::from_fn(|k| load_u8x16(&rows[k][b][..16])))[0];
            let qs = if KIND == Q4_0 { 2 } else { 4 };
            let r = transpose(simd, core::array::from_fn(|k| load_u8x16(&rows[k][b][qs..qs + 16])));
            // Elements 0..16 in the low nibbles, 16..32 in the high.
            let (lo, hi) = (nibbles(simd, r, false), nibbles(simd, r, true));
            let w = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
            let dw = f._mm512_cvtph_ps(f._mm512_cvtepi32_epi16(head));
            let offset = if KIND == Q4_1 {
                f._mm512_cvtph_ps(f._mm512_cvtepi32_epi16(f._mm512_srli_epi32::<16>(head)))
            } else {
                f._mm512_mul_ps(dw, f._mm512_set1_ps(-8.0))
            };
            self.block(&w, dw, offset, b, t0, &mut acc);
        }
        let n = self.n;
        for (j, acc) in acc.iter().enumerate() {
            let a: [f32; LANES] = pulp::cast(*acc);
            let out = &mut *self.out[t0 + j];
            for (l, &v) in a.iter().enumerate() {
                let r = g0 + ROW_OF_LANE[l];
                if r < n {
                    out[r] = v;
                }
            }
        }
    }

    /// Q4_K block `sb` of the sixteen rows (eight sub-blocks of 32: `d · sc` and `dmin · m` each)
    /// times inputs `t0..t0 + G`, into `acc`.
    #[inline(always)]
    fn super_block<const BB: usize, const G: usize>(
        &self,
        rows: &[&[[u8; BB]]; LANES],
        sb: usize,
        t0: usize,
        acc: &mut [__m512; G],
    ) {
        let simd = self.simd;
        let f = &simd.avx512f;
        // Words of every row: `d | dmin`, then the 12 bytes of packed 6-bit scales and mins.
        let [dm, a, b, c] = transpose(simd, core::array::from_fn(|k| load_u8x16(&rows[k][sb][..16])));
        let d = f._mm512_cvtph_ps(f._mm512_cvtepi32_epi16(dm));
        let neg_dmin = f._mm512_sub_ps(
            f._mm512_setzero_ps(),
            f._mm512_cvtph_ps(f._mm512_cvtepi32_epi16(f._mm512_srli_epi32::<16>(dm))),
        );
        let bits6 = f._mm512_set1_epi32(63);
        let bits4 = f._mm512_set1_epi32(15);
        let bits2 = f._mm512_set1_epi32(3);
        for pair in 0..4 {
            // 32 bytes of quants: sub-block 2·pair in the low nibbles, 2·pair + 1 in the high.
            let at = 16 + 32 * pair;
            let lo = transpose(simd, core::array::from_fn(|k| load_u8x16(&rows[k][sb][at..at + 16])));
            let hi = transpose(simd, core::array::from_fn(|k| load_u8x16(&rows[k][sb][at + 16..at + 32])));
            for high in [false, true] {
                let s = 2 * pair + usize::from(high);
                // `scale_min_k4`, a lane per row: below 4, the low 6 bits of byte `s` of the
                // scales and of the mins; from 4, a nibble of byte `s + 4` and the top 2 bits of
                // byte `s − 4` (scales) or `s` (mins).
                let (sc, m) = if s < 4 {
                    let shift = f._mm512_set1_epi32(8 * s as i32);
                    (
                        f._mm512_and_si512(f._mm512_srlv_epi32(a, shift), bits6),
                        f._mm512_and_si512(f._mm512_srlv_epi32(b, shift), bits6),
                    )
                } else {
                    let t = 8 * (s as i32 - 4);
                    let top = |v: __m512i| {
                        f._mm512_slli_epi32::<4>(
                            f._mm512_and_si512(f._mm512_srlv_epi32(v, f._mm512_set1_epi32(t + 6)), bits2),
                        )
                    };
                    (
                        f._mm512_or_si512(
                            f._mm512_and_si512(f._mm512_srlv_epi32(c, f._mm512_set1_epi32(t)), bits4),
                            top(a),
                        ),
                        f._mm512_or_si512(
                            f._mm512_and_si512(f._mm512_srlv_epi32(c, f._mm512_set1_epi32(t + 4)), bits4),
                            top(b),
                        ),
                    )
                };
                let dw = f._mm512_mul_ps(d, f._mm512_cvtepi32_ps(sc));
                let offset = f._mm512_mul_ps(neg_dmin, f._mm512_cvtepi32_ps(m));
                // Elements 0..16 from the first 16 bytes, 16..32 from the next.
                let (a, b) = (nibbles(simd, lo, high), nibbles(simd, hi, high));
                let w = [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]];
                self.block(&w, dw, offset, sb * 8 + s, t0, acc);
            }
        }
    }

    /// One block of 32 (`w`: its quants, four of every row per vector; `dw` its scale and
    /// `offset` what one unit of an input's sum adds, a lane per row) times inputs
    /// `t0..t0 + G`, into `acc`.
    #[inline(always)]
    fn block<const G: usize>(
        &self,
        w: &[__m512i; 8],
        dw: __m512,
        offset: __m512,
        b: usize,
        t0: usize,
        acc: &mut [__m512; G],
    ) {
        let simd = self.simd;
        let (f, bw) = (&simd.avx512f, &simd.avx512bw);
        let ones = f._mm512_set1_epi16(1);
        let q = self.q;
        for (j, acc) in acc.iter_mut().enumerate() {
            let i = (t0 + j) * q.blocks + b;
            let x: [i32; 8] = q.q[i * 8..][..8].try_into().expect("8 words a block");
            let mut s = bw._mm512_maddubs_epi16(w[0], f._mm512_set1_epi32(x[0]));
            for c in 1..8 {
                s = bw._mm512_add_epi16(s, bw._mm512_maddubs_epi16(w[c], f._mm512_set1_epi32(x[c])));
            }
            let sum = f._mm512_cvtepi32_ps(bw._mm512_madd_epi16(s, ones));
            let scale = f._mm512_mul_ps(dw, f._mm512_set1_ps(q.d[i]));
            *acc = f._mm512_fmadd_ps(sum, scale, *acc);
            *acc = f._mm512_fmadd_ps(offset, f._mm512_set1_ps(q.ds[i]), *acc);
        }
    }
}

/// The low (or, with `high`, the high) nibbles of the bytes of `v` (from [`transpose`]) as
/// bytes 0..16.
#[inline(always)]
fn nibbles(simd: V4, v: [__m512i; 4], high: bool) -> [__m512i; 4] {
    let (f, bw) = (&simd.avx512f, &simd.avx512bw);
    let low = f._mm512_set1_epi8(0x0F);
    // Written out: a closure passed to `array::map` is not always inlined into the AVX-512
    // function `vectorize` makes, and its intrinsics then become calls.
    let [a, b, c, d] = if high {
        [
            bw._mm512_srli_epi16::<4>(v[0]),
            bw._mm512_srli_epi16::<4>(v[1]),
            bw._mm512_srli_epi16::<4>(v[2]),
            bw._mm512_srli_epi16::<4>(v[3]),
        ]
    } else {
        v
    };
    [
        f._mm512_and_si512(a, low),
        f._mm512_and_si512(b, low),
        f._mm512_and_si512(c, low),
        f._mm512_and_si512(d, low),
    ]
}

#[inline(always)]
fn load_u8x16(b: &[u8]) -> __m128i {
    // A slice of exactly 16 converts without a check left in the code: one load.
    let a: [u8; 16] = b[..16].try_into().expect("16 bytes");
    pulp::cast(a)
}

/// Sixteen rows of four 32-bit words (`v[k]`: row `k`) as four vectors of a word of every row:
/// vector `c` holds word `c` of row [`ROW_OF_LANE`]`[l]` in lane `l`.
#[inline(always)]
fn transpose(simd: V4, v: [__m128i; LANES]) -> [__m512i; 4] {
    let f = &simd.avx512f;
    // z[k]: rows 4k..4k + 4, one per 128-bit lane.
    let z: [__m512i; 4] = core::array::from_fn(|k| {
        let z = f._mm512_castsi128_si512(v[4 * k]);
        let z = f._mm512_inserti32x4::<1>(z, v[4 * k + 1]);
        let z = f._mm512_inserti32x4::<2>(z, v[4 * k + 2]);
        f._mm512_inserti32x4::<3>(z, v[4 * k + 3])
    });
    // Within each 128-bit lane j, a 4 × 4 transpose of words across z: the word c of z[k]'s
    // lane j lands in position k of lane j of vector c, which is row 4k + j.
    let t0 = f._mm512_unpacklo_epi32(z[0], z[1]);
    let t1 = f._mm512_unpackhi_epi32(z[0], z[1]);
    let t2 = f._mm512_unpacklo_epi32(z[2], z[3]);
    let t3 = f._mm512_unpackhi_epi32(z[2], z[3]);
    [
        f._mm512_unpacklo_epi64(t0, t2),
        f._mm512_unpackhi_epi64(t0, t2),
        f._mm512_unpacklo_epi64(t1, t3),
        f._mm512_unpackhi_epi64(t1, t3),
    ]
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::qmatmul::tests::{matrix, qmat};
    use crate::quant;

    /// AVX-512, which this path needs; without it the test is reported skipped.
    fn avx512() -> Option<V4> {
        let simd = V4::try_new();
        if simd.is_none() {
            eprintln!("*** SKIPPED: no AVX-512 on this CPU, which 8-bit products need ***");
        }
        simd
    }

    fn input(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1f32..1.0)).collect()
    }

    /// The product this path computes, in f64 from the rounded inputs: per block,
    /// `d_w · d_x · Σ q_w q_x` plus the offset term.
    fn reference(m: &QMat<'_>, q: &Q8Inputs, t: usize, r: usize) -> (f64, f64) {
        let mut row = vec![0f32; m.cols];
        quant::dequantize(m.ty, m.row(r), &mut row).expect("dequantize");
        let (mut sum, mut mag) = (0f64, 0f64);
        for (b, w) in row.chunks_exact(32).enumerate() {
            let i = t * q.blocks + b;
            let xq: Vec<i8> =
                q.q[i * 8..(i + 1) * 8].iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect();
            for (w, &x) in w.iter().zip(&xq) {
                let p = f64::from(*w) * f64::from(q.d[i]) * f64::from(x);
                sum += p;
                mag += p.abs();
            }
        }
        (sum, mag)
    }

    #[test]
    fn inputs_round_to_the_nearest_step_of_their_block() {
        let Some(simd) = avx512() else { return };
        let mut rng = StdRng::seed_from_u64(20);
        let mut x = input(3 * 64, &mut rng);
        // A block of zeros, and one whose largest value is negative.
        x[64..96].fill(0.0);
        x[100] = -3.0;
        let q = Q8Inputs::new(simd, &x, 64);
        assert_eq!((q.blocks, q.d.len()), (2, 6));
        for (i, xb) in x.chunks_exact(32).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(q.d[i], amax / 127.0);
            let xq: Vec<i8> =
                q.q[i * 8..(i + 1) * 8].iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect();
            let mut sum = 0i32;
            for (v, &s) in xb.iter().zip(&xq) {
                assert_ne!(s, i8::MIN, "quants stay within ±127");
                assert!((v - q.d[i] * f32::from(s)).abs() <= q.d[i] * 0.5001, "block {i}: {v} as {s}");
                sum += i32::from(s);
            }
            assert_eq!(q.ds[i], q.d[i] * sum as f32);
        }
        assert_eq!(&q.q[16..24], &[0; 8], "a block of zeros has zero quants");
    }

    #[test]
    fn every_row_and_input_gets_its_rounded_product() {
        let Some(simd) = avx512() else { return };
        let mut rng = StdRng::seed_from_u64(21);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K] {
            // 37 rows: two groups of sixteen and a partial one; 512 columns: 16 blocks.
            let (rows, cols) = (37, 512);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            for tokens in [1, 2, 5, 8, 9, 16] {
                let x = input(tokens * cols, &mut rng);
                let mut y = vec![f32::NAN; tokens * rows];
                assert!(matmul(m, &x, tokens, &mut y));
                let q = Q8Inputs::new(simd, &x, cols);
                for t in 0..tokens {
                    for r in 0..rows {
                        let (want, mag) = reference(&m, &q, t, r);
                        let got = f64::from(y[t * rows + r]);
                        assert!(
                            (got - want).abs() <= 1e-5 * mag + 1e-6,
                            "{ty:?}, input {t} of {tokens}, row {r}: {got} vs {want} (Σ|w·x| {mag})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_the_inputs_costs_at_most_half_a_step_per_value() {
        let mut rng = StdRng::seed_from_u64(22);
        if avx512().is_none() {
            return;
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K] {
            let (rows, cols) = (48, 256);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            let x = input(3 * cols, &mut rng);
            let mut y = vec![f32::NAN; 3 * rows];
            assert!(matmul(m, &x, 3, &mut y));
            let mut w = vec![0f32; cols];
            for t in 0..3 {
                let x = &x[t * cols..(t + 1) * cols];
                for r in 0..rows {
                    quant::dequantize(ty, m.row(r), &mut w).expect("dequantize");
                    let want = quant::dot(ty, m.row(r), x).expect("dot");
                    // Σ over blocks of d_x / 2 · Σ|w|, and f32 rounding.
                    let bound: f32 = w
                        .chunks_exact(32)
                        .zip(x.chunks_exact(32))
                        .map(|(w, x)| {
                            let d = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                            d / 2.0 * w.iter().map(|v| v.abs()).sum::<f32>()
                        })
                        .sum();
                    let got = y[t * rows + r];
                    assert!(
                        (got - want).abs() <= bound * 1.001 + 1e-5,
                        "{ty:?} row {r}: {got} vs {want} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn an_input_gets_the_same_bits_whatever_else_is_in_its_batch() {
        if avx512().is_none() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(23);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K] {
            let (rows, cols) = (21, 256);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            let x = input(16 * cols, &mut rng);
            let mut alone = vec![f32::NAN; rows];
            assert!(matmul(m, &x[..cols], 1, &mut alone));
            for tokens in [2, 5, 8, 11, 16] {
                let mut y = vec![f32::NAN; tokens * rows];
                assert!(matmul(m, &x[..tokens * cols], tokens, &mut y));
                assert_eq!(y[..rows], alone[..], "{ty:?}, first of {tokens} inputs");
            }
            // A row alone (lane 0 of a group of one row) gets the bits it gets among sixteen.
            let mut y = vec![f32::NAN; 3 * rows];
            assert!(matmul(m, &x[..3 * cols], 3, &mut y));
            let row_bytes = data.len() / rows;
            for r in 0..rows {
                let one = qmat(ty, 1, cols, &data[r * row_bytes..(r + 1) * row_bytes]);
                let mut y1 = vec![f32::NAN; 3];
                assert!(matmul(one, &x[..3 * cols], 3, &mut y1));
                let want: Vec<f32> = (0..3).map(|t| y[t * rows + r]).collect();
                assert_eq!(y1, want, "{ty:?}, row {r} alone");
            }
        }
    }

    #[test]
    fn other_types_are_left_to_the_caller() {
        let mut rng = StdRng::seed_from_u64(24);
        for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q6_K] {
            let data = matrix(ty, 4, 256, &mut rng);
            let m = qmat(ty, 4, 256, &data);
            let mut y = vec![f32::NAN; 8];
            assert!(!matmul(m, &input(512, &mut rng), 2, &mut y));
            assert!(y.iter().all(|v| v.is_nan()));
        }
    }
}
