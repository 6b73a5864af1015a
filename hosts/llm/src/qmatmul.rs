//! Quantized matrix products with f32 activations, the forward pass's fast path.
//!
//! - [`matvec`] (one token, decode): every row's dot product with the input, dequantization
//!   fused into the dot block by block (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K; F32, F16 and BF16 too),
//!   with the input's per-32 sums computed once per product for the types with an offset term
//!   (Q4_1's `m`, Q4_K's mins). [`matvec2`] and [`matvec3`] run two or three products of the
//!   same input as one parallel job (q/k/v, gate/up), so a step hands work to the pool once per
//!   group instead of once per matrix.
//! - [`matmul`] (a batch of tokens, prompt processing): the weights are dequantized once per
//!   panel of [`PANEL`] rows into an f32 panel laid out for a register-blocked kernel that
//!   multiplies it with every token of the batch, [`TOKEN_TILE`] tokens at a time. Batches of
//!   up to [`SMALL_BATCH`] tokens (several sequences' decode steps) instead go through
//!   [`qbatch::matmul`] (each row dequantized once, then multiplied with every token) where it
//!   applies, else through the fused row kernels once per token.
//!
//! Rows (or panels) are split across [`threads`](crate::threads)' pool. The loops are plain Rust
//! over fixed-size arrays, written so that the compiler vectorizes them, and compiled for the
//! best instruction set the CPU offers (AVX-512 or AVX2 with FMA, picked at run time through
//! [`pulp`]); without either they run as written, with separate multiplies and adds.
//!
//! Activations stay f32 throughout: the results equal [`quant::dot`] of each row up to f32
//! rounding (the sums run in another order), which is what keeps this path within the
//! transformers fixture's tolerances.

// The kernels index fixed-size lanes on purpose: that is the shape the compiler vectorizes.
#![allow(clippy::needless_range_loop)]

use crate::gguf::GgmlType;
use crate::qbatch;
use crate::quant;
use crate::quant::scale_min_k4_f32;
use crate::simd::{Kernel, Madd, dispatch, f16_at, hsum};
use crate::threads;

/// Weight rows per panel of [`matmul`] (the width of its register-blocked kernel).
pub(crate) const PANEL: usize = 16;
/// Tokens per tile of [`matmul`]'s kernel.
pub(crate) const TOKEN_TILE: usize = 6;
const _: () = assert!(TOKEN_TILE == 6, "the remainder match in Panel::run covers 1..=5 tokens");
/// Multiply-adds below which a product runs on the calling thread.
const PAR_MIN: usize = 1 << 16;

/// A quantized matrix as the kernels read it: `rows` rows of `cols` elements of `ty`, each row
/// `row_bytes` bytes of whole blocks, back to back in `data`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QMat<'a> {
    /// Element type (one of [`GgmlType::is_supported`]'s).
    pub(crate) ty: GgmlType,
    /// Output size.
    pub(crate) rows: usize,
    /// Input size (a whole number of `ty`'s blocks).
    pub(crate) cols: usize,
    /// Bytes per row.
    pub(crate) row_bytes: usize,
    /// `rows · row_bytes` bytes.
    pub(crate) data: &'a [u8],
}

impl<'a> QMat<'a> {
    /// The bytes of row `r`.
    #[inline(always)]
    pub(crate) fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// `out[b] = Σ x[32b..32b+32]`: the per-32 sums that Q4_1's and Q4_K's offset terms need.
pub(crate) fn block_sums(x: &[f32], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(x.chunks_exact(32)) {
        let mut s = [0f32; 16];
        for i in 0..16 {
            s[i] = b[i] + b[i + 16];
        }
        *o = hsum(&s);
    }
}

/// Whether `ty`'s dot product reads the input's per-32 sums.
pub(crate) fn needs_sums(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q4_K)
}

#[inline(always)]
fn dot_q4_0<M: Madd>(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (b, x) in row.as_chunks::<18>().0.iter().zip(x.as_chunks::<32>().0) {
        let d = f16_at(b, 0);
        let mut t = [0f32; 16];
        for i in 0..16 {
            let q = b[2 + i];
            let lo = f32::from(q & 0x0F) - 8.0;
            let hi = f32::from(q >> 4) - 8.0;
            t[i] = M::madd(hi, x[16 + i], lo * x[i]);
        }
        for i in 0..16 {
            acc[i] = M::madd(d, t[i], acc[i]);
        }
    }
    hsum(&acc)
}

#[inline(always)]
fn dot_q4_1<M: Madd>(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut bias = 0f32;
    for ((b, x), &s) in row.as_chunks::<20>().0.iter().zip(x.as_chunks::<32>().0).zip(sums) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let mut t = [0f32; 16];
        for i in 0..16 {
            let q = b[4 + i];
            t[i] = M::madd(f32::from(q >> 4), x[16 + i], f32::from(q & 0x0F) * x[i]);
        }
        for i in 0..16 {
            acc[i] = M::madd(d, t[i], acc[i]);
        }
        bias = M::madd(m, s, bias);
    }
    hsum(&acc) + bias
}

#[inline(always)]
fn dot_q8_0<M: Madd>(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (b, x) in row.as_chunks::<34>().0.iter().zip(x.as_chunks::<32>().0) {
        let d = f16_at(b, 0);
        let mut t = [0f32; 16];
        for i in 0..16 {
            let lo = f32::from(b[2 + i] as i8);
            let hi = f32::from(b[18 + i] as i8);
            t[i] = M::madd(hi, x[16 + i], lo * x[i]);
        }
        for i in 0..16 {
            acc[i] = M::madd(d, t[i], acc[i]);
        }
    }
    hsum(&acc)
}

#[inline(always)]
fn dot_q4_k<M: Madd>(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut bias = 0f32;
    let blocks = row.as_chunks::<144>().0.iter().zip(x.as_chunks::<256>().0).zip(sums.as_chunks::<8>().0);
    for ((b, x), s) in blocks {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        for j in 0..4 {
            let q = &b[16 + 32 * j..16 + 32 * j + 32];
            let x1 = &x[64 * j..64 * j + 32];
            let x2 = &x[64 * j + 32..64 * j + 64];
            let (s1, m1) = scale_min_k4_f32(2 * j, scales);
            let (s2, m2) = scale_min_k4_f32(2 * j + 1, scales);
            let (mut t1, mut t2) = ([0f32; 16], [0f32; 16]);
            for i in 0..16 {
                t1[i] = M::madd(f32::from(q[16 + i] & 0x0F), x1[16 + i], f32::from(q[i] & 0x0F) * x1[i]);
                t2[i] = M::madd(f32::from(q[16 + i] >> 4), x2[16 + i], f32::from(q[i] >> 4) * x2[i]);
            }
            let (d1, d2) = (d * s1, d * s2);
            for i in 0..16 {
                acc[i] = M::madd(d2, t2[i], M::madd(d1, t1[i], acc[i]));
            }
            bias = M::madd(dmin * m2, s[2 * j + 1], M::madd(dmin * m1, s[2 * j], bias));
        }
    }
    hsum(&acc) - bias
}

#[inline(always)]
fn dot_q6_k<M: Madd>(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (b, x) in row.as_chunks::<210>().0.iter().zip(x.as_chunks::<256>().0) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let (ql, qh, sc) = quant::q6_k_half(b, half);
            let xh = &x[128 * half..128 * half + 128];
            for k in 0..4 {
                for lh in 0..2 {
                    let mut t = [0f32; 16];
                    for i in 0..16 {
                        let l = 16 * lh + i;
                        let low = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0F;
                        let high = (qh[l] >> (2 * k)) & 3;
                        let q = f32::from((low | (high << 4)) as i8 - 32);
                        t[i] = q * xh[32 * k + l];
                    }
                    let ds = d * f32::from(sc[lh + 2 * k] as i8);
                    for i in 0..16 {
                        acc[i] = M::madd(ds, t[i], acc[i]);
                    }
                }
            }
        }
    }
    hsum(&acc)
}

/// F32, F16 and BF16 rows: 16 elements at a time.
#[inline(always)]
fn dot_float<M: Madd>(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut w = [0f32; 16];
    let (xs, xr) = x.as_chunks::<16>();
    let elem = if ty == GgmlType::F32 { 4 } else { 2 };
    let value = |b: &[u8]| match ty {
        GgmlType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => f16_at(b, 0),
        _ => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
    };
    for (c, x) in row.chunks_exact(16 * elem).zip(xs) {
        for i in 0..16 {
            w[i] = value(&c[i * elem..]);
        }
        for i in 0..16 {
            acc[i] = M::madd(w[i], x[i], acc[i]);
        }
    }
    let mut s = hsum(&acc);
    for (i, &xi) in xr.iter().enumerate() {
        s = M::madd(value(&row[(xs.len() * 16 + i) * elem..]), xi, s);
    }
    s
}

/// `y[i] = row(first + i) · x` for a run of rows.
struct Rows<'a, 'y> {
    m: QMat<'a>,
    x: &'a [f32],
    sums: &'a [f32],
    first: usize,
    y: &'y mut [f32],
}

impl Kernel for Rows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<M: Madd>(self) {
        let Self { m, x, sums, first, y } = self;
        // One loop per type, so that the type's kernel is inlined into it.
        macro_rules! rows {
            ($f:expr) => {
                for (i, yr) in y.iter_mut().enumerate() {
                    *yr = $f(m.row(first + i));
                }
            };
        }
        match m.ty {
            GgmlType::Q4_0 => rows!(|r| dot_q4_0::<M>(r, x)),
            GgmlType::Q4_1 => rows!(|r| dot_q4_1::<M>(r, x, sums)),
            GgmlType::Q8_0 => rows!(|r| dot_q8_0::<M>(r, x)),
            GgmlType::Q4_K => rows!(|r| dot_q4_k::<M>(r, x, sums)),
            GgmlType::Q6_K => rows!(|r| dot_q6_k::<M>(r, x)),
            ty => rows!(|r| dot_float::<M>(ty, r, x)),
        }
    }
}

impl Rows<'_, '_> {
    /// The rows with [`crate::qdot_avx2`]'s kernels, for the types it has.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn run_avx2(self, simd: pulp::x86::V3) {
        use crate::qdot_avx2 as k;
        let Self { m, x, sums, first, y } = self;
        macro_rules! rows {
            ($f:expr) => {
                for (i, yr) in y.iter_mut().enumerate() {
                    *yr = $f(m.row(first + i));
                }
            };
        }
        match m.ty {
            GgmlType::Q4_0 => rows!(|r| k::dot_q4_0(simd, r, x)),
            GgmlType::Q4_1 => rows!(|r| k::dot_q4_1(simd, r, x, sums)),
            GgmlType::Q4_K => rows!(|r| k::dot_q4_k(simd, r, x, sums)),
            GgmlType::Q6_K => rows!(|r| k::dot_q6_k(simd, r, x)),
            _ => rows!(|r| k::dot_q8_0(simd, r, x)),
        }
    }

    /// The rows with [`crate::qdot_avx512`]'s kernels, for the types it has.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn run_avx512(self, simd: pulp::x86::V4) {
        use crate::qdot_avx512 as k;
        let Self { m, x, sums, first, y } = self;
        macro_rules! rows {
            ($f:expr) => {
                for (i, yr) in y.iter_mut().enumerate() {
                    *yr = $f(m.row(first + i));
                }
            };
        }
        match m.ty {
            GgmlType::Q4_0 => rows!(|r| k::dot_q4_0(simd, r, x)),
            GgmlType::Q4_1 => rows!(|r| k::dot_q4_1(simd, r, x, sums)),
            GgmlType::Q4_K => rows!(|r| k::dot_q4_k(simd, r, x, sums)),
            GgmlType::Q6_K => rows!(|r| k::dot_q6_k(simd, r, x)),
            _ => rows!(|r| k::dot_q8_0(simd, r, x)),
        }
    }
}

/// Runs a [`Rows`] job with the best kernels for its type and the CPU.
fn rows(job: Rows<'_, '_>) {
    #[cfg(target_arch = "x86_64")]
    {
        let ty = job.m.ty;
        // Both instruction sets have kernels for the same block types.
        let vectorized =
            matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K);
        if vectorized && let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(move || job.run_avx512(simd));
        }
        if vectorized && let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(move || job.run_avx2(simd));
        }
    }
    dispatch(job);
}

/// Rows per parallel task for a product of `rows` rows of `cols` columns: about four tasks per
/// thread, each at least [`PAR_MIN`] / 4 multiply-adds.
fn rows_per_task(rows: usize, cols: usize) -> usize {
    let min = (PAR_MIN / 4).div_ceil(cols.max(1));
    rows.div_ceil(threads::threads() * 4).max(min).max(1)
}

/// Runs of rows of a product of `rows` rows of `cols` multiply-adds each, in decreasing sizes
/// (multiples of `align` but for the last): each half of what is left shared among the
/// threads, down to half of [`rows_per_task`]'s size. The first runs are long (a thread
/// streams its rows with its prefetches running ahead), the last short (threads finish
/// together).
fn guided_runs(rows: usize, cols: usize, align: usize, mut out: impl FnMut(usize, usize)) {
    let (t, align) = (threads::threads(), align.max(1));
    // At least one row (one `align`), so that every run makes progress.
    let least = (rows_per_task(rows, cols) / 2).next_multiple_of(align).max(align);
    let mut first = 0;
    while first < rows {
        let left = rows - first;
        let n = (left / (2 * t)).next_multiple_of(align).max(least).min(left);
        out(first, n);
        first += n;
    }
}

/// One task of a product: a matrix, its first row in the task, and the task's output rows.
type Task<'a, 'y> = (QMat<'a>, usize, &'y mut [f32]);

/// The row tasks of one product.
fn tasks<'a, 'y>(m: QMat<'a>, y: &'y mut [f32]) -> impl Iterator<Item = Task<'a, 'y>> {
    let per = rows_per_task(m.rows, m.cols);
    y.chunks_mut(per).enumerate().map(move |(c, y)| (m, c * per, y))
}

/// Runs row tasks (of products of the same input `x`) on the pool's threads.
fn run_tasks<'a, 'y>(tasks: impl Iterator<Item = Task<'a, 'y>>, x: &[f32], sums: &[f32]) {
    let mut tasks: Vec<Task<'a, 'y>> = tasks.collect();
    threads::for_each_mut(&mut tasks, |_, (m, first, y)| rows(Rows { m: *m, x, sums, first: *first, y }));
}

fn check(m: &QMat<'_>, x: &[f32], sums: &[f32], y: &[f32]) {
    assert_eq!(x.len(), m.cols, "matvec input length");
    assert_eq!(y.len(), m.rows, "matvec output length");
    assert!(!needs_sums(m.ty) || sums.len() >= m.cols / 32, "matvec block sums");
}

/// `y = m · x` (`x`: `cols`, `y`: `rows`; `sums`: `x`'s [`block_sums`] where [`needs_sums`],
/// else anything).
pub(crate) fn matvec(m: QMat<'_>, x: &[f32], sums: &[f32], y: &mut [f32]) {
    check(&m, x, sums, y);
    let work = m.rows * m.cols;
    if work < PAR_MIN || threads::threads() == 1 {
        rows(Rows { m, x, sums, first: 0, y });
        return;
    }
    run_tasks(tasks(m, y), x, sums);
}

/// `ya = a · x` and `yb = b · x` as one parallel job.
pub(crate) fn matvec2(a: QMat<'_>, ya: &mut [f32], b: QMat<'_>, yb: &mut [f32], x: &[f32], sums: &[f32]) {
    check(&a, x, sums, ya);
    check(&b, x, sums, yb);
    if (a.rows + b.rows) * a.cols < PAR_MIN || threads::threads() == 1 {
        rows(Rows { m: a, x, sums, first: 0, y: ya });
        rows(Rows { m: b, x, sums, first: 0, y: yb });
        return;
    }
    run_tasks(tasks(a, ya).chain(tasks(b, yb)), x, sums);
}

/// `ya = a · x`, `yb = b · x` and `yc = c · x` as one parallel job.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matvec3(
    a: QMat<'_>,
    ya: &mut [f32],
    b: QMat<'_>,
    yb: &mut [f32],
    c: QMat<'_>,
    yc: &mut [f32],
    x: &[f32],
    sums: &[f32],
) {
    check(&a, x, sums, ya);
    check(&b, x, sums, yb);
    check(&c, x, sums, yc);
    if (a.rows + b.rows + c.rows) * a.cols < PAR_MIN || threads::threads() == 1 {
        rows(Rows { m: a, x, sums, first: 0, y: ya });
        rows(Rows { m: b, x, sums, first: 0, y: yb });
        rows(Rows { m: c, x, sums, first: 0, y: yc });
        return;
    }
    run_tasks(tasks(a, ya).chain(tasks(b, yb)).chain(tasks(c, yc)), x, sums);
}

/// One panel of [`matmul`]: rows `first..first + PANEL` (fewer at the end) of `m` dequantized
/// into `wt` laid out `[col][row in panel]`, then multiplied with every token of `x`
/// (`tokens × cols`) into `out` (`tokens × PANEL`).
struct Panel<'a, 'w> {
    m: QMat<'a>,
    first: usize,
    x: &'a [f32],
    tokens: usize,
    row_buf: &'w mut [f32],
    wt: &'w mut [f32],
    out: &'w mut [f32],
}

impl Kernel for Panel<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<M: Madd>(self) {
        let Self { m, first, x, tokens, row_buf, wt, out } = self;
        let k = m.cols;
        let n = PANEL.min(m.rows - first);
        for r in 0..PANEL {
            if r < n {
                // The type and the byte length were checked when the matrix was made.
                quant::dequantize(m.ty, m.row(first + r), row_buf).expect("row checked at load");
                for (c, &v) in row_buf.iter().enumerate() {
                    wt[c * PANEL + r] = v;
                }
            } else {
                for c in 0..k {
                    wt[c * PANEL + r] = 0.0;
                }
            }
        }
        let wt: &[[f32; PANEL]] = wt.as_chunks::<PANEL>().0;
        let mut t = 0;
        while t + TOKEN_TILE <= tokens {
            tile::<M, TOKEN_TILE>(wt, x, k, t, out);
            t += TOKEN_TILE;
        }
        match tokens - t {
            1 => tile::<M, 1>(wt, x, k, t, out),
            2 => tile::<M, 2>(wt, x, k, t, out),
            3 => tile::<M, 3>(wt, x, k, t, out),
            4 => tile::<M, 4>(wt, x, k, t, out),
            5 => tile::<M, 5>(wt, x, k, t, out),
            _ => {}
        }
    }
}

/// `out[t0 + j] = wt · x[t0 + j]` for `j < TT`: `TT × PANEL` accumulators, one panel column
/// and `TT` broadcast inputs per step.
#[inline(always)]
fn tile<M: Madd, const TT: usize>(wt: &[[f32; PANEL]], x: &[f32], k: usize, t0: usize, out: &mut [f32]) {
    let mut acc = [[0f32; PANEL]; TT];
    let xs: [&[f32]; TT] = core::array::from_fn(|j| &x[(t0 + j) * k..(t0 + j + 1) * k]);
    for (c, w) in wt[..k].iter().enumerate() {
        for j in 0..TT {
            let xv = xs[j][c];
            for i in 0..PANEL {
                acc[j][i] = M::madd(xv, w[i], acc[j][i]);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        out[(t0 + j) * PANEL..(t0 + j + 1) * PANEL].copy_from_slice(a);
    }
}

/// `y = x · mᵀ` for a batch: `x` is `tokens × cols` (one token per row), `y` `tokens × rows`.
/// Each panel of [`PANEL`] weight rows is dequantized once for the whole batch.
pub(crate) fn matmul(m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) {
    assert_eq!(x.len(), tokens * m.cols, "matmul input length");
    assert_eq!(y.len(), tokens * m.rows, "matmul output length");
    if tokens <= SMALL_BATCH {
        if !qbatch::matmul(m, x, tokens, y) {
            matmul_small(m, x, tokens, y);
        }
        return;
    }
    let panels = m.rows.div_ceil(PANEL);
    let k = m.cols;
    let run = |p: usize, bufs: &mut (Vec<f32>, Vec<f32>)| {
        let mut out = vec![0f32; tokens * PANEL];
        let (row_buf, wt) = bufs;
        dispatch(Panel { m, first: p * PANEL, x, tokens, row_buf, wt, out: &mut out });
        out
    };
    let init = || (vec![0f32; k], vec![0f32; k * PANEL]);
    let outs: Vec<Vec<f32>> = if tokens * m.rows * k < PAR_MIN || threads::threads() == 1 {
        let mut bufs = init();
        (0..panels).map(|p| run(p, &mut bufs)).collect()
    } else {
        // About four tasks per thread, each a run of panels with its own buffers.
        let per = panels.div_ceil(threads::threads() * 4);
        let runs = threads::map(panels.div_ceil(per), |r| {
            let mut bufs = init();
            (r * per..panels.min((r + 1) * per)).map(|p| run(p, &mut bufs)).collect::<Vec<_>>()
        });
        runs.into_iter().flatten().collect()
    };
    for (p, out) in outs.iter().enumerate() {
        let first = p * PANEL;
        let n = PANEL.min(m.rows - first);
        for (t, o) in out.chunks_exact(PANEL).enumerate() {
            y[t * m.rows + first..t * m.rows + first + n].copy_from_slice(&o[..n]);
        }
    }
}

/// [`matmul`] with the inputs rounded to 8 bits ([`crate::qbatch_q8`]) for up to
/// [`SMALL_BATCH`] inputs, if that path applies to `m` on this CPU (else `false`, and nothing is
/// written).
pub(crate) fn matmul_q8(m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) -> bool {
    matmul_q8_many(&[m], x, tokens, &mut [y])
}

/// [`matmul_q8`] for several matrices with the same inputs (`ys[i]` for `ms[i]`) as one
/// parallel job, the inputs rounded once, if that path applies to all of them (else `false`,
/// and nothing is written).
pub(crate) fn matmul_q8_many(ms: &[QMat<'_>], x: &[f32], tokens: usize, ys: &mut [&mut [f32]]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if tokens <= SMALL_BATCH {
        return crate::qbatch_q8::matmul_many(ms, x, tokens, ys);
    }
    let _ = (ms, x, tokens, ys);
    false
}

/// Batches up to this many tokens go through [`qbatch::matmul`] or [`matmul_small`]: below
/// it, dequantizing panels costs more than the products save.
pub(crate) const SMALL_BATCH: usize = 16;

/// [`matmul`] for a few tokens where [`qbatch::matmul`] does not apply: each task takes a run
/// of rows and runs the fused row kernels of [`matvec`] on them once per token, so the run's
/// bytes are fetched from memory once and read from cache for the other tokens.
fn matmul_small(m: QMat<'_>, x: &[f32], tokens: usize, y: &mut [f32]) {
    let k = m.cols;
    let mut sums = Vec::new();
    if needs_sums(m.ty) {
        sums.resize(tokens * k / 32, 0.0);
        for (x, s) in x.chunks_exact(k).zip(sums.chunks_exact_mut(k / 32)) {
            block_sums(x, s);
        }
    }
    let per_sum = if sums.is_empty() { 0 } else { k / 32 };
    by_row_runs(m, tokens, 1, y, |first, out| {
        for (t, o) in out.iter_mut().enumerate() {
            let sums = if sums.is_empty() { &[][..] } else { &sums[t * per_sum..(t + 1) * per_sum] };
            rows(Rows { m, x: &x[t * k..(t + 1) * k], sums, first, y: o });
        }
    });
}

/// A product of `m` with `tokens` inputs (`y`: `tokens × rows`) split into runs of rows across
/// the pool's threads, each run but the last a multiple of `align` rows: `run(first, out)`
/// writes rows `first..first + n` of input `t`'s product into `out[t]` (`n` values, `y`'s own
/// memory), for every input.
pub(crate) fn by_row_runs(
    m: QMat<'_>,
    tokens: usize,
    align: usize,
    y: &mut [f32],
    run: impl Fn(usize, &mut [&mut [f32]]) + Sync,
) {
    by_row_runs_many(&[m], tokens, align, &mut [y], |_, first, out| run(first, out));
}

/// One run of rows of a [`by_row_runs_many`] job: the matrix, its first row, the rows, and
/// where each input's products of them go.
type Run<'y> = (usize, usize, usize, Vec<&'y mut [f32]>);

/// [`by_row_runs`] for the products of several matrices with the same inputs, as one parallel
/// job: `run(i, first, out)` writes rows `first..first + n` of matrix `ms[i]`'s product with
/// input `t` into `out[t]` (`n` values of `ys[i]`, which is `tokens × ms[i].rows`).
pub(crate) fn by_row_runs_many(
    ms: &[QMat<'_>],
    tokens: usize,
    align: usize,
    ys: &mut [&mut [f32]],
    run: impl Fn(usize, usize, &mut [&mut [f32]]) + Sync,
) {
    let mut runs: Vec<Run<'_>> = Vec::new();
    for (i, (m, y)) in ms.iter().zip(ys.iter_mut()).enumerate() {
        let mut bounds = Vec::new();
        guided_runs(m.rows, m.cols * tokens, align, |first, n| bounds.push((first, n)));
        let mut outs: Vec<Vec<&mut [f32]>> = bounds.iter().map(|_| Vec::with_capacity(tokens)).collect();
        // Each input's row of products, cut at the runs' bounds.
        for row in y.chunks_exact_mut(m.rows.max(1)) {
            let mut rest = row;
            for (out, &(_, n)) in outs.iter_mut().zip(&bounds) {
                let (this, after) = std::mem::take(&mut rest).split_at_mut(n);
                out.push(this);
                rest = after;
            }
        }
        runs.extend(bounds.into_iter().zip(outs).map(|((first, n), out)| (i, first, n, out)));
    }
    // The largest runs first: the last ones claimed are small, so no thread waits long for
    // another's at the end.
    runs.sort_by_key(|&(i, _, n, _)| std::cmp::Reverse(n * ms[i].cols));
    let work: usize = tokens * ms.iter().map(|m| m.rows * m.cols).sum::<usize>();
    if work < PAR_MIN || threads::threads() == 1 {
        runs.iter_mut().for_each(|(i, first, _, out)| run(*i, *first, out));
    } else {
        threads::for_each_mut(&mut runs, |_, (i, first, _, out)| run(*i, *first, out));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use half::{bf16, f16};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::simd::{Fused, Separate, f16_bits_to_f32};

    /// Runs cover every row once, in order, aligned but for the last, the longest first.
    #[test]
    fn guided_runs_cover_every_row_once() {
        for (rows, cols, align) in
            [(0, 64, 16), (1, 64, 16), (3, 8, 1), (17, 576, 16), (576, 4608, 16), (49152, 4608, 1)]
        {
            let mut runs = Vec::new();
            guided_runs(rows, cols, align, |first, n| runs.push((first, n)));
            let mut next = 0;
            for (k, &(first, n)) in runs.iter().enumerate() {
                assert_eq!(first, next, "{rows} rows: runs in order, no gap");
                assert!(n > 0, "{rows} rows: an empty run");
                assert!(k + 1 == runs.len() || n.is_multiple_of(align), "{rows} rows: run {k} of {n}");
                next += n;
            }
            assert_eq!(next, rows);
            if rows >= 576 {
                assert!(runs[0].1 > runs[runs.len() - 1].1, "{rows} rows: {runs:?}");
            }
        }
    }

    pub(crate) const TYPES: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// `rows × cols` random elements of `ty`: random quants, f16 scales in ±0.05.
    pub(crate) fn matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
        let (be, bb) = ty.block();
        let n_blocks = rows * cols / be;
        let scale = |rng: &mut StdRng| f16::from_f32(rng.random_range(-0.05f32..0.05)).to_le_bytes();
        let mut out = Vec::with_capacity(n_blocks * bb);
        for _ in 0..n_blocks {
            let mut b: Vec<u8> = (0..bb).map(|_| rng.random()).collect();
            match ty {
                GgmlType::F32 => b.copy_from_slice(&rng.random_range(-2f32..2.0).to_le_bytes()),
                GgmlType::F16 => {
                    b.copy_from_slice(&f16::from_f32(rng.random_range(-2f32..2.0)).to_le_bytes())
                }
                GgmlType::BF16 => {
                    b.copy_from_slice(&bf16::from_f32(rng.random_range(-2f32..2.0)).to_le_bytes())
                }
                GgmlType::Q8_0 | GgmlType::Q4_0 => b[0..2].copy_from_slice(&scale(rng)),
                GgmlType::Q4_1 | GgmlType::Q4_K => {
                    b[0..2].copy_from_slice(&scale(rng));
                    b[2..4].copy_from_slice(&scale(rng));
                }
                GgmlType::Q6_K => b[208..210].copy_from_slice(&scale(rng)),
                _ => unreachable!("not a tested type"),
            }
            out.extend_from_slice(&b);
        }
        out
    }

    pub(crate) fn qmat(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> QMat<'_> {
        let row_bytes = cols / ty.block().0 * ty.block().1;
        QMat { ty, rows, cols, row_bytes, data }
    }

    fn input(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1f32..1.0)).collect()
    }

    fn sums_of(x: &[f32]) -> Vec<f32> {
        let mut s = vec![0f32; x.len() / 32];
        block_sums(x, &mut s);
        s
    }

    /// Asserts `got` is the reference dot product of each row with `x` up to f32 rounding: a
    /// difference within 1e-5 of `Σ|w·x|` (the sums run in another order).
    pub(crate) fn assert_close(m: &QMat<'_>, x: &[f32], got: &[f32], what: &str) {
        let mut w = vec![0f32; m.cols];
        for (r, &g) in got.iter().enumerate() {
            let want = quant::dot(m.ty, m.row(r), x).expect("reference dot");
            quant::dequantize(m.ty, m.row(r), &mut w).expect("dequantize");
            let mag: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
            assert!(
                (g - want).abs() <= 1e-5 * mag + 1e-6,
                "{what} {:?} row {r}: {g} vs {want} (Σ|w·x| {mag})",
                m.ty
            );
        }
    }

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = f16_bits_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn every_row_kernel_matches_the_reference_dot() {
        let mut rng = StdRng::seed_from_u64(1);
        for ty in TYPES {
            let (rows, cols) = (37, 512);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            let x = input(cols, &mut rng);
            let sums = sums_of(&x);
            let mut y = vec![f32::NAN; rows];
            rows_portable::<Separate>(m, &x, &sums, &mut y);
            assert_close(&m, &x, &y, "portable, separate");
            rows_portable::<Fused>(m, &x, &sums, &mut y);
            assert_close(&m, &x, &y, "portable, fused");
            #[cfg(target_arch = "x86_64")]
            {
                let quant = !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
                if quant && let Some(simd) = pulp::x86::V3::try_new() {
                    y.fill(f32::NAN);
                    let job = Rows { m, x: &x, sums: &sums, first: 0, y: &mut y };
                    simd.vectorize(move || job.run_avx2(simd));
                    assert_close(&m, &x, &y, "AVX2");
                }
                if quant && let Some(simd) = pulp::x86::V4::try_new() {
                    y.fill(f32::NAN);
                    let job = Rows { m, x: &x, sums: &sums, first: 0, y: &mut y };
                    simd.vectorize(move || job.run_avx512(simd));
                    assert_close(&m, &x, &y, "AVX-512");
                }
            }
        }
    }

    fn rows_portable<M: Madd>(m: QMat<'_>, x: &[f32], sums: &[f32], y: &mut [f32]) {
        y.fill(f32::NAN);
        Rows { m, x, sums, first: 0, y }.run::<M>();
    }

    #[test]
    fn matvec_splits_rows_across_threads_and_groups_products() {
        let mut rng = StdRng::seed_from_u64(2);
        for ty in TYPES {
            // 300 × 512: enough work for the parallel path.
            let (rows, cols) = (300, 512);
            let (da, db, dc) = (
                matrix(ty, rows, cols, &mut rng),
                matrix(ty, 40, cols, &mut rng),
                matrix(ty, 7, cols, &mut rng),
            );
            let (a, b, c) = (qmat(ty, rows, cols, &da), qmat(ty, 40, cols, &db), qmat(ty, 7, cols, &dc));
            let x = input(cols, &mut rng);
            let sums = sums_of(&x);
            let mut ya = vec![f32::NAN; rows];
            matvec(a, &x, &sums, &mut ya);
            assert_close(&a, &x, &ya, "matvec");
            // Grouped products give each product's own results, bit for bit.
            let (mut ya2, mut yb, mut yc) = (vec![f32::NAN; rows], vec![f32::NAN; 40], vec![f32::NAN; 7]);
            matvec2(a, &mut ya2, b, &mut yb, &x, &sums);
            assert_eq!(ya, ya2, "{ty:?}");
            assert_close(&b, &x, &yb, "matvec2");
            let (mut ya3, mut yb3) = (vec![f32::NAN; rows], vec![f32::NAN; 40]);
            matvec3(a, &mut ya3, b, &mut yb3, c, &mut yc, &x, &sums);
            assert_eq!((ya, yb), (ya3, yb3), "{ty:?}");
            assert_close(&c, &x, &yc, "matvec3");
        }
    }

    #[test]
    fn matmul_gives_each_token_its_product() {
        let mut rng = StdRng::seed_from_u64(3);
        for ty in TYPES {
            // 37 rows: two whole panels and a partial one.
            let (rows, cols) = (37, 256);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            for tokens in [1, 2, 5, 6, 7, 13, 16, 17, 23, 40] {
                let x = input(tokens * cols, &mut rng);
                let mut y = vec![f32::NAN; tokens * rows];
                matmul(m, &x, tokens, &mut y);
                for t in 0..tokens {
                    let what = format!("matmul token {t} of {tokens}");
                    assert_close(&m, &x[t * cols..(t + 1) * cols], &y[t * rows..(t + 1) * rows], &what);
                }
            }
        }
    }

    /// Not a check: times each block type's row kernels on one 1536 × 576 matrix (a decode
    /// step's largest product in SmolLM2-135M) for `docs/BENCHMARKS.md`:
    /// `cargo test --release -p rela-llm --lib kernel_timings -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing run, not a check"]
    #[cfg(target_arch = "x86_64")]
    fn kernel_timings() {
        let mut rng = StdRng::seed_from_u64(3);
        let (Some(v3), v4) = (pulp::x86::V3::try_new(), pulp::x86::V4::try_new()) else {
            eprintln!("SKIPPED kernel_timings: no AVX2 + FMA");
            return;
        };
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let (rows, cols) = (1536, 576);
            let data = matrix(ty, rows, cols, &mut rng);
            let m = qmat(ty, rows, cols, &data);
            let x = input(cols, &mut rng);
            let sums = sums_of(&x);
            let mut y = vec![0f32; rows];
            // Microseconds per product: the best of five stretches of 100, after 20.
            let mut time = |f: &dyn Fn(&mut [f32])| {
                (0..20).for_each(|_| f(&mut y));
                (0..5)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        (0..100).for_each(|_| f(&mut y));
                        t.elapsed().as_secs_f64() * 1e4
                    })
                    .fold(f64::MAX, f64::min)
            };
            let (x, sums) = (&x[..], &sums[..]);
            let portable = time(&|y| v3.vectorize(|| Rows { m, x, sums, first: 0, y }.run::<Fused>()));
            let avx2 = time(&|y| v3.vectorize(|| Rows { m, x, sums, first: 0, y }.run_avx2(v3)));
            let avx512 =
                v4.map(|v4| time(&|y| v4.vectorize(|| Rows { m, x, sums, first: 0, y }.run_avx512(v4))));
            println!(
                "{ty:?}: portable (built for AVX2 + FMA) {portable:.1} us, AVX2 {avx2:.1} us, AVX-512 {}",
                avx512.map_or("-".to_owned(), |t| format!("{t:.1} us"))
            );
            // Eight inputs at once (eight streams' decode steps): the fused row kernels once per
            // input against the batched kernel, which dequantizes each block once for all.
            let x8 = input(8 * cols, &mut rng);
            let mut y8 = vec![0f32; 8 * rows];
            let mut time8 = |f: &dyn Fn(&mut [f32])| {
                (0..5).for_each(|_| f(&mut y8));
                (0..5)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        (0..20).for_each(|_| f(&mut y8));
                        t.elapsed().as_secs_f64() * 5e4
                    })
                    .fold(f64::MAX, f64::min)
            };
            let per_input = time8(&|y| matmul_small(m, &x8, 8, y));
            let batched = time8(&|y| {
                qbatch::matmul(m, &x8, 8, y);
            });
            // The same on an AVX2-only CPU: AVX2's fused kernels once per input, and the AVX2
            // batched kernel.
            let per_input_avx2 = time8(&|y| {
                for (x, y) in x8.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
                    let sums = sums_of(x);
                    v3.vectorize(|| Rows { m, x, sums: &sums, first: 0, y }.run_avx2(v3));
                }
            });
            let batched_avx2 = time8(&|y| qbatch::matmul_avx2(v3, m, &x8, 8, y));
            // With the inputs rounded to 8 bits (`Activations::Q8`), where that path applies.
            let q8 = v4.filter(|_| crate::qbatch_q8::takes(ty)).map(|_| {
                let one = time(&|y| {
                    crate::qbatch_q8::matmul(m, x, 1, y);
                });
                let eight = time8(&|y| {
                    crate::qbatch_q8::matmul(m, &x8, 8, y);
                });
                format!("; 8-bit inputs: 1 input {one:.1} us, 8 inputs {eight:.1} us")
            });
            println!(
                "{ty:?}, 8 inputs: fused kernels per input {per_input:.1} us, batched {batched:.1} us; \
                 AVX2 only: {per_input_avx2:.1} us, batched {batched_avx2:.1} us{}",
                q8.unwrap_or_default()
            );
        }
    }
}
