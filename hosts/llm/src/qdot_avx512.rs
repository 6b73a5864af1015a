//! AVX-512 row kernels for the hottest block types (Q4_0, Q4_1, Q8_0) with f32 activations,
//! written with [`pulp`]'s safe intrinsics: a block of 32 quants becomes two vectors of sixteen
//! f32, and its f16 scale (and Q4_1's min) is converted by the hardware (`vcvtph2ps`), which
//! the AVX2 kernels ([`crate::qdot_avx2`]) must do in scalar code.
//!
//! Same sums as [`quant::dot`](crate::quant::dot) up to f32 rounding and their order.

use core::arch::x86_64::{__m128, __m128i, __m512};

use pulp::x86::V4;

#[inline(always)]
fn load_u8x16(b: &[u8]) -> __m128i {
    let a: [u8; 16] = core::array::from_fn(|i| b[i]);
    pulp::cast(a)
}

#[inline(always)]
fn load_f32x16(x: &[f32]) -> __m512 {
    let a: [f32; 16] = core::array::from_fn(|i| x[i]);
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
