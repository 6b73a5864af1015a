//! LINEAR as dot products with the contiguous rows of `w`, which it streams once per call.
//!
//! `w` is `n × k` (PyTorch's layout): output column `j` is the dot product of each row of `x`
//! with row `j` of `w`, `k` contiguous f32s. [`linear`] walks `w` a block of a few rows at a
//! time, reads each block from memory once and, while it sits in L1, takes its dot products
//! with every row of `x` (in blocks of [`ROW_BLOCK`] rows, which stay in L2), a register tile
//! of `MR` rows of `x` by `NR` rows of `w` at a time. Nothing is repacked: with a few rows of
//! `x`, the product runs as fast as `w` streams from memory, where [`gemm`], which
//! reads `w` in place six rows at a time with a stride of `k`, streams it at half that speed.
//!
//! # Every element the same way
//!
//! `out[i, j]` is computed the same way whatever else the call holds: [`LANES`] partial sums
//! over `k` (term `t` goes to lane `t mod LANES`, in order, for `t < LANES ⌊k / LANES⌋`) with
//! multiply-adds, summed pairwise (lane `l` plus lane `l + 8`, then of those `l` plus `l + 4`,
//! then `(0 + 2) + (1 + 3)`), then the remaining `k mod LANES` terms in order, then `bias[j]`.
//! The tile shape, the register width, the row blocks and the split over threads only change
//! which elements are computed together, so a row's bytes do not depend on the other rows of
//! the call (the host backend cuts calls into row ranges and must get the whole call's bytes)
//! nor on the thread count. The multiply-add is fused where the CPU has FMA (AVX2, AVX-512
//! through [`pulp`]'s runtime detection; aarch64) and a multiply then an add elsewhere, so
//! results may differ between such machines, by rounding.
//!
//! # Against `gemm`
//!
//! At a few rows of `x` this is 1.5–2.7 times as fast as [`gemm`] on the MiniLM
//! shapes (`examples/linear_cold.rs`: 1 to 12 rows). With more rows the product is bound by
//! the multiply-adds, and a dot product's tile needs two loads per multiply-add register where
//! `gemm`'s packed micro-kernel broadcasts one side, and ends in a horizontal sum per element:
//! from about 20 rows it is slower than `gemm` (0.5–0.9 of its speed at 32 rows and more). So
//! [`fast::linear_part`](super::linear_part) runs it for calls of at most
//! [`LINEAR_DOT_MAX_ROWS`](super::LINEAR_DOT_MAX_ROWS) rows only, choosing from the whole
//! call's rows: `gemm` adds each element's terms in one chain, not in [`LANES`] lanes, so a
//! choice made per part would give a call's rows different bytes whole and cut into parts.

use std::vec;
use std::vec::Vec;

use core::marker::PhantomData;

use pulp::Simd;

use super::{PAR_MIN, pool, threads};

/// Partial sums per dot product: one AVX-512 register, two AVX2 registers.
pub const LANES: usize = 16;

/// Rows of `x` per pass over `w`: `ROW_BLOCK × k` f32s of `x` (384 KiB at `k = 1536`) stay
/// in L2 while `w` streams past them. At most this many rows, `w` is read once per call.
pub const ROW_BLOCK: usize = 64;

/// Bytes of L1 that a panel of `w`'s rows and a group of `x`'s rows may fill together: in
/// [`linear`], each tile's loads then come from L1 (a panel is read from memory once per
/// [`ROW_BLOCK`] rows of `x`, a group from L2 once per panel), where streaming all of `x`'s
/// block past each few rows of `w` would load one operand from L2 at every step.
const L1_ROWS_BYTES: usize = 36 * 1024;

/// Rows per parallel task when the split is by rows of `x` (at least; each task reads all of
/// `w`). Fewer rows than `threads × ROW_TASK` split `w`'s rows between the threads instead,
/// each thread streaming its share once.
const ROW_TASK: usize = 32;

/// `out[i, j] = Σ_t x[i, t] · w[j, t] + bias[j]`: `x` is `m × k`, `w` is `n × k`, `out` is
/// `m × n`, all row-major (the slices hold at least that many elements). On the kernels'
/// threads when the product is large enough and `parallel`, else on the calling thread; the
/// bytes are the same either way (see the module's documentation).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    parallel: bool,
) {
    let (x, w, bias, out) = (&x[..m * k], &w[..n * k], &bias[..n], &mut out[..m * n]);
    if m == 0 || n == 0 {
        return;
    }
    let t = threads();
    if !parallel || t < 2 || m * n * k < PAR_MIN * 8 {
        return dispatch(Block { x, m, w, bias, out, ld: n, k });
    }
    if m >= t * ROW_TASK {
        // Many rows: split them, each task streams all of `w` past its rows.
        let per = m.div_ceil(t * 2).max(ROW_TASK);
        let mut parts: Vec<&mut [f32]> = out.chunks_mut(per * n).collect();
        pool::for_each_mut(&mut parts, |i, out| {
            let x = &x[i * per * k..];
            dispatch(Block { x, m: out.len() / n, w, bias, out, ld: n, k });
        });
        return;
    }
    // A few rows: split `w`'s rows, one share per thread, each computed into its own `m × cols`
    // output and copied into place.
    let cols = n.div_ceil(t).next_multiple_of(MAX_NR).min(n);
    let parts: Vec<Vec<f32>> = pool::map(n.div_ceil(cols), |p| {
        let bias = &bias[p * cols..((p + 1) * cols).min(n)];
        let c = bias.len();
        let w = &w[p * cols * k..(p * cols + c) * k];
        let mut part = vec![0.0f32; m * c];
        dispatch(Block { x, m, w, bias, out: &mut part, ld: c, k });
        part
    });
    for (p, part) in parts.iter().enumerate() {
        let c = part.len() / m;
        for (o, src) in out.chunks_exact_mut(n).zip(part.chunks_exact(c)) {
            o[p * cols..p * cols + c].copy_from_slice(src);
        }
    }
}

/// The widest tile's rows of `w` (a thread's share of `w` is a multiple of it).
const MAX_NR: usize = 4;

/// One task: `out[i, j] = x[i, :] · w[j, :] + bias[j]` for the `m` rows of `x` (`k` each) and
/// every row of `w` (`bias.len()` of them), `out`'s rows `ld` apart.
struct Block<'a> {
    x: &'a [f32],
    m: usize,
    w: &'a [f32],
    bias: &'a [f32],
    out: &'a mut [f32],
    ld: usize,
    k: usize,
}

/// Runs `b` compiled for AVX-512 or AVX2 + FMA when the CPU has them, with a tile shape that
/// fits each instruction set's registers.
fn dispatch(b: Block<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        // 4 × 4 tiles: 16 zmm accumulators (one per 16 lanes), 8 for the loads (of 32).
        if let Some(simd) = pulp::x86::V4::try_new() {
            return Simd::vectorize(simd, Tiled::<Fused, 1, 4, 4>(b, PhantomData));
        }
        // 2 × 3 tiles: 12 ymm accumulators (two per 16 lanes), 4 for the loads (of 16).
        if let Some(simd) = pulp::x86::V3::try_new() {
            return Simd::vectorize(simd, Tiled::<Fused, 2, 2, 3>(b, PhantomData));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // The fused multiply-add is part of the aarch64 baseline.
        return b.run::<_, Fused, LANES, 1, 2>(pulp::Scalar);
    }
    #[allow(unreachable_code)]
    b.run::<_, Separate, LANES, 1, 2>(pulp::Scalar)
}

/// A [`Block`] to run in `MR × NR` tiles with `M`'s multiply-add and `G` registers per
/// [`LANES`] lanes, as a [`pulp::WithSimd`] so that everything it runs is inlined into the code
/// compiled for the instruction set (a closure might not be, and its intrinsics then would not
/// be either).
struct Tiled<'a, M, const G: usize, const MR: usize, const NR: usize>(Block<'a>, PhantomData<M>);

impl<M: Madd, const G: usize, const MR: usize, const NR: usize> pulp::WithSimd for Tiled<'_, M, G, MR, NR> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        self.0.run::<S, M, G, MR, NR>(simd);
    }
}

/// How a multiply-add is done: fused where the instruction set has it, else a multiply then an
/// add (a fused multiply-add emulated in software would be far slower).
trait Madd {
    /// `a·b + c` in every lane.
    fn lanes<S: Simd>(simd: S, a: S::f32s, b: S::f32s, c: S::f32s) -> S::f32s;
    /// `a·b + c`.
    fn one(a: f32, b: f32, c: f32) -> f32;
}

/// `a·b + c` rounded once.
struct Fused;
/// `a·b + c` rounded twice.
struct Separate;

impl Madd for Fused {
    #[inline(always)]
    fn lanes<S: Simd>(simd: S, a: S::f32s, b: S::f32s, c: S::f32s) -> S::f32s {
        simd.mul_add_f32s(a, b, c)
    }

    #[inline(always)]
    fn one(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl Madd for Separate {
    #[inline(always)]
    fn lanes<S: Simd>(simd: S, a: S::f32s, b: S::f32s, c: S::f32s) -> S::f32s {
        simd.add_f32s(simd.mul_f32s(a, b), c)
    }

    #[inline(always)]
    fn one(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

impl Block<'_> {
    /// The whole block in `MR × NR` tiles (the rows of `x` and of `w` left over in tiles of one
    /// row), with `S`'s registers, `G` of them per [`LANES`] lanes; every loop inlined so that
    /// it is compiled for the dispatched instruction set.
    #[inline(always)]
    fn run<S: Simd, M: Madd, const G: usize, const MR: usize, const NR: usize>(self, simd: S) {
        let Self { x, m, w, bias, out, ld, k } = self;
        let n = bias.len();
        if k == 0 {
            for row in out.chunks_mut(ld).take(m) {
                row[..n].copy_from_slice(bias);
            }
            return;
        }
        // Rows of `w` (a panel) and of `x` (a group) whose product runs with both in L1; for
        // long rows (too few fit), every row of the block against a few rows of `w` at a time.
        let fit = L1_ROWS_BYTES / (k * 4);
        let (panel, group) = if fit >= 2 * (MR + NR) {
            let panel = (fit * 2 / 3 / NR * NR).max(NR);
            (panel, ((fit - panel) / MR * MR).max(MR))
        } else {
            (NR, ROW_BLOCK)
        };
        for i0 in (0..m).step_by(ROW_BLOCK) {
            let i1 = (i0 + ROW_BLOCK).min(m);
            for j0 in (0..n).step_by(panel) {
                let j1 = (j0 + panel).min(n);
                for g0 in (i0..i1).step_by(group) {
                    let g1 = (g0 + group).min(i1);
                    let mut j = j0;
                    while j + NR <= j1 {
                        rows::<S, M, G, MR, NR>(simd, x, w, bias, out, (ld, k), (g0, g1), j);
                        j += NR;
                    }
                    while j < j1 {
                        rows::<S, M, G, MR, 1>(simd, x, w, bias, out, (ld, k), (g0, g1), j);
                        j += 1;
                    }
                }
            }
        }
    }
}

/// Rows `i0..i1` of `x` against rows `j..j + NR` of `w`: `MR` rows of `x` at a time, then one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows<S: Simd, M: Madd, const G: usize, const MR: usize, const NR: usize>(
    simd: S,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    (ld, k): (usize, usize),
    (i0, i1): (usize, usize),
    j: usize,
) {
    let ws: [&[f32]; NR] = core::array::from_fn(|c| &w[(j + c) * k..(j + c + 1) * k]);
    let at = |i: usize| (x, bias, (ld, k), (i, j));
    let mut i = i0;
    while i + MR <= i1 {
        some_rows::<S, M, G, MR, NR>(simd, at(i), ws, out);
        i += MR;
    }
    // The rest (fewer than `MR`, at most 7) in one tile of their own.
    match i1 - i {
        0 => {}
        1 => some_rows::<S, M, G, 1, NR>(simd, at(i), ws, out),
        2 => some_rows::<S, M, G, 2, NR>(simd, at(i), ws, out),
        3 => some_rows::<S, M, G, 3, NR>(simd, at(i), ws, out),
        4 => some_rows::<S, M, G, 4, NR>(simd, at(i), ws, out),
        5 => some_rows::<S, M, G, 5, NR>(simd, at(i), ws, out),
        6 => some_rows::<S, M, G, 6, NR>(simd, at(i), ws, out),
        _ => some_rows::<S, M, G, 7, NR>(simd, at(i), ws, out),
    }
}

/// Rows `i..i + MR` of `x` (rows of `k`) against the rows `ws` of `w` (from row `j`), into
/// `out` (rows `ld` apart).
#[allow(clippy::type_complexity)]
#[inline(always)]
fn some_rows<S: Simd, M: Madd, const G: usize, const MR: usize, const NR: usize>(
    simd: S,
    (x, bias, (ld, k), (i, j)): (&[f32], &[f32], (usize, usize), (usize, usize)),
    ws: [&[f32]; NR],
    out: &mut [f32],
) {
    let xs: [&[f32]; MR] = core::array::from_fn(|r| &x[(i + r) * k..(i + r + 1) * k]);
    store(out, bias, tile::<S, M, G, MR, NR>(simd, xs, ws), (ld, i, j));
}

/// `out[i + r, j + c] = sums[r][c] + bias[j + c]` (`out`'s rows `ld` apart).
#[inline(always)]
fn store<const MR: usize, const NR: usize>(
    out: &mut [f32],
    bias: &[f32],
    sums: [[f32; NR]; MR],
    (ld, i, j): (usize, usize, usize),
) {
    for (r, s) in sums.iter().enumerate() {
        let o = &mut out[(i + r) * ld + j..(i + r) * ld + j + NR];
        for ((o, &s), &b) in o.iter_mut().zip(s).zip(&bias[j..j + NR]) {
            *o = s + b;
        }
    }
}

/// The `MR × NR` dot products of rows `xs` with rows `ws` (each exactly `k` f32s), each as the
/// module's documentation describes, with `G` registers of `S` per [`LANES`] partial sums.
#[inline(always)]
fn tile<S: Simd, M: Madd, const G: usize, const MR: usize, const NR: usize>(
    simd: S,
    xs: [&[f32]; MR],
    ws: [&[f32]; NR],
) -> [[f32; NR]; MR] {
    assert!(G * S::F32_LANES == LANES, "G registers hold LANES lanes");
    let k = xs[0].len();
    let full = k / LANES;
    let xv: [&[S::f32s]; MR] = core::array::from_fn(|r| regs::<S>(xs[r], full * G));
    let wv: [&[S::f32s]; NR] = core::array::from_fn(|c| regs::<S>(ws[c], full * G));
    let mut acc = [[[simd.splat_f32s(0.0); G]; NR]; MR];
    for q in 0..full {
        for r in 0..MR {
            for c in 0..NR {
                for g in 0..G {
                    acc[r][c][g] = M::lanes(simd, xv[r][q * G + g], wv[c][q * G + g], acc[r][c][g]);
                }
            }
        }
    }
    let tail = full * LANES;
    let mut sums = [[0.0f32; NR]; MR];
    for r in 0..MR {
        for c in 0..NR {
            let h = lane_sum::<S, G>(simd, acc[r][c]);
            sums[r][c] = xs[r][tail..].iter().zip(&ws[c][tail..]).fold(h, |s, (&xe, &we)| M::one(xe, we, s));
        }
    }
    sums
}

/// The sum of the [`LANES`] partial sums in `acc`, pairwise: lane `l` plus lane `l + 8`, then of
/// those `l` plus `l + 4`, then `(0 + 2) + (1 + 3)`. With one AVX-512 register or two AVX2
/// registers, in registers: pulp's `reduce_sum_f32s` adds the same pairs (halves, then
/// quarters, then `movehl`), which `every_tile_shape_gives_the_same_bytes` checks.
#[inline(always)]
fn lane_sum<S: Simd, const G: usize>(simd: S, acc: [S::f32s; G]) -> f32 {
    if G == 1 && S::F32_LANES == 16 {
        return simd.reduce_sum_f32s(acc[0]);
    }
    if G == 2 && S::F32_LANES == 8 {
        return simd.reduce_sum_f32s(simd.add_f32s(acc[0], acc[1]));
    }
    let mut lanes = [0.0f32; LANES];
    for (dst, &v) in S::as_mut_simd_f32s(&mut lanes).0.iter_mut().zip(&acc) {
        *dst = v;
    }
    hsum(lanes)
}

/// The first `count` registers of `S` in `row` (which holds at least as many f32s).
#[inline(always)]
fn regs<S: Simd>(row: &[f32], count: usize) -> &[S::f32s] {
    &S::as_simd_f32s(&row[..count * S::F32_LANES]).0[..count]
}

const _: () = assert!(LANES == 16, "hsum adds 16 lanes");

/// The sum of [`LANES`] partial sums, pairwise (halves, then quarters, ...).
#[inline(always)]
fn hsum(a: [f32; LANES]) -> f32 {
    let h: [f32; 8] = core::array::from_fn(|i| a[i] + a[i + 8]);
    let q: [f32; 4] = core::array::from_fn(|i| h[i] + h[i + 4]);
    (q[0] + q[2]) + (q[1] + q[3])
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::reference;

    /// Deterministic values in [-1, 1) (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }

        fn values(&mut self, count: usize) -> Vec<f32> {
            (0..count).map(|_| self.next()).collect()
        }
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// The reference kernel's result for the same inputs.
    fn reference(x: &[f32], w: &[f32], bias: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0u8; m * n * 4];
        reference::linear(&bytes(x), &bytes(w), &bytes(bias), &mut out, m, k, n);
        out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// Runs one block with a given register type, multiply-add and tile shape on the calling
    /// thread.
    fn block<S: Simd, M: Madd, const G: usize, const MR: usize, const NR: usize>(
        simd: S,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        (m, k, n): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; m * n];
        Block { x, m, w, bias, out: &mut out, ld: n, k }.run::<S, M, G, MR, NR>(simd);
        out
    }

    /// Odd shapes: `k` below, at and off multiples of [`LANES`], `n` off every tile width,
    /// `m` from 1 to 17 (tails of every tile height, more than one row block for some).
    fn shapes() -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for m in 1..=17 {
            for (k, n) in [(1, 1), (5, 3), (16, 7), (17, 9), (33, 5), (100, 13), (384, 11)] {
                v.push((m, k, n));
            }
        }
        v.extend([(0, 8, 3), (3, 0, 5), (70, 40, 6), (130, 31, 9)]);
        v
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut rng = Rng(17);
        for (m, k, n) in shapes() {
            let (x, w, bias) = (rng.values(m * k), rng.values(n * k), rng.values(n));
            let want = reference(&x, &w, &bias, (m, k, n));
            let mut got = vec![f32::NAN; m * n];
            linear(&x, &w, &bias, &mut got, m, k, n, true);
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                // Each term is at most 1 in magnitude: k + 1 bounds every sum's magnitude.
                assert!((g - r).abs() <= 2e-6 * (k + 1) as f32, "{m}x{k}x{n} [{i}] = {g:e}, reference {r:e}");
            }
        }
    }

    #[test]
    fn every_tile_shape_gives_the_same_bytes() {
        let mut rng = Rng(29);
        for (m, k, n) in shapes() {
            let (x, w, bias) = (rng.values(m * k), rng.values(n * k), rng.values(n));
            let s = (m, k, n);
            let one = pulp::Scalar;
            let fused = block::<_, Fused, LANES, 1, 1>(one, &x, &w, &bias, s);
            assert_eq!(fused, block::<_, Fused, LANES, 4, 4>(one, &x, &w, &bias, s), "{s:?} 4x4");
            assert_eq!(fused, block::<_, Fused, LANES, 2, 3>(one, &x, &w, &bias, s), "{s:?} 2x3");
            // The instruction sets this CPU has, with their register widths.
            #[cfg(target_arch = "x86_64")]
            {
                if let Some(simd) = pulp::x86::V4::try_new() {
                    let got = simd.vectorize(|| block::<_, Fused, 1, 4, 4>(simd, &x, &w, &bias, s));
                    assert_eq!(fused, got, "{s:?} AVX-512 4x4");
                    let got = simd.vectorize(|| block::<_, Fused, 1, 1, 3>(simd, &x, &w, &bias, s));
                    assert_eq!(fused, got, "{s:?} AVX-512 1x3");
                }
                if let Some(simd) = pulp::x86::V3::try_new() {
                    let got = simd.vectorize(|| block::<_, Fused, 2, 2, 3>(simd, &x, &w, &bias, s));
                    assert_eq!(fused, got, "{s:?} AVX2 2x3");
                }
            }
            let separate = block::<_, Separate, LANES, 1, 1>(one, &x, &w, &bias, s);
            assert_eq!(
                separate,
                block::<_, Separate, LANES, 1, 2>(one, &x, &w, &bias, s),
                "{s:?} separate 1x2"
            );
            let want = reference(&x, &w, &bias, s);
            for (i, (&g, &r)) in separate.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 2e-6 * (k + 1) as f32,
                    "{s:?} separate [{i}] = {g:e}, reference {r:e}"
                );
            }
        }
    }

    #[test]
    fn threads_and_row_ranges_do_not_change_the_bytes() {
        let mut rng = Rng(41);
        // Split by rows of `w` (few rows), by rows of `x` (many), and on the calling thread.
        for (m, k, n) in [(3, 384, 1536), (16, 1536, 384), (200, 384, 384), (1, 40, 2001), (9, 70, 1030)] {
            let (x, w, bias) = (rng.values(m * k), rng.values(n * k), rng.values(n));
            let mut serial = vec![f32::NAN; m * n];
            linear(&x, &w, &bias, &mut serial, m, k, n, false);
            let mut threaded = vec![f32::NAN; m * n];
            linear(&x, &w, &bias, &mut threaded, m, k, n, true);
            assert_eq!(serial, threaded, "{m}x{k}x{n} threaded");
            for (a, b) in [(0, 1), (m / 3, m / 3 + 1), (m / 2, m), (1.min(m - 1), m)] {
                let mut part = vec![f32::NAN; (b - a) * n];
                linear(&x[a * k..b * k], &w, &bias, &mut part, b - a, k, n, true);
                assert_eq!(part, serial[a * n..b * n], "{m}x{k}x{n} rows {a}..{b}");
            }
        }
    }
}
