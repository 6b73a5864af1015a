//! AVX2 + FMA row kernels for the hottest block types (Q4_0, Q4_1, Q8_0) with f32 activations,
//! written with [`pulp`]'s safe intrinsics: per block of 32, the quants are widened to two or
//! four vectors of eight f32, multiplied with the input and accumulated with the block's scale
//! in fused multiply-adds. The compiler does not vectorize the portable kernels of
//! [`crate::qmatmul`] well for these types (the nibble unpacking comes out two lanes wide).
//!
//! Same sums as [`quant::dot`](crate::quant::dot) up to f32 rounding and their order.

use core::arch::x86_64::{__m128i, __m256};

use pulp::x86::V3;

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
