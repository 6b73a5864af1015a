//! Reference kernels of text generation (the llama architecture): RMSNorm, RoPE, the SiLU-gated
//! product, linear layers and embedding rows over quantized weights, causal grouped-query
//! attention over a KV cache, softmax and argmax. Re-exported from
//! [`reference`](crate::reference); same conventions (little-endian byte buffers, validated
//! shapes, f32 sums in index order unless a function says otherwise).

use core::ops::Range;

use rela_core::backend::WeightType;

use crate::quant::{MAX_BLOCK_ELEMS, dequantize_block};

fn f32_at(buf: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([buf[i * 4], buf[i * 4 + 1], buf[i * 4 + 2], buf[i * 4 + 3]])
}

fn u32_at(buf: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([buf[i * 4], buf[i * 4 + 1], buf[i * 4 + 2], buf[i * 4 + 3]])
}

fn set_f32(buf: &mut [u8], i: usize, v: f32) {
    buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

/// RMSNorm over `rows × dim`: `ms = (Σ_c x²) / dim` (in order), `s = 1 / √(ms + eps)`,
/// `out = (x · s) · w`.
pub fn rms_norm(x: &[u8], w: &[u8], out: &mut [u8], rows: usize, dim: usize, eps: f32) {
    for r in 0..rows {
        let base = r * dim;
        let ss = (0..dim).fold(0.0f32, |s, c| {
            let v = f32_at(x, base + c);
            s + v * v
        });
        let scale = 1.0 / libm::sqrtf(ss / dim as f32 + eps);
        for c in 0..dim {
            set_f32(out, base + c, f32_at(x, base + c) * scale * f32_at(w, c));
        }
    }
}

/// The angle RoPE turns pair `i` of a head at position `pos` by: `pos · base^(−2i/rope_dim)`,
/// the inverse frequency rounded to f32 first (as llama.cpp's host path and the GPU kernels
/// compute it).
pub fn rope_angle(pos: u32, i: u32, rope_dim: u32, base: f32) -> f32 {
    let inv_freq = libm::powf(base, -2.0 * i as f32 / rope_dim as f32);
    pos as f32 * inv_freq
}

/// RoPE, llama.cpp's "normal" mode (see `KernelCall::Rope`): in each of the `heads` heads of
/// row `r`, pair `(2i, 2i+1)` for `i < rope_dim / 2` turns by [`rope_angle`]`(pos[r], i)`, and
/// dimensions `rope_dim..head_dim` are copied.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[u8],
    pos: &[u8],
    out: &mut [u8],
    rows: usize,
    heads: usize,
    head_dim: usize,
    rope_dim: usize,
    base: f32,
) {
    for r in 0..rows {
        let p = u32_at(pos, r);
        for h in 0..heads {
            let head = (r * heads + h) * head_dim;
            for i in 0..rope_dim / 2 {
                let theta = rope_angle(p, i as u32, rope_dim as u32, base);
                let (sin, cos) = (libm::sinf(theta), libm::cosf(theta));
                let (a, b) = (f32_at(x, head + 2 * i), f32_at(x, head + 2 * i + 1));
                set_f32(out, head + 2 * i, a * cos - b * sin);
                set_f32(out, head + 2 * i + 1, a * sin + b * cos);
            }
            for d in rope_dim..head_dim {
                set_f32(out, head + d, f32_at(x, head + d));
            }
        }
    }
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(g) = g / (1 + e^(−g))`, for `i < n`.
pub fn swiglu(gate: &[u8], up: &[u8], out: &mut [u8], n: usize) {
    for i in 0..n {
        let g = f32_at(gate, i);
        set_f32(out, i, g / (1.0 + libm::expf(-g)) * f32_at(up, i));
    }
}

/// Columns `cols` of a linear layer over quantized weights (see `KernelCall::QLinear`): `x` is
/// `m × k`, `w` holds `n` rows of `k` weights in `wtype`'s blocks, `out` is `m × n`; only
/// `out[i, j]` for `j` in `cols` is written.
///
/// Each output is a sum of per-block sums: block `b` of row `j` is dequantized once, its dot
/// product with `x[i, b·B .. (b+1)·B]` is summed in index order, and the block sums are added
/// in block order (starting from 0).
#[allow(clippy::too_many_arguments)]
pub fn q_linear(
    x: &[u8],
    w: &[u8],
    out: &mut [u8],
    m: usize,
    k: usize,
    n: usize,
    cols: Range<usize>,
    wtype: WeightType,
) {
    let (be, bb) = (wtype.block_elems() as usize, wtype.block_bytes() as usize);
    let row_bytes = k / be * bb;
    let mut block = [0.0f32; MAX_BLOCK_ELEMS];
    for j in cols {
        for i in 0..m {
            set_f32(out, i * n + j, 0.0);
        }
        let row = &w[j * row_bytes..(j + 1) * row_bytes];
        for (b, bytes) in row.chunks_exact(bb).enumerate() {
            dequantize_block(wtype, bytes, &mut block);
            for i in 0..m {
                let xb = i * k + b * be;
                let part =
                    block[..be].iter().enumerate().fold(0.0f32, |s, (t, &wv)| s + f32_at(x, xb + t) * wv);
                set_f32(out, i * n + j, f32_at(out, i * n + j) + part);
            }
        }
    }
}

/// Embedding rows from a quantized table (see `KernelCall::QGather`): `out[r, :]` is row
/// `ids[r]` of `table` (`vocab` rows of `dim` weights in `wtype`'s blocks), dequantized, or
/// zeros when `ids[r] >= vocab`.
#[allow(clippy::too_many_arguments)]
pub fn q_gather(
    table: &[u8],
    ids: &[u8],
    out: &mut [u8],
    vocab: usize,
    dim: usize,
    rows: usize,
    wtype: WeightType,
) {
    let (be, bb) = (wtype.block_elems() as usize, wtype.block_bytes() as usize);
    let row_bytes = dim / be * bb;
    let mut block = [0.0f32; MAX_BLOCK_ELEMS];
    for r in 0..rows {
        let id = u32_at(ids, r) as usize;
        let dst = &mut out[r * dim * 4..(r + 1) * dim * 4];
        if id >= vocab {
            dst.fill(0);
            continue;
        }
        let row = &table[id * row_bytes..(id + 1) * row_bytes];
        for (bytes, d) in row.chunks_exact(bb).zip(dst.chunks_exact_mut(be * 4)) {
            dequantize_block(wtype, bytes, &mut block);
            for (o, v) in d.chunks_exact_mut(4).zip(&block[..be]) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Units `units` (each a (token, head) pair, unit `t·heads + h`) of causal grouped-query
/// attention over a KV cache (see `KernelCall::CausalAttention`).
///
/// `q` and `out` are `tokens × (heads·head_dim)`, `k` and `v` at least `pos0 + tokens` rows of
/// `kv_heads·head_dim`. For query `t`, head `h` (KV head `h / (heads / kv_heads)`), over keys
/// `j = 0 ..= pos0 + t`: `s_j = (q · k_j) / √head_dim` (dot in order), `max = max_j s_j`, then
/// in a second pass (recomputing `s_j`) `p_j = e^(s_j − max)`, `Σ p_j` and `Σ p_j v_j` in key
/// order, and `out = (Σ p_j v_j) / Σ p_j`. The sums accumulate in `out`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[u8],
    k: &[u8],
    v: &[u8],
    out: &mut [u8],
    units: Range<usize>,
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) {
    let group = heads / kv_heads;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let scale = crate::reference::attention_scale(head_dim as u32);
    for unit in units {
        let (t, h) = (unit / heads, unit % heads);
        let qbase = t * q_width + h * head_dim;
        let kv_off = (h / group) * head_dim;
        let score = |j: usize| {
            let kbase = j * kv_width + kv_off;
            (0..head_dim).fold(0.0f32, |s, d| s + f32_at(q, qbase + d) * f32_at(k, kbase + d)) / scale
        };
        let keys = pos0 + t + 1;
        let max = (0..keys).fold(f32::NEG_INFINITY, |m, j| m.max(score(j)));
        for d in 0..head_dim {
            set_f32(out, qbase + d, 0.0);
        }
        let mut sum = 0.0f32;
        for j in 0..keys {
            let p = libm::expf(score(j) - max);
            sum += p;
            let vbase = j * kv_width + kv_off;
            for d in 0..head_dim {
                set_f32(out, qbase + d, f32_at(out, qbase + d) + p * f32_at(v, vbase + d));
            }
        }
        for d in 0..head_dim {
            set_f32(out, qbase + d, f32_at(out, qbase + d) / sum);
        }
    }
}

/// Row-wise softmax over `rows × dim`: `max` of the row, `e_c = e^(x_c − max)`, `Σ e_c` in
/// order, `out_c = e_c / Σ e`.
pub fn softmax(x: &[u8], out: &mut [u8], rows: usize, dim: usize) {
    for r in 0..rows {
        let base = r * dim;
        let max = (0..dim).fold(f32::NEG_INFINITY, |m, c| m.max(f32_at(x, base + c)));
        let mut sum = 0.0f32;
        for c in 0..dim {
            let e = libm::expf(f32_at(x, base + c) - max);
            set_f32(out, base + c, e);
            sum += e;
        }
        for c in 0..dim {
            set_f32(out, base + c, f32_at(out, base + c) / sum);
        }
    }
}

/// The index of the largest non-NaN element of a row: the lowest on ties, 0 when every element
/// is NaN.
pub fn argmax_of(values: impl Iterator<Item = f32>) -> u32 {
    let mut best: Option<(u32, f32)> = None;
    for (i, v) in (0u32..).zip(values) {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// Row-wise argmax over `rows × dim` (see [`argmax_of`]): `out[r]` is a little-endian u32.
pub fn argmax(x: &[u8], out: &mut [u8], rows: usize, dim: usize) {
    for r in 0..rows {
        let i = argmax_of((0..dim).map(|c| f32_at(x, r * dim + c)));
        out[r * 4..r * 4 + 4].copy_from_slice(&i.to_le_bytes());
    }
}
