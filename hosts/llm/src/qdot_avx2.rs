//! AVX2 + FMA row kernels for the block types of the models users download (Q4_0, Q4_1, Q8_0,
//! Q4_K, Q6_K) with f32 activations, written with [`pulp`]'s safe intrinsics: per run of 32 (or
//! 16) quants, they are unpacked as bytes, widened to vectors of eight f32, multiplied with the
//! input and accumulated with their scale in fused multiply-adds. The compiler does not
//! vectorize the portable kernels of [`crate::qmatmul`] well for these types (the nibble
//! unpacking comes out two lanes wide).
//!
//! Same sums as [`quant::dot`](crate::quant::dot) up to f32 rounding and their order.

use core::arch::x86_64::{__m128i, __m256};

use pulp::x86::V3;

use crate::gguf::GgmlType;
use crate::quant::scale_min_k4_f32;
use crate::simd::f16_at;

#[inline(always)]
fn load_u8x16(b: &[u8]) -> __m128i {
    // A slice of exactly 16 converts without a check left in the code: one load.
    let a: [u8; 16] = b[..16].try_into().expect("16 bytes");
    pulp::cast(a)
}

#[inline(always)]
fn load_f32x8(x: &[f32]) -> __m256 {
    let a: [f32; 8] = x[..8].try_into().expect("8 floats");
    pulp::cast(a)
}

/// Bytes ahead of the block being read that the kernels ask the cache for (the hardware
/// prefetcher alone leaves the loop waiting on memory: about 1.8× slower over a model's layers).
pub(crate) const PREFETCH: usize = 2048;

/// Asks for the cache line `PREFETCH` bytes past `b` (a hint: nothing is read, and an address
/// past the data is harmless).
#[inline(always)]
pub(crate) fn prefetch(simd: V3, b: &[u8]) {
    simd.sse._mm_prefetch::<3>(b.as_ptr().wrapping_add(PREFETCH).cast::<i8>());
}

#[inline(always)]
fn hsum(v: __m256) -> f32 {
    let a: [f32; 8] = pulp::cast(v);
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The 16 bytes of `v` as two vectors of eight f32 (unsigned).
#[inline(always)]
fn u8x16_to_f32(simd: V3, v: __m128i) -> (__m256, __m256) {
    let a = simd.avx._mm256_cvtepi32_ps(simd.avx2._mm256_cvtepu8_epi32(v));
    let hi = simd.sse2._mm_unpackhi_epi64(v, v);
    let b = simd.avx._mm256_cvtepi32_ps(simd.avx2._mm256_cvtepu8_epi32(hi));
    (a, b)
}

/// The 16 bytes of `v` as two vectors of eight f32 (signed).
#[inline(always)]
fn i8x16_to_f32(simd: V3, v: __m128i) -> (__m256, __m256) {
    let a = simd.avx._mm256_cvtepi32_ps(simd.avx2._mm256_cvtepi8_epi32(v));
    let hi = simd.sse2._mm_unpackhi_epi64(v, v);
    let b = simd.avx._mm256_cvtepi32_ps(simd.avx2._mm256_cvtepi8_epi32(hi));
    (a, b)
}

/// The low and high nibbles of 16 bytes as four vectors of eight f32: elements 0..8, 8..16
/// (low nibbles), 16..24, 24..32 (high nibbles), minus `bias`.
#[inline(always)]
fn nibbles(simd: V3, b: &[u8], bias: __m256) -> [__m256; 4] {
    let q = load_u8x16(b);
    let mask = simd.sse2._mm_set1_epi8(0x0F);
    let lo = simd.sse2._mm_and_si128(q, mask);
    let hi = simd.sse2._mm_and_si128(simd.sse2._mm_srli_epi16::<4>(q), mask);
    let (l0, l1) = u8x16_to_f32(simd, lo);
    let (h0, h1) = u8x16_to_f32(simd, hi);
    let s = |v| simd.avx._mm256_sub_ps(v, bias);
    [s(l0), s(l1), s(h0), s(h1)]
}

/// `Σ q[i]·x[i]` for 32 elements in four vectors.
#[inline(always)]
fn block_dot(simd: V3, q: [__m256; 4], x: &[f32; 32]) -> __m256 {
    let mut t = simd.avx._mm256_mul_ps(q[0], load_f32x8(&x[0..8]));
    t = simd.fma._mm256_fmadd_ps(q[1], load_f32x8(&x[8..16]), t);
    t = simd.fma._mm256_fmadd_ps(q[2], load_f32x8(&x[16..24]), t);
    simd.fma._mm256_fmadd_ps(q[3], load_f32x8(&x[24..32]), t)
}

/// A Q4_0 row times `x`.
#[inline(always)]
pub(crate) fn dot_q4_0(simd: V3, row: &[u8], x: &[f32]) -> f32 {
    let mut acc = simd.avx._mm256_setzero_ps();
    let eight = simd.avx._mm256_set1_ps(8.0);
    for (b, x) in row.as_chunks::<18>().0.iter().zip(x.as_chunks::<32>().0) {
        prefetch(simd, b);
        let t = block_dot(simd, nibbles(simd, &b[2..], eight), x);
        acc = simd.fma._mm256_fmadd_ps(simd.avx._mm256_set1_ps(f16_at(b, 0)), t, acc);
    }
    hsum(acc)
}

/// A Q4_1 row times `x`, given `x`'s per-32 sums.
#[inline(always)]
pub(crate) fn dot_q4_1(simd: V3, row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = simd.avx._mm256_setzero_ps();
    let zero = simd.avx._mm256_setzero_ps();
    let mut bias = 0f32;
    for ((b, x), &s) in row.as_chunks::<20>().0.iter().zip(x.as_chunks::<32>().0).zip(sums) {
        prefetch(simd, b);
        let t = block_dot(simd, nibbles(simd, &b[4..], zero), x);
        acc = simd.fma._mm256_fmadd_ps(simd.avx._mm256_set1_ps(f16_at(b, 0)), t, acc);
        bias = f16_at(b, 2).mul_add(s, bias);
    }
    hsum(acc) + bias
}

/// A Q8_0 row times `x`.
#[inline(always)]
pub(crate) fn dot_q8_0(simd: V3, row: &[u8], x: &[f32]) -> f32 {
    let mut acc = simd.avx._mm256_setzero_ps();
    for (b, x) in row.as_chunks::<34>().0.iter().zip(x.as_chunks::<32>().0) {
        prefetch(simd, b);
        let (q0, q1) = i8x16_to_f32(simd, load_u8x16(&b[2..]));
        let (q2, q3) = i8x16_to_f32(simd, load_u8x16(&b[18..]));
        let t = block_dot(simd, [q0, q1, q2, q3], x);
        acc = simd.fma._mm256_fmadd_ps(simd.avx._mm256_set1_ps(f16_at(b, 0)), t, acc);
    }
    hsum(acc)
}

/// A Q4_K row times `x`, given `x`'s per-32 sums. A block of 256: `d`, `dmin`, twelve bytes of
/// packed 6-bit scales and mins, then 128 bytes whose low nibbles are the first 32 quants of a
/// run of 64 and whose high nibbles the next 32; a quant's value is `d·scale·q − dmin·min`.
#[inline(always)]
pub(crate) fn dot_q4_k(simd: V3, row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = simd.avx._mm256_setzero_ps();
    let zero = simd.avx._mm256_setzero_ps();
    let mut bias = 0f32;
    let blocks = row.as_chunks::<144>().0.iter().zip(x.as_chunks::<256>().0).zip(sums.as_chunks::<8>().0);
    for ((b, x), s) in blocks {
        prefetch(simd, b);
        prefetch(simd, &b[64..]);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let xs = x.as_chunks::<32>().0;
        for j in 0..4 {
            let q = &b[16 + 32 * j..16 + 32 * j + 32];
            // Bytes 0..16 and 16..32: their low nibbles are quants 0..32, their high 32..64.
            let [l0, l1, h0, h1] = nibbles(simd, q, zero);
            let [l2, l3, h2, h3] = nibbles(simd, &q[16..], zero);
            let t1 = block_dot(simd, [l0, l1, l2, l3], &xs[2 * j]);
            let t2 = block_dot(simd, [h0, h1, h2, h3], &xs[2 * j + 1]);
            let (s1, m1) = scale_min_k4_f32(2 * j, scales);
            let (s2, m2) = scale_min_k4_f32(2 * j + 1, scales);
            acc = simd.fma._mm256_fmadd_ps(simd.avx._mm256_set1_ps(d * s1), t1, acc);
            acc = simd.fma._mm256_fmadd_ps(simd.avx._mm256_set1_ps(d * s2), t2, acc);
            bias = (dmin * m2).mul_add(s[2 * j + 1], (dmin * m1).mul_add(s[2 * j], bias));
        }
    }
    hsum(acc) - bias
}

/// A Q6_K row times `x`. A block of 256: 128 bytes of low nibbles, 64 bytes of high 2-bit
/// pairs, sixteen signed 8-bit scales (one per 16 quants) and `d`; a quant is the six bits minus
/// 32, times `d·scale`.
#[inline(always)]
pub(crate) fn dot_q6_k(simd: V3, row: &[u8], x: &[f32]) -> f32 {
    let sse = &simd.sse2;
    let mut acc = simd.avx._mm256_setzero_ps();
    let low4 = sse._mm_set1_epi8(0x0F);
    let low2 = sse._mm_set1_epi8(3);
    let bias = simd.avx._mm256_set1_ps(32.0);
    for (b, x) in row.as_chunks::<210>().0.iter().zip(x.as_chunks::<256>().0) {
        prefetch(simd, b);
        prefetch(simd, &b[64..]);
        prefetch(simd, &b[128..]);
        let d = f16_at(b, 208);
        for half in 0..2 {
            let (ql, qh, sc) = crate::quant::q6_k_half(b, half);
            let xh = &x[128 * half..128 * half + 128];
            for lh in 0..2 {
                let za = load_u8x16(&ql[16 * lh..]);
                let zb = load_u8x16(&ql[32 + 16 * lh..]);
                let zh = load_u8x16(&qh[16 * lh..]);
                // Per byte: a low or high nibble, with two high bits above it (shifts are per 16
                // bits; the masks keep each byte's own bits, and a byte's two bits shifted left
                // by four stay inside it).
                let six = |nib: __m128i, hi: __m128i| sse._mm_or_si128(nib, sse._mm_slli_epi16::<4>(hi));
                let qs = [
                    six(sse._mm_and_si128(za, low4), sse._mm_and_si128(zh, low2)),
                    six(sse._mm_and_si128(zb, low4), sse._mm_and_si128(sse._mm_srli_epi16::<2>(zh), low2)),
                    six(
                        sse._mm_and_si128(sse._mm_srli_epi16::<4>(za), low4),
                        sse._mm_and_si128(sse._mm_srli_epi16::<4>(zh), low2),
                    ),
                    six(
                        sse._mm_and_si128(sse._mm_srli_epi16::<4>(zb), low4),
                        sse._mm_and_si128(sse._mm_srli_epi16::<6>(zh), low2),
                    ),
                ];
                for (k, qk) in qs.into_iter().enumerate() {
                    let (v0, v1) = u8x16_to_f32(simd, qk);
                    let xk = &xh[32 * k + 16 * lh..];
                    let t = simd.avx._mm256_mul_ps(simd.avx._mm256_sub_ps(v0, bias), load_f32x8(xk));
                    let t =
                        simd.fma._mm256_fmadd_ps(simd.avx._mm256_sub_ps(v1, bias), load_f32x8(&xk[8..]), t);
                    let ds = simd.avx._mm256_set1_ps(d * f32::from(sc[lh + 2 * k] as i8));
                    acc = simd.fma._mm256_fmadd_ps(ds, t, acc);
                }
            }
        }
    }
    hsum(acc)
}

/// Whether [`dequantize`] takes rows of `ty`.
pub(crate) const fn dequantizes(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// Eight f32 into `y[..8]`.
#[inline(always)]
fn store_f32x8(v: __m256, y: &mut [f32]) {
    let a: [f32; 8] = pulp::cast(v);
    y[..8].copy_from_slice(&a);
}

/// Thirty-two f32 into `y`.
#[inline(always)]
fn store4(v: [__m256; 4], y: &mut [f32; 32]) {
    store_f32x8(v[0], &mut y[..8]);
    store_f32x8(v[1], &mut y[8..16]);
    store_f32x8(v[2], &mut y[16..24]);
    store_f32x8(v[3], &mut y[24..]);
}

/// `d·q − m` for each of the four vectors `q`, rounded as the reference rounds it.
#[inline(always)]
fn scaled(simd: V3, q: [__m256; 4], d: f32, m: f32) -> [__m256; 4] {
    let avx = &simd.avx;
    let (d, m) = (avx._mm256_set1_ps(d), avx._mm256_set1_ps(m));
    [
        avx._mm256_sub_ps(avx._mm256_mul_ps(d, q[0]), m),
        avx._mm256_sub_ps(avx._mm256_mul_ps(d, q[1]), m),
        avx._mm256_sub_ps(avx._mm256_mul_ps(d, q[2]), m),
        avx._mm256_sub_ps(avx._mm256_mul_ps(d, q[3]), m),
    ]
}

/// A row of a type [`dequantizes`] takes, dequantized into `out` (its element count long), for
/// the batched products of [`crate::qbatch`]: the values of
/// [`quant::dequantize`](crate::quant::dequantize) up to the rounding of Q4_0's and Q8_0's
/// `d·q` (the same) and Q4_1's `d·q + m` (rounded once here). Returns `false`, writing
/// nothing, for another type.
#[inline(always)]
pub(crate) fn dequantize(simd: V3, ty: GgmlType, row: &[u8], out: &mut [f32]) -> bool {
    let avx = &simd.avx;
    let fma = &simd.fma;
    match ty {
        GgmlType::Q4_0 => {
            let eight = avx._mm256_set1_ps(8.0);
            for (b, y) in row.as_chunks::<18>().0.iter().zip(out.as_chunks_mut::<32>().0) {
                prefetch(simd, b);
                store4(scaled(simd, nibbles(simd, &b[2..], eight), f16_at(b, 0), 0.0), y);
            }
        }
        GgmlType::Q4_1 => {
            let zero = avx._mm256_setzero_ps();
            for (b, y) in row.as_chunks::<20>().0.iter().zip(out.as_chunks_mut::<32>().0) {
                prefetch(simd, b);
                let (d, m) = (avx._mm256_set1_ps(f16_at(b, 0)), avx._mm256_set1_ps(f16_at(b, 2)));
                let [q0, q1, q2, q3] = nibbles(simd, &b[4..], zero);
                let v = [
                    fma._mm256_fmadd_ps(d, q0, m),
                    fma._mm256_fmadd_ps(d, q1, m),
                    fma._mm256_fmadd_ps(d, q2, m),
                    fma._mm256_fmadd_ps(d, q3, m),
                ];
                store4(v, y);
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in row.as_chunks::<34>().0.iter().zip(out.as_chunks_mut::<32>().0) {
                prefetch(simd, b);
                let (q0, q1) = i8x16_to_f32(simd, load_u8x16(&b[2..]));
                let (q2, q3) = i8x16_to_f32(simd, load_u8x16(&b[18..]));
                store4(scaled(simd, [q0, q1, q2, q3], f16_at(b, 0), 0.0), y);
            }
        }
        GgmlType::Q4_K => {
            let zero = avx._mm256_setzero_ps();
            for (b, y) in row.as_chunks::<144>().0.iter().zip(out.as_chunks_mut::<256>().0) {
                prefetch(simd, b);
                prefetch(simd, &b[64..]);
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let ys = y.as_chunks_mut::<32>().0;
                for j in 0..4 {
                    let q = &b[16 + 32 * j..16 + 32 * j + 32];
                    let [l0, l1, h0, h1] = nibbles(simd, q, zero);
                    let [l2, l3, h2, h3] = nibbles(simd, &q[16..], zero);
                    let (s1, m1) = scale_min_k4_f32(2 * j, &b[4..16]);
                    let (s2, m2) = scale_min_k4_f32(2 * j + 1, &b[4..16]);
                    store4(scaled(simd, [l0, l1, l2, l3], d * s1, dmin * m1), &mut ys[2 * j]);
                    store4(scaled(simd, [h0, h1, h2, h3], d * s2, dmin * m2), &mut ys[2 * j + 1]);
                }
            }
        }
        GgmlType::Q6_K => {
            let sse = &simd.sse2;
            let low4 = sse._mm_set1_epi8(0x0F);
            let low2 = sse._mm_set1_epi8(3);
            let bias = avx._mm256_set1_ps(32.0);
            for (b, y) in row.as_chunks::<210>().0.iter().zip(out.as_chunks_mut::<256>().0) {
                prefetch(simd, b);
                prefetch(simd, &b[64..]);
                prefetch(simd, &b[128..]);
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = crate::quant::q6_k_half(b, half);
                    let yh = &mut y[128 * half..128 * half + 128];
                    for lh in 0..2 {
                        let za = load_u8x16(&ql[16 * lh..]);
                        let zb = load_u8x16(&ql[32 + 16 * lh..]);
                        let zh = load_u8x16(&qh[16 * lh..]);
                        // As in `dot_q6_k`.
                        let six =
                            |nib: __m128i, hi: __m128i| sse._mm_or_si128(nib, sse._mm_slli_epi16::<4>(hi));
                        let qs = [
                            six(sse._mm_and_si128(za, low4), sse._mm_and_si128(zh, low2)),
                            six(
                                sse._mm_and_si128(zb, low4),
                                sse._mm_and_si128(sse._mm_srli_epi16::<2>(zh), low2),
                            ),
                            six(
                                sse._mm_and_si128(sse._mm_srli_epi16::<4>(za), low4),
                                sse._mm_and_si128(sse._mm_srli_epi16::<4>(zh), low2),
                            ),
                            six(
                                sse._mm_and_si128(sse._mm_srli_epi16::<4>(zb), low4),
                                sse._mm_and_si128(sse._mm_srli_epi16::<6>(zh), low2),
                            ),
                        ];
                        for (k, qk) in qs.into_iter().enumerate() {
                            let (v0, v1) = u8x16_to_f32(simd, qk);
                            let ds = avx._mm256_set1_ps(d * f32::from(sc[lh + 2 * k] as i8));
                            let yk = &mut yh[32 * k + 16 * lh..];
                            store_f32x8(avx._mm256_mul_ps(ds, avx._mm256_sub_ps(v0, bias)), yk);
                            store_f32x8(avx._mm256_mul_ps(ds, avx._mm256_sub_ps(v1, bias)), &mut yk[8..]);
                        }
                    }
                }
            }
        }
        _ => return false,
    }
    true
}

/// Two dequantized rows (whole runs of 8) times each of `G` inputs, `p` holding the inputs
/// interleaved: for each run of 8 columns, the `G` inputs' 8 values in turn. One vector of sums
/// per row and input, each lane a chain of multiply-adds over the columns `8c + lane`, then
/// added up: an input's sums do not depend on `G` or on the other inputs.
#[inline(always)]
pub(crate) fn dot2_f32<const G: usize>(
    simd: V3,
    w0: &[f32],
    w1: &[f32],
    p: &[[f32; 8]],
) -> ([f32; G], [f32; G]) {
    let fma = &simd.fma;
    let mut a = [simd.avx._mm256_setzero_ps(); G];
    let mut b = [simd.avx._mm256_setzero_ps(); G];
    let runs = w0.as_chunks::<8>().0.iter().zip(w1.as_chunks::<8>().0).zip(p.chunks_exact(G));
    for ((u, v), x) in runs {
        let (u, v): (__m256, __m256) = (pulp::cast(*u), pulp::cast(*v));
        for j in 0..G {
            let xj: __m256 = pulp::cast(x[j]);
            a[j] = fma._mm256_fmadd_ps(u, xj, a[j]);
            b[j] = fma._mm256_fmadd_ps(v, xj, b[j]);
        }
    }
    (core::array::from_fn(|j| hsum(a[j])), core::array::from_fn(|j| hsum(b[j])))
}
