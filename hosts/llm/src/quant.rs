//! Host reference dequantization and quantized dot products over raw GGUF block bytes.
//!
//! Pure functions over byte slices (no allocation, nothing from `std` beyond `core`), so kernels
//! on other backends can be checked against them. Block layouts (ggml's, little-endian):
//!
//! | type | elements | bytes | layout | value |
//! |---|---|---|---|---|
//! | F32 | 1 | 4 | f32 | x |
//! | F16 | 1 | 2 | f16 | x |
//! | BF16 | 1 | 2 | the high half of an f32 | x |
//! | Q8_0 | 32 | 34 | f16 d, i8 q\[32\] | d·q |
//! | Q4_0 | 32 | 18 | f16 d, u8 qs\[16\]: element i in the low nibble of qs\[i\], i+16 in the high | d·(q−8) |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, qs\[16\] as Q4_0 | d·q + m |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 bytes of eight 6-bit (scale, min) pairs, qs\[128\] | (d·sc)·q − dmin·min |
//! | Q6_K | 256 | 210 | ql\[128\] low 4 bits, qh\[64\] high 2 bits, i8 scales\[16\], f16 d | (d·sc)·(q−32) |
//!
//! In Q4_K each 64 elements take 32 bytes of `qs`: the first 32 elements the low nibbles (pair
//! 2j), the next 32 the high nibbles (pair 2j+1). In Q6_K each half of 128 elements takes 64 bytes
//! of `ql`, 32 of `qh` and 8 scales; within it element `l + 32·k` (k = 0..4) takes the low (k even)
//! or high (k odd) nibble of `ql[l + 32·(k mod 2)]` and bits `2k..2k+2` of `qh[l]`, and scale
//! `l/16 + 2k`. The arithmetic is done in f32 in the order the table shows, which is what ggml's
//! reference and the `gguf` Python package compute, so results match them bit for bit.
//! [`dequantize`] expands the block formats with `rela_kernels::quant` (the no_std dequantizers
//! the device kernels are checked against); the dot products here and the SIMD kernels keep
//! their own fused loops.

use core::fmt;

use half::{bf16, f16};
use rela_core::backend::WeightType;

use crate::gguf::GgmlType;

/// Why a dequantization or dot product was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantError {
    /// A type without a host implementation here.
    Unsupported(GgmlType),
    /// The byte length is not what the element count needs (or not whole blocks).
    SizeMismatch {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Elements asked for.
        elements: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(ty) => write!(f, "tensor type {ty:?} is not supported"),
            Self::SizeMismatch { ty, bytes, elements } => {
                write!(f, "{bytes} bytes do not hold {elements} elements of {ty:?}")
            }
        }
    }
}

impl core::error::Error for QuantError {}

fn check(ty: GgmlType, bytes: usize, elements: usize) -> Result<(), QuantError> {
    if !ty.is_supported() {
        return Err(QuantError::Unsupported(ty));
    }
    let (be, bb) = ty.block();
    if !elements.is_multiple_of(be) || elements / be * bb != bytes {
        return Err(QuantError::SizeMismatch { ty, bytes, elements });
    }
    Ok(())
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_K's scale and min for sub-block `j` (0..8) from its 12 packed bytes: the no_std
/// reference's, one copy for both.
pub(crate) use rela_kernels::quant::scale_min_k4;

/// [`scale_min_k4`] as f32, for the product kernels.
#[inline(always)]
pub(crate) fn scale_min_k4_f32(j: usize, q: &[u8]) -> (f32, f32) {
    let (s, m) = scale_min_k4(j, q);
    (f32::from(s), f32::from(m))
}

/// Half `half` (0 or 1, 128 quants each) of a Q6_K block: its 64 bytes of low nibbles, 32 bytes
/// of high bit pairs and 8 signed scales (one per 16 quants); the block's `d` is at byte 208.
#[inline(always)]
pub(crate) fn q6_k_half(b: &[u8], half: usize) -> (&[u8], &[u8], &[u8]) {
    (
        &b[64 * half..64 * half + 64],
        &b[128 + 32 * half..128 + 32 * half + 32],
        &b[192 + 8 * half..192 + 8 * half + 8],
    )
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`, whose length is the element count.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check(ty, src.len(), dst.len())?;
    let (be, bb) = ty.block();
    let blocks = src.chunks_exact(bb).zip(dst.chunks_exact_mut(be));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        // The block formats: rela-kernels' no_std dequantizers, which every backend's
        // quantized kernels are checked against (one copy of the layouts).
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q6_K => {
            let Some(wtype) = WeightType::from_ggml_id(ty.id()) else {
                return Err(QuantError::Unsupported(ty));
            };
            rela_kernels::quant::dequantize_row(wtype, src, dst);
        }
        _ => return Err(QuantError::Unsupported(ty)),
    }
    Ok(())
}

#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so the loop vectorizes without reassociation by the compiler.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The dot product of one quantized row `row` (whole blocks of `ty`) with `x`, whose length is
/// the row's element count: the inner loop of a quantized matrix-vector product. Works block by
/// block without materializing the row; equal to dequantize-then-dot up to f32 rounding.
pub fn dot(ty: GgmlType, row: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    check(ty, row.len(), x.len())?;
    let (be, bb) = ty.block();
    let blocks = row.chunks_exact(bb).zip(x.chunks_exact(be));
    let mut sum = 0f32;
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut buf = [0f32; 64];
            for (r, xs) in row.chunks(64 * bb).zip(x.chunks(64)) {
                let n = xs.len();
                dequantize(ty, r, &mut buf[..n])?;
                sum += dot_f32(&buf[..n], xs);
            }
        }
        GgmlType::Q8_0 => {
            for (b, xs) in blocks {
                let mut q = [0f32; 32];
                for (qi, &v) in q.iter_mut().zip(&b[2..34]) {
                    *qi = f32::from(v as i8);
                }
                sum += f16_at(b, 0) * dot_f32(&q, xs);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
            let bias = if ty == GgmlType::Q4_0 { 8 } else { 0 };
            for (b, xs) in blocks {
                let mut q = [0f32; 32];
                for (i, &v) in b[off..off + 16].iter().enumerate() {
                    q[i] = f32::from((v & 0x0F) as i8 - bias);
                    q[i + 16] = f32::from((v >> 4) as i8 - bias);
                }
                sum += f16_at(b, 0) * dot_f32(&q, xs);
                if ty == GgmlType::Q4_1 {
                    sum += f16_at(b, 2) * xs.iter().sum::<f32>();
                }
            }
        }
        GgmlType::Q4_K => {
            for (b, xs) in blocks {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                for (j, (q, xs)) in b[16..144].chunks_exact(32).zip(xs.chunks_exact(64)).enumerate() {
                    let (mut lo, mut hi) = ([0f32; 32], [0f32; 32]);
                    for l in 0..32 {
                        lo[l] = f32::from(q[l] & 0x0F);
                        hi[l] = f32::from(q[l] >> 4);
                    }
                    let (x1, x2) = xs.split_at(32);
                    let (s1, m1) = scale_min_k4(2 * j, scales);
                    let (s2, m2) = scale_min_k4(2 * j + 1, scales);
                    sum +=
                        d * f32::from(s1) * dot_f32(&lo, x1) - dmin * f32::from(m1) * x1.iter().sum::<f32>();
                    sum +=
                        d * f32::from(s2) * dot_f32(&hi, x2) - dmin * f32::from(m2) * x2.iter().sum::<f32>();
                }
            }
        }
        GgmlType::Q6_K => {
            for (b, xs) in blocks {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = q6_k_half(b, half);
                    let xs = &xs[128 * half..128 * half + 128];
                    let mut q = [0f32; 128];
                    for l in 0..32 {
                        for k in 0..4 {
                            let low = ql[l + 32 * (k % 2)] >> (4 * (k / 2)) & 0x0F;
                            let high = (qh[l] >> (2 * k)) & 3;
                            q[l + 32 * k] = f32::from((low | (high << 4)) as i8 - 32);
                        }
                    }
                    for (s, (q, x)) in sc.iter().zip(q.chunks_exact(16).zip(xs.chunks_exact(16))) {
                        sum += d * f32::from(*s as i8) * dot_f32(q, x);
                    }
                }
            }
        }
        _ => return Err(QuantError::Unsupported(ty)),
    }
    Ok(sum)
}
