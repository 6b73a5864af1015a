//! GGUF weight blocks ([`WeightType`]) in plain Rust: IEEE half conversion and the
//! dequantization of one block, as llama.cpp's `ggml-quants.c` (`dequantize_row_*`) and the
//! `gguf` Python package compute it, bit for bit.
//!
//! No allocation and no `std`: the reference kernels [`q_linear`](crate::reference::q_linear)
//! and [`q_gather`](crate::reference::q_gather) dequantize block by block into a stack buffer of
//! [`MAX_BLOCK_ELEMS`] values, and the GPU kernels are checked against them.
//!
//! | type | weights | bytes | layout | weight |
//! |---|---|---|---|---|
//! | F32 | 1 | 4 | f32 | `x` |
//! | F16 | 1 | 2 | f16 | `x` |
//! | Q4_0 | 32 | 18 | f16 `d`, `qs[16]`: weight `i` in the low nibble of `qs[i]`, `i + 16` in the high | `d·(q − 8)` |
//! | Q4_1 | 32 | 20 | f16 `d`, f16 `m`, `qs[16]` as Q4_0 | `d·q + m` |
//! | Q8_0 | 32 | 34 | f16 `d`, i8 `qs[32]` | `q·d` |
//! | Q4_K | 256 | 144 | f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit (scale, min) pairs, `qs[128]` | `(d·sc)·q − (dmin·m)` |
//! | Q6_K | 256 | 210 | `ql[128]` low nibbles, `qh[64]` high bit pairs, i8 `scales[16]`, f16 `d` | `(d·sc)·(q − 32)` |
//!
//! Q4_K: each 64 weights take 32 bytes of `qs`, the first 32 weights the low nibbles (scale pair
//! `2j`), the next 32 the high nibbles (pair `2j + 1`); pairs 0..4 are the low 6 bits of bytes
//! `j` (scale) and `j + 4` (min), pairs 4..8 take their low 4 bits from byte `j + 4` and their
//! high 2 bits from the top bits of bytes `j − 4` and `j`. Q6_K: each half of 128 weights takes
//! 64 bytes of `ql`, 32 of `qh` and 8 scales; within it weight `l + 32k` (`l < 32`, `k < 4`) is
//! the low (`k` even) or high (`k` odd) nibble of `ql[l + 32 (k mod 2)]` plus bits `2k..2k+2`
//! of `qh[l]` as bits 4 and 5, with scale `l / 16 + 2k`.

use rela_core::backend::WeightType;

/// Most weights in one block of any [`WeightType`] (Q4_K and Q6_K).
pub const MAX_BLOCK_ELEMS: usize = 256;

/// The f32 value of the IEEE half with bits `bits`, exactly (subnormals, infinities and NaN
/// included; a NaN keeps its sign and payload).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1F);
    let mant = u32::from(bits & 0x3FF);
    match (exp, mant) {
        (0, 0) => f32::from_bits(sign),
        (0, m) => {
            // m · 2⁻²⁴: both factors and the product are exact in f32.
            let v = m as f32 * (1.0 / 16_777_216.0);
            if sign != 0 { -v } else { v }
        }
        (0x1F, m) => f32::from_bits(sign | 0x7F80_0000 | (m << 13)),
        (e, m) => f32::from_bits(sign | ((e + 112) << 23) | (m << 13)),
    }
}

/// The half at bytes `i..i + 2` of `b`, as f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Q4_K's 6-bit scale and min of sub-block `j` (`0..8`) from the block's 12 packed bytes.
/// Inlined everywhere: rela-llm's SIMD kernels call it inside their vectorized loops.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantizes one block of `wtype`: `block` holds at least [`WeightType::block_bytes`] bytes,
/// `out` at least [`WeightType::block_elems`] values; the first `block_elems` are written.
pub fn dequantize_block(wtype: WeightType, block: &[u8], out: &mut [f32]) {
    match wtype {
        WeightType::F32 => out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        WeightType::F16 => out[0] = f16_at(block, 0),
        WeightType::Q4_0 => {
            let d = f16_at(block, 0);
            for (i, &q) in block[2..18].iter().enumerate() {
                out[i] = d * f32::from((q & 0x0F) as i8 - 8);
                out[i + 16] = d * f32::from((q >> 4) as i8 - 8);
            }
        }
        WeightType::Q4_1 => {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            for (i, &q) in block[4..20].iter().enumerate() {
                out[i] = d * f32::from(q & 0x0F) + m;
                out[i + 16] = d * f32::from(q >> 4) + m;
            }
        }
        WeightType::Q8_0 => {
            let d = f16_at(block, 0);
            for (o, &q) in out[..32].iter_mut().zip(&block[2..34]) {
                *o = f32::from(q as i8) * d;
            }
        }
        WeightType::Q4K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let scales = &block[4..16];
            for (j, (q, y)) in
                block[16..144].chunks_exact(32).zip(out[..256].chunks_exact_mut(64)).enumerate()
            {
                let (s1, m1) = scale_min_k4(2 * j, scales);
                let (s2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, dm1) = (d * f32::from(s1), dmin * f32::from(m1));
                let (d2, dm2) = (d * f32::from(s2), dmin * f32::from(m2));
                for (l, &b) in q.iter().enumerate() {
                    y[l] = d1 * f32::from(b & 0x0F) - dm1;
                    y[l + 32] = d2 * f32::from(b >> 4) - dm2;
                }
            }
        }
        WeightType::Q6K => {
            let d = f16_at(block, 208);
            for half in 0..2 {
                let ql = &block[64 * half..64 * half + 64];
                let qh = &block[128 + 32 * half..128 + 32 * half + 32];
                let sc = &block[192 + 8 * half..192 + 8 * half + 8];
                let y = &mut out[128 * half..128 * half + 128];
                for l in 0..32 {
                    for k in 0..4 {
                        let low = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0F;
                        let high = (qh[l] >> (2 * k)) & 3;
                        let q = (low | (high << 4)) as i8 - 32;
                        let s = f32::from(sc[l / 16 + 2 * k] as i8);
                        y[l + 32 * k] = (d * s) * f32::from(q);
                    }
                }
            }
        }
    }
}

/// Dequantizes a row of whole blocks: `src` holds `out.len() / block_elems` blocks of `wtype`
/// (`out.len()` a multiple of the block size) and `out` receives every weight.
pub fn dequantize_row(wtype: WeightType, src: &[u8], out: &mut [f32]) {
    let (be, bb) = (wtype.block_elems() as usize, wtype.block_bytes() as usize);
    for (block, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        dequantize_block(wtype, block, y);
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// Dequantizes one block of `wtype` from `bytes`.
    fn one(wtype: WeightType, bytes: &[u8]) -> Vec<f32> {
        assert_eq!(bytes.len(), wtype.block_bytes() as usize);
        let mut out = std::vec![f32::NAN; wtype.block_elems() as usize];
        dequantize_row(wtype, bytes, &mut out);
        out
    }

    #[test]
    fn f16_matches_half_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}");
        }
        // By hand: one, minus two, the largest half, the smallest subnormal, -2^-14, infinity.
        let hand = [
            (0x3C00, 1.0f32),
            (0xC000, -2.0),
            (0x7BFF, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8400, -6.103_515_6e-5),
        ];
        for (bits, want) in hand {
            assert_eq!(f16_to_f32(bits), want, "{bits:#06x}");
        }
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
        assert!(f16_to_f32(0x7E01).is_nan());
    }

    #[test]
    fn plain_formats_by_hand() {
        assert_eq!(one(WeightType::F32, &(-1.25f32).to_le_bytes()), [-1.25]);
        assert_eq!(one(WeightType::F16, &[0x00, 0xC0]), [-2.0]);
    }

    #[test]
    fn q4_0_by_hand() {
        // d = -2 (0xC000); byte i holds q = i (low) and 15 - i (high).
        let mut b = std::vec![0x00, 0xC0];
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let w = one(WeightType::Q4_0, &b);
        assert_eq!(&w[..4], [16.0, 14.0, 12.0, 10.0]); // -2 · (i - 8)
        assert_eq!(w[15], -14.0);
        assert_eq!(w[16], -14.0); // -2 · (15 - 8)
        assert_eq!(w[31], 16.0); // -2 · (0 - 8)
    }

    #[test]
    fn q4_1_by_hand() {
        // d = 0.25 (0x3400), m = -1.5 (0xBE00); every byte 0xF3: q = 3 low, 15 high.
        let mut b = std::vec![0x00, 0x34, 0x00, 0xBE];
        b.extend([0xF3u8; 16]);
        let w = one(WeightType::Q4_1, &b);
        assert!(w[..16].iter().all(|&v| v == -0.75), "{w:?}");
        assert!(w[16..].iter().all(|&v| v == 2.25), "{w:?}");
    }

    #[test]
    fn q8_0_by_hand() {
        // d = -0.125 (0xB000); q = -128, -1, 0, 1, 127, then 3s.
        let mut b = std::vec![0x00, 0xB0, 0x80, 0xFF, 0x00, 0x01, 0x7F];
        b.extend([3u8; 27]);
        let w = one(WeightType::Q8_0, &b);
        assert_eq!(&w[..6], [16.0, 0.125, 0.0, -0.125, -15.875, -0.375]);
    }

    #[test]
    fn q4_k_by_hand() {
        // d = 1, dmin = 0.5; scales and mins per sub-block 0..8:
        // sc = 1, 2, 3, 4, 17, 3, 37, 7 and m = 5, 6, 7, 8, 50, 4, 6, 24 (see the packing in
        // the module docs); every quant byte 0x3A: q = 10 (low nibble), 3 (high).
        let mut b = std::vec![0x00, 0x3C, 0x00, 0x38];
        b.extend([0x41, 0x02, 0x83, 0x04, 0xC5, 0x06, 0x07, 0x48, 0x21, 0x43, 0x65, 0x87]);
        b.extend([0x3Au8; 128]);
        let w = one(WeightType::Q4K, &b);
        // Sub-block 2c: sc·10 − 0.5·m, sub-block 2c + 1: sc·3 − 0.5·m.
        let want = [7.5f32, 3.0, 26.5, 8.0, 145.0, 7.0, 367.0, 9.0];
        for (s, &v) in want.iter().enumerate() {
            assert!(
                w[32 * s..32 * s + 32].iter().all(|&x| x == v),
                "sub-block {s}: {:?}",
                &w[32 * s..32 * s + 32]
            );
        }
    }

    #[test]
    fn q6_k_by_hand() {
        // ql all 0x21 (low nibble 1, high 2), qh all 0xE4 (bit pairs 0, 1, 2, 3), scales s - 8
        // for s = 0..16, d = 0.5. Weight l + 32k of half h: q = 1 + 0 − 32 = −31 (k = 0),
        // 1 + 16 − 32 = −15 (k = 1), 2 + 32 − 32 = 2 (k = 2), 2 + 48 − 32 = 18 (k = 3), with
        // scale 8h + l / 16 + 2k.
        let mut b = std::vec![0x21u8; 128];
        b.extend([0xE4u8; 64]);
        b.extend((0..16i8).map(|s| (s - 8) as u8));
        b.extend([0x00, 0x38]);
        let w = one(WeightType::Q6K, &b);
        assert_eq!(w[0], 124.0); // (0.5 · −8) · −31
        assert_eq!(w[16], 108.5); // (0.5 · −7) · −31
        assert_eq!(w[32], 45.0); // (0.5 · −6) · −15
        assert_eq!(w[64 + 17], -3.0); // (0.5 · −3) · 2
        assert_eq!(w[128 + 96 + 31], 63.0); // (0.5 · 7) · 18
        assert_eq!(w[128], 0.0); // (0.5 · 0) · −31
    }
}
