//! One forward pass on a [`GpuBackend`]: the weights' buffers ([`Weights`]), a pass's buffers
//! ([`Scratch`]) and the pass itself ([`pass`]), over the tokens of one or more generations
//! ([`Seg`]).
//!
//! The rows of a pass are the tokens of its segments, one after another; each segment is one
//! generation's run of tokens at its own positions, with its own KV cache. Everything that
//! reads a weight runs once over all the rows (so a matrix is read once per pass, whatever the
//! number of generations); what reads a cache (the keys and values written at the segment's
//! positions, and attention) runs per segment. A pass of one segment attends straight from the
//! pass's buffers; with several, each segment's queries are copied to a buffer of their own
//! and its attention's output copied back (`CAUSAL_ATTENTION` reads from the start of its
//! buffers). The logits are those after each segment's last token: one row per segment.

use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, WeightType};

use crate::config::LlamaConfig;
use crate::device_error::{DeviceError, u32_of};

/// A weight matrix in device memory: `rows` rows of `cols` weights in `wtype`'s blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DMat {
    pub(crate) buf: BufferId,
    pub(crate) wtype: WeightType,
    pub(crate) rows: u32,
    pub(crate) cols: u32,
}

/// One transformer block's buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DLayer {
    pub(crate) attn_norm: BufferId,
    pub(crate) wq: DMat,
    pub(crate) wk: DMat,
    pub(crate) wv: DMat,
    pub(crate) wo: DMat,
    pub(crate) ffn_norm: BufferId,
    pub(crate) w_gate: DMat,
    pub(crate) w_up: DMat,
    pub(crate) w_down: DMat,
}

/// A model's weights in device memory.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    pub(crate) tok_embd: DMat,
    /// The output matrix (`tok_embd` itself when the file ties them).
    pub(crate) output: DMat,
    pub(crate) output_norm: BufferId,
    pub(crate) layers: Vec<DLayer>,
}

/// One generation's part of a pass: `tokens` rows at positions `pos0 ..`, its cache's key and
/// value buffers (one per block).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg<'a> {
    pub(crate) k: &'a [BufferId],
    pub(crate) v: &'a [BufferId],
    pub(crate) pos0: u32,
    pub(crate) tokens: u32,
}

/// The buffers of a pass over up to `rows` tokens of up to `seqs` segments.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) rows: usize,
    pub(crate) seqs: usize,
    ids: BufferId,
    pos: BufferId,
    x: BufferId,
    x2: BufferId,
    n: BufferId,
    q: BufferId,
    k: BufferId,
    v: BufferId,
    qr: BufferId,
    kr: BufferId,
    att: BufferId,
    proj: BufferId,
    gate: BufferId,
    up: BufferId,
    act: BufferId,
    /// A segment's queries and attention output, in a pass of several segments.
    q1: BufferId,
    att1: BufferId,
    /// Each segment's last row, normed, and its logits.
    last: BufferId,
    last_n: BufferId,
    pub(crate) logits: BufferId,
    /// `ARGMAX`'s answer (one index).
    pub(crate) argmax: BufferId,
    pub(crate) bytes: u64,
}

/// Buffers in a [`Scratch`].
const SCRATCH_BUFFERS: usize = 21;

impl Scratch {
    /// The size of each buffer, in 4-byte words, in the order [`alloc`](Self::alloc) makes them.
    fn words(c: &LlamaConfig, rows: usize, seqs: usize) -> [u64; SCRATCH_BUFFERS] {
        let (r, s) = (rows as u64, seqs as u64);
        let (dim, ffn, vocab) = (c.dim as u64, c.ffn_dim as u64, c.vocab_size as u64);
        let q_dim = (c.n_heads * c.head_dim) as u64;
        let kv_dim = (c.n_kv_heads * c.head_dim) as u64;
        // A pass of one segment attends in place: no copies of its queries.
        let per_seg = if seqs > 1 { r * q_dim } else { 1 };
        [
            r,
            r,
            r * dim,
            r * dim,
            r * dim,
            r * q_dim,
            r * kv_dim,
            r * kv_dim,
            r * q_dim,
            r * kv_dim,
            r * q_dim,
            r * dim,
            r * ffn,
            r * ffn,
            r * ffn,
            per_seg,
            per_seg,
            s * dim,
            s * dim,
            s * vocab,
            s,
        ]
    }

    /// Device bytes of the buffers for `rows` tokens of `seqs` segments of `c`'s model.
    pub(crate) fn bytes_for(c: &LlamaConfig, rows: usize, seqs: usize) -> u64 {
        Self::words(c, rows, seqs).iter().map(|w| w.max(&1) * 4).sum()
    }

    fn buffers(&self) -> [BufferId; SCRATCH_BUFFERS] {
        [
            self.ids,
            self.pos,
            self.x,
            self.x2,
            self.n,
            self.q,
            self.k,
            self.v,
            self.qr,
            self.kr,
            self.att,
            self.proj,
            self.gate,
            self.up,
            self.act,
            self.q1,
            self.att1,
            self.last,
            self.last_n,
            self.logits,
            self.argmax,
        ]
    }

    /// Allocates every buffer for `rows` tokens of `seqs` segments of `c`'s model (both at
    /// least 1), freeing the ones already made if one fails.
    pub(crate) fn alloc(
        backend: &mut dyn GpuBackend,
        c: &LlamaConfig,
        rows: usize,
        seqs: usize,
    ) -> Result<Self, DeviceError> {
        let (rows, seqs) = (rows.max(1), seqs.max(1));
        let words = Self::words(c, rows, seqs);
        let mut ids = Vec::with_capacity(words.len());
        for w in words {
            match backend.alloc(w.max(1) * 4) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // The allocation's error is the one to report.
                    let _ = free_all(backend, ids);
                    return Err(e.into());
                }
            }
        }
        let i = |n: usize| ids[n];
        Ok(Self {
            rows,
            seqs,
            ids: i(0),
            pos: i(1),
            x: i(2),
            x2: i(3),
            n: i(4),
            q: i(5),
            k: i(6),
            v: i(7),
            qr: i(8),
            kr: i(9),
            att: i(10),
            proj: i(11),
            gate: i(12),
            up: i(13),
            act: i(14),
            q1: i(15),
            att1: i(16),
            last: i(17),
            last_n: i(18),
            logits: i(19),
            argmax: i(20),
            bytes: Self::bytes_for(c, rows, seqs),
        })
    }

    /// Frees (and so zeroes) every buffer, all of them even if one fails.
    pub(crate) fn free(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        free_all(backend, self.buffers())
    }
}

/// `x += proj` over `n` values: the sum goes to `x2`, which then becomes `x`.
fn add_residual(backend: &mut dyn GpuBackend, s: &mut Scratch, n: u32) -> Result<(), BackendError> {
    backend.dispatch(&KernelCall::Binary { op: BinaryOp::Add, a: s.x, b: s.proj, out: s.x2, n })?;
    std::mem::swap(&mut s.x, &mut s.x2);
    Ok(())
}

/// Runs `tokens` (the segments' rows, in order) through the model, leaving the logits after
/// each segment's last token in the first `segs.len()` rows of `s.logits`. The caller has
/// checked the tokens, the positions and the caches; this checks only that the pass fits `s`.
pub(crate) fn pass(
    backend: &mut dyn GpuBackend,
    c: &LlamaConfig,
    w: &Weights,
    s: &mut Scratch,
    tokens: &[u32],
    segs: &[Seg<'_>],
) -> Result<(), DeviceError> {
    let rows: u64 = segs.iter().map(|g| u64::from(g.tokens)).sum();
    if segs.is_empty() || segs.len() > s.seqs || tokens.len() > s.rows || rows != tokens.len() as u64 {
        return Err(BackendError::InvalidArgument.into());
    }
    let t = u32_of(tokens.len())?;
    let n_seg = u32_of(segs.len())?;
    let (dim, ffn) = (c.dim as u32, c.ffn_dim as u32);
    let (heads, kv_heads, hd) = (c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32);
    let kv_row = u64::from(kv_heads * hd) * 4;
    let q_row = u64::from(heads * hd) * 4;
    let eps = c.rms_norm_eps;
    let ids: Vec<u8> = tokens.iter().flat_map(|id| id.to_le_bytes()).collect();
    backend.write(s.ids, 0, &ids)?;
    let pos: Vec<u8> =
        segs.iter().flat_map(|g| (g.pos0..g.pos0 + g.tokens).flat_map(u32::to_le_bytes)).collect();
    backend.write(s.pos, 0, &pos)?;
    let e = w.tok_embd;
    backend.dispatch(&KernelCall::QGather {
        table: e.buf,
        ids: s.ids,
        out: s.x,
        vocab: e.rows,
        dim: e.cols,
        rows: t,
        wtype: e.wtype,
    })?;
    for (li, l) in w.layers.iter().enumerate() {
        backend.dispatch(&KernelCall::RmsNorm { x: s.x, w: l.attn_norm, out: s.n, rows: t, dim, eps })?;
        linear(backend, &l.wq, s.n, s.q, t)?;
        linear(backend, &l.wk, s.n, s.k, t)?;
        linear(backend, &l.wv, s.n, s.v, t)?;
        let rope = |x, out, heads| KernelCall::Rope {
            x,
            pos: s.pos,
            out,
            rows: t,
            heads,
            head_dim: hd,
            rope_dim: c.rope_dim as u32,
            base: c.rope_freq_base,
        };
        backend.dispatch(&rope(s.q, s.qr, heads))?;
        backend.dispatch(&rope(s.k, s.kr, kv_heads))?;
        let mut r0 = 0u64;
        for g in segs {
            let (at, len) = (u64::from(g.pos0) * kv_row, u64::from(g.tokens) * kv_row);
            backend.copy(s.kr, r0 * kv_row, g.k[li], at, len)?;
            backend.copy(s.v, r0 * kv_row, g.v[li], at, len)?;
            let attention = |q, out| KernelCall::CausalAttention {
                q,
                k: g.k[li],
                v: g.v[li],
                out,
                tokens: g.tokens,
                pos0: g.pos0,
                heads,
                kv_heads,
                head_dim: hd,
            };
            if segs.len() == 1 {
                backend.dispatch(&attention(s.qr, s.att))?;
            } else {
                let len = u64::from(g.tokens) * q_row;
                backend.copy(s.qr, r0 * q_row, s.q1, 0, len)?;
                backend.dispatch(&attention(s.q1, s.att1))?;
                backend.copy(s.att1, 0, s.att, r0 * q_row, len)?;
            }
            r0 += u64::from(g.tokens);
        }
        linear(backend, &l.wo, s.att, s.proj, t)?;
        add_residual(backend, s, t * dim)?;
        backend.dispatch(&KernelCall::RmsNorm { x: s.x, w: l.ffn_norm, out: s.n, rows: t, dim, eps })?;
        linear(backend, &l.w_gate, s.n, s.gate, t)?;
        linear(backend, &l.w_up, s.n, s.up, t)?;
        backend.dispatch(&KernelCall::SwiGlu { gate: s.gate, up: s.up, out: s.act, n: t * ffn })?;
        linear(backend, &l.w_down, s.act, s.proj, t)?;
        add_residual(backend, s, t * dim)?;
    }
    // Each segment's last row only: copied to the segment's row of `last`, normed, projected.
    let row = u64::from(dim) * 4;
    let mut end = 0u64;
    for (i, g) in segs.iter().enumerate() {
        end += u64::from(g.tokens);
        backend.copy(s.x, (end - 1) * row, s.last, i as u64 * row, row)?;
    }
    backend.dispatch(&KernelCall::RmsNorm {
        x: s.last,
        w: w.output_norm,
        out: s.last_n,
        rows: n_seg,
        dim,
        eps,
    })?;
    linear(backend, &w.output, s.last_n, s.logits, n_seg)?;
    Ok(())
}

/// `out = x · mᵀ` for `rows` inputs (Q_LINEAR).
fn linear(
    backend: &mut dyn GpuBackend,
    m: &DMat,
    x: BufferId,
    out: BufferId,
    rows: u32,
) -> Result<(), BackendError> {
    backend.dispatch(&KernelCall::QLinear { x, w: m.buf, out, m: rows, k: m.cols, n: m.rows, wtype: m.wtype })
}

/// Frees every buffer of `ids`, all of them even if one fails; returns the first failure.
pub(crate) fn free_all(
    backend: &mut dyn GpuBackend,
    ids: impl IntoIterator<Item = BufferId>,
) -> Result<(), DeviceError> {
    let mut first = Ok(());
    for id in ids {
        if let Err(e) = backend.free(id)
            && first.is_ok()
        {
            first = Err(e.into());
        }
    }
    first
}
