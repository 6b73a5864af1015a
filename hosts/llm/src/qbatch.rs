//! A quantized matrix times a few inputs at once (several sequences' decode steps, a short
//! prompt chunk): each weight row is dequantized once and multiplied with every input, two rows
//! against a group of inputs per pass of a register-blocked kernel.
//!
//! With one input, the fused dequantize-and-dot kernels of [`crate::qmatmul`] do less work (a
//! block is unpacked straight into the product). With several, they unpack every block once per
//! input and multiply each input by the block's scale separately; here the unpacking, the scales
//! and the offsets (Q4_1's `m`, Q4_K's mins) are paid once per block for the whole batch.
//!
//! Two kernels, for Q4_0, Q4_1, Q8_0, Q4_K and Q6_K matrices; [`matmul`] says when neither
//! applies, and the caller then runs the fused row kernels once per input:
//! - AVX-512 ([`crate::qdot_avx512`]): blocks dequantized in registers, 32 values at a time,
//!   two rows against up to [`GROUP`] inputs; an input costs two multiply-adds per 32 weights.
//! - AVX2 + FMA ([`crate::qdot_avx2`]): each row dequantized into an f32 buffer that stays in
//!   L1, then two rows against up to [`GROUP_AVX2`] inputs (AVX2 has half the registers).
//!
//! Results: the dot product of the dequantized row ([`quant::dequantize`]'s values, Q4_1's
//! `d·q + m` rounded once) with each input, summed over 16 (AVX-512) or 8 (AVX2) lanes in a
//! fixed order. An input's results do not depend on which or how many other inputs share its
//! batch, and they equal [`quant::dot`](crate::quant::dot) up to f32 rounding.

use crate::qmatmul::QMat;
#[cfg(target_arch = "x86_64")]
use crate::qmatmul::by_row_runs;
#[cfg(target_arch = "x86_64")]
use crate::simd::with_group_size;

/// Inputs per pass of the kernel (2 rows × 8 inputs: 16 of AVX-512's 32 vector registers hold
/// sums).
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 8;

/// Inputs per pass of the AVX2 kernel (2 rows × 4 inputs: 8 of AVX2's 16 vector registers hold
/// sums).
#[cfg(target_arch = "x86_64")]
const GROUP_AVX2: usize = 4;

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
        matmul_avx512(simd, m, x, tokens, y);
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new()
        && crate::qdot_avx2::dequantizes(m.ty)
    {
        matmul_avx2(simd, m, x, tokens, y);
        return true;
    }
    false
}

/// [`matmul`] with the AVX-512 kernel ([`Rows`]), for a type [`crate::qdot_avx512::batches`]
/// takes.
#[cfg(target_arch = "x86_64")]
fn matmul_avx512(simd: pulp::x86::V4, m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) {
    let packed = pack::<16>(x, m.cols, GROUP);
    by_row_runs(m, tokens, 1, y, |first, out| {
        let n = out.first().map_or(0, |o| o.len());
        let mut w = vec![0f32; if n % 2 == 1 { m.cols } else { 0 }];
        simd.vectorize(Rows { simd, m, first, n, tokens, packed: &packed, w: &mut w, out });
    });
}

/// [`matmul`] with the AVX2 kernel ([`RowsAvx2`]), for a type [`crate::qdot_avx2::dequantizes`]
/// takes.
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul_avx2(simd: pulp::x86::V3, m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) {
    let packed = pack::<8>(x, m.cols, GROUP_AVX2);
    by_row_runs(m, tokens, 1, y, |first, out| {
        let n = out.first().map_or(0, |o| o.len());
        let mut w = vec![0f32; 2 * m.cols];
        simd.vectorize(RowsAvx2 { simd, m, first, n, tokens, packed: &packed, w: &mut w, out });
    });
}

/// The inputs (`x`: one per `cols` values, `cols` a multiple of `R`) interleaved for the
/// kernels: the inputs in groups of `group` (the last one smaller), and within a group, for each
/// run of `R` columns, each input's `R` values in turn. Group `k` starts at `k · group · cols`.
#[cfg(target_arch = "x86_64")]
fn pack<const R: usize>(x: &[f32], cols: usize, group: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for g in x.chunks(group * cols) {
        for c in (0..cols).step_by(R) {
            for x in g.chunks_exact(cols) {
                out.extend_from_slice(&x[c..c + R]);
            }
        }
    }
    out
}

/// `out[t][i] = row(first + i) · x[t]` for `i < n` and `t < tokens`: rows two at a time,
/// dequantized block by block in registers and multiplied with each group of inputs of
/// `packed` ([`pack`]'s layout); an odd last row dequantized into `w` (`cols` long) first.
#[cfg(target_arch = "x86_64")]
struct Rows<'a, 'o, 'y> {
    simd: pulp::x86::V4,
    m: QMat<'a>,
    first: usize,
    n: usize,
    tokens: usize,
    packed: &'o [f32],
    w: &'o mut [f32],
    out: &'o mut [&'y mut [f32]],
}

// A closure calling `#[inline(always)]` code is not always inlined into the AVX-512 function
// `vectorize` makes (the intrinsics then become calls); this trait method is.
#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Rows<'_, '_, '_> {
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
                with_group_size!(g, G => {
                    if pair {
                        let (a, b) = dot2_q::<G>(simd, m.ty, m.row(first + i), m.row(first + i + 1), p);
                        for j in 0..G {
                            out[t0 + j][i] = a[j];
                            out[t0 + j][i + 1] = b[j];
                        }
                    } else {
                        let a = dot1_f32::<G>(simd, w, p);
                        for j in 0..G {
                            out[t0 + j][i] = a[j];
                        }
                    }
                });
                t0 += g;
            }
            i += if pair { 2 } else { 1 };
        }
    }
}

/// [`Rows`] for AVX2: each row dequantized into `w` ([`crate::qdot_avx2::dequantize`]), then
/// rows two at a time multiplied with each group of [`GROUP_AVX2`] inputs of `packed`
/// ([`pack`]'s layout, runs of 8); an odd last row is paired with itself.
#[cfg(target_arch = "x86_64")]
struct RowsAvx2<'a, 'o, 'y> {
    simd: pulp::x86::V3,
    m: QMat<'a>,
    first: usize,
    n: usize,
    tokens: usize,
    packed: &'o [f32],
    w: &'o mut [f32],
    out: &'o mut [&'y mut [f32]],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for RowsAvx2<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        use crate::qdot_avx2::{dequantize, dot2_f32};
        let Self { simd, m, first, n, tokens, packed, w, out } = self;
        let cols = m.cols;
        let (w0, w1) = w.split_at_mut(cols);
        let mut i = 0;
        while i < n {
            let pair = i + 1 < n;
            // `matmul` admits only types `dequantize` takes.
            dequantize(simd, m.ty, m.row(first + i), w0);
            let w1: &[f32] = if pair {
                dequantize(simd, m.ty, m.row(first + i + 1), w1);
                w1
            } else {
                w0
            };
            let mut t0 = 0;
            while t0 < tokens {
                let g = (tokens - t0).min(GROUP_AVX2);
                let p = packed[t0 * cols..(t0 + g) * cols].as_chunks::<8>().0;
                with_group_size!(4; g, G => {
                    let (a, b) = dot2_f32::<G>(simd, w0, w1, p);
                    for j in 0..G {
                        out[t0 + j][i] = a[j];
                        if pair {
                            out[t0 + j][i + 1] = b[j];
                        }
                    }
                });
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

    /// A batched kernel as the tests run it: `None` when it does not take the type.
    type Path = fn(QMat<'_>, &[f32], usize, &mut [f32]) -> Option<()>;

    /// Every batched kernel this CPU can run, by name (the AVX2 one too on an AVX-512 CPU,
    /// where [`matmul`] never picks it), and [`matmul`] itself.
    fn paths() -> Vec<(&'static str, Path)> {
        let mut paths: Vec<(&'static str, Path)> =
            vec![("matmul", |m, x, t, y| matmul(m, x, t, y).then_some(()))];
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                paths.push(("AVX-512", |m, x, t, y| {
                    let simd = pulp::x86::V4::try_new()?;
                    crate::qdot_avx512::batches(m.ty).then(|| matmul_avx512(simd, m, x, t, y))
                }));
            }
            if pulp::x86::V3::try_new().is_some() {
                paths.push(("AVX2", |m, x, t, y| {
                    let simd = pulp::x86::V3::try_new()?;
                    crate::qdot_avx2::dequantizes(m.ty).then(|| matmul_avx2(simd, m, x, t, y))
                }));
            }
        }
        if paths.len() == 1 {
            eprintln!("qbatch tests: no AVX2 or AVX-512 on this CPU; only the fallback is checked");
        }
        paths
    }

    /// Whether `matmul` takes `ty` on this CPU.
    fn applies(ty: GgmlType) -> bool {
        let batched =
            matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K);
        #[cfg(target_arch = "x86_64")]
        if pulp::x86::V3::try_new().is_some() {
            return batched;
        }
        let _ = batched;
        false
    }

    fn input(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1f32..1.0)).collect()
    }

    #[test]
    fn every_input_gets_its_product_and_other_types_are_left_to_the_caller() {
        let mut rng = StdRng::seed_from_u64(11);
        for (path, run) in paths() {
            for ty in TYPES {
                // 37 rows: pairs and an odd one; 512 columns: whole blocks of every type.
                let (rows, cols) = (37, 512);
                let data = matrix(ty, rows, cols, &mut rng);
                let m = qmat(ty, rows, cols, &data);
                for tokens in [1, 2, 3, 4, 5, 7, 8, 9, 16] {
                    let x = input(tokens * cols, &mut rng);
                    let mut y = vec![f32::NAN; tokens * rows];
                    let ran = run(m, &x, tokens, &mut y).is_some();
                    if path == "matmul" {
                        assert_eq!(ran, applies(ty), "{ty:?}");
                    }
                    if !ran {
                        assert!(y.iter().all(|v| v.is_nan()), "{path}, {ty:?}: nothing written");
                        continue;
                    }
                    for t in 0..tokens {
                        let what = format!("{path}, batched, input {t} of {tokens}");
                        assert_close(&m, &x[t * cols..(t + 1) * cols], &y[t * rows..(t + 1) * rows], &what);
                    }
                }
            }
        }
    }

    #[test]
    fn an_input_gets_the_same_bits_whatever_else_is_in_its_batch() {
        let mut rng = StdRng::seed_from_u64(12);
        for (path, run) in paths() {
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
                // 21 rows: the row runs of a task start at even and odd rows.
                let (rows, cols) = (21, 256);
                let data = matrix(ty, rows, cols, &mut rng);
                let m = qmat(ty, rows, cols, &data);
                let x = input(16 * cols, &mut rng);
                let mut alone = vec![f32::NAN; rows];
                if run(m, &x[..cols], 1, &mut alone).is_none() {
                    continue;
                }
                for tokens in [2, 5, 8, 11, 16] {
                    let mut y = vec![f32::NAN; tokens * rows];
                    assert!(run(m, &x[..tokens * cols], tokens, &mut y).is_some());
                    assert_eq!(y[..rows], alone[..], "{path}, {ty:?}, first of {tokens} inputs");
                    // The last input, in the batch's last (smaller) group when the group size
                    // does not divide it.
                    let last = (tokens - 1) * cols;
                    let mut last_alone = vec![f32::NAN; rows];
                    assert!(run(m, &x[last..last + cols], 1, &mut last_alone).is_some());
                    assert_eq!(
                        y[(tokens - 1) * rows..],
                        last_alone[..],
                        "{path}, {ty:?}, last of {tokens} inputs"
                    );
                }
                // A row alone (one row: the single-row kernel) gets the bits it gets in a pair.
                let mut y = vec![f32::NAN; 3 * rows];
                assert!(run(m, &x[..3 * cols], 3, &mut y).is_some());
                let row_bytes = data.len() / rows;
                for r in 0..rows {
                    let one = qmat(ty, 1, cols, &data[r * row_bytes..(r + 1) * row_bytes]);
                    let mut y1 = vec![f32::NAN; 3];
                    assert!(run(one, &x[..3 * cols], 3, &mut y1).is_some());
                    let want: Vec<f32> = (0..3).map(|t| y[t * rows + r]).collect();
                    assert_eq!(y1, want, "{path}, {ty:?}, row {r} alone");
                }
            }
        }
    }
}
