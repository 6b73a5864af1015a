//! Code compiled for the best instruction set the CPU offers, picked at run time.
//!
//! A [`Kernel`] is written once, generic over how a multiply-add is done ([`Madd`]), as plain
//! Rust over fixed-size arrays that the compiler vectorizes. [`dispatch`] runs it compiled for
//! AVX-512 or AVX2 + FMA (through [`pulp`]'s feature detection) when the CPU has them, with
//! fused multiply-adds; elsewhere it runs as written, with a multiply then an add. Everything a
//! kernel calls must be `#[inline(always)]` so that it is compiled for the chosen instructions
//! too.

/// A multiply-add: one fused instruction where the instruction set has it, else a multiply then
/// an add (a fused multiply-add emulated in software would be far slower).
pub(crate) trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// `a·b + c` rounded once.
pub(crate) struct Fused;
/// `a·b + c` rounded twice.
pub(crate) struct Separate;

impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl Madd for Separate {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `$body` with `$G` a `const usize` equal to the run-time group size `$g`: 1 to 8 (more runs
/// as 8), or with `4;` first, 1 to 4 (more runs as 4). The batched kernels take the number of
/// inputs of a pass as a const generic, so that their sums stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! with_group_size {
    (4; $g:expr, $G:ident => $body:expr) => {
        with_group_size!(@sizes $g, $G => $body; 1 2 3; 4)
    };
    ($g:expr, $G:ident => $body:expr) => {
        with_group_size!(@sizes $g, $G => $body; 1 2 3 4 5 6 7; 8)
    };
    (@sizes $g:expr, $G:ident => $body:expr; $($n:literal)*; $max:literal) => {
        match $g {
            $($n => {
                const $G: usize = $n;
                $body
            })*
            _ => {
                const $G: usize = $max;
                $body
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use with_group_size;

/// Work compiled once per instruction set.
pub(crate) trait Kernel {
    type Output;
    fn run<M: Madd>(self) -> Self::Output;
}

/// A [`Kernel`] with fused multiply-adds, as the function `vectorize` compiles for an
/// instruction set. A closure would do the same but for inlining: its body is not always
/// inlined into the function `vectorize` makes, and then compiles without the instruction
/// set's features (each `mul_add` a call to `fmaf`); this trait method always is.
#[cfg(target_arch = "x86_64")]
struct WithFma<K>(K);

#[cfg(target_arch = "x86_64")]
impl<K: Kernel> pulp::NullaryFnOnce for WithFma<K> {
    type Output = K::Output;

    #[inline(always)]
    fn call(self) -> K::Output {
        self.0.run::<Fused>()
    }
}

/// Runs `k` compiled for AVX-512 or AVX2 + FMA when the CPU has them.
#[inline(always)]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(WithFma(k));
        }
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(WithFma(k));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // NEON (with its fused multiply-add) is part of the aarch64 baseline.
        return k.run::<Fused>();
    }
    #[allow(unreachable_code)]
    k.run::<Separate>()
}

/// An f16's value from its bits, exactly (subnormals, infinities and NaN included), in a form
/// that inlines into the vectorized loops: normal values (all that quantization scales are in
/// practice) take a few integer operations, the rest an out-of-line path.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    let em = h & 0x7FFF;
    // Exponent 1..=30: rebias (15 to 127) by adding 112 << 23 to the shifted bits.
    if em.wrapping_sub(0x0400) < 0x7800 {
        return f32::from_bits(((em << 13) + 0x3800_0000) | ((h & 0x8000) << 16));
    }
    f16_special(bits)
}

/// Zero, subnormal, infinite and NaN f16 values, out of line.
#[cold]
#[inline(never)]
fn f16_special(bits: u16) -> f32 {
    f16_widen(bits)
}

/// Any f16's value from its bits, exactly, with no branch (so a loop of it vectorizes): the
/// exponent and mantissa moved into an f32's place and scaled by 2^112 (the exponent bias
/// difference; exact for normal and subnormal values alike), infinities and NaN given an
/// all-ones exponent.
#[inline(always)]
pub(crate) fn f16_widen(bits: u16) -> f32 {
    let sign = (u32::from(bits) & 0x8000) << 16;
    let em = u32::from(bits) & 0x7FFF;
    let finite = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let v = if em >= 0x7C00 { f32::from_bits(0x7F80_0000 | ((em & 0x3FF) << 13)) } else { finite };
    f32::from_bits(v.to_bits() | sign)
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// The sum of 16 lanes, pairwise.
#[inline(always)]
pub(crate) fn hsum(a: &[f32; 16]) -> f32 {
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = a[i] + a[i + 8];
    }
    let q = [h[0] + h[4], h[1] + h[5], h[2] + h[6], h[3] + h[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}
