//! Cases of the text generation kernels: RMS_NORM, ROPE, SWIGLU, Q_LINEAR, Q_GATHER,
//! CAUSAL_ATTENTION, SOFTMAX, ARGMAX, and their validation.
//!
//! Expectations are computed here in f64 from the f32 inputs; quantized weights are expanded by
//! the reference dequantizer (`rela_kernels::quant`, itself checked against hand-computed blocks
//! and the `gguf` Python package in rela-kernels' tests). Blocks are generated deterministically:
//! random quant bits, f16 scales of either sign, some of them subnormal.

use rela_core::backend::{BackendError, BufferId, GpuBackend, KernelCall, WeightType};
use rela_kernels::quant;

use crate::Failure;
use crate::cases::{TAIL, alloc, free_all, output, outputs, patterned, uniforms, upload, write};
use crate::support::{Ctx, Rng, Snapshot, ensure, expect_err, read_all, same_bytes};

type Outcome = Result<(), Failure>;

const OOB: BackendError = BackendError::OutOfBounds;
const INVALID: BackendError = BackendError::InvalidArgument;
const NO_SUCH: BackendError = BackendError::NoSuchBuffer;

/// A buffer of little-endian u32s (at least 4 bytes).
fn upload_u32(b: &mut dyn GpuBackend, values: &[u32]) -> Result<BufferId, Failure> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    upload_bytes(b, &bytes)
}

/// A buffer holding `bytes` (at least 4 bytes).
fn upload_bytes(b: &mut dyn GpuBackend, bytes: &[u8]) -> Result<BufferId, Failure> {
    let id = alloc(b, (bytes.len() as u64).max(4))?;
    write(b, id, 0, bytes)?;
    Ok(id)
}

/// Fails unless every `got[i]` is within `tolerance[i]` of `want[i]`.
fn within(what: &str, got: &[f32], want: &[f64], tolerance: &[f64]) -> Outcome {
    ensure!(got.len() == want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tolerance).enumerate() {
        let g = f64::from(g);
        ensure!((g - w).abs() <= t, "{what}: out[{i}] = {g:e}, expected {w:e} (tolerance {t:e})");
    }
    Ok(())
}

/// A random IEEE half: either sign, a normal magnitude in `2^-10 .. 2^6`, or one time in eight a
/// subnormal (or zero).
fn random_f16(rng: &mut Rng) -> u16 {
    let sign = (rng.below(2) as u16) << 15;
    let mantissa = rng.below(1 << 10) as u16;
    if rng.chance(12) {
        return sign | mantissa;
    }
    let exp = rng.range(5, 21) as u16;
    sign | (exp << 10) | mantissa
}

/// `blocks` blocks of `wtype`: random quant bytes with [`random_f16`] scales; F16 weights are
/// [`random_f16`] values, F32 weights uniform in `-2..2`.
pub(crate) fn random_blocks(rng: &mut Rng, wtype: WeightType, blocks: usize) -> Vec<u8> {
    let bb = wtype.block_bytes() as usize;
    let mut out = rng.bytes(blocks * bb);
    let halves: &[usize] = match wtype {
        WeightType::F32 => {
            for chunk in out.chunks_exact_mut(4) {
                chunk.copy_from_slice(&uniforms(rng, 1, -2.0, 2.0)[0].to_le_bytes());
            }
            &[]
        }
        WeightType::F16 | WeightType::Q4_0 | WeightType::Q8_0 => &[0],
        WeightType::Q4_1 | WeightType::Q4K => &[0, 2],
        WeightType::Q6K => &[208],
    };
    for block in out.chunks_exact_mut(bb) {
        for &at in halves {
            block[at..at + 2].copy_from_slice(&random_f16(rng).to_le_bytes());
        }
    }
    out
}

/// Every weight of `rows` rows of `k` in `wtype`, by the reference dequantizer.
fn dequantized(wtype: WeightType, bytes: &[u8], rows: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * k];
    quant::dequantize_row(wtype, bytes, &mut out);
    out
}

pub(crate) fn kernel_rms_norm(b: &mut dyn GpuBackend) -> Outcome {
    let shapes =
        [(7u32, 576u32, 1e-5f32), (3, 1, 1e-6), (2, 1000, 1e-5), (0, 8, 1e-5), (4, 0, 1e-5), (300, 64, 1e-6)];
    for (case, (rows, dim, eps)) in shapes.into_iter().enumerate() {
        let what = format!("RMS_NORM rows {rows} dim {dim} eps {eps:e}");
        let mut rng = Rng::new(0x4A5 + case as u64);
        let (r, d) = (rows as usize, dim as usize);
        let xv = uniforms(&mut rng, r * d, -3.0, 3.0);
        let wv = uniforms(&mut rng, d, -2.0, 2.0);
        let (x, w) = (upload(b, &xv)?, upload(b, &wv)?);
        let (out, init) = output(b, r * d, 0x4B0 + case as u64)?;
        b.dispatch(&KernelCall::RmsNorm { x, w, out, rows, dim, eps }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let (mut want, mut tol) = (Vec::new(), Vec::new());
        for row in xv.chunks(d.max(1)).take(r) {
            let ms = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d as f64;
            let s = 1.0 / (ms + f64::from(eps)).sqrt();
            for (c, &v) in row.iter().enumerate() {
                let y = f64::from(v) * s * f64::from(wv[c]);
                want.push(y);
                tol.push(1e-5 * y.abs() + 1e-6 * (s * f64::from(wv[c])).abs());
            }
        }
        within(&what, &got, &want, &tol)?;
        free_all(b, &[x, w, out])?;
    }
    Ok(())
}

pub(crate) fn kernel_rope(b: &mut dyn GpuBackend) -> Outcome {
    // (rows, heads, head_dim, rope_dim, base, largest position)
    let shapes = [
        (5u32, 3u32, 64u32, 64u32, 10_000f32, 2_048u32),
        (4, 2, 64, 32, 500_000.0, 100),
        (3, 1, 2, 2, 10_000.0, 7),
        (2, 4, 8, 0, 10_000.0, 50),
        (0, 3, 8, 8, 10_000.0, 1),
        (6, 9, 64, 64, 100_000.0, 8_000),
    ];
    for (case, (rows, heads, head_dim, rope_dim, base, max_pos)) in shapes.into_iter().enumerate() {
        let what =
            format!("ROPE rows {rows} heads {heads} head_dim {head_dim} rope_dim {rope_dim} base {base}");
        let mut rng = Rng::new(0x207E + case as u64);
        let (r, h, hd) = (rows as usize, heads as usize, head_dim as usize);
        let xv = uniforms(&mut rng, r * h * hd, -2.0, 2.0);
        let posv: Vec<u32> = (0..rows)
            .map(|i| {
                if i == 0 {
                    0
                } else if i == 1 {
                    max_pos
                } else {
                    rng.below(u64::from(max_pos) + 1) as u32
                }
            })
            .collect();
        let (x, pos) = (upload(b, &xv)?, upload_u32(b, &posv)?);
        let (out, init) = output(b, r * h * hd, 0x2080 + case as u64)?;
        let call = KernelCall::Rope { x, pos, out, rows, heads, head_dim, rope_dim, base };
        b.dispatch(&call).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let (mut want, mut tol) = (vec![0.0f64; r * h * hd], vec![0.0f64; r * h * hd]);
        for (t, &pt) in posv.iter().enumerate() {
            let p = f64::from(pt);
            // The angle's f32 rounding grows with the position.
            let rel = 2e-6 + 4e-7 * p;
            for head in 0..h {
                let at = (t * h + head) * hd;
                for i in 0..rope_dim as usize / 2 {
                    let theta = p * f64::from(base).powf(-2.0 * i as f64 / f64::from(rope_dim));
                    let (sin, cos) = theta.sin_cos();
                    let (a, c) = (f64::from(xv[at + 2 * i]), f64::from(xv[at + 2 * i + 1]));
                    want[at + 2 * i] = a * cos - c * sin;
                    want[at + 2 * i + 1] = a * sin + c * cos;
                    tol[at + 2 * i] = rel * (a.abs() + c.abs());
                    tol[at + 2 * i + 1] = rel * (a.abs() + c.abs());
                }
                for d in rope_dim as usize..hd {
                    want[at + d] = f64::from(xv[at + d]);
                }
            }
        }
        within(&what, &got, &want, &tol)?;
        free_all(b, &[x, pos, out])?;
    }
    Ok(())
}

pub(crate) fn kernel_swiglu(b: &mut dyn GpuBackend) -> Outcome {
    for (case, n) in [0u32, 1, 255, 257, 10_000].into_iter().enumerate() {
        let what = format!("SWIGLU n {n}");
        let mut rng = Rng::new(0x5A1 + case as u64);
        let gv = uniforms(&mut rng, n as usize, -20.0, 20.0);
        let uv = uniforms(&mut rng, n as usize, -3.0, 3.0);
        let (gate, up) = (upload(b, &gv)?, upload(b, &uv)?);
        let (out, init) = output(b, n as usize, 0x5B0 + case as u64)?;
        b.dispatch(&KernelCall::SwiGlu { gate, up, out, n }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let want: Vec<f64> = gv
            .iter()
            .zip(&uv)
            .map(|(&g, &u)| {
                let g = f64::from(g);
                g / (1.0 + (-g).exp()) * f64::from(u)
            })
            .collect();
        let tol: Vec<f64> = want.iter().map(|w| 1e-5 * w.abs() + 1e-30).collect();
        within(&what, &got, &want, &tol)?;
        free_all(b, &[gate, up, out])?;
    }
    Ok(())
}

/// Row widths of a quantized case: one and several blocks (F32 and F16 also odd widths).
fn widths(wtype: WeightType) -> [u32; 3] {
    match wtype.block_elems() {
        1 => [1, 33, 576],
        32 => [32, 96, 576],
        _ => [256, 512, 768],
    }
}

pub(crate) fn kernel_q_linear(b: &mut dyn GpuBackend) -> Outcome {
    for (t, wtype) in WeightType::ALL.into_iter().enumerate() {
        let [k1, k2, k3] = widths(wtype);
        let shapes = [(1u32, k1, 37u32), (5, k2, 19), (3, k3, 130), (0, k1, 3), (3, k1, 0), (2, 0, 4)];
        for (case, (m, k, n)) in shapes.into_iter().enumerate() {
            let what = format!("Q_LINEAR {wtype:?} m {m} k {k} n {n}");
            let mut rng = Rng::new(0x9E00 + 16 * t as u64 + case as u64);
            let (mu, ku, nu) = (m as usize, k as usize, n as usize);
            let blocks = nu * ku / wtype.block_elems() as usize;
            let wbytes = random_blocks(&mut rng, wtype, blocks);
            let wv = dequantized(wtype, &wbytes, nu, ku);
            let xv = uniforms(&mut rng, mu * ku, -1.0, 1.0);
            let (x, w) = (upload(b, &xv)?, upload_bytes(b, &wbytes)?);
            let (out, init) = output(b, mu * nu, 0x9F00 + case as u64)?;
            b.dispatch(&KernelCall::QLinear { x, w, out, m, k, n, wtype }).ctx(|| what.clone())?;
            let got = outputs(b, &what, out, &init)?;
            let (mut want, mut tol) = (Vec::new(), Vec::new());
            for i in 0..mu {
                for j in 0..nu {
                    let (mut sum, mut magnitude) = (0f64, 0f64);
                    for c in 0..ku {
                        let p = f64::from(xv[i * ku + c]) * f64::from(wv[j * ku + c]);
                        sum += p;
                        magnitude += p.abs();
                    }
                    want.push(sum);
                    tol.push(1e-5 * magnitude + 1e-30);
                }
            }
            within(&what, &got, &want, &tol)?;
            same_bytes(&format!("{what}: weights"), &read_all(b, w)?[..wbytes.len()], &wbytes)?;
            free_all(b, &[x, w, out])?;
        }
    }
    Ok(())
}

pub(crate) fn kernel_q_gather(b: &mut dyn GpuBackend) -> Outcome {
    for (t, wtype) in WeightType::ALL.into_iter().enumerate() {
        let [d1, d2, _] = widths(wtype);
        for (case, (vocab, dim, rows)) in
            [(50u32, d2, 9u32), (3, d1, 4), (0, d1, 2), (10, d1, 0)].into_iter().enumerate()
        {
            let what = format!("Q_GATHER {wtype:?} vocab {vocab} dim {dim} rows {rows}");
            let mut rng = Rng::new(0x6A00 + 16 * t as u64 + case as u64);
            let (v, d, r) = (vocab as usize, dim as usize, rows as usize);
            let table_bytes = random_blocks(&mut rng, wtype, v * d / wtype.block_elems() as usize);
            let table_v = dequantized(wtype, &table_bytes, v, d);
            let special = [vocab.saturating_sub(1), 0, vocab, u32::MAX, vocab.saturating_add(1)];
            let ids_v: Vec<u32> = (0..r)
                .map(|i| if i < special.len() { special[i] } else { rng.below(u64::from(vocab) + 1) as u32 })
                .collect();
            let (table, ids) = (upload_bytes(b, &table_bytes)?, upload_u32(b, &ids_v)?);
            let (out, init) = output(b, r * d, 0x6B00 + case as u64)?;
            let call = KernelCall::QGather { table, ids, out, vocab, dim, rows, wtype };
            b.dispatch(&call).ctx(|| what.clone())?;
            let got = outputs(b, &what, out, &init)?;
            let (mut want, mut tol) = (Vec::new(), Vec::new());
            let be = wtype.block_elems() as usize;
            for &id in &ids_v {
                let id = id as usize;
                for c in 0..d {
                    if id < v {
                        let row = &table_v[id * d..(id + 1) * d];
                        // A block's scale times its quants, plus or minus its min: a GPU may
                        // fuse the two into one rounding.
                        let block = &row[c / be * be..(c / be + 1) * be];
                        let span = block.iter().fold(0f64, |s, &x| s.max(f64::from(x).abs()));
                        want.push(f64::from(row[c]));
                        tol.push(if be == 1 { 0.0 } else { 2e-7 * span });
                    } else {
                        want.push(0.0);
                        tol.push(0.0);
                    }
                }
            }
            within(&what, &got, &want, &tol)?;
            free_all(b, &[table, ids, out])?;
        }
    }
    Ok(())
}

/// Causal grouped-query attention in f64: `out` and, per element, the sum of the magnitudes of
/// its terms.
#[allow(clippy::too_many_arguments)]
fn causal_attention64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; tokens * heads * hd];
    let mut scale = vec![0f64; tokens * heads * hd];
    let group = heads / kv_heads;
    for t in 0..tokens {
        for h in 0..heads {
            let qb = (t * heads + h) * hd;
            let kvh = h / group;
            let keys = pos0 + t + 1;
            let s: Vec<f64> = (0..keys)
                .map(|j| {
                    let kb = (j * kv_heads + kvh) * hd;
                    (0..hd).map(|d| f64::from(q[qb + d]) * f64::from(k[kb + d])).sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = s.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let p: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for d in 0..hd {
                let (mut acc, mut mag) = (0f64, 0f64);
                for (j, pj) in p.iter().enumerate() {
                    let vv = f64::from(v[(j * kv_heads + kvh) * hd + d]);
                    acc += pj * vv;
                    mag += (pj * vv).abs();
                }
                out[qb + d] = acc / sum;
                scale[qb + d] = mag / sum;
            }
        }
    }
    (out, scale)
}

pub(crate) fn kernel_causal_attention(b: &mut dyn GpuBackend) -> Outcome {
    // (tokens, pos0, heads, kv_heads, head_dim)
    let shapes = [
        (1u32, 0u32, 4u32, 4u32, 8u32),
        (1, 37, 9, 3, 64),
        (5, 11, 6, 2, 32),
        (7, 0, 2, 1, 16),
        (2, 600, 3, 1, 64),
        (0, 5, 4, 2, 8),
        (3, 2, 2, 2, 0),
    ];
    for (case, (tokens, pos0, heads, kv_heads, head_dim)) in shapes.into_iter().enumerate() {
        let what = format!(
            "CAUSAL_ATTENTION tokens {tokens} pos0 {pos0} heads {heads} kv_heads {kv_heads} head_dim {head_dim}"
        );
        let mut rng = Rng::new(0xCA00 + case as u64);
        let (t, p0, h, kvh, hd) =
            (tokens as usize, pos0 as usize, heads as usize, kv_heads as usize, head_dim as usize);
        let qv = uniforms(&mut rng, t * h * hd, -1.5, 1.5);
        // Three cache rows past the last key, with huge values: reading them would show.
        let rows = p0 + t;
        let mut kv = uniforms(&mut rng, rows * kvh * hd, -1.5, 1.5);
        let mut vv = uniforms(&mut rng, rows * kvh * hd, -2.0, 2.0);
        kv.extend(std::iter::repeat_n(1e6f32, 3 * kvh * hd));
        vv.extend(std::iter::repeat_n(-1e6f32, 3 * kvh * hd));
        let (q, k, v) = (upload(b, &qv)?, upload(b, &kv)?, upload(b, &vv)?);
        let (out, init) = output(b, t * h * hd, 0xCB00 + case as u64)?;
        let call = KernelCall::CausalAttention { q, k, v, out, tokens, pos0, heads, kv_heads, head_dim };
        b.dispatch(&call).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let (want, scale) = causal_attention64(&qv, &kv, &vv, t, p0, h, kvh, hd);
        let tol: Vec<f64> = scale.iter().map(|s| 1e-4 * s + 1e-6).collect();
        within(&what, &got, &want, &tol)?;
        free_all(b, &[q, k, v, out])?;
    }
    Ok(())
}

pub(crate) fn kernel_softmax(b: &mut dyn GpuBackend) -> Outcome {
    for (case, (rows, dim)) in
        [(3u32, 1000u32), (1, 1), (0, 5), (2, 49_152), (300, 7), (4, 0)].into_iter().enumerate()
    {
        let what = format!("SOFTMAX rows {rows} dim {dim}");
        let mut rng = Rng::new(0x50F + case as u64);
        let (r, d) = (rows as usize, dim as usize);
        let xv = uniforms(&mut rng, r * d, -30.0, 30.0);
        let x = upload(b, &xv)?;
        let (out, init) = output(b, r * d, 0x510 + case as u64)?;
        b.dispatch(&KernelCall::Softmax { x, out, rows, dim }).ctx(|| what.clone())?;
        let got = outputs(b, &what, out, &init)?;
        let mut want = Vec::new();
        for row in xv.chunks(d.max(1)).take(r) {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let e: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            want.extend(e.iter().map(|x| x / sum));
        }
        let tol: Vec<f64> = want.iter().map(|w| 1e-4 * w + 1e-9).collect();
        within(&what, &got, &want, &tol)?;
        free_all(b, &[x, out])?;
    }
    Ok(())
}

pub(crate) fn kernel_argmax(b: &mut dyn GpuBackend) -> Outcome {
    let nan = f32::NAN;
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    // Hand-made rows of 6: ties, NaN, infinities, every NaN.
    let special: [[f32; 6]; 8] = [
        [1.0, 3.0, 3.0, 2.0, 3.0, -1.0],
        [nan, 2.0, nan, 5.0, 5.0, nan],
        [nan, nan, nan, nan, nan, nan],
        [ninf, ninf, ninf, ninf, ninf, ninf],
        [-5.0, -4.0, -4.0, ninf, nan, -7.0],
        [0.0, -0.0, 0.0, -1.0, -2.0, -3.0],
        [1.0, 2.0, inf, 3.0, inf, nan],
        [-1.0, -1.0, -1.0, -1.0, -1.0, -0.5],
    ];
    let want_special = [1u32, 3, 0, 0, 1, 0, 2, 5];
    let flat: Vec<f32> = special.iter().flatten().copied().collect();
    let x = upload(b, &flat)?;
    let (out, init) = patterned(b, 8 * 4 + TAIL, 0xA12)?;
    b.dispatch(&KernelCall::Argmax { x, out, rows: 8, dim: 6 })
        .ctx(|| "ARGMAX of the hand-made rows".into())?;
    let got = read_all(b, out)?;
    for (r, &want) in want_special.iter().enumerate() {
        let i = u32::from_le_bytes([got[4 * r], got[4 * r + 1], got[4 * r + 2], got[4 * r + 3]]);
        ensure!(i == want, "ARGMAX of {:?} is {i}, expected {want}", special[r]);
    }
    same_bytes("ARGMAX: bytes past the output", &got[32..], &init[32..])?;
    free_all(b, &[x, out])?;

    // Random rows, with the maximum repeated at a later index in some.
    for (case, (rows, dim)) in
        [(5u32, 49_152u32), (300, 7), (3, 1), (0, 4), (2, 1000)].into_iter().enumerate()
    {
        let what = format!("ARGMAX rows {rows} dim {dim}");
        let mut rng = Rng::new(0xA13 + case as u64);
        let (r, d) = (rows as usize, dim as usize);
        let mut xv = uniforms(&mut rng, r * d, -10.0, 10.0);
        for row in xv.chunks_mut(d.max(1)).take(r) {
            if d > 1 && rng.chance(50) {
                let top = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let at = rng.below(d as u64) as usize;
                row[at] = top;
            }
        }
        let x = upload(b, &xv)?;
        let (out, init) = patterned(b, r * 4 + TAIL, 0xA20 + case as u64)?;
        b.dispatch(&KernelCall::Argmax { x, out, rows, dim }).ctx(|| what.clone())?;
        let got = read_all(b, out)?;
        for (ri, row) in xv.chunks(d.max(1)).take(r).enumerate() {
            let top = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let want = row.iter().position(|&v| v == top).unwrap_or(0) as u32;
            let i = u32::from_le_bytes([got[4 * ri], got[4 * ri + 1], got[4 * ri + 2], got[4 * ri + 3]]);
            ensure!(i == want, "{what}: row {ri} gives {i}, expected {want}");
        }
        same_bytes(&format!("{what}: bytes past the output"), &got[r * 4..], &init[r * 4..])?;
        free_all(b, &[x, out])?;
    }
    Ok(())
}

pub(crate) fn kernel_generation_invalid_rejected(b: &mut dyn GpuBackend) -> Outcome {
    let (x, _) = patterned(b, 4096, 31)?; // 1024 f32
    let (y, _) = patterned(b, 4096, 32)?;
    let (out, _) = patterned(b, 4096, 33)?;
    let (small, _) = patterned(b, 60, 34)?; // 15 f32
    let (gone, _) = patterned(b, 64, 35)?;
    b.free(gone).ctx(|| "free".into())?;
    let ids = [x, y, out, small];
    let snap = Snapshot::take(b, &ids)?;
    let rms = |x, w, o, rows, dim, eps| KernelCall::RmsNorm { x, w, out: o, rows, dim, eps };
    let rope = |x, pos, o, head_dim, rope_dim, base| KernelCall::Rope {
        x,
        pos,
        out: o,
        rows: 4,
        heads: 2,
        head_dim,
        rope_dim,
        base,
    };
    let swiglu = |gate, up, o, n| KernelCall::SwiGlu { gate, up, out: o, n };
    let qlin = |x, w, o, m, k, n, wtype| KernelCall::QLinear { x, w, out: o, m, k, n, wtype };
    let qgat = |table, ids, o, dim, rows, wtype| KernelCall::QGather {
        table,
        ids,
        out: o,
        vocab: 4,
        dim,
        rows,
        wtype,
    };
    let att = |q, k, v, o, tokens, pos0, heads, kv_heads| KernelCall::CausalAttention {
        q,
        k,
        v,
        out: o,
        tokens,
        pos0,
        heads,
        kv_heads,
        head_dim: 8,
    };
    let softmax = |x, o, rows, dim| KernelCall::Softmax { x, out: o, rows, dim };
    let argmax = |x, o, rows, dim| KernelCall::Argmax { x, out: o, rows, dim };
    let mut cases = vec![
        ("RMS_NORM output aliases x", rms(x, y, x, 2, 8, 1e-5), INVALID),
        ("RMS_NORM output aliases w", rms(x, y, y, 2, 8, 1e-5), INVALID),
        ("RMS_NORM eps 0", rms(x, y, out, 2, 8, 0.0), INVALID),
        ("RMS_NORM eps < 0", rms(x, y, out, 2, 8, -1e-5), INVALID),
        ("RMS_NORM eps NaN", rms(x, y, out, 2, 8, f32::NAN), INVALID),
        ("RMS_NORM eps infinite", rms(x, y, out, 2, 8, f32::INFINITY), INVALID),
        ("RMS_NORM x too small", rms(small, y, out, 2, 8, 1e-5), OOB),
        ("RMS_NORM w too small", rms(x, small, out, 1, 16, 1e-5), OOB),
        ("RMS_NORM out too small", rms(x, y, small, 2, 8, 1e-5), OOB),
        ("RMS_NORM shape overflows", rms(x, y, out, u32::MAX, u32::MAX, 1e-5), OOB),
        ("RMS_NORM freed w", rms(x, gone, out, 1, 1, 1e-5), NO_SUCH),
        ("ROPE output aliases x", rope(x, y, x, 8, 8, 1e4), INVALID),
        ("ROPE output aliases pos", rope(x, y, y, 8, 8, 1e4), INVALID),
        ("ROPE odd rope_dim", rope(x, y, out, 8, 7, 1e4), INVALID),
        ("ROPE rope_dim > head_dim", rope(x, y, out, 8, 10, 1e4), INVALID),
        ("ROPE base 0", rope(x, y, out, 8, 8, 0.0), INVALID),
        ("ROPE base NaN", rope(x, y, out, 8, 8, f32::NAN), INVALID),
        ("ROPE base infinite", rope(x, y, out, 8, 8, f32::INFINITY), INVALID),
        ("ROPE x too small", rope(small, y, out, 8, 8, 1e4), OOB),
        ("ROPE out too small", rope(x, y, small, 8, 8, 1e4), OOB),
        ("ROPE freed pos", rope(x, gone, out, 8, 8, 1e4), NO_SUCH),
        ("SWIGLU output aliases gate", swiglu(x, y, x, 4), INVALID),
        ("SWIGLU output aliases up", swiglu(x, y, y, 4), INVALID),
        ("SWIGLU up too small", swiglu(x, small, out, 16), OOB),
        ("SWIGLU n = u32::MAX", swiglu(x, y, out, u32::MAX), OOB),
        ("Q_LINEAR output aliases x", qlin(x, y, x, 1, 32, 2, WeightType::Q8_0), INVALID),
        ("Q_LINEAR output aliases w", qlin(x, y, y, 1, 32, 2, WeightType::Q8_0), INVALID),
        ("Q_LINEAR w too small", qlin(x, small, out, 1, 32, 4, WeightType::Q4_0), OOB),
        ("Q_LINEAR x too small", qlin(small, y, out, 1, 32, 2, WeightType::Q4_0), OOB),
        ("Q_LINEAR out too small", qlin(x, y, small, 4, 32, 4, WeightType::Q4_0), OOB),
        ("Q_LINEAR rows of w overflow", qlin(x, y, out, 0, 256, u32::MAX, WeightType::Q6K), OOB),
        ("Q_LINEAR freed w", qlin(x, gone, out, 1, 32, 1, WeightType::Q4_1), NO_SUCH),
        ("Q_GATHER output aliases table", qgat(x, y, x, 32, 1, WeightType::Q4_0), INVALID),
        ("Q_GATHER output aliases ids", qgat(x, y, y, 32, 1, WeightType::Q4_0), INVALID),
        ("Q_GATHER table too small", qgat(small, y, out, 256, 1, WeightType::Q4K), OOB),
        ("Q_GATHER ids too small", qgat(x, small, out, 32, 16, WeightType::Q8_0), OOB),
        ("Q_GATHER freed ids", qgat(x, gone, out, 32, 1, WeightType::Q8_0), NO_SUCH),
        ("CAUSAL_ATTENTION output aliases q", att(x, y, out, x, 1, 0, 2, 2), INVALID),
        ("CAUSAL_ATTENTION output aliases k", att(x, y, out, y, 1, 0, 2, 2), INVALID),
        ("CAUSAL_ATTENTION output aliases v", att(x, y, out, out, 1, 0, 2, 2), INVALID),
        ("CAUSAL_ATTENTION kv_heads 0", att(x, y, y, out, 1, 0, 2, 0), INVALID),
        ("CAUSAL_ATTENTION kv_heads not dividing heads", att(x, y, y, out, 1, 0, 4, 3), INVALID),
        ("CAUSAL_ATTENTION units past u32", att(x, y, y, out, 1 << 16, 0, 1 << 16, 1), INVALID),
        ("CAUSAL_ATTENTION cache too short", att(x, y, y, out, 1, 128, 2, 1), OOB),
        ("CAUSAL_ATTENTION q too small", att(small, y, y, out, 1, 0, 2, 2), OOB),
        ("CAUSAL_ATTENTION freed v", att(x, y, gone, out, 1, 0, 2, 2), NO_SUCH),
        ("SOFTMAX output aliases x", softmax(x, x, 2, 4), INVALID),
        ("SOFTMAX out too small", softmax(x, small, 2, 8), OOB),
        ("SOFTMAX shape overflows", softmax(x, out, u32::MAX, u32::MAX), OOB),
        ("ARGMAX output aliases x", argmax(x, x, 2, 4), INVALID),
        ("ARGMAX empty rows", argmax(x, out, 2, 0), INVALID),
        ("ARGMAX x too small", argmax(small, out, 2, 8), OOB),
        ("ARGMAX out too small", argmax(x, small, 16, 1), OOB),
        ("ARGMAX freed out", argmax(x, gone, 1, 1), NO_SUCH),
    ];
    // Row widths that are not whole blocks, for every block format.
    for wtype in WeightType::ALL.into_iter().filter(|t| t.block_elems() > 1) {
        let k = wtype.block_elems() + 16;
        cases.push(("Q_LINEAR k not whole blocks", qlin(x, y, out, 1, k, 1, wtype), INVALID));
        cases.push(("Q_GATHER dim not whole blocks", qgat(x, y, out, k, 1, wtype), INVALID));
    }
    // 16 rows of one 2-wide head, 15 positions.
    let pos_short =
        KernelCall::Rope { x, pos: small, out, rows: 16, heads: 1, head_dim: 2, rope_dim: 2, base: 1e4 };
    cases.push(("ROPE pos too small", pos_short, OOB));
    for (what, call, want) in cases {
        expect_err(&format!("{what} ({call:?})"), b.dispatch(&call), want)?;
        snap.unchanged(b, &ids, &format!("rejected dispatch ({what})"))?;
    }
    Ok(())
}
