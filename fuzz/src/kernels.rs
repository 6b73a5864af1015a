//! The kernel layer: arbitrary [`KernelCall`]s, whole and in parts, over buffers of arbitrary
//! sizes and bytes (NaNs, infinities and subnormals included), against the host backend behind
//! [`Checked`], the layer every node runs kernels through.
//!
//! # Input format
//!
//! - byte 0: how many buffers (1 + `b % 6`), then for each two bytes: its size in f32s
//!   (little-endian `u16`, `% 4096`, at least one);
//! - the buffers' contents come from the end of the input, repeated to fill them (zeros when
//!   the input runs out);
//! - then calls, until the input runs out: a variant byte (`% 18`), buffer choices (one byte
//!   each, `% buffers`), dimensions (one byte each, small so that most calls validate; two
//!   bytes where a dimension is usually large, such as a vocabulary), parameters as raw f32
//!   bits, a weight type byte, and two bytes choosing a part of the call.
//!
//! # Invariants (a panic is a finding)
//!
//! - nothing panics, whatever the call;
//! - [`KernelCall::validate`] refusing a call means `dispatch` refuses it with the same error,
//!   and no buffer changes;
//! - a call it accepts runs (calls above [`MAX_COST`] multiply-adds are skipped, as a node's
//!   per-DISPATCH limit refuses them), and only its output buffer changes;
//! - a part outside the call's units is `InvalidArgument`; a call run as two parts writes what
//!   it writes whole (NaNs compared as NaN).

use rela_backend_host::OwnedHostBackend;
use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, WeightType};
use rela_core::checked::Checked;

/// Most multiply-adds ([`KernelCall::work`]) a fuzzed call may cost; dearer calls are skipped.
pub const MAX_COST: u64 = 1 << 22;

/// Bytes of the backend's arena: six buffers of up to 4095 f32s fit.
const ARENA: usize = 6 * 4096 * 4;

/// Reads the input front to back; past its end every read is zero.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()]))
    }
    /// A small dimension: mostly 0..=16, sometimes up to 255.
    fn dim(&mut self) -> u32 {
        let b = self.u8();
        if b & 0x80 == 0 { u32::from(b % 17) } else { u32::from(b) }
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Decodes one call over `ids`, or `None` when the input ran out.
fn call(input: &mut Input<'_>, ids: &[BufferId]) -> Option<KernelCall> {
    if input.done() {
        return None;
    }
    let variant = input.u8() % 18;
    let mut buf = || ids[usize::from(input.u8()) % ids.len()];
    let (a, b, c, d, e) = (buf(), buf(), buf(), buf(), buf());
    let wtype = WeightType::ALL[usize::from(input.u8()) % WeightType::ALL.len()];
    let call = match variant {
        0 | 1 => KernelCall::Binary {
            op: if variant == 0 { BinaryOp::Add } else { BinaryOp::Mul },
            a,
            b,
            out: c,
            n: u32::from(input.u16()),
        },
        2 => KernelCall::Scale { x: a, out: b, n: u32::from(input.u16()), alpha: input.f32() },
        3 => KernelCall::Matmul { a, b, out: c, m: input.dim(), k: input.dim(), n: input.dim() },
        4 => KernelCall::Gather { table: a, ids: b, out: c, vocab: input.dim(), dim: input.dim(), rows: input.dim() },
        5 => KernelCall::LayerNorm {
            x: a,
            gamma: b,
            beta: c,
            out: d,
            rows: input.dim(),
            dim: input.dim(),
            eps: input.f32(),
        },
        6 => KernelCall::Linear { x: a, w: b, bias: c, out: d, m: input.dim(), k: input.dim(), n: input.dim() },
        7 => KernelCall::Gelu { x: a, out: b, n: u32::from(input.u16()) },
        8 => KernelCall::Attention {
            q: a,
            k: b,
            v: c,
            mask: d,
            out: e,
            batch: input.dim(),
            seq: input.dim(),
            heads: input.dim(),
            head_dim: input.dim(),
        },
        9 => KernelCall::MeanPool { x: a, mask: b, out: c, batch: input.dim(), seq: input.dim(), dim: input.dim() },
        10 => KernelCall::L2Normalize { x: a, out: b, rows: input.dim(), dim: input.dim() },
        11 => KernelCall::RmsNorm { x: a, w: b, out: c, rows: input.dim(), dim: input.dim(), eps: input.f32() },
        12 => KernelCall::Rope {
            x: a,
            pos: b,
            out: c,
            rows: input.dim(),
            heads: input.dim(),
            head_dim: input.dim(),
            rope_dim: input.dim(),
            base: input.f32(),
        },
        13 => KernelCall::SwiGlu { gate: a, up: b, out: c, n: u32::from(input.u16()) },
        14 => {
            // k in whole blocks of the type most of the time.
            let k = input.dim() * if input.u8() & 1 == 0 { wtype.block_elems() } else { 1 };
            KernelCall::QLinear { x: a, w: b, out: c, m: input.dim(), k, n: input.dim(), wtype }
        }
        15 => {
            let dim = input.dim() * if input.u8() & 1 == 0 { wtype.block_elems() } else { 1 };
            KernelCall::QGather { table: a, ids: b, out: c, vocab: u32::from(input.u16()), dim, rows: input.dim(), wtype }
        }
        16 => KernelCall::CausalAttention {
            q: a,
            k: b,
            v: c,
            out: d,
            tokens: input.dim(),
            pos0: input.dim(),
            heads: input.dim(),
            kv_heads: input.dim(),
            head_dim: input.dim(),
        },
        _ => {
            if input.u8() & 1 == 0 {
                KernelCall::Softmax { x: a, out: b, rows: input.dim(), dim: input.dim() }
            } else {
                KernelCall::Argmax { x: a, out: b, rows: input.dim(), dim: input.dim() }
            }
        }
    };
    Some(call)
}

/// Every buffer's bytes.
fn snapshot(backend: &mut Checked<OwnedHostBackend>, ids: &[BufferId]) -> Vec<Vec<u8>> {
    ids.iter()
        .map(|&id| {
            let size = backend.size(id).expect("live buffer");
            let mut bytes = vec![0u8; size as usize];
            backend.read(id, 0, &mut bytes).expect("read a live buffer");
            bytes
        })
        .collect()
}

/// Equal as f32s, any NaN equal to any NaN (a NaN's payload may depend on the order of
/// operations, which parts may change).
fn same_f32s(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.chunks_exact(4).zip(b.chunks_exact(4)).all(|(x, y)| {
            let (x, y) = (f32::from_le_bytes(x.try_into().unwrap()), f32::from_le_bytes(y.try_into().unwrap()));
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
        })
}

/// Runs one input; panics on a broken invariant.
pub fn run(data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let mut backend = Checked::new(OwnedHostBackend::with_capacity(ARENA));
    let count = 1 + usize::from(input.u8() % 6);
    let sizes: Vec<u64> = (0..count).map(|_| u64::from(input.u16() % 4096).max(1) * 4).collect();
    let ids: Vec<BufferId> = sizes.iter().map(|&s| backend.alloc(s).expect("the arena holds six buffers")).collect();
    // Contents: the input's tail, repeated.
    let tail = &data[data.len() / 2..];
    for (&id, &size) in ids.iter().zip(&sizes) {
        let bytes: Vec<u8> =
            if tail.is_empty() { vec![0; size as usize] } else { tail.iter().copied().cycle().take(size as usize).collect() };
        backend.write(id, 0, &bytes).expect("write a live buffer");
    }
    let size_of = |id: BufferId| ids.iter().position(|&i| i == id).map(|i| sizes[i]);
    let mut calls = 0;
    while let Some(call) = call(&mut input, &ids) {
        calls += 1;
        if calls > 8 {
            break;
        }
        let (pa, pb) = (u32::from(input.u8()), u32::from(input.u8()));
        let before = snapshot(&mut backend, &ids);
        let checked = call.validate(size_of);
        if let Err(e) = checked {
            assert_eq!(backend.dispatch(&call), Err(e), "{call:?}: dispatch refuses what validate refuses");
            assert_eq!(backend.dispatch_part(&call, 0..1), Err(e), "{call:?}: so does a part");
            assert_eq!(snapshot(&mut backend, &ids), before, "{call:?}: a refused call changes nothing");
            continue;
        }
        if call.work().total() > MAX_COST {
            continue;
        }
        let units = call.work().units;
        assert_eq!(
            backend.dispatch_part(&call, units.saturating_add(1)..units.saturating_add(2)),
            Err(BackendError::InvalidArgument),
            "{call:?}: a part past the call"
        );
        backend.dispatch(&call).unwrap_or_else(|e| panic!("{call:?}: validated call failed: {e:?}"));
        let whole = snapshot(&mut backend, &ids);
        let out = ids.iter().position(|&i| i == call.output()).expect("the output is one of the buffers");
        for (i, (b, w)) in before.iter().zip(&whole).enumerate() {
            if i != out {
                assert_eq!(b, w, "{call:?}: buffer {i} is not the output and changed");
            }
        }
        // The same call again in two parts, from the bytes it started from.
        backend.write(call.output(), 0, &before[out]).expect("restore the output");
        let split = if units == 0 { 0 } else { (pa * 256 + pb) % (units + 1) };
        for part in [split..units, 0..split] {
            match backend.dispatch_part(&call, part.clone()) {
                Ok(()) => {}
                // The host backend runs every kernel in parts; a refusal is a finding.
                Err(e) => panic!("{call:?}: part {part:?} failed: {e:?}"),
            }
        }
        let parts = snapshot(&mut backend, &ids);
        assert!(same_f32s(&parts[out], &whole[out]), "{call:?}: two parts (split at {split}) differ from the whole call");
    }
}
