//! Built-in kernels: the calls a backend runs ([`KernelCall`]), how they divide into parts
//! ([`Work`]) and the shape checks every backend shares ([`KernelCall::validate`]).
//!
//! Activations are little-endian f32 throughout. Weights of the generation kernels
//! ([`KernelCall::QLinear`], [`KernelCall::QGather`]) stay in a GGUF block format
//! ([`WeightType`]) and are dequantized on the fly, so a model occupies its file size in device
//! memory.

use core::fmt;

use crate::backend::{BackendError, BufferId};

/// Built-in kernel ids (an open wire enum).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelId(pub u16);

impl KernelId {
    /// `out[i] = a[i] + b[i]` over `n` f32 elements.
    pub const ADD: Self = Self(1);
    /// `out[i] = a[i] * b[i]` over `n` f32 elements.
    pub const MUL: Self = Self(2);
    /// `out[i] = alpha * a[i]` over `n` f32 elements.
    pub const SCALE: Self = Self(3);
    /// Row-major f32 matmul: `out (M×N) = a (M×K) · b (K×N)`.
    pub const MATMUL: Self = Self(4);

    /// The spec name of a known kernel.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("ADD"),
            2 => Some("MUL"),
            3 => Some("SCALE"),
            4 => Some("MATMUL"),
            _ => None,
        }
    }
}

impl fmt::Debug for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown({})", self.0),
        }
    }
}

/// A binary elementwise operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// Addition.
    Add,
    /// Multiplication.
    Mul,
}

/// A kernel invocation on backend buffers. Inputs and output are whole buffers read from
/// offset 0 as little-endian f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelCall {
    /// `out[i] = a[i] op b[i]` for `i < n`.
    Binary {
        /// The operation.
        op: BinaryOp,
        /// Left input.
        a: BufferId,
        /// Right input.
        b: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
    },
    /// `out[i] = alpha * x[i]` for `i < n`.
    Scale {
        /// Input.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
        /// Factor.
        alpha: f32,
    },
    /// `out = a · b`, row-major, `a` is M×K, `b` is K×N, `out` is M×N.
    Matmul {
        /// Left matrix.
        a: BufferId,
        /// Right matrix.
        b: BufferId,
        /// Output matrix.
        out: BufferId,
        /// Rows of `a`.
        m: u32,
        /// Inner dimension.
        k: u32,
        /// Columns of `b`.
        n: u32,
    },
    /// Embedding gather: `out[r, :] = table[ids[r], :]` for `r < rows`. `ids` holds `rows`
    /// little-endian `u32`; `table` is `vocab × dim`. An id ≥ `vocab` yields a row of zeros
    /// (checked on the device, never an out-of-bounds access).
    Gather {
        /// Embedding table, `vocab × dim`.
        table: BufferId,
        /// Token ids, `rows` u32.
        ids: BufferId,
        /// Output, `rows × dim`.
        out: BufferId,
        /// Rows of `table`.
        vocab: u32,
        /// Row width.
        dim: u32,
        /// Ids to gather.
        rows: u32,
    },
    /// Row-wise layer norm: `out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta`
    /// (biased variance); `x` is `rows × dim`, `gamma` and `beta` are `dim`.
    LayerNorm {
        /// Input.
        x: BufferId,
        /// Scale, `dim`.
        gamma: BufferId,
        /// Shift, `dim`.
        beta: BufferId,
        /// Output, `rows × dim`.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
        /// Variance epsilon (finite, > 0).
        eps: f32,
    },
    /// Linear layer: `out[i, j] = Σ_t x[i, t] · w[j, t] + bias[j]`; `x` is `m × k`, `w` is
    /// `n × k` (PyTorch `nn.Linear` layout), `bias` is `n`, `out` is `m × n`.
    Linear {
        /// Input, `m × k`.
        x: BufferId,
        /// Weights, `n × k`.
        w: BufferId,
        /// Bias, `n`.
        bias: BufferId,
        /// Output, `m × n`.
        out: BufferId,
        /// Rows of `x`.
        m: u32,
        /// Input features.
        k: u32,
        /// Output features.
        n: u32,
    },
    /// Exact (erf) GELU: `out[i] = 0.5 · x[i] · (1 + erf(x[i] / √2))` for `i < n`.
    Gelu {
        /// Input.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
    },
    /// Scaled dot-product self-attention with a key padding mask.
    ///
    /// `q`, `k`, `v` and `out` are `(batch·seq) × (heads·head_dim)` row-major; head `h` uses
    /// columns `h·head_dim .. (h+1)·head_dim`. `mask` is `batch·seq` f32 (1.0 = token,
    /// 0.0 = padding). For batch `b`, head `h`, query `i`: `s_j = (q_i · k_j) / √head_dim` over
    /// keys `j` with `mask[b, j] ≠ 0` (masked keys get probability 0), `p = softmax(s)`
    /// (max-subtracted), `out_i = Σ_j p_j v_j`. A query whose keys are all masked yields zeros.
    /// `seq` ≤ [`MAX_ATTENTION_SEQ`].
    Attention {
        /// Queries.
        q: BufferId,
        /// Keys.
        k: BufferId,
        /// Values.
        v: BufferId,
        /// Key padding mask, `batch·seq`.
        mask: BufferId,
        /// Output.
        out: BufferId,
        /// Sequences.
        batch: u32,
        /// Tokens per sequence.
        seq: u32,
        /// Heads.
        heads: u32,
        /// Width of one head.
        head_dim: u32,
    },
    /// Masked mean over tokens: `out[b, :] = Σ_s mask[b, s] · x[b·seq + s, :] /
    /// max(Σ_s mask[b, s], 1e-9)`; `x` is `(batch·seq) × dim`, `out` is `batch × dim`.
    MeanPool {
        /// Token vectors.
        x: BufferId,
        /// Mask, `batch·seq`.
        mask: BufferId,
        /// Output, `batch × dim`.
        out: BufferId,
        /// Sequences.
        batch: u32,
        /// Tokens per sequence.
        seq: u32,
        /// Vector width.
        dim: u32,
    },
    /// Row-wise L2 normalization: `out[r, :] = x[r, :] / max(‖x[r, :]‖₂, 1e-12)`.
    L2Normalize {
        /// Input, `rows × dim`.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
    },
    /// RMSNorm: `out[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) ⊙ w`; `x` and `out` are
    /// `rows × dim`, `w` is `dim`.
    RmsNorm {
        /// Input.
        x: BufferId,
        /// Scale, `dim`.
        w: BufferId,
        /// Output.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
        /// Added to the mean square (finite, > 0).
        eps: f32,
    },
    /// Rotary position embedding, llama.cpp's "normal" mode (the GGUF llama layout, whose Q and
    /// K weights are already permuted for it). `x` and `out` are `rows × (heads·head_dim)`;
    /// `pos` holds `rows` little-endian `u32` positions. In every head of row `r`, the pair
    /// `(2i, 2i+1)` for `i < rope_dim/2` turns by the angle `pos[r] · base^(−2i/rope_dim)`
    /// (`out₀ = a·cos − b·sin`, `out₁ = a·sin + b·cos`); the head's dimensions from `rope_dim`
    /// on are copied. `rope_dim` is even and at most `head_dim`.
    Rope {
        /// Input.
        x: BufferId,
        /// Positions, `rows` u32.
        pos: BufferId,
        /// Output.
        out: BufferId,
        /// Rows (tokens).
        rows: u32,
        /// Heads per row.
        heads: u32,
        /// Width of one head.
        head_dim: u32,
        /// Rotated dimensions per head.
        rope_dim: u32,
        /// Frequency base (finite, > 0).
        base: f32,
    },
    /// SiLU-gated product (the llama MLP's activation): `out[i] = silu(gate[i]) · up[i]` with
    /// `silu(x) = x / (1 + e^(−x))`, for `i < n`.
    SwiGlu {
        /// Gate projection.
        gate: BufferId,
        /// Up projection.
        up: BufferId,
        /// Output.
        out: BufferId,
        /// Elements.
        n: u32,
    },
    /// Linear layer over quantized weights, without bias: `out[i, j] = Σ_t x[i, t] · W[j, t]`.
    /// `x` is `m × k` f32; `w` holds the `n` rows of `W`, each `k` weights in `wtype`'s block
    /// format (`k` a multiple of [`WeightType::block_elems`]), rows back to back; `out` is
    /// `m × n`. Work units are output columns `j`, so a matrix-vector product divides too.
    QLinear {
        /// Input, `m × k`.
        x: BufferId,
        /// Quantized weights, `n` rows.
        w: BufferId,
        /// Output, `m × n`.
        out: BufferId,
        /// Rows of `x`.
        m: u32,
        /// Input features.
        k: u32,
        /// Output features.
        n: u32,
        /// Block format of `w`.
        wtype: WeightType,
    },
    /// Embedding gather from a quantized table: `out[r, :] = dequant(table[ids[r], :])`.
    /// `table` holds `vocab` rows of `dim` weights in `wtype`'s block format; `ids` holds `rows`
    /// little-endian `u32`; `out` is `rows × dim` f32. An id ≥ `vocab` yields a row of zeros.
    QGather {
        /// Quantized table, `vocab` rows.
        table: BufferId,
        /// Token ids, `rows` u32.
        ids: BufferId,
        /// Output, `rows × dim`.
        out: BufferId,
        /// Rows of `table`.
        vocab: u32,
        /// Row width (a multiple of the block size).
        dim: u32,
        /// Ids to gather.
        rows: u32,
        /// Block format of `table`.
        wtype: WeightType,
    },
    /// Causal grouped-query attention over a KV cache, for a run of `tokens` consecutive
    /// queries at positions `pos0 .. pos0 + tokens`.
    ///
    /// `q` and `out` are `tokens × (heads·head_dim)`; `k` and `v` hold at least
    /// `pos0 + tokens` rows of `kv_heads·head_dim` (positions from 0). Query `t`, head `h`
    /// reads KV head `h / (heads / kv_heads)` at positions `0 ..= pos0 + t`:
    /// `s_j = (q · k_j) / √head_dim`, `p = softmax(s)` (max subtracted),
    /// `out = Σ_j p_j v_j`. `kv_heads` divides `heads`. Work units are (token, head) pairs,
    /// unit `t·heads + h` writing that head's slice of row `t`.
    CausalAttention {
        /// Queries (RoPE applied).
        q: BufferId,
        /// Key cache.
        k: BufferId,
        /// Value cache.
        v: BufferId,
        /// Output.
        out: BufferId,
        /// Queries in the run.
        tokens: u32,
        /// Position of the first query.
        pos0: u32,
        /// Query heads.
        heads: u32,
        /// Key/value heads.
        kv_heads: u32,
        /// Width of one head.
        head_dim: u32,
    },
    /// Row-wise softmax: `out[r, :] = e^(x[r, :] − max) / Σ e^(x[r, :] − max)`.
    Softmax {
        /// Input, `rows × dim`.
        x: BufferId,
        /// Output.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
    },
    /// Row-wise argmax (greedy sampling): `out[r]` is the little-endian `u32` index of the
    /// largest element of row `r`, the lowest index on ties; NaN elements are never chosen
    /// unless the whole row is NaN, which yields 0. `dim` ≥ 1 when `rows` ≥ 1.
    Argmax {
        /// Input, `rows × dim`.
        x: BufferId,
        /// Output, `rows` u32.
        out: BufferId,
        /// Rows.
        rows: u32,
        /// Row width.
        dim: u32,
    },
}

/// Longest sequence [`KernelCall::Attention`] accepts.
pub const MAX_ATTENTION_SEQ: u32 = 512;

/// Bytes of `count` f32 elements, or `None` on overflow.
const fn f32_bytes(count: u64) -> Option<u64> {
    count.checked_mul(4)
}

/// How a [`KernelCall`] divides into independent parts ([`KernelCall::work`]): `units`
/// output units (elements, rows or sequences, by kernel), each costing about `unit_cost`
/// multiply-adds. A host cuts a long call into parts of bounded cost with
/// [`GpuBackend::dispatch_part`](crate::backend::GpuBackend::dispatch_part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Independent output units.
    pub units: u32,
    /// Multiply-adds (or comparable element operations) per unit, at least 1.
    pub unit_cost: u64,
}

impl Work {
    /// The whole call's cost, saturating.
    pub const fn total(&self) -> u64 {
        (self.units as u64).saturating_mul(self.unit_cost)
    }
}

impl KernelCall {
    /// The output buffer.
    pub const fn output(&self) -> BufferId {
        match self {
            Self::Binary { out, .. }
            | Self::Scale { out, .. }
            | Self::Matmul { out, .. }
            | Self::Gather { out, .. }
            | Self::LayerNorm { out, .. }
            | Self::Linear { out, .. }
            | Self::Gelu { out, .. }
            | Self::Attention { out, .. }
            | Self::MeanPool { out, .. }
            | Self::L2Normalize { out, .. }
            | Self::RmsNorm { out, .. }
            | Self::Rope { out, .. }
            | Self::SwiGlu { out, .. }
            | Self::QLinear { out, .. }
            | Self::QGather { out, .. }
            | Self::CausalAttention { out, .. }
            | Self::Softmax { out, .. }
            | Self::Argmax { out, .. } => *out,
        }
    }

    /// The call's units and their cost: elements for ADD, MUL, SCALE, GELU and SWIGLU; output
    /// rows for MATMUL, LINEAR, GATHER, LAYER_NORM, L2_NORMALIZE, RMS_NORM, ROPE, Q_GATHER,
    /// SOFTMAX and ARGMAX; output columns for Q_LINEAR; sequences for ATTENTION and MEAN_POOL;
    /// (token, head) pairs for CAUSAL_ATTENTION. Part `units` of a call writes exactly those
    /// units of its output.
    pub fn work(&self) -> Work {
        // Saturating: `work` is also asked of calls not yet validated.
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let (units, unit_cost) = match *self {
            Self::Binary { n, .. } | Self::Scale { n, .. } | Self::Gelu { n, .. } => (n, 1),
            Self::Matmul { m, k, n, .. } | Self::Linear { m, k, n, .. } => (m, mul(k as u64, n as u64)),
            Self::Gather { rows, dim, .. } => (rows, dim as u64),
            Self::LayerNorm { rows, dim, .. } => (rows, mul(4, dim as u64)),
            Self::L2Normalize { rows, dim, .. } => (rows, mul(2, dim as u64)),
            Self::Attention { batch, seq, heads, head_dim, .. } => {
                (batch, mul(mul(2 * seq as u64, seq as u64), mul(heads as u64, head_dim as u64)))
            }
            Self::MeanPool { batch, seq, dim, .. } => (batch, mul(seq as u64, dim as u64)),
            Self::RmsNorm { rows, dim, .. } | Self::Softmax { rows, dim, .. } => (rows, mul(3, dim as u64)),
            Self::Argmax { rows, dim, .. } => (rows, dim as u64),
            Self::Rope { rows, heads, head_dim, .. } => (rows, mul(2, mul(heads as u64, head_dim as u64))),
            Self::SwiGlu { n, .. } => (n, 4),
            Self::QLinear { m, k, n, .. } => (n, mul(m as u64, k as u64)),
            Self::QGather { rows, dim, .. } => (rows, dim as u64),
            Self::CausalAttention { tokens, pos0, heads, head_dim, .. } => {
                // The longest (last) query's keys: a bound on every unit.
                let keys = pos0 as u64 + tokens as u64;
                (tokens.saturating_mul(heads), mul(mul(2, keys), head_dim as u64))
            }
        };
        Work { units, unit_cost: if unit_cost == 0 { 1 } else { unit_cost } }
    }

    /// Validates shapes against buffer sizes before any device work.
    ///
    /// `size_of` returns a buffer's size, or `None` if no such buffer exists. Checks, with
    /// overflow-safe arithmetic: every buffer exists (`NoSuchBuffer`); every buffer holds what the
    /// shape needs (`OutOfBounds`, also when the byte count overflows `u64`);
    /// the output aliases no input (the kernels are not in-place safe on every backend); a
    /// parameter out of its kernel's domain (a non-finite or non-positive epsilon or base, an odd
    /// or too large `rope_dim`, a quantized row width that is not whole blocks, `kv_heads` not
    /// dividing `heads`, more than `u32::MAX` work units, an empty ARGMAX row) is
    /// `InvalidArgument`. Zero elements (or a zero dimension) is allowed and does nothing.
    pub fn validate(&self, size_of: impl Fn(BufferId) -> Option<u64>) -> Result<(), BackendError> {
        let need = |id: BufferId, bytes: Option<u64>| -> Result<(), BackendError> {
            let have = size_of(id).ok_or(BackendError::NoSuchBuffer)?;
            let bytes = bytes.ok_or(BackendError::OutOfBounds)?;
            if bytes > have { Err(BackendError::OutOfBounds) } else { Ok(()) }
        };
        let distinct = |out: BufferId, inputs: &[BufferId]| {
            if inputs.contains(&out) { Err(BackendError::InvalidArgument) } else { Ok(()) }
        };
        match *self {
            Self::Binary { a, b, out, n, .. } => {
                let bytes = f32_bytes(n as u64);
                need(a, bytes)?;
                need(b, bytes)?;
                need(out, bytes)?;
                if out == a || out == b {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Scale { x, out, n, alpha } => {
                let bytes = f32_bytes(n as u64);
                need(x, bytes)?;
                need(out, bytes)?;
                if out == x || !alpha.is_finite() {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Matmul { a, b, out, m, k, n } => {
                let (m, k, n) = (m as u64, k as u64, n as u64);
                need(a, m.checked_mul(k).and_then(f32_bytes))?;
                need(b, k.checked_mul(n).and_then(f32_bytes))?;
                need(out, m.checked_mul(n).and_then(f32_bytes))?;
                if out == a || out == b {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Gather { table, ids, out, vocab, dim, rows } => {
                let (vocab, dim, rows) = (vocab as u64, dim as u64, rows as u64);
                need(table, vocab.checked_mul(dim).and_then(f32_bytes))?;
                need(ids, f32_bytes(rows))?;
                need(out, rows.checked_mul(dim).and_then(f32_bytes))?;
                distinct(out, &[table, ids])?;
            }
            Self::LayerNorm { x, gamma, beta, out, rows, dim, eps } => {
                let (rows, dim) = (rows as u64, dim as u64);
                need(x, rows.checked_mul(dim).and_then(f32_bytes))?;
                need(gamma, f32_bytes(dim))?;
                need(beta, f32_bytes(dim))?;
                need(out, rows.checked_mul(dim).and_then(f32_bytes))?;
                distinct(out, &[x, gamma, beta])?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Linear { x, w, bias, out, m, k, n } => {
                let (m, k, n) = (m as u64, k as u64, n as u64);
                need(x, m.checked_mul(k).and_then(f32_bytes))?;
                need(w, n.checked_mul(k).and_then(f32_bytes))?;
                need(bias, f32_bytes(n))?;
                need(out, m.checked_mul(n).and_then(f32_bytes))?;
                distinct(out, &[x, w, bias])?;
            }
            Self::Gelu { x, out, n } => {
                need(x, f32_bytes(n as u64))?;
                need(out, f32_bytes(n as u64))?;
                distinct(out, &[x])?;
            }
            Self::Attention { q, k, v, mask, out, batch, seq, heads, head_dim } => {
                if seq > MAX_ATTENTION_SEQ {
                    return Err(BackendError::InvalidArgument);
                }
                let tokens = (batch as u64).checked_mul(seq as u64);
                let bytes = tokens
                    .and_then(|t| t.checked_mul(heads as u64))
                    .and_then(|t| t.checked_mul(head_dim as u64))
                    .and_then(f32_bytes);
                for buf in [q, k, v, out] {
                    need(buf, bytes)?;
                }
                need(mask, tokens.and_then(f32_bytes))?;
                distinct(out, &[q, k, v, mask])?;
            }
            Self::MeanPool { x, mask, out, batch, seq, dim } => {
                let (batch, seq, dim) = (batch as u64, seq as u64, dim as u64);
                let tokens = batch.checked_mul(seq);
                need(x, tokens.and_then(|t| t.checked_mul(dim)).and_then(f32_bytes))?;
                need(mask, tokens.and_then(f32_bytes))?;
                need(out, batch.checked_mul(dim).and_then(f32_bytes))?;
                distinct(out, &[x, mask])?;
            }
            Self::L2Normalize { x, out, rows, dim } => {
                let bytes = (rows as u64).checked_mul(dim as u64).and_then(f32_bytes);
                need(x, bytes)?;
                need(out, bytes)?;
                distinct(out, &[x])?;
            }
            Self::RmsNorm { x, w, out, rows, dim, eps } => {
                let bytes = (rows as u64).checked_mul(dim as u64).and_then(f32_bytes);
                need(x, bytes)?;
                need(w, f32_bytes(dim as u64))?;
                need(out, bytes)?;
                distinct(out, &[x, w])?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(BackendError::InvalidArgument);
                }
            }
            Self::Rope { x, pos, out, rows, heads, head_dim, rope_dim, base } => {
                if rope_dim % 2 != 0 || rope_dim > head_dim || !(base.is_finite() && base > 0.0) {
                    return Err(BackendError::InvalidArgument);
                }
                let bytes = (rows as u64)
                    .checked_mul(heads as u64)
                    .and_then(|e| e.checked_mul(head_dim as u64))
                    .and_then(f32_bytes);
                need(x, bytes)?;
                need(pos, f32_bytes(rows as u64))?;
                need(out, bytes)?;
                distinct(out, &[x, pos])?;
            }
            Self::SwiGlu { gate, up, out, n } => {
                let bytes = f32_bytes(n as u64);
                need(gate, bytes)?;
                need(up, bytes)?;
                need(out, bytes)?;
                distinct(out, &[gate, up])?;
            }
            Self::QLinear { x, w, out, m, k, n, wtype } => {
                if wtype.row_bytes(k).is_none() {
                    return Err(BackendError::InvalidArgument);
                }
                let (m, k64, n) = (m as u64, k as u64, n as u64);
                need(x, m.checked_mul(k64).and_then(f32_bytes))?;
                need(w, wtype.row_bytes(k).and_then(|r| r.checked_mul(n)))?;
                need(out, m.checked_mul(n).and_then(f32_bytes))?;
                distinct(out, &[x, w])?;
            }
            Self::QGather { table, ids, out, vocab, dim, rows, wtype } => {
                if wtype.row_bytes(dim).is_none() {
                    return Err(BackendError::InvalidArgument);
                }
                need(table, wtype.row_bytes(dim).and_then(|r| r.checked_mul(vocab as u64)))?;
                need(ids, f32_bytes(rows as u64))?;
                need(out, (rows as u64).checked_mul(dim as u64).and_then(f32_bytes))?;
                distinct(out, &[table, ids])?;
            }
            Self::CausalAttention { q, k, v, out, tokens, pos0, heads, kv_heads, head_dim } => {
                // Units are (token, head) pairs, counted in a u32.
                if kv_heads == 0 || heads % kv_heads != 0 || tokens.checked_mul(heads).is_none() {
                    return Err(BackendError::InvalidArgument);
                }
                let q_bytes = (tokens as u64)
                    .checked_mul(heads as u64)
                    .and_then(|e| e.checked_mul(head_dim as u64))
                    .and_then(f32_bytes);
                let kv_bytes = (pos0 as u64 + tokens as u64)
                    .checked_mul(kv_heads as u64)
                    .and_then(|e| e.checked_mul(head_dim as u64))
                    .and_then(f32_bytes);
                need(q, q_bytes)?;
                need(k, kv_bytes)?;
                need(v, kv_bytes)?;
                need(out, q_bytes)?;
                distinct(out, &[q, k, v])?;
            }
            Self::Softmax { x, out, rows, dim } => {
                let bytes = (rows as u64).checked_mul(dim as u64).and_then(f32_bytes);
                need(x, bytes)?;
                need(out, bytes)?;
                distinct(out, &[x])?;
            }
            Self::Argmax { x, out, rows, dim } => {
                if rows > 0 && dim == 0 {
                    return Err(BackendError::InvalidArgument);
                }
                need(x, (rows as u64).checked_mul(dim as u64).and_then(f32_bytes))?;
                need(out, f32_bytes(rows as u64))?;
                distinct(out, &[x])?;
            }
        }
        Ok(())
    }
}

/// A GGUF (ggml) weight block format that [`KernelCall::QLinear`] and [`KernelCall::QGather`]
/// read. Every format packs `block_elems` weights into `block_bytes` bytes, little-endian,
/// byte-for-byte as in a GGUF file (llama.cpp's `ggml-common.h` layouts); a row of `k` weights
/// is `k / block_elems` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// Plain f32.
    F32,
    /// IEEE half precision.
    F16,
    /// 32 weights: an f16 scale `d`, 16 bytes of 4-bit values `q`; `w = d·(q − 8)`. Byte `i`
    /// holds weight `i` in its low nibble and weight `i + 16` in its high nibble.
    Q4_0,
    /// 32 weights: f16 `d` and `m`, then nibbles as in `Q4_0`; `w = d·q + m`.
    Q4_1,
    /// 32 weights: an f16 scale `d`, then 32 `i8` values `q`; `w = d·q`.
    Q8_0,
    /// 256 weights in 8 sub-blocks of 32: f16 `d` and `dmin`, 12 bytes of 6-bit sub-block scales
    /// and mins, 128 bytes of nibbles; `w = d·sc·q − dmin·m`.
    Q4K,
    /// 256 weights in 16 sub-blocks of 16: 128 bytes of low nibbles, 64 bytes of high bit pairs,
    /// 16 `i8` sub-block scales, then an f16 `d`; `w = d·sc·(q − 32)` with 6-bit `q`.
    Q6K,
}

impl WeightType {
    /// Every supported format.
    pub const ALL: [Self; 7] =
        [Self::F32, Self::F16, Self::Q4_0, Self::Q4_1, Self::Q8_0, Self::Q4K, Self::Q6K];

    /// Weights per block.
    pub const fn block_elems(self) -> u32 {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> u32 {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Bytes of a row of `k` weights, or `None` when `k` is not a whole number of blocks.
    pub const fn row_bytes(self, k: u32) -> Option<u64> {
        let elems = self.block_elems();
        if !k.is_multiple_of(elems) {
            return None;
        }
        Some((k / elems) as u64 * self.block_bytes() as u64)
    }

    /// The ggml type id (`ggml_type` in a GGUF tensor table) of this format.
    pub const fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
        }
    }

    /// The format with ggml type id `id`, if supported.
    pub const fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            _ => return None,
        })
    }
}
