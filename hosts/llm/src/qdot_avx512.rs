//! AVX-512 row kernels for the common block types (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) with f32
//! activations,
//! written with [`pulp`]'s safe intrinsics: a block of 32 quants becomes two vectors of sixteen
//! f32, and its f16 scale (and Q4_1's min) is converted by the hardware (`vcvtph2ps`), which
//! the AVX2 kernels ([`crate::qdot_avx2`]) must do in scalar code.
//!
//! Same sums as [`quant::dot`](crate::quant::dot) up to f32 rounding and their order. Also
//! [`dequantize`] and [`dot2_q`]: Q4_0, Q4_1, Q8_0, Q4_K and Q6_K rows dequantized 32 values
//! at a time, for the batched products of [`crate::qbatch`].

use core::arch::x86_64::{__m128, __m128i, __m512, __m512i};

use pulp::x86::V4;

use crate::gguf::GgmlType;
use crate::quant::scale_min_k4_f32;

#[inline(always)]
fn load_u8x16(b: &[u8]) -> __m128i {
    // A slice of exactly 16 converts without a check left in the code: one load.
    let a: [u8; 16] = b[..16].try_into().expect("16 bytes");
    pulp::cast(a)
}

#[inline(always)]
fn load_f32x16(x: &[f32]) -> __m512 {
    let a: [f32; 16] = x[..16].try_into().expect("16 floats");
    pulp::cast(a)
}

/// The f16 pair at `b[0..4]` as the low two lanes of a vector.
#[inline(always)]
fn f16_pair(simd: V4, b: &[u8]) -> __m128 {
    let v = simd.sse2._mm_cvtsi32_si128(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    simd.avx512f._mm_maskz_cvtph_ps(0b11, v)
}

/// Asks for the cache line [`PREFETCH`](crate::qdot_avx2::PREFETCH) bytes past `b`.
#[inline(always)]
fn prefetch(simd: V4, b: &[u8]) {
    crate::qdot_avx2::prefetch(*simd, b);
}

#[inline(always)]
fn hsum(simd: V4, v: __m512) -> f32 {
    simd.avx512f._mm512_reduce_add_ps(v)
}

/// The low and high nibbles of 16 bytes as two vectors of sixteen f32 (elements 0..16 and
/// 16..32), minus `bias`.
#[inline(always)]
fn nibbles(simd: V4, b: &[u8], bias: i32) -> (__m512, __m512) {
    let f = &simd.avx512f;
    let z = f._mm512_cvtepu8_epi32(load_u8x16(b));
    let lo = f._mm512_and_si512(z, f._mm512_set1_epi32(0x0F));
    let hi = f._mm512_srli_epi32::<4>(z);
    let bias = f._mm512_set1_epi32(bias);
    (f._mm512_cvtepi32_ps(f._mm512_sub_epi32(lo, bias)), f._mm512_cvtepi32_ps(f._mm512_sub_epi32(hi, bias)))
}

/// A Q4_0 row times `x`.
#[inline(always)]
pub(crate) fn dot_q4_0(simd: V4, row: &[u8], x: &[f32]) -> f32 {
    let f = &simd.avx512f;
    let mut acc = f._mm512_setzero_ps();
    for (b, x) in row.as_chunks::<18>().0.iter().zip(x.as_chunks::<32>().0) {
        prefetch(simd, b);
        let (lo, hi) = nibbles(simd, &b[2..], 8);
        let t = f._mm512_fmadd_ps(hi, load_f32x16(&x[16..]), f._mm512_mul_ps(lo, load_f32x16(x)));
        let d = f._mm512_broadcastss_ps(f16_pair(simd, b));
        acc = f._mm512_fmadd_ps(d, t, acc);
    }
    hsum(simd, acc)
}

/// A Q4_1 row times `x`, given `x`'s per-32 sums.
#[inline(always)]
pub(crate) fn dot_q4_1(simd: V4, row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let f = &simd.avx512f;
    let mut acc = f._mm512_setzero_ps();
    let mut bias = 0f32;
    for ((b, x), &s) in row.as_chunks::<20>().0.iter().zip(x.as_chunks::<32>().0).zip(sums) {
        prefetch(simd, b);
        let (lo, hi) = nibbles(simd, &b[4..], 0);
        let t = f._mm512_fmadd_ps(hi, load_f32x16(&x[16..]), f._mm512_mul_ps(lo, load_f32x16(x)));
        let dm = f16_pair(simd, b);
        acc = f._mm512_fmadd_ps(f._mm512_broadcastss_ps(dm), t, acc);
        bias = simd.sse._mm_cvtss_f32(simd.sse3._mm_movehdup_ps(dm)).mul_add(s, bias);
    }
    hsum(simd, acc) + bias
}

/// A Q8_0 row times `x`.
#[inline(always)]
pub(crate) fn dot_q8_0(simd: V4, row: &[u8], x: &[f32]) -> f32 {
    let f = &simd.avx512f;
    let mut acc = f._mm512_setzero_ps();
    for (b, x) in row.as_chunks::<34>().0.iter().zip(x.as_chunks::<32>().0) {
        prefetch(simd, b);
        let lo = f._mm512_cvtepi32_ps(f._mm512_cvtepi8_epi32(load_u8x16(&b[2..])));
        let hi = f._mm512_cvtepi32_ps(f._mm512_cvtepi8_epi32(load_u8x16(&b[18..])));
        let t = f._mm512_fmadd_ps(hi, load_f32x16(&x[16..]), f._mm512_mul_ps(lo, load_f32x16(x)));
        let d = f._mm512_broadcastss_ps(f16_pair(simd, b));
        acc = f._mm512_fmadd_ps(d, t, acc);
    }
    hsum(simd, acc)
}

/// A Q4_K row times `x`, given `x`'s per-32 sums.
#[inline(always)]
pub(crate) fn dot_q4_k(simd: V4, row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let f = &simd.avx512f;
    let mut acc = f._mm512_setzero_ps();
    let mut bias = 0f32;
    let mask = f._mm512_set1_epi32(0x0F);
    let blocks = row.as_chunks::<144>().0.iter().zip(x.as_chunks::<256>().0).zip(sums.as_chunks::<8>().0);
    for ((b, x), s) in blocks {
        prefetch(simd, b);
        prefetch(simd, &b[64..]);
        let dm = f16_pair(simd, b);
        let d = simd.sse._mm_cvtss_f32(dm);
        let dmin = simd.sse._mm_cvtss_f32(simd.sse3._mm_movehdup_ps(dm));
        let scales = &b[4..16];
        for j in 0..4 {
            let q = &b[16 + 32 * j..16 + 32 * j + 32];
            let x = &x[64 * j..64 * j + 64];
            let z0 = f._mm512_cvtepu8_epi32(load_u8x16(q));
            let z1 = f._mm512_cvtepu8_epi32(load_u8x16(&q[16..]));
            let cvt = |v| f._mm512_cvtepi32_ps(v);
            let lo0 = cvt(f._mm512_and_si512(z0, mask));
            let lo1 = cvt(f._mm512_and_si512(z1, mask));
            let hi0 = cvt(f._mm512_srli_epi32::<4>(z0));
            let hi1 = cvt(f._mm512_srli_epi32::<4>(z1));
            let t1 = f._mm512_fmadd_ps(lo1, load_f32x16(&x[16..]), f._mm512_mul_ps(lo0, load_f32x16(x)));
            let t2 =
                f._mm512_fmadd_ps(hi1, load_f32x16(&x[48..]), f._mm512_mul_ps(hi0, load_f32x16(&x[32..])));
            let (s1, m1) = scale_min_k4_f32(2 * j, scales);
            let (s2, m2) = scale_min_k4_f32(2 * j + 1, scales);
            acc = f._mm512_fmadd_ps(f._mm512_set1_ps(d * s1), t1, acc);
            acc = f._mm512_fmadd_ps(f._mm512_set1_ps(d * s2), t2, acc);
            bias = (dmin * m2).mul_add(s[2 * j + 1], (dmin * m1).mul_add(s[2 * j], bias));
        }
    }
    hsum(simd, acc) - bias
}

/// A Q6_K row times `x`.
#[inline(always)]
pub(crate) fn dot_q6_k(simd: V4, row: &[u8], x: &[f32]) -> f32 {
    let f = &simd.avx512f;
    let mut acc = f._mm512_setzero_ps();
    let low4 = f._mm512_set1_epi32(0x0F);
    let low2 = f._mm512_set1_epi32(3);
    let bias = f._mm512_set1_epi32(32);
    for (b, x) in row.as_chunks::<210>().0.iter().zip(x.as_chunks::<256>().0) {
        prefetch(simd, b);
        prefetch(simd, &b[64..]);
        prefetch(simd, &b[128..]);
        let d = simd.sse._mm_cvtss_f32(simd.avx512f._mm_maskz_cvtph_ps(
            0b1,
            simd.sse2._mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[208], b[209]]))),
        ));
        for half in 0..2 {
            let (ql, qh, sc) = crate::quant::q6_k_half(b, half);
            let xh = &x[128 * half..128 * half + 128];
            for lh in 0..2 {
                let za = f._mm512_cvtepu8_epi32(load_u8x16(&ql[16 * lh..]));
                let zb = f._mm512_cvtepu8_epi32(load_u8x16(&ql[32 + 16 * lh..]));
                let zh = f._mm512_cvtepu8_epi32(load_u8x16(&qh[16 * lh..]));
                let q = |low: __m512i, high: __m512i| {
                    let v = f._mm512_or_si512(low, f._mm512_slli_epi32::<4>(f._mm512_and_si512(high, low2)));
                    f._mm512_cvtepi32_ps(f._mm512_sub_epi32(v, bias))
                };
                let qs = [
                    q(f._mm512_and_si512(za, low4), zh),
                    q(f._mm512_and_si512(zb, low4), f._mm512_srli_epi32::<2>(zh)),
                    q(f._mm512_srli_epi32::<4>(za), f._mm512_srli_epi32::<4>(zh)),
                    q(f._mm512_srli_epi32::<4>(zb), f._mm512_srli_epi32::<6>(zh)),
                ];
                for (k, qk) in qs.into_iter().enumerate() {
                    let t = f._mm512_mul_ps(qk, load_f32x16(&xh[32 * k + 16 * lh..]));
                    let ds = f._mm512_set1_ps(d * f32::from(sc[lh + 2 * k] as i8));
                    acc = f._mm512_fmadd_ps(ds, t, acc);
                }
            }
        }
    }
    hsum(simd, acc)
}

/// Sixteen f32 into `y[..16]`.
#[inline(always)]
fn store_f32x16(v: __m512, y: &mut [f32]) {
    let a: [f32; 16] = pulp::cast(v);
    y[..16].copy_from_slice(&a);
}

/// Whether [`dequantize`] and [`dot2_q`] take rows of `ty`.
pub(crate) const fn batches(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// A row of a type [`batches`] takes, dequantized into `out` (its element count long): the
/// values of [`quant::dequantize`](crate::quant::dequantize), bit for bit, but Q4_1's
/// `d·q + m`, which is rounded once here. Returns `false`, writing nothing, for another type.
#[inline(always)]
pub(crate) fn dequantize(simd: V4, ty: GgmlType, row: &[u8], out: &mut [f32]) -> bool {
    if !batches(ty) {
        return false;
    }
    let (elems, bytes) = ty.block();
    for (b, y) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(elems)) {
        prefetch(simd, b);
        for (c, y) in y.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            let (lo, hi) = chunk_f32(simd, ty, b, c);
            store_f32x16(lo, &mut y[..16]);
            store_f32x16(hi, &mut y[16..]);
        }
    }
    true
}

/// A dequantized row (whole runs of 16) times each of `G` inputs, `p` holding the inputs
/// interleaved: for each run of 16 columns, the `G` inputs' 16 values in turn. `G` vectors of
/// sums, each lane a chain of multiply-adds over the columns `16c + lane`, then added up.
#[inline(always)]
pub(crate) fn dot1_f32<const G: usize>(simd: V4, w: &[f32], p: &[[f32; 16]]) -> [f32; G] {
    let f = &simd.avx512f;
    let mut a = [f._mm512_setzero_ps(); G];
    for (u, x) in w.as_chunks::<16>().0.iter().zip(p.chunks_exact(G)) {
        let u: __m512 = pulp::cast(*u);
        for j in 0..G {
            a[j] = f._mm512_fmadd_ps(u, pulp::cast(x[j]), a[j]);
        }
    }
    core::array::from_fn(|j| hsum(simd, a[j]))
}

/// The 32 values of chunk `c` (elements `32c..32c + 32`) of one block `b` of a type
/// [`batches`] takes, as [`dequantize`] writes them: Q4_0, Q4_1 and Q8_0 blocks are one chunk,
/// Q4_K and Q6_K blocks eight.
#[inline(always)]
fn chunk_f32(simd: V4, ty: GgmlType, b: &[u8], c: usize) -> (__m512, __m512) {
    let f = &simd.avx512f;
    let cvt = |v: __m512i| f._mm512_cvtepi32_ps(v);
    match ty {
        GgmlType::Q4_0 => {
            let (lo, hi) = nibbles(simd, &b[2..], 8);
            let d = f._mm512_broadcastss_ps(f16_pair(simd, b));
            (f._mm512_mul_ps(d, lo), f._mm512_mul_ps(d, hi))
        }
        GgmlType::Q4_1 => {
            let (lo, hi) = nibbles(simd, &b[4..], 0);
            let dm = f16_pair(simd, b);
            let d = f._mm512_broadcastss_ps(dm);
            let m = f._mm512_broadcastss_ps(simd.sse3._mm_movehdup_ps(dm));
            (f._mm512_fmadd_ps(d, lo, m), f._mm512_fmadd_ps(d, hi, m))
        }
        GgmlType::Q4_K => {
            // Sub-block `c`: the low (c even) or high nibbles of `qs[32·(c/2)..][..32]`,
            // `(d·sc)·q − dmin·min` as the reference rounds it.
            let dm = f16_pair(simd, b);
            let d = simd.sse._mm_cvtss_f32(dm);
            let dmin = simd.sse._mm_cvtss_f32(simd.sse3._mm_movehdup_ps(dm));
            let (s, m) = scale_min_k4_f32(c, &b[4..16]);
            let q = &b[16 + 32 * (c / 2)..];
            let z0 = f._mm512_cvtepu8_epi32(load_u8x16(q));
            let z1 = f._mm512_cvtepu8_epi32(load_u8x16(&q[16..]));
            let (v0, v1) = if c.is_multiple_of(2) {
                let mask = f._mm512_set1_epi32(0x0F);
                (f._mm512_and_si512(z0, mask), f._mm512_and_si512(z1, mask))
            } else {
                (f._mm512_srli_epi32::<4>(z0), f._mm512_srli_epi32::<4>(z1))
            };
            let (ds, dmm) = (f._mm512_set1_ps(d * s), f._mm512_set1_ps(dmin * m));
            (
                f._mm512_sub_ps(f._mm512_mul_ps(ds, cvt(v0)), dmm),
                f._mm512_sub_ps(f._mm512_mul_ps(ds, cvt(v1)), dmm),
            )
        }
        GgmlType::Q6_K => {
            // Half `c/4`, run `k = c mod 4`: element `l + 32k` of the half is the low (k < 2)
            // or high nibble of `ql[l + 32·(k mod 2)]` and bits `2k..2k+2` of `qh[l]`, scaled
            // by `d·sc[l/16 + 2k]`.
            let d = simd.sse._mm_cvtss_f32(simd.avx512f._mm_maskz_cvtph_ps(
                0b1,
                simd.sse2._mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[208], b[209]]))),
            ));
            let (ql, qh, sc) = crate::quant::q6_k_half(b, c / 4);
            let k = c % 4;
            (q6_k_16(simd, ql, qh, sc, d, k, 0), q6_k_16(simd, ql, qh, sc, d, k, 1))
        }
        _ => {
            let d = f._mm512_broadcastss_ps(f16_pair(simd, b));
            let lo = f._mm512_cvtepi32_ps(f._mm512_cvtepi8_epi32(load_u8x16(&b[2..])));
            let hi = f._mm512_cvtepi32_ps(f._mm512_cvtepi8_epi32(load_u8x16(&b[18..])));
            (f._mm512_mul_ps(lo, d), f._mm512_mul_ps(hi, d))
        }
    }
}

/// Elements `32k + 16·lh ..` (sixteen) of a Q6_K half (`ql`, `qh`, `sc` of
/// [`q6_k_half`](crate::quant::q6_k_half)), `(d·sc)·(q − 32)`.
#[inline(always)]
fn q6_k_16(simd: V4, ql: &[u8], qh: &[u8], sc: &[u8], d: f32, k: usize, lh: usize) -> __m512 {
    let f = &simd.avx512f;
    let shift = |v: __m512i, by: usize| f._mm512_srlv_epi32(v, f._mm512_set1_epi32(by as i32));
    let low = shift(f._mm512_cvtepu8_epi32(load_u8x16(&ql[32 * (k % 2) + 16 * lh..])), 4 * (k / 2));
    let low = f._mm512_and_si512(low, f._mm512_set1_epi32(0x0F));
    let high = shift(f._mm512_cvtepu8_epi32(load_u8x16(&qh[16 * lh..])), 2 * k);
    let high = f._mm512_slli_epi32::<4>(f._mm512_and_si512(high, f._mm512_set1_epi32(3)));
    let q = f._mm512_sub_epi32(f._mm512_or_si512(low, high), f._mm512_set1_epi32(32));
    f._mm512_mul_ps(f._mm512_set1_ps(d * f32::from(sc[lh + 2 * k] as i8)), f._mm512_cvtepi32_ps(q))
}

/// Two rows of a type [`batches`] takes times each of `G` inputs (`p` as for [`dot1_f32`]),
/// each block dequantized in registers, 32 values at a time, on the way: for each row, the same
/// values and sums as [`dequantize`] then [`dot1_f32`], bit for bit.
#[inline(always)]
pub(crate) fn dot2_q<const G: usize>(
    simd: V4,
    ty: GgmlType,
    r0: &[u8],
    r1: &[u8],
    p: &[[f32; 16]],
) -> ([f32; G], [f32; G]) {
    let f = &simd.avx512f;
    let (be, bb) = ty.block();
    let chunks = be / 32;
    let mut a = [f._mm512_setzero_ps(); G];
    let mut b = [f._mm512_setzero_ps(); G];
    for ((b0, b1), xb) in r0.chunks_exact(bb).zip(r1.chunks_exact(bb)).zip(p.chunks_exact(2 * G * chunks)) {
        prefetch(simd, b0);
        prefetch(simd, b1);
        for (c, x) in xb.chunks_exact(2 * G).enumerate() {
            let (u0, u1) = chunk_f32(simd, ty, b0, c);
            let (v0, v1) = chunk_f32(simd, ty, b1, c);
            for j in 0..G {
                let xj: __m512 = pulp::cast(x[j]);
                a[j] = f._mm512_fmadd_ps(u0, xj, a[j]);
                b[j] = f._mm512_fmadd_ps(v0, xj, b[j]);
            }
            for j in 0..G {
                let xj: __m512 = pulp::cast(x[G + j]);
                a[j] = f._mm512_fmadd_ps(u1, xj, a[j]);
                b[j] = f._mm512_fmadd_ps(v1, xj, b[j]);
            }
        }
    }
    (core::array::from_fn(|j| hsum(simd, a[j])), core::array::from_fn(|j| hsum(simd, b[j])))
}
