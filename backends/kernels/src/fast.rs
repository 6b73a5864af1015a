//! Fast host kernels (feature `std`): the same functions, with the same signatures, as
//! [`reference`](mod@crate::reference), on the threads of the kernels' [`pool`] and in SIMD.
//!
//! - MATMUL and LINEAR run through the [`gemm`] crate (packed, cache-blocked, runtime-selected
//!   AVX2/FMA or AVX-512 micro-kernels), one `gemm` call per share of the product on each of the
//!   pool's threads (rows of `w`, or row chunks for long calls), except LINEAR calls of
//!   at most [`LINEAR_DOT_MAX_ROWS`] rows: those run as register-tiled dot products with `w`'s
//!   contiguous rows ([`linear_dot`]), which stream `w` in place at memory speed, where `gemm`
//!   would either pack `w` on every call or read it strided.
//! - Attention is tiled per (sequence, block of [`QUERY_TILE`] queries, and for a short text
//!   group of heads, so that even one tile keeps every thread busy) with an online softmax
//!   over blocks of [`KEY_TILE`] keys: no `seq × seq` temporaries, only one
//!   `QUERY_TILE × KEY_TILE` score tile per task. Masked keys are skipped before any work. Both
//!   products of a tile (`Q Kᵀ` and `P V`) are [`gemm`] calls.
//! - The loops that are not `gemm` calls but compute (the softmax, GELU) are compiled for the
//!   best instruction set the CPU offers (AVX-512, AVX2) through [`pulp`]'s runtime dispatch.
//! - Elementwise and row-wise kernels (ADD, MUL, SCALE, GELU, layer norm, mean pool) run in
//!   chunks over the pool, with loops the compiler vectorizes; `exp` is a branch-free
//!   polynomial ([`exp`]) so that GELU and the softmax vectorize too.
//!
//! Inputs are little-endian f32 byte slices, as in [`reference`](mod@crate::reference). Slices that
//! are 4-byte aligned (the host backend's buffers always are) are viewed in place as `[f32]`;
//! others are copied into an aligned temporary first, and an unaligned output is computed into
//! a temporary and copied out.
//!
//! Results agree with the reference kernels to rounding (sums run in another order, and `exp`
//! has a relative error of a few 1e-7), well within the conformance suite's tolerances.
//!
//! Work smaller than about [`PAR_MIN`] elements runs on the calling thread, without a hand-off
//! to the pool.

use std::borrow::Cow;
use std::vec;
use std::vec::Vec;

use super::BinaryOp;
use super::reference;
pub use super::reference::{attention_scale, erf, gelu_one};

pub mod linear_dot;
pub mod pool;
pub mod priority;

/// Queries per attention task (one output tile of `QUERY_TILE × head_dim` per head).
pub const QUERY_TILE: usize = 64;
/// Keys per step of attention's online softmax (the score tile is `QUERY_TILE × KEY_TILE`).
pub const KEY_TILE: usize = 256;
/// Elements (or multiply-adds, for attention) below which a kernel runs on the calling thread.
pub const PAR_MIN: usize = 1 << 15;

pub use pool::{THREADS_ENV, set_threads, threads};

/// `len` f32s from little-endian `bytes`: borrowed in place when aligned (on a little-endian
/// host), else copied.
fn input(bytes: &[u8], len: usize) -> Cow<'_, [f32]> {
    let bytes = &bytes[..len * 4];
    #[cfg(target_endian = "little")]
    if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Calls `f` on the first `len` f32s of `out` (in place when aligned on a little-endian host,
/// else through a zeroed temporary that is copied out afterwards).
fn output(out: &mut [u8], len: usize, f: impl FnOnce(&mut [f32])) {
    let out = &mut out[..len * 4];
    #[cfg(target_endian = "little")]
    if let Ok(v) = bytemuck::try_cast_slice_mut::<u8, f32>(out) {
        f(v);
        return;
    }
    let mut tmp = vec![0.0f32; len];
    f(&mut tmp);
    for (dst, v) in out.chunks_exact_mut(4).zip(&tmp) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Rows per parallel chunk for `rows` rows of `row_work` elements each: chunks of at least
/// [`PAR_MIN`] elements, about four per thread.
fn rows_per_chunk(rows: usize, row_work: usize) -> usize {
    let min_rows = PAR_MIN.div_ceil(row_work.max(1));
    rows.div_ceil(threads() * 4).max(min_rows).max(1)
}

/// Calls `f(first_row, chunk)` over chunks of whole rows of `out` (`row_len` elements each,
/// `row_work` elements of work each): in the pool when there is enough work, else once on the
/// calling thread.
fn for_row_chunks(
    out: &mut [f32],
    row_len: usize,
    row_work: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if out.is_empty() || row_len == 0 {
        return;
    }
    let rows = out.len() / row_len;
    if rows * row_work < 2 * PAR_MIN {
        f(0, out);
        return;
    }
    let per = rows_per_chunk(rows, row_work);
    let mut chunks: Vec<&mut [f32]> = out.chunks_mut(per * row_len).collect();
    pool::for_each_mut(&mut chunks, |c, o| f(c * per, o));
}

/// `out[i] = a[i] op b[i]` for `i < n`.
pub fn binary(op: BinaryOp, a: &[u8], b: &[u8], out: &mut [u8], n: usize) {
    let (a, b) = (input(a, n), input(b, n));
    output(out, n, |o| {
        for_row_chunks(o, 1, 1, |i, o| {
            let (a, b) = (&a[i..i + o.len()], &b[i..i + o.len()]);
            match op {
                BinaryOp::Add => o.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = x + y),
                BinaryOp::Mul => o.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = x * y),
            }
        });
    });
}

/// `out[i] = alpha * x[i]` for `i < n`.
pub fn scale(x: &[u8], out: &mut [u8], n: usize, alpha: f32) {
    let x = input(x, n);
    output(out, n, |o| {
        for_row_chunks(o, 1, 1, |i, o| {
            let x = &x[i..i + o.len()];
            o.iter_mut().zip(x).for_each(|(o, &v)| *o = alpha * v);
        });
    });
}

/// A strided matrix view for [`gemm_into`]: `rows × cols` with element `(r, c)` at
/// `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// Whether `rows × cols` elements at strides `rs`, `cs` lie within `len` elements.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst (m × n at strides dst_rs, dst_cs) = [dst +] lhs (m × k) · rhs (k × n)`, on the calling
/// thread (callers split larger products over the pool themselves, see [`linear_gemm`]).
///
/// Panics if a view reaches past its slice (callers pass validated shapes).
#[allow(unsafe_code)]
fn gemm_into(
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    read_dst: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    (m, k, n): (usize, usize, usize),
) {
    assert!(fits(dst.len(), m, n, dst_rs, dst_cs), "gemm: dst too small");
    assert!(fits(lhs.data.len(), m, k, lhs.rs, lhs.cs), "gemm: lhs too small");
    assert!(fits(rhs.data.len(), k, n, rhs.rs, rhs.cs), "gemm: rhs too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !read_dst {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    // All of these are at most a slice length, hence fit in isize.
    let s = |v: usize| v as isize;
    // SAFETY: the asserts above check that every element the views address,
    // `(i, j) -> base + i * rs + j * cs` for `i < rows`, `j < cols`, lies within its slice
    // (dst: `m × n`; lhs: `m × k`; rhs: `k × n`). `dst` is borrowed mutably and
    // the inputs shared, so the output does not alias them. `gemm` reads only the inputs
    // and writes only `dst`, on this thread.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            s(dst_cs),
            s(dst_rs),
            read_dst,
            lhs.data.as_ptr(),
            s(lhs.cs),
            s(lhs.rs),
            rhs.data.as_ptr(),
            s(rhs.cs),
            s(rhs.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Columns above which MATMUL and [`linear_gemm`] go through [`gemm`]; narrower products run
/// the reference kernel.
///
/// Every output row must come out the same whatever rows the call holds besides it, so that a
/// call cut into row ranges (the host backend's partial dispatch) gives the whole call's bytes.
/// `gemm` computes the transposed product (its output is column-major to it), and takes its
/// main path, whose per-element arithmetic depends on `k` and the cache sizes only, unless the
/// output has at most 256 elements, `k <= 2`, one row, or both sides at most 64: shapes with
/// more than this many columns, `k > 2` and at least two rows avoid all of them (one row is
/// run as two).
pub const GEMM_MIN_COLUMNS: usize = 256;

/// Rows from which [`linear_gemm`] hands `gemm` a row-major output, which it computes as the
/// transposed product and for which it packs `w` (`n × k`) into its own layout on every call.
/// Below this, the output is column-major (transposed afterwards) and `gemm` reads `w` in
/// place: for a few rows, packing `w` would cost more than the product. Both take `gemm`'s main
/// path with the same multiply-add chain per element, so a row's bytes do not depend on the
/// choice.
pub const LINEAR_PACKED_ROWS: usize = 128;

/// Whether `gemm` runs a product with `k` inner and `n` output columns (see
/// [`GEMM_MIN_COLUMNS`]).
const fn use_gemm(k: usize, n: usize) -> bool {
    n > GEMM_MIN_COLUMNS && k > 2
}

/// `out (m×n) = a (m×k) · b (k×n)`, row-major.
pub fn matmul(a: &[u8], b: &[u8], out: &mut [u8], m: usize, k: usize, n: usize) {
    if !use_gemm(k, n) {
        return reference::matmul(a, b, out, m, k, n);
    }
    let (a, b) = (input(a, m * k), input(b, k * n));
    let (a, rows) = two_rows(a, m, k);
    let b = View { data: &b, rs: n, cs: 1 };
    // Row chunks of at least two rows, one `gemm` call each: a row's bytes do not depend on
    // the other rows of its call (see GEMM_MIN_COLUMNS).
    let run = |o: &mut [f32]| {
        by_rows(o, rows, k * n, n, |r, o| {
            let a = View { data: &a[r.start * k..r.end * k], rs: k, cs: 1 };
            gemm_into(o, (n, 1), false, a, b, (r.len(), k, n));
        });
    };
    output(out, m * n, |o| {
        if rows == m {
            run(o);
        } else {
            let mut two = vec![0.0f32; rows * n];
            run(&mut two);
            o.copy_from_slice(&two[..m * n]);
        }
    });
}

/// Calls `f(rows, chunk)` over row ranges of `out` (`rows` rows of `n`, `row_work`
/// multiply-adds each) that cover it: one range on the calling thread for a small product,
/// else about one per thread in the pool, each of at least two rows.
fn by_rows(
    out: &mut [f32],
    rows: usize,
    row_work: usize,
    n: usize,
    f: impl Fn(core::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let t = threads();
    let chunks = if t < 2 || rows * row_work < PAR_MIN * 8 { 1 } else { t.min(rows / 2).max(1) };
    if chunks == 1 {
        return f(0..rows, out);
    }
    // Boundaries `i · rows / chunks`: chunks of ⌊rows / chunks⌋ ≥ 2 rows or one more.
    let mut parts: Vec<(core::ops::Range<usize>, &mut [f32])> = Vec::with_capacity(chunks);
    let mut rest = out;
    for i in 0..chunks {
        let r = i * rows / chunks..(i + 1) * rows / chunks;
        let (head, tail) = core::mem::take(&mut rest).split_at_mut(r.len() * n);
        parts.push((r, head));
        rest = tail;
    }
    pool::for_each_mut(&mut parts, |_, (r, o)| f(r.clone(), o));
}

/// `x` (`m × k`) as at least two rows: a single row is repeated, so that `gemm` never takes its
/// one-row path (see [`GEMM_MIN_COLUMNS`]). Returns the rows and their count.
fn two_rows(x: Cow<'_, [f32]>, m: usize, k: usize) -> (Cow<'_, [f32]>, usize) {
    if m == 1 {
        let mut v = Vec::with_capacity(2 * k);
        v.extend_from_slice(&x);
        v.extend_from_slice(&x);
        (Cow::Owned(v), 2)
    } else {
        (x, m)
    }
}

/// `out[r, :] = table[ids[r], :]` for `r < rows`; an id `>= vocab` gives a row of zeros.
/// (A copy per row: the same as [`reference::gather`].)
pub fn gather(table: &[u8], ids: &[u8], out: &mut [u8], vocab: usize, dim: usize, rows: usize) {
    reference::gather(table, ids, out, vocab, dim, rows);
}

/// Row-wise layer norm over `rows × dim`: mean, biased variance of `x - mean`, then
/// `(x - mean) · (1 / √(var + eps)) · gamma + beta`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(x: &[u8], gamma: &[u8], beta: &[u8], out: &mut [u8], rows: usize, dim: usize, eps: f32) {
    let (x, gamma, beta) = (input(x, rows * dim), input(gamma, dim), input(beta, dim));
    output(out, rows * dim, |o| {
        for_row_chunks(o, dim, dim, |r0, o| {
            for (r, o) in o.chunks_exact_mut(dim).enumerate() {
                let xr = &x[(r0 + r) * dim..(r0 + r + 1) * dim];
                let mean = sum(xr) / dim as f32;
                o.iter_mut().zip(xr).for_each(|(o, &v)| *o = v - mean);
                let var = sum_squares(o) / dim as f32;
                let inv = 1.0 / (var + eps).sqrt();
                o.iter_mut()
                    .zip(gamma.iter().zip(beta.iter()))
                    .for_each(|(o, (&g, &b))| *o = *o * inv * g + b);
            }
        });
    });
}

/// Partial sums per reduction: enough independent lanes for the compiler to keep in vector
/// registers.
const LANES: usize = 16;

/// `Σ v` in [`LANES`] interleaved partial sums.
#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a += x);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The largest of `v` (−∞ for none; NaN-free input), in [`LANES`] lanes so that it vectorizes.
#[inline(always)]
fn max_of(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a = if x > *a { x } else { *a });
    }
    let lanes = acc.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    chunks.remainder().iter().fold(lanes, |m, &x| if x > m { x } else { m })
}

/// `Σ v²` in [`LANES`] interleaved partial sums.
fn sum_squares(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a += x * x);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| x * x).sum::<f32>()
}

/// Rows of a whole LINEAR call up to which it runs as dot products with `w`'s rows
/// ([`linear_dot`], which streams `w` once at up to twice `gemm`'s speed there); longer calls
/// run [`linear_gemm`], faster once the product is bound by the multiply-adds. Both compute a
/// row the same way whatever the other rows, but not the same way as each other, so the choice
/// is made from the whole call's rows ([`linear_part`]), never from a part's.
pub const LINEAR_DOT_MAX_ROWS: usize = 12;

/// `out[i, j] = Σ_t x[i, t] · w[j, t] + bias[j]`: `x` is `m × k`, `w` is `n × k` (the whole
/// call: [`linear_part`] with `call_rows = m`).
pub fn linear(x: &[u8], w: &[u8], bias: &[u8], out: &mut [u8], m: usize, k: usize, n: usize) {
    linear_part(x, w, bias, out, m, k, n, m);
}

/// [`linear`] over `m` rows of a call of `call_rows` rows (a part of it, as the host backend's
/// partial dispatch runs them): as [`linear_dot`] for calls of at most [`LINEAR_DOT_MAX_ROWS`]
/// rows, else as [`linear_gemm`]. Every part of a call takes the same kernel, so the parts give
/// the whole call's bytes.
#[allow(clippy::too_many_arguments)]
pub fn linear_part(
    x: &[u8],
    w: &[u8],
    bias: &[u8],
    out: &mut [u8],
    m: usize,
    k: usize,
    n: usize,
    call_rows: usize,
) {
    if call_rows > LINEAR_DOT_MAX_ROWS {
        return linear_gemm(x, w, bias, out, m, k, n);
    }
    let (x, w, bias) = (input(x, m * k), input(w, n * k), input(bias, n));
    output(out, m * n, |o| linear_dot::linear(&x, &w, &bias, o, m, k, n, true));
}

/// LINEAR through [`gemm`] for more than [`GEMM_MIN_COLUMNS`] columns, else
/// [`reference::linear`] (the transpose of `w` is a stride, not a copy): what [`linear_part`]
/// runs for calls of more than [`LINEAR_DOT_MAX_ROWS`] rows. Same arguments as [`linear`].
///
/// On the pool's threads when the product is large enough: from [`LINEAR_PACKED_ROWS`] rows
/// in row chunks (about one per thread, each packing `w` for itself), below that in shares of
/// `w`'s rows (one or two per thread, each at least 128 wide), so that each thread streams
/// only its share of `w`. Neither changes an element's bytes: `gemm`'s multiply-add chain per
/// element depends only on `k` (`linear_bytes_do_not_depend_on_the_split`).
pub fn linear_gemm(x: &[u8], w: &[u8], bias: &[u8], out: &mut [u8], m: usize, k: usize, n: usize) {
    if !use_gemm(k, n) {
        return reference::linear(x, w, bias, out, m, k, n);
    }
    let (x, w, bias) = (input(x, m * k), input(w, n * k), input(bias, n));
    let (x, rows) = two_rows(x, m, k);
    let shares = if threads() < 2 || rows * k * n < PAR_MIN * 8 { 1 } else { column_shares(n, threads()) };
    output(out, m * n, |o| {
        if rows == m {
            linear_rows(&x, &w, &bias, o, (rows, k, n), shares);
        } else {
            let mut two = vec![0.0f32; rows * n];
            linear_rows(&x, &w, &bias, &mut two, (rows, k, n), shares);
            o.copy_from_slice(&two[..m * n]);
        }
    });
}

/// How many shares of `w`'s rows a LINEAR of `n` output columns is cut into for `threads`
/// threads: one per thread, or two when a share would still be at least 128 columns wide (so
/// that a thread that falls behind holds up less of the call); never shares narrower than 128
/// columns, so that `gemm` keeps its main path for each (it takes another for at most 64).
fn column_shares(n: usize, threads: usize) -> usize {
    let per_thread = if n / (2 * threads) >= 128 { 2 } else { 1 };
    (threads * per_thread).min(n / 128).max(1)
}

/// [`linear_gemm`] over `rows ≥ 2` rows of `x`, with `shares` shares of `w`'s rows below
/// [`LINEAR_PACKED_ROWS`] rows (1: on the calling thread), else in row chunks when `shares > 1`.
fn linear_rows(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    o: &mut [f32],
    (rows, k, n): (usize, usize, usize),
    shares: usize,
) {
    if rows >= LINEAR_PACKED_ROWS {
        let packed = |r: core::ops::Range<usize>, o: &mut [f32]| {
            for row in o.chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
            let x = View { data: &x[r.start * k..r.end * k], rs: k, cs: 1 };
            gemm_into(o, (n, 1), true, x, View { data: w, rs: 1, cs: k }, (r.len(), k, n));
        };
        if shares == 1 {
            return packed(0..rows, o);
        }
        return by_rows(o, rows, k * n, n, packed);
    }
    // Column-major output `t` (`n` columns of `rows`), so that gemm reads w in place rather than
    // packing it; a share of `w`'s rows is a run of `t`'s columns. Shares start at multiples
    // of 16 columns.
    let mut t = vec![0.0f32; rows * n];
    let bounds: Vec<usize> =
        (0..=shares).map(|i| if i == shares { n } else { i * n / shares / 16 * 16 }).collect();
    let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(shares);
    let mut rest = t.as_mut_slice();
    for s in bounds.windows(2) {
        let (head, tail) = core::mem::take(&mut rest).split_at_mut((s[1] - s[0]) * rows);
        parts.push((s[0], head));
        rest = tail;
    }
    let xv = View { data: x, rs: k, cs: 1 };
    let share = |p: &mut (usize, &mut [f32])| {
        let (j0, t) = (p.0, &mut *p.1);
        let cols = t.len() / rows;
        for (col, &b) in t.chunks_exact_mut(rows).zip(&bias[j0..j0 + cols]) {
            col.fill(b);
        }
        let wv = View { data: &w[j0 * k..(j0 + cols) * k], rs: 1, cs: k };
        gemm_into(t, (1, rows), true, xv, wv, (rows, k, cols));
    };
    if parts.len() == 1 {
        share(&mut parts[0]);
    } else {
        pool::for_each_mut(&mut parts, |_, p| share(p));
    }
    for_row_chunks(o, n, n, |r0, o| {
        for (i, row) in o.chunks_exact_mut(n).enumerate() {
            row.iter_mut().zip(t[r0 + i..].iter().step_by(rows)).for_each(|(o, &v)| *o = v);
        }
    });
}

/// `e^x` in f32 without branches or calls, so loops over it vectorize: Cephes' `expf`
/// (range reduction by `ln 2` in two parts, a degree-5 polynomial, the exponent set by bit
/// arithmetic); relative error about 2e-7. Below −87.33 (where `e^x` leaves the normal range)
/// it gives 0, above 88.3 it gives `e^88.3`; NaN in gives an unspecified value.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.33;
    const HI: f32 = 88.3;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let shifted = xc * core::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let k = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let scaled = y * f32::from_bits(((k + 127) as u32) << 23);
    if x < LO { 0.0 } else { scaled }
}

/// GELU of one value as [`reference::gelu_one`] computes it (Abramowitz–Stegun 7.1.26 for
/// `erfc`), with [`exp`] so that it vectorizes.
#[inline(always)]
fn gelu_fast(x: f32) -> f32 {
    let z = x.abs() * core::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly =
        t * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let e = poly * exp(-z * z);
    let c = if x >= 0.0 { 2.0 - e } else { e };
    0.5 * x * c
}

/// `out[i] = gelu(x[i])` over one chunk, compiled for the best instruction set the CPU has.
struct GeluChunk<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for GeluChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.out.iter_mut().zip(self.x).for_each(|(o, &v)| *o = gelu_fast(v));
    }
}

/// `out[i] = gelu(x[i])` for `i < n` (exact erf GELU, as [`reference::gelu`]).
pub fn gelu(x: &[u8], out: &mut [u8], n: usize) {
    let x = input(x, n);
    output(out, n, |o| {
        // About 30 operations per element.
        for_row_chunks(o, 1, 8, |i, o| {
            let x = &x[i..i + o.len()];
            pulp::Arch::new().dispatch(GeluChunk { x, out: o });
        });
    });
}

/// Masked scaled dot-product attention (see `KernelCall::Attention`), as
/// [`reference::attention`]: for each (batch `b`, head `h`, query `i`) the softmax of
/// `(q_i · k_j) / √head_dim` over the keys with `mask[b, j] != 0`, applied to their `v_j`; all
/// keys masked gives zeros.
///
/// Tiled: one task per (sequence, [`QUERY_TILE`] queries), over every head, in parallel; each
/// runs an online softmax over tiles of [`KEY_TILE`] unmasked keys, so memory per task is one
/// score tile, never `seq × seq`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[u8],
    k: &[u8],
    v: &[u8],
    mask: &[u8],
    out: &mut [u8],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    let width = heads * head_dim;
    let len = batch * seq * width;
    let (q, k, v, mask) = (input(q, len), input(k, len), input(v, len), input(mask, batch * seq));
    let shape = Shape { seq, heads, head_dim, scale: attention_scale(head_dim as u32) };
    output(out, len, |o| {
        if len == 0 {
            return;
        }
        let (q, k, v, mask) = (&*q, &*k, &*v, &*mask);
        // Queries `t · QUERY_TILE ..` of sequence `b`, heads `hs`, into `o` (rows of
        // `hs.len() · head_dim`).
        let task = |b: usize, t: usize, hs: core::ops::Range<usize>, o: &mut [f32]| {
            let keys: Vec<usize> = (0..seq).filter(|&j| mask[b * seq + j] != 0.0).collect();
            let tokens = b * seq..(b + 1) * seq;
            let (qb, kb, vb) =
                (&q[tokens.start * width..], &k[tokens.start * width..], &v[tokens.start * width..]);
            let tile = Tile {
                shape: &shape,
                q: qb,
                k: kb,
                v: vb,
                keys: &keys,
                i0: t * QUERY_TILE,
                heads: hs,
                out: o,
            };
            pulp::Arch::new().dispatch(tile);
        };
        let tiles = seq.div_ceil(QUERY_TILE);
        let chunk = QUERY_TILE * width;
        let mut parts: Vec<(usize, usize, &mut [f32])> = o
            .chunks_mut(seq * width)
            .enumerate()
            .flat_map(|(b, ob)| ob.chunks_mut(chunk).enumerate().map(move |(t, ot)| (b, t, ot)))
            .collect();
        debug_assert_eq!(parts.len(), batch * tiles);
        // Multiply-adds: two per (query, key, column).
        let threads = threads();
        if threads < 2 || batch * seq * seq * width < PAR_MIN {
            for (b, t, ot) in parts {
                task(b, t, 0..heads, ot);
            }
        } else if parts.len() >= 2 * threads || heads < 2 {
            pool::for_each_mut(&mut parts, |_, (b, t, ot)| task(*b, *t, 0..heads, ot));
        } else {
            // Few tiles (a short text): each tile's heads in groups, one task per group, each
            // into its own rows, copied into place afterwards.
            let per = heads.div_ceil((2 * threads).div_ceil(parts.len()).min(heads));
            let groups = heads.div_ceil(per);
            let group = |g: usize| g * per..((g + 1) * per).min(heads);
            let outs = pool::map(parts.len() * groups, |i| {
                let (b, t, ot) = &parts[i / groups];
                let hs = group(i % groups);
                let mut o = vec![0.0f32; ot.len() / width * hs.len() * head_dim];
                task(*b, *t, hs, &mut o);
                o
            });
            for (i, o) in outs.iter().enumerate() {
                let hs = group(i % groups);
                let gw = hs.len() * head_dim;
                let ot = &mut *parts[i / groups].2;
                for (row, src) in ot.chunks_exact_mut(width).zip(o.chunks_exact(gw)) {
                    row[hs.start * head_dim..hs.end * head_dim].copy_from_slice(src);
                }
            }
        }
    });
}

/// Attention's dimensions.
struct Shape {
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
}

/// One attention task: queries `i0 ..` (as many as `out` holds rows) of one sequence whose
/// rows start at `q`, `k`, `v`, over the unmasked `keys`, for heads `heads`; `out`'s rows hold
/// those heads' outputs side by side (`heads.len() · head_dim` each).
struct Tile<'a> {
    shape: &'a Shape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    keys: &'a [usize],
    i0: usize,
    heads: core::ops::Range<usize>,
    out: &'a mut [f32],
}

impl pulp::WithSimd for Tile<'_> {
    type Output = ();

    /// Runs the task compiled for the best instruction set the CPU has (AVX-512 or AVX2 where
    /// present), so that the softmax's loops, `exp` included, vectorize at full width.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        attention_tile(self);
    }
}

/// Runs one [`Tile`]: per head, this head's unmasked keys and values are gathered into
/// contiguous rows; then, for each block of [`KEY_TILE`] of them, the scores
/// `Q Kᵀ` (a [`gemm`] call), the online softmax update of each query's running max and sum
/// (rescaling its accumulated output), and `acc += P V` (another [`gemm`] call).
#[inline(always)]
fn attention_tile(t: Tile<'_>) {
    let Tile { shape: s, q, k, v, keys, i0, heads, out } = t;
    let (hd, width) = (s.head_dim, s.heads * s.head_dim);
    // `out`'s row length: this task's heads.
    let ow = heads.len() * hd;
    if ow == 0 {
        return;
    }
    let rows = out.len() / ow;
    debug_assert!(i0 + rows <= s.seq);
    if keys.is_empty() {
        out.fill(0.0);
        return;
    }
    let nk = keys.len();
    let mut kh = vec![0.0f32; nk * hd];
    let mut vh = vec![0.0f32; nk * hd];
    let mut scores = vec![0.0f32; rows * KEY_TILE.min(nk)];
    let mut max = vec![0.0f32; rows];
    let mut total = vec![0.0f32; rows];
    let mut acc = vec![0.0f32; rows * hd];
    for (oh, h) in heads.enumerate() {
        for ((&j, kr), vr) in keys.iter().zip(kh.chunks_exact_mut(hd)).zip(vh.chunks_exact_mut(hd)) {
            kr.copy_from_slice(&k[j * width + h * hd..j * width + (h + 1) * hd]);
            vr.copy_from_slice(&v[j * width + h * hd..j * width + (h + 1) * hd]);
        }
        max.fill(f32::NEG_INFINITY);
        total.fill(0.0);
        acc.fill(0.0);
        let qh = View { data: &q[i0 * width + h * hd..], rs: width, cs: 1 };
        for c0 in (0..nk).step_by(KEY_TILE) {
            let cols = (nk - c0).min(KEY_TILE);
            let st = &mut scores[..rows * cols];
            // Scores: (rows × hd) · (hd × cols), the key rows read as columns.
            let kt = View { data: &kh[c0 * hd..], rs: 1, cs: hd };
            gemm_into(st, (cols, 1), false, qh, kt, (rows, hd, cols));
            for (r, sr) in st.chunks_exact_mut(cols).enumerate() {
                let scale = s.scale;
                sr.iter_mut().for_each(|x| *x /= scale);
                let m = max_of(sr).max(max[r]);
                // The first block: nothing accumulated yet, nothing to rescale.
                let correction = if max[r] == f32::NEG_INFINITY { 0.0 } else { exp(max[r] - m) };
                max[r] = m;
                sr.iter_mut().for_each(|x| *x = exp(*x - m));
                total[r] = total[r] * correction + sum(sr);
                acc[r * hd..(r + 1) * hd].iter_mut().for_each(|a| *a *= correction);
            }
            // acc += P (rows × cols) · V (cols × hd).
            let p = View { data: st, rs: cols, cs: 1 };
            gemm_into(
                &mut acc,
                (hd, 1),
                true,
                p,
                View { data: &vh[c0 * hd..], rs: hd, cs: 1 },
                (rows, cols, hd),
            );
        }
        for r in 0..rows {
            let or = &mut out[r * ow + oh * hd..r * ow + (oh + 1) * hd];
            let inv = if total[r] > 0.0 { 1.0 / total[r] } else { 0.0 };
            or.iter_mut().zip(&acc[r * hd..(r + 1) * hd]).for_each(|(o, &a)| *o = a * inv);
        }
    }
}

/// `out[b, :] = Σ_s mask[b, s] · x[b·seq + s, :] / max(Σ_s mask[b, s], 1e-9)`, skipping zero
/// weights.
pub fn mean_pool(x: &[u8], mask: &[u8], out: &mut [u8], batch: usize, seq: usize, dim: usize) {
    let (x, mask) = (input(x, batch * seq * dim), input(mask, batch * seq));
    output(out, batch * dim, |o| {
        for_row_chunks(o, dim, seq * dim, |b0, o| {
            for (b, ob) in o.chunks_exact_mut(dim).enumerate() {
                let b = b0 + b;
                ob.fill(0.0);
                let mut weight = 0.0f32;
                for s in 0..seq {
                    let w = mask[b * seq + s];
                    weight += w;
                    if w != 0.0 {
                        let xr = &x[(b * seq + s) * dim..(b * seq + s + 1) * dim];
                        ob.iter_mut().zip(xr).for_each(|(a, &v)| *a += w * v);
                    }
                }
                let denom = weight.max(1e-9);
                ob.iter_mut().for_each(|a| *a /= denom);
            }
        });
    });
}

/// `out[r, :] = x[r, :] / max(‖x[r, :]‖₂, 1e-12)` over `rows × dim`.
pub fn l2_normalize(x: &[u8], out: &mut [u8], rows: usize, dim: usize) {
    let x = input(x, rows * dim);
    output(out, rows * dim, |o| {
        for_row_chunks(o, dim, dim, |r0, o| {
            for (r, o) in o.chunks_exact_mut(dim).enumerate() {
                let xr = &x[(r0 + r) * dim..(r0 + r + 1) * dim];
                let denom = sum_squares(xr).sqrt().max(1e-12);
                o.iter_mut().zip(xr).for_each(|(o, &v)| *o = v / denom);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// A small deterministic generator (xorshift64*), values in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        }

        fn bytes(&mut self, count: usize, scale: f32) -> Vec<u8> {
            (0..count).flat_map(|_| (self.next() * scale).to_le_bytes()).collect()
        }
    }

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// `bytes` at an odd address: a copy one byte into a fresh vector.
    fn unaligned(bytes: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.push(0xAA);
        v.extend_from_slice(bytes);
        v
    }

    /// Runs `kernel(inputs, out)` aligned, then with every input and the output one byte off,
    /// and checks both give the same bytes; returns the floats.
    /// A kernel under test: its inputs, then its output.
    type Kernel<'a> = &'a dyn Fn(&[&[u8]], &mut [u8]);

    fn both_alignments(inputs: &[&[u8]], out_len: usize, kernel: Kernel<'_>) -> Vec<f32> {
        let mut out = vec![0u8; out_len * 4];
        kernel(inputs, &mut out);
        let shifted: Vec<Vec<u8>> = inputs.iter().map(|b| unaligned(b)).collect();
        let views: Vec<&[u8]> = shifted.iter().map(|b| &b[1..]).collect();
        let mut out2 = vec![0xFFu8; out_len * 4 + 1];
        kernel(&views, &mut out2[1..]);
        assert_eq!(out, out2[1..], "unaligned slices give the same result");
        floats(&out)
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol(i), "{what}: [{i}] = {g:e}, reference {w:e}");
        }
    }

    #[test]
    fn linear_and_matmul_match_reference() {
        let mut rng = Rng(7);
        for (m, k, n) in [
            (0, 5, 3),
            (3, 0, 4),
            (2, 3, 0),
            (1, 1, 1),
            (5, 17, 7),
            (33, 384, 65),
            (130, 96, 257),
            (1, 384, 1536),
            (0, 384, 384),
            (4, 0, 384),
            (3, 2, 300),
            (150, 384, 384),
            (20, 1536, 384),
        ] {
            let (x, w, b) = (rng.bytes(m * k, 1.0), rng.bytes(n * k, 1.0), rng.bytes(n, 1.0));
            let got = both_alignments(&[&x, &w, &b], m * n, &|i, o| linear(i[0], i[1], i[2], o, m, k, n));
            let mut want = vec![0u8; m * n * 4];
            reference::linear(&x, &w, &b, &mut want, m, k, n);
            // Each term is at most 1 in magnitude: k + 1 bounds every sum's magnitude.
            close(&std::format!("linear {m}x{k}x{n}"), &got, &floats(&want), |_| 2e-6 * (k + 1) as f32);

            let (a, bb) = (rng.bytes(m * k, 1.0), rng.bytes(k * n, 1.0));
            let got = both_alignments(&[&a, &bb], m * n, &|i, o| matmul(i[0], i[1], o, m, k, n));
            let mut want = vec![0u8; m * n * 4];
            reference::matmul(&a, &bb, &mut want, m, k, n);
            close(&std::format!("matmul {m}x{k}x{n}"), &got, &floats(&want), |_| 2e-6 * (k + 1) as f32);
        }
    }

    #[test]
    fn linear_and_matmul_rows_do_not_depend_on_the_rest_of_the_call() {
        let mut rng = Rng(3);
        for (m, k, n) in [
            (37usize, 384usize, 384usize),
            (130, 384, 384),
            (200, 1536, 384),
            (400, 384, 1536),
            (37, 384, 300),
            (9, 1536, 384),
            (70, 384, 1536),
            (5, 3, 300),
            (6, 20, 40),
            (16, 384, 1536),
            (12, 70, 300),
        ] {
            let (x, w, b) = (rng.bytes(m * k, 1.0), rng.bytes(n * k, 1.0), rng.bytes(n, 1.0));
            let bm = rng.bytes(k * n, 1.0);
            let mut whole = vec![0u8; m * n * 4];
            linear(&x, &w, &b, &mut whole, m, k, n);
            let mut whole_mm = vec![0u8; m * n * 4];
            matmul(&x, &bm, &mut whole_mm, m, k, n);
            for range in [0..1, 1..m / 3, m / 3..m / 3 + 1, m / 3 + 1..m - m / 4, m - m / 4..m, 0..m] {
                let rows = range.end - range.start;
                let xs = &x[range.start * k * 4..range.end * k * 4];
                let mut part = vec![0u8; rows * n * 4];
                linear_part(xs, &w, &b, &mut part, rows, k, n, m);
                assert!(
                    part == whole[range.start * n * 4..range.end * n * 4],
                    "linear {m}x{k}x{n} rows {range:?}"
                );
                matmul(xs, &bm, &mut part, rows, k, n);
                assert!(
                    part == whole_mm[range.start * n * 4..range.end * n * 4],
                    "matmul {m}x{k}x{n} rows {range:?}"
                );
            }
        }
    }

    #[test]
    fn linear_bytes_do_not_depend_on_the_split() {
        // The pool's shares of `w`'s rows (below LINEAR_PACKED_ROWS rows) and row chunks
        // (from it) against one `gemm` call on this thread: the same bytes, so neither the
        // thread count nor the size of a part changes a result.
        let mut rng = Rng(31);
        for (rows, k, n) in [
            (13usize, 384usize, 384usize),
            (40, 1536, 384),
            (100, 384, 1536),
            (2, 70, 300),
            (130, 384, 1536),
            (300, 96, 520),
        ] {
            let (x, w, b) = (rng.bytes(rows * k, 1.0), rng.bytes(n * k, 1.0), rng.bytes(n, 1.0));
            let (x, w, b) = (floats(&x), floats(&w), floats(&b));
            let mut one = vec![0.0f32; rows * n];
            linear_rows(&x, &w, &b, &mut one, (rows, k, n), 1);
            for shares in 2..=n / 128 {
                let mut split = vec![0.0f32; rows * n];
                linear_rows(&x, &w, &b, &mut split, (rows, k, n), shares);
                assert!(
                    split.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "linear {rows}x{k}x{n} in {shares} shares"
                );
            }
        }
    }

    #[test]
    fn elementwise_and_rows_match_reference() {
        let mut rng = Rng(11);
        for n in [0usize, 1, 7, 100, 70_001] {
            let (a, b) = (rng.bytes(n, 4.0), rng.bytes(n, 4.0));
            for op in [BinaryOp::Add, BinaryOp::Mul] {
                let got = both_alignments(&[&a, &b], n, &|i, o| binary(op, i[0], i[1], o, n));
                let mut want = vec![0u8; n * 4];
                reference::binary(op, &a, &b, &mut want, n);
                assert_eq!(got, floats(&want), "binary is exact");
            }
            let got = both_alignments(&[&a], n, &|i, o| scale(i[0], o, n, -1.5));
            let mut want = vec![0u8; n * 4];
            reference::scale(&a, &mut want, n, -1.5);
            assert_eq!(got, floats(&want), "scale is exact");
            let wide = rng.bytes(n, 12.0);
            let got = both_alignments(&[&wide], n, &|i, o| gelu(i[0], o, n));
            let mut want = vec![0u8; n * 4];
            reference::gelu(&wide, &mut want, n);
            let want = floats(&want);
            close("gelu", &got, &want, |i| 1e-6 * (1.0 + want[i].abs()));
        }
        for (rows, dim) in [(0usize, 8usize), (3, 0), (1, 1), (5, 37), (300, 384)] {
            let (x, g, b) = (rng.bytes(rows * dim, 3.0), rng.bytes(dim, 1.0), rng.bytes(dim, 1.0));
            let got = both_alignments(&[&x, &g, &b], rows * dim, &|i, o| {
                layer_norm(i[0], i[1], i[2], o, rows, dim, 1e-5)
            });
            let mut want = vec![0u8; rows * dim * 4];
            reference::layer_norm(&x, &g, &b, &mut want, rows, dim, 1e-5);
            close("layer_norm", &got, &floats(&want), |_| 1e-5);
            let got = both_alignments(&[&x], rows * dim, &|i, o| l2_normalize(i[0], o, rows, dim));
            let mut want = vec![0u8; rows * dim * 4];
            reference::l2_normalize(&x, &mut want, rows, dim);
            close("l2_normalize", &got, &floats(&want), |_| 1e-6);
        }
    }

    #[test]
    fn exp_is_close_to_std() {
        let mut x = -90.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want || (x < -87.33 && got == 0.0),
                "exp({x}) = {got:e}, std {want:e}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    fn mask_bytes(batch: usize, seq: usize, lens: &[usize]) -> Vec<u8> {
        (0..batch * seq)
            .flat_map(|t| if t % seq < lens[t / seq] { 1.0f32 } else { 0.0 }.to_le_bytes())
            .collect()
    }

    #[test]
    fn attention_and_mean_pool_match_reference() {
        let mut rng = Rng(23);
        // (batch, seq, heads, head_dim, unmasked keys per sequence): tails of both tiles, a fully
        // masked sequence, empty shapes, and enough work to run in parallel.
        let cases: [(usize, usize, usize, usize, &[usize]); 7] = [
            (1, 1, 1, 1, &[1]),
            (2, 5, 3, 7, &[5, 2]),
            (3, 70, 2, 32, &[70, 0, 65]),
            (1, 200, 12, 32, &[200]),
            (2, 33, 4, 16, &[33, 31]),
            (0, 4, 2, 2, &[]),
            (2, 3, 2, 0, &[3, 3]),
        ];
        for (batch, seq, heads, hd, lens) in cases {
            let len = batch * seq * heads * hd;
            let (q, k, v) = (rng.bytes(len, 2.0), rng.bytes(len, 2.0), rng.bytes(len, 1.0));
            let mask = mask_bytes(batch, seq, lens);
            let got = both_alignments(&[&q, &k, &v, &mask], len, &|i, o| {
                attention(i[0], i[1], i[2], i[3], o, batch, seq, heads, hd)
            });
            let mut want = vec![0u8; len * 4];
            reference::attention(&q, &k, &v, &mask, &mut want, batch, seq, heads, hd);
            // Convex combinations of values in [-1, 1].
            close(&std::format!("attention {batch}x{seq}x{heads}x{hd}"), &got, &floats(&want), |_| 5e-6);

            let dim = heads * hd;
            let got =
                both_alignments(&[&v, &mask], batch * dim, &|i, o| mean_pool(i[0], i[1], o, batch, seq, dim));
            let mut want = vec![0u8; batch * dim * 4];
            reference::mean_pool(&v, &mask, &mut want, batch, seq, dim);
            close("mean_pool", &got, &floats(&want), |_| 1e-6);
        }
    }

    #[test]
    fn gather_matches_reference() {
        let table = Rng(5).bytes(10 * 3, 1.0);
        let ids: Vec<u8> = [0u32, 9, 10, 3].iter().flat_map(|i| i.to_le_bytes()).collect();
        let got = both_alignments(&[&table, &ids], 12, &|i, o| gather(i[0], i[1], o, 10, 3, 4));
        let mut want = vec![0u8; 48];
        reference::gather(&table, &ids, &mut want, 10, 3, 4);
        assert_eq!(got, floats(&want));
    }

    #[test]
    fn pool_size_is_fixed_once_used() {
        let n = threads();
        assert!(n >= 1);
        assert!(!set_threads(n + 1), "the pool already exists");
        assert_eq!(threads(), n);
    }
}
