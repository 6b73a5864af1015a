//! A quantized matrix times a few inputs at once (several sequences' decode steps, a short
//! prompt chunk): each block of a weight row is dequantized once, in registers, and multiplied
//! with every input, two rows against up to [`GROUP`] inputs per pass of a register-blocked
//! kernel.
//!
//! With one input, the fused dequantize-and-dot kernels of [`crate::qmatmul`] do less work (a
//! block is unpacked straight into the product). With several, they unpack every block once per
//! input and multiply each input by the block's scale separately; here the unpacking, the scale
//! and Q4_1's offset are paid once per block for the whole batch, and each input costs two
//! multiply-adds per 32 weights.
//!
//! This path needs AVX-512 and a Q4_0, Q4_1, Q8_0, Q4_K or Q6_K matrix (the kernels of
//! [`crate::qdot_avx512`]); [`matmul`] says when it does not apply, and the caller then runs
//! the fused row kernels once per input.
//!
//! Results: the dot product of the dequantized row ([`quant::dequantize`]'s values, Q4_1's
//! `d·q + m` rounded once) with each input, summed over 16 lanes in a fixed order. An input's
//! results do not depend on which or how many other inputs share its batch, and they equal
//! [`quant::dot`](crate::quant::dot) up to f32 rounding.

use crate::qmatmul::QMat;
#[cfg(target_arch = "x86_64")]
use crate::qmatmul::by_row_runs;

/// Inputs per pass of the kernel (2 rows × 8 inputs: 16 of AVX-512's 32 vector registers hold
/// sums).
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 8;

/// `y = x · mᵀ` for a few inputs, if this path applies to `m` on this CPU (else `false`, and
/// nothing is written): `x` is `tokens × cols` (one input per row), `y` is `tokens × rows`. Runs
/// of rows are split across the pool's threads, each for every input.
///
/// # Panics
/// If `x` or `y` is not of that size.
pub(crate) fn matmul(m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) -> bool {
    assert_eq!(x.len(), tokens * m.cols, "matmul input length");
    assert_eq!(y.len(), tokens * m.rows, "matmul output length");
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V4::try_new()
        && crate::qdot_avx512::batches(m.ty)
    {
        let packed = pack(x, m.cols, GROUP);
        by_row_runs(m, tokens, y, |first, n| {
            let mut out = vec![0f32; tokens * n];
            let mut w = vec![0f32; if n % 2 == 1 { m.cols } else { 0 }];
            simd.vectorize(Rows { simd, m, first, n, tokens, packed: &packed, w: &mut w, out: &mut out });
            out
        });
        return true;
    }
    false
}

/// The inputs (`x`: one per `cols` values, `cols` a multiple of 16) interleaved for the
/// kernel: the inputs in groups of `group` (the last one smaller), and within a group, for each
/// run of 16 columns, each input's 16 values in turn. Group `k` starts at `k · group · cols`.
#[cfg(target_arch = "x86_64")]
fn pack(x: &[f32], cols: usize, group: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for g in x.chunks(group * cols) {
        for c in (0..cols).step_by(16) {
            for x in g.chunks_exact(cols) {
                out.extend_from_slice(&x[c..c + 16]);
            }
        }
    }
    out
}

/// `out[t·n + i] = row(first + i) · x[t]` for `i < n` and `t < tokens`: rows two at a time,
/// dequantized block by block in registers and multiplied with each group of inputs of
/// `packed` ([`pack`]'s layout); an odd last row dequantized into `w` (`cols` long) first.
#[cfg(target_arch = "x86_64")]
struct Rows<'a, 'o> {
    simd: pulp::x86::V4,
    m: QMat<'a>,
    first: usize,
    n: usize,
    tokens: usize,
    packed: &'o [f32],
    w: &'o mut [f32],
    out: &'o mut [f32],
}

// A closure calling `#[inline(always)]` code is not always inlined into the AVX-512 function
// `vectorize` makes (the intrinsics then become calls); this trait method is.
#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Rows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        use crate::qdot_avx512::{dequantize, dot1_f32, dot2_q};
        let Self { simd, m, first, n, tokens, packed, w, out } = self;
        let cols = m.cols;
        let mut i = 0;
        while i < n {
            let pair = i + 1 < n;
            if !pair {
                // `matmul` admits only types `dequantize` has.
                dequantize(simd, m.ty, m.row(first + i), w);
            }
            let mut t0 = 0;
            while t0 < tokens {
                let g = (tokens - t0).min(GROUP);
                let p = packed[t0 * cols..(t0 + g) * cols].as_chunks::<16>().0;
                macro_rules! group {
                    ($g:literal) => {{
                        if pair {
                            let (a, b) = dot2_q::<$g>(simd, m.ty, m.row(first + i), m.row(first + i + 1), p);
                            for j in 0..$g {
                                out[(t0 + j) * n + i] = a[j];
                                out[(t0 + j) * n + i + 1] = b[j];
                            }
                        } else {
                            let a = dot1_f32::<$g>(simd, w, p);
                            for j in 0..$g {
                                out[(t0 + j) * n + i] = a[j];
                            }
                        }
                    }};
                }
                match g {
                    1 => group!(1),
                    2 => group!(2),
                    3 => group!(3),
                    4 => group!(4),
                    5 => group!(5),
                    6 => group!(6),
                    7 => group!(7),
                    _ => group!(8),
                }
                t0 += g;
            }
            i += if pair { 2 } else { 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::gguf::GgmlType;
    use crate::qmatmul::tests::{TYPES, assert_close, matrix, qmat};

    /// Whether this path takes `ty` on this CPU.
    fn applies(ty: GgmlType) -> bool {
        #[cfg(target_arch = "x86_64")]
        if pulp::x86::V4::try_new().is_some() {
            return matches!(
                ty,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
            );
        }
        false
    }

    fn input(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1f32..1.0)).collect()
    }

    #[test]
    fn every_input_gets_its_product_and_other_types_are_left_to_the_caller() {
        let mut rng = StdRng::seed_from_u64(11);
        for ty in TYPES {
            // 37 rows: pairs and an odd one; 512 columns: whole blocks of every type.
            let (rows, cols) = (37, 512);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            for tokens in [1, 2, 3, 7, 8, 9, 16] {
                let x = input(tokens * cols, &mut rng);
                let mut y = vec![f32::NAN; tokens * rows];
                let ran = matmul(m, &x, tokens, &mut y);
                assert_eq!(ran, applies(ty), "{ty:?}");
                if !ran {
                    assert!(y.iter().all(|v| v.is_nan()), "{ty:?}: nothing written");
                    continue;
                }
                for t in 0..tokens {
                    let what = format!("batched, input {t} of {tokens}");
                    assert_close(&m, &x[t * cols..(t + 1) * cols], &y[t * rows..(t + 1) * rows], &what);
                }
            }
        }
    }

    #[test]
    fn an_input_gets_the_same_bits_whatever_else_is_in_its_batch() {
        let mut rng = StdRng::seed_from_u64(12);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            if !applies(ty) {
                continue;
            }
            // 21 rows: the row runs of a task start at even and odd rows.
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
                // The last input, in the batch's last (smaller) group when 8 does not divide it.
                let last = (tokens - 1) * cols;
                let mut last_alone = vec![f32::NAN; rows];
                assert!(matmul(m, &x[last..last + cols], 1, &mut last_alone));
                assert_eq!(y[(tokens - 1) * rows..], last_alone[..], "{ty:?}, last of {tokens} inputs");
            }
            // A row alone (one row: the single-row kernel) gets the bits it gets in a pair.
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
}
