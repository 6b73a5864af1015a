//! `partial_dispatch_matches_whole`: [`GpuBackend::dispatch_part`], which hosts use to cut long
//! calls into parts of bounded device time.
//!
//! For every kernel: running all parts of a call (uneven splits, in reverse order) into one
//! output gives, bit for bit, what one whole `dispatch` gives into another; a part leaves the
//! output outside its units untouched; a range outside the call is `InvalidArgument` and changes
//! nothing. A backend that does not cut calls answers `Unsupported` for a true part (the trait's
//! default), which the contract allows; the whole range must still work. A kernel the backend
//! declares it does not run ([`crate::skips`]) is left out when it answers `Unsupported`.

use std::ops::Range;

use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, WeightType};

use crate::Failure;
use crate::support::{Ctx, Rng, Snapshot, ensure, expect_err, f32_bytes, read_all, same_bytes};

type Outcome = Result<(), Failure>;

/// Bytes past every output, which no part may touch.
const TAIL: usize = 64;

/// A buffer of `len` random f32 values in `-2..2`.
fn random(b: &mut dyn GpuBackend, rng: &mut Rng, len: usize) -> Result<BufferId, Failure> {
    let values: Vec<f32> =
        (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0).collect();
    let id = b.alloc((len as u64 * 4).max(4)).ctx(|| format!("alloc({len} f32)"))?;
    b.write(id, 0, &f32_bytes(&values)).ctx(|| "write inputs".into())?;
    Ok(id)
}

/// A buffer of raw bytes.
fn raw(b: &mut dyn GpuBackend, bytes: &[u8]) -> Result<BufferId, Failure> {
    let id = b.alloc(bytes.len().max(4) as u64).ctx(|| format!("alloc({})", bytes.len()))?;
    b.write(id, 0, bytes).ctx(|| "write".into())?;
    Ok(id)
}

/// The calls to cut, with every buffer they name.
fn calls(b: &mut dyn GpuBackend, rng: &mut Rng) -> Result<Vec<(String, KernelCall, Vec<BufferId>)>, Failure> {
    let mut out = Vec::new();
    let mut f = |b: &mut dyn GpuBackend, len: usize| random(b, rng, len);
    let n = 1_000;
    let (x, y) = (f(b, n)?, f(b, n)?);
    out.push((
        "ADD",
        KernelCall::Binary { op: BinaryOp::Add, a: x, b: y, out: BufferId(0), n: n as u32 },
        vec![x, y],
    ));
    out.push(("SCALE", KernelCall::Scale { x, out: BufferId(0), n: n as u32, alpha: 0.75 }, vec![x]));
    out.push(("GELU", KernelCall::Gelu { x, out: BufferId(0), n: n as u32 }, vec![x]));
    let (m, k, nn) = (37u32, 19u32, 23u32);
    let (a, bm) = (f(b, (m * k) as usize)?, f(b, (k * nn) as usize)?);
    out.push(("MATMUL", KernelCall::Matmul { a, b: bm, out: BufferId(0), m, k, n: nn }, vec![a, bm]));
    let (w, bias) = (f(b, (nn * k) as usize)?, f(b, nn as usize)?);
    out.push((
        "LINEAR",
        KernelCall::Linear { x: a, w, bias, out: BufferId(0), m, k, n: nn },
        vec![a, w, bias],
    ));
    let (gamma, beta) = (f(b, k as usize)?, f(b, k as usize)?);
    out.push((
        "LAYER_NORM",
        KernelCall::LayerNorm { x: a, gamma, beta, out: BufferId(0), rows: m, dim: k, eps: 1e-5 },
        vec![a, gamma, beta],
    ));
    out.push(("L2_NORMALIZE", KernelCall::L2Normalize { x: a, out: BufferId(0), rows: m, dim: k }, vec![a]));
    let (vocab, dim, rows) = (11u32, 7u32, 29u32);
    let table = f(b, (vocab * dim) as usize)?;
    let ids: Vec<u8> = (0..rows).flat_map(|i| ((i * 5) % (vocab + 2)).to_le_bytes()).collect();
    let ids = raw(b, &ids)?;
    out.push((
        "GATHER",
        KernelCall::Gather { table, ids, out: BufferId(0), vocab, dim, rows },
        vec![table, ids],
    ));
    let (batch, seq, heads, head_dim) = (5u32, 9u32, 2u32, 4u32);
    let width = (batch * seq * heads * head_dim) as usize;
    let (q, kk, v) = (f(b, width)?, f(b, width)?, f(b, width)?);
    let mask: Vec<u8> = (0..batch * seq)
        .flat_map(|i| if i % seq < 3 + i / seq { 1f32 } else { 0f32 }.to_le_bytes())
        .collect();
    let mask = raw(b, &mask)?;
    out.push((
        "ATTENTION",
        KernelCall::Attention { q, k: kk, v, mask, out: BufferId(0), batch, seq, heads, head_dim },
        vec![q, kk, v, mask],
    ));
    let tokens = f(b, (batch * seq * dim) as usize)?;
    out.push((
        "MEAN_POOL",
        KernelCall::MeanPool { x: tokens, mask, out: BufferId(0), batch, seq, dim },
        vec![tokens, mask],
    ));
    // The generation kernels. Q_LINEAR's units are output columns, strided over 3 rows.
    let (rows, width) = (13u32, 64u32);
    let (h, w) = (f(b, (rows * width) as usize)?, f(b, width as usize)?);
    let eps = 1e-5;
    out.push((
        "RMS_NORM",
        KernelCall::RmsNorm { x: h, w, out: BufferId(0), rows, dim: width, eps },
        vec![h, w],
    ));
    let pos: Vec<u8> = (0..rows).flat_map(|i| (i * 7 + 3).to_le_bytes()).collect();
    let pos = raw(b, &pos)?;
    out.push((
        "ROPE",
        KernelCall::Rope {
            x: h,
            pos,
            out: BufferId(0),
            rows,
            heads: 4,
            head_dim: 16,
            rope_dim: 12,
            base: 1e4,
        },
        vec![h, pos],
    ));
    out.push(("SWIGLU", KernelCall::SwiGlu { gate: h, up: x, out: BufferId(0), n: 800 }, vec![h, x]));
    let (qm, qk, qn) = (3u32, 64u32, 29u32);
    let blocks =
        crate::gen_cases::random_blocks(&mut Rng::new(0x9A28), WeightType::Q4_1, (qn * qk / 32) as usize);
    let wq = raw(b, &blocks)?;
    out.push((
        "Q_LINEAR",
        KernelCall::QLinear { x: h, w: wq, out: BufferId(0), m: qm, k: qk, n: qn, wtype: WeightType::Q4_1 },
        vec![wq],
    ));
    out.push((
        "Q_GATHER",
        KernelCall::QGather {
            table: wq,
            ids,
            out: BufferId(0),
            vocab: qn,
            dim: qk,
            rows: 29,
            wtype: WeightType::Q4_1,
        },
        vec![ids],
    ));
    out.push((
        "CAUSAL_ATTENTION",
        KernelCall::CausalAttention {
            q: h,
            k: a,
            v: bm,
            out: BufferId(0),
            tokens: 3,
            pos0: 4,
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
        },
        vec![],
    ));
    out.push(("SOFTMAX", KernelCall::Softmax { x: h, out: BufferId(0), rows, dim: width }, vec![]));
    out.push(("ARGMAX", KernelCall::Argmax { x: h, out: BufferId(0), rows, dim: width }, vec![]));
    Ok(out.into_iter().map(|(name, call, inputs)| (name.to_owned(), call, inputs)).collect())
}

/// `call` with its output buffer replaced.
fn with_output(call: KernelCall, id: BufferId) -> KernelCall {
    let mut call = call;
    match &mut call {
        KernelCall::Binary { out, .. }
        | KernelCall::Scale { out, .. }
        | KernelCall::Matmul { out, .. }
        | KernelCall::Gather { out, .. }
        | KernelCall::LayerNorm { out, .. }
        | KernelCall::Linear { out, .. }
        | KernelCall::Gelu { out, .. }
        | KernelCall::Attention { out, .. }
        | KernelCall::MeanPool { out, .. }
        | KernelCall::L2Normalize { out, .. }
        | KernelCall::RmsNorm { out, .. }
        | KernelCall::Rope { out, .. }
        | KernelCall::SwiGlu { out, .. }
        | KernelCall::QLinear { out, .. }
        | KernelCall::QGather { out, .. }
        | KernelCall::CausalAttention { out, .. }
        | KernelCall::Softmax { out, .. }
        | KernelCall::Argmax { out, .. } => *out = id,
    }
    call
}

/// Bytes of the output a call writes.
fn output_bytes(call: &KernelCall) -> usize {
    match *call {
        KernelCall::QLinear { m, n, .. } => m as usize * n as usize * 4,
        _ => call.work().units as usize * per_unit(call) * 4,
    }
}

/// Output elements of one unit (for every kernel whose units are contiguous in its output).
fn per_unit(call: &KernelCall) -> usize {
    match *call {
        KernelCall::Binary { .. }
        | KernelCall::Scale { .. }
        | KernelCall::Gelu { .. }
        | KernelCall::SwiGlu { .. }
        | KernelCall::Argmax { .. }
        | KernelCall::QLinear { .. } => 1,
        KernelCall::Matmul { n, .. } | KernelCall::Linear { n, .. } => n as usize,
        KernelCall::Gather { dim, .. }
        | KernelCall::LayerNorm { dim, .. }
        | KernelCall::L2Normalize { dim, .. }
        | KernelCall::MeanPool { dim, .. }
        | KernelCall::RmsNorm { dim, .. }
        | KernelCall::QGather { dim, .. }
        | KernelCall::Softmax { dim, .. } => dim as usize,
        KernelCall::Attention { seq, heads, head_dim, .. } => (seq * heads * head_dim) as usize,
        KernelCall::Rope { heads, head_dim, .. } => (heads * head_dim) as usize,
        KernelCall::CausalAttention { head_dim, .. } => head_dim as usize,
    }
}

/// The output byte ranges units `part` of a call write: one range, or for Q_LINEAR (units are
/// columns) one per output row.
fn part_ranges(call: &KernelCall, part: &Range<u32>) -> Vec<Range<usize>> {
    let (a, z) = (part.start as usize, part.end as usize);
    match *call {
        KernelCall::QLinear { m, n, .. } => {
            (0..m as usize).map(|i| (i * n as usize + a) * 4..(i * n as usize + z) * 4).collect()
        }
        _ => {
            let per = per_unit(call) * 4;
            std::iter::once(a * per..z * per).collect()
        }
    }
}

pub(crate) fn partial_dispatch_matches_whole(b: &mut dyn GpuBackend) -> Outcome {
    let mut rng = Rng::new(0x9A27);
    let mut all_inputs = Vec::new();
    for (name, call, inputs) in calls(b, &mut rng)? {
        all_inputs.extend(inputs);
        let units = call.work().units;
        let len = output_bytes(&call);
        let init = rng.bytes(len + TAIL);
        let whole = raw(b, &init)?;
        let parts = raw(b, &init)?;
        let kind = b.info().backend;
        match b.dispatch(&with_output(call, whole)) {
            Err(BackendError::Unsupported) if crate::skips::gap(kind, &name).is_some() => {
                // Declared as not run on this backend: its own kernel case reports the skip.
                for id in [whole, parts] {
                    b.free(id).ctx(|| format!("free({id:?})"))?;
                }
                continue;
            }
            other => other.ctx(|| format!("{name}: whole dispatch"))?,
        }
        let want = read_all(b, whole)?;
        let cut = with_output(call, parts);

        // Ranges outside the call change nothing.
        let snap = Snapshot::take(b, &[parts])?;
        #[allow(clippy::reversed_empty_ranges, reason = "an inverted range is one of the bad inputs")]
        for bad in [0..units + 1, units + 1..units + 1, 3..2] {
            let what = format!("{name}: dispatch_part({bad:?}) of {units} units");
            expect_err(&what, b.dispatch_part(&cut, bad), BackendError::InvalidArgument)?;
        }
        snap.unchanged(b, &[parts], &format!("{name}: rejected parts"))?;

        // Uneven parts, last first; each leaves the rest as it was.
        let bounds = [0, 1, units / 3, units / 3 + 1, units - units / 4, units];
        let mut expected = init.clone();
        for w in bounds.windows(2).rev() {
            let part = w[0]..w[1];
            match b.dispatch_part(&cut, part.clone()) {
                Ok(()) => {}
                Err(BackendError::Unsupported) if part.start < part.end => {
                    // Not cut by this backend: the whole range must still work.
                    b.dispatch_part(&cut, 0..units).ctx(|| format!("{name}: dispatch_part(0..{units})"))?;
                    same_bytes(&format!("{name}: dispatch_part(all)"), &read_all(b, parts)?, &want)?;
                    expected.clone_from(&want);
                    break;
                }
                Err(e) => return Err(Failure(format!("{name}: dispatch_part({part:?}) failed: {e:?}"))),
            }
            for r in part_ranges(&call, &part) {
                expected[r.clone()].copy_from_slice(&want[r]);
            }
            same_bytes(&format!("{name}: after part {part:?}"), &read_all(b, parts)?, &expected)?;
        }
        ensure!(expected == want, "{name}: the parts left bytes the whole call writes");
        for id in [whole, parts] {
            b.free(id).ctx(|| format!("free({id:?})"))?;
        }
    }
    all_inputs.sort_by_key(|id| id.0);
    all_inputs.dedup();
    for id in all_inputs {
        b.free(id).ctx(|| format!("free({id:?})"))?;
    }
    Ok(())
}
