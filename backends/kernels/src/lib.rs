//! The built-in RELA kernels, in one place for every backend.
//!
//! - [`wgsl`]: one WGSL source per kernel. wgpu consumes them directly; the Vulkan backend
//!   turns them into SPIR-V with naga.
//! - [`CUDA_SOURCE`]: the same kernels in CUDA C, compiled at run time by NVRTC.
//! - [`reference`](mod@reference): plain-Rust implementations over little-endian byte buffers. The host
//!   backend runs them, and the conformance suite checks every other backend against them. The
//!   text generation kernels (RMS_NORM, ROPE, SWIGLU, Q_LINEAR, Q_GATHER, CAUSAL_ATTENTION,
//!   SOFTMAX, ARGMAX) have WGSL and CUDA kernels (the CUDA ones not yet run on a device).
//! - [`quant`]: the GGUF weight block formats (`WeightType`: F32, F16, Q4_0, Q4_1, Q8_0, Q4_K,
//!   Q6_K), dequantized block by block without allocation, bit for bit as llama.cpp and the
//!   `gguf` Python package do.
//! - [`Launch`]: what a GPU backend binds and how many workgroups it dispatches for a call,
//!   shared by the Vulkan and wgpu backends (and the CUDA grid shapes).
//! - `fast` (feature `std`): the reference kernels' functions with the same signatures,
//!   multithreaded and vectorized (GEMM through the `gemm` crate, tiled attention); the host
//!   backend runs them when built with `std`.
//!
//! # Binding and launch conventions (WGSL)
//!
//! Every kernel has one entry point, `main`, and bind group 0: the storage buffers in the order
//! below (inputs read-only, then the output `read_write`), then the [`Params`] uniform block.
//! "Folded" grids cover `G` workgroups as [`grid_groups`]`(G)` and the kernel computes its
//! group index `g = wg.y * num_workgroups.x + wg.x`, returning when `g >= G`.
//!
//! | kernel | storage bindings | workgroup | grid |
//! |---|---|---|---|
//! | binary (ADD, MUL) | `a`, `b`, `out` | 256 | [`grid_1d`]`(n)` |
//! | scale | `x`, `out` | 256 | [`grid_1d`]`(n)` |
//! | matmul | `a`, `b`, `out` | 16×16 | [`grid_matmul`]`(m, n)` |
//! | gather | `table`, `ids` (u32), `out` | 256 | [`grid_1d`]`(rows·dim)` |
//! | layernorm | `x`, `gamma`, `beta`, `out` | 8 (one row) | folded, `rows` groups |
//! | linear, linear_vec4 | `x`, `w`, `bias`, `out` | 8 (an 8×128 block) | folded, `⌈m/8⌉·⌈n/128⌉` groups |
//! | linear_tiled ([`Tiles::Gpu`]) | `x`, `w`, `bias`, `out` | 16×16 (a 64×64 tile) | folded, `⌈m/64⌉·⌈n/64⌉` groups |
//! | gelu | `x`, `out` | 256 | [`grid_1d`]`(n)` |
//! | attention | `q`, `k`, `v`, `mask`, `out` | 8 (one query of one head) | folded, `batch·heads·seq` groups |
//! | meanpool | `x`, `mask`, `out` | 256 | [`grid_1d`]`(batch·dim)` |
//! | l2norm | `x`, `out` | 256 (one row) | folded, `rows` groups |
//! | rms_norm | `x`, `w`, `out` | 64 (one row) | folded, `rows` groups |
//! | rope | `x`, `pos` (u32), `out` | 256 | [`grid_1d`]`(rows·heads·head_dim)` |
//! | swiglu | `gate`, `up`, `out` | 256 | [`grid_1d`]`(n)` |
//! | q_linear | `x`, `w` (bytes as u32), `out` | 64 (a 4×4 output tile) | folded, `⌈m/4⌉·⌈n/4⌉` groups |
//! | q_gather | `table` (bytes as u32), `ids` (u32), `out` | 256 | [`grid_1d`]`(rows·⌈dim/32⌉)` |
//! | causal_attention | `q`, `k`, `v`, `out` | 64 (one head of one token) | folded, `tokens·heads` groups |
//! | softmax | `x`, `out` | 64 (one row) | folded, `rows` groups |
//! | argmax | `x`, `out` (u32) | 64 (one row) | folded, `rows` groups |
//!
//! The quantized kernels read their weights as raw GGUF block bytes (`quant.wgsl`); a binding
//! whose byte count is not a multiple of 4 is bound rounded up, within the buffer's padding.
//! CAUSAL_ATTENTION takes heads of at most [`MAX_GPU_HEAD_DIM`] (256) columns on the GPU.
//!
//! A linear call runs `linear_vec4` when `k` is a positive multiple of 4 (it binds `x` and `w` as
//! arrays of `vec4<f32>`, which needs their byte sizes to be multiples of 16) and `linear`
//! otherwise; see [`Kernel::of`]. Those shapes suit CPU implementations of Vulkan (lavapipe):
//! narrow workgroups and no workgroup memory. A backend on a discrete or integrated GPU plans
//! with [`Tiles::Gpu`] ([`Launch::of_tiled`]) and runs LINEAR as `linear_tiled` instead: wide
//! workgroups that stage their slices of `x` and `w` through workgroup memory.
//!
//! A storage binding that a call needs zero bytes of (for example `x` and `w` of a linear
//! layer with `k = 0`) is still bound, to at least 4 bytes of its buffer, and never read.
#![no_std]
// Without `std` there is no `unsafe` at all; with it, only the one call into `gemm` in `fast`.
#![cfg_attr(not(feature = "std"), forbid(unsafe_code))]
#![cfg_attr(feature = "std", deny(unsafe_code))]

#[cfg(any(test, feature = "std"))]
extern crate std;

#[cfg(feature = "std")]
pub mod fast;
mod generation;
pub mod quant;

use rela_core::backend::{BackendError, BinaryOp, BufferId, KernelCall};

/// WGSL sources.
pub mod wgsl {
    /// Elementwise add or multiply; `Params::m` selects the op (0 add, 1 mul).
    pub const BINARY: &str = include_str!("../wgsl/binary.wgsl");
    /// `out = alpha * x`.
    pub const SCALE: &str = include_str!("../wgsl/scale.wgsl");
    /// Row-major matmul, 16×16 tiles.
    pub const MATMUL: &str = include_str!("../wgsl/matmul.wgsl");
    /// Embedding gather; out-of-range ids give zero rows.
    pub const GATHER: &str = include_str!("../wgsl/gather.wgsl");
    /// Row-wise layer norm, one 8-invocation workgroup per row.
    pub const LAYERNORM: &str = include_str!("../wgsl/layernorm.wgsl");
    /// `x · wᵀ + bias` for any `k`: 8 rows × 128 columns of output per 8-invocation workgroup,
    /// x and w read as f32 (`linear_f32.wgsl` followed by the shared `linear.wgsl`).
    pub const LINEAR: &str =
        concat!(include_str!("../wgsl/linear_f32.wgsl"), include_str!("../wgsl/linear.wgsl"));
    /// The same for `k` a multiple of 4, x and w read as `vec4<f32>` (`linear_vec4.wgsl`
    /// followed by the shared `linear.wgsl`).
    pub const LINEAR_VEC4: &str =
        concat!(include_str!("../wgsl/linear_vec4.wgsl"), include_str!("../wgsl/linear.wgsl"));
    /// `x · wᵀ + bias` for GPUs: a 64×64 output tile per 16×16-invocation workgroup, `k` in
    /// steps of 16 staged through workgroup memory.
    pub const LINEAR_TILED: &str = include_str!("../wgsl/linear_tiled.wgsl");
    /// Exact (erf) GELU.
    pub const GELU: &str = include_str!("../wgsl/gelu.wgsl");
    /// Masked scaled dot-product attention, one 8-invocation workgroup per (batch, head, query).
    pub const ATTENTION: &str = include_str!("../wgsl/attention.wgsl");
    /// Masked mean over tokens.
    pub const MEANPOOL: &str = include_str!("../wgsl/meanpool.wgsl");
    /// Row-wise L2 normalization, one workgroup per row.
    pub const L2NORM: &str = include_str!("../wgsl/l2norm.wgsl");
    /// RMSNorm, one 64-invocation workgroup per row.
    pub const RMS_NORM: &str = include_str!("../wgsl/rms_norm.wgsl");
    /// RoPE (llama.cpp's normal mode), one invocation per output element.
    pub const ROPE: &str = include_str!("../wgsl/rope.wgsl");
    /// SiLU-gated product.
    pub const SWIGLU: &str = include_str!("../wgsl/swiglu.wgsl");
    /// Linear layer over GGUF blocks, a 4×4 output tile per 64-invocation workgroup
    /// (`q_linear.wgsl` followed by the shared `quant.wgsl`).
    pub const Q_LINEAR: &str =
        concat!(include_str!("../wgsl/q_linear.wgsl"), include_str!("../wgsl/quant.wgsl"));
    /// Embedding rows from GGUF blocks, one invocation per 32 weights (`q_gather.wgsl`
    /// followed by `quant.wgsl`).
    pub const Q_GATHER: &str =
        concat!(include_str!("../wgsl/q_gather.wgsl"), include_str!("../wgsl/quant.wgsl"));
    /// Causal grouped-query attention over a KV cache, one 64-invocation workgroup per
    /// (token, head), keys in tiles of 256 (online softmax).
    pub const CAUSAL_ATTENTION: &str = include_str!("../wgsl/causal_attention.wgsl");
    /// Row-wise softmax, one 64-invocation workgroup per row.
    pub const SOFTMAX: &str = include_str!("../wgsl/softmax.wgsl");
    /// Row-wise argmax, one 64-invocation workgroup per row.
    pub const ARGMAX: &str = include_str!("../wgsl/argmax.wgsl");
}

/// CUDA C source of every kernel, for NVRTC. [`Kernel::cuda_name`] names each entry point.
///
/// Launches (`g` is the folded block index `blockIdx.y * gridDim.x + blockIdx.x`):
/// - `rela_binary(a, b, out, n, op)` and `rela_scale(x, out, n, alpha)` with 256-thread
///   blocks over `n`; `rela_matmul(a, b, out, m, k, n)` with 16×16 blocks over `(n, m)`.
/// - `rela_gather(table, ids, out, vocab, dim, rows)`, `rela_gelu(x, out, n)` and
///   `rela_meanpool(x, mask, out, batch, seq, dim)`: 256-thread blocks, [`grid_1d`] of the
///   output elements.
/// - `rela_layernorm(x, gamma, beta, out, rows, dim, eps)` and `rela_l2norm(x, out, rows, dim)`:
///   256-thread blocks, one per row, [`grid_groups`]`(rows)`.
/// - `rela_linear(x, w, bias, out, m, k, n)`: 256-thread blocks (16×16), one per 64×64 output
///   tile, [`grid_linear_tiles`]`(m, n)` (not the WGSL kernels' grid in [`Launch::groups`]).
/// - `rela_attention(q, k, v, mask, out, batch, seq, heads, head_dim, scale)`: 64-thread blocks,
///   one per (batch, head, query), [`grid_groups`]`(batch·heads·seq)`; `scale` is
///   [`reference::attention_scale`]`(head_dim)`.
/// - The generation kernels, on the grids [`Launch::groups`] plans: `rela_rms_norm(x, w, out,
///   rows, dim, eps)`, `rela_softmax(x, out, rows, dim)` and `rela_argmax(x, out, rows, dim)`
///   with a 256-thread block per row; `rela_rope(x, pos, out, rows, heads, head_dim, rope_dim,
///   log2_base)`, `rela_swiglu(gate, up, out, n)` and `rela_q_gather(table, ids, out, vocab,
///   dim, rows, type)` with 256-thread blocks over their elements (Q_GATHER: 32-weight
///   chunks); `rela_q_linear(x, w, out, m, k, n, type)` with a 64-thread block per 4×4 output
///   tile; `rela_causal_attention(q, k, v, out, tokens, pos0, heads, kv_heads, head_dim,
///   scale)` with a 64-thread block per (token, head). `type` is the ggml type id.
pub const CUDA_SOURCE: &str = include_str!("../cuda/kernels.cu");

/// Elementwise workgroup size.
pub const WORKGROUP_1D: u32 = 256;
/// Matmul tile edge.
pub const TILE: u32 = 16;
/// Output tile edge (rows and columns per thread block) of the CUDA linear kernel.
pub const LINEAR_TILE: u32 = 64;
/// Output rows per workgroup of the WGSL linear kernels.
pub const LINEAR_ROWS: u32 = 8;
/// Output columns per workgroup of the WGSL linear kernels (8 invocations × 16 columns).
pub const LINEAR_COLS: u32 = 128;
/// Invocations per workgroup of the WGSL linear kernels.
pub const LINEAR_WORKGROUP: u32 = 8;
/// Threads per block of the CUDA attention kernel (the WGSL kernel's workgroups have 8).
pub const ATTENTION_WORKGROUP: u32 = 64;
/// Threads per row-reduction workgroup (WGSL L2 normalization; CUDA layer norm and L2
/// normalization).
pub const ROW_WORKGROUP: u32 = 256;
/// Invocations per WGSL layer norm workgroup.
pub const LAYERNORM_WORKGROUP: u32 = 8;
/// Largest workgroup count per grid dimension that every API guarantees.
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// The 32-byte uniform block every WGSL kernel reads (std140-compatible: eight 4-byte scalars).
///
/// | bytes | field | binary | scale | matmul, linear | gather | layernorm | attention | meanpool | l2norm | gelu |
/// |---|---|---|---|---|---|---|---|---|---|---|
/// | 0..4 | `n` | elements | elements | columns | dim | dim | head_dim | dim | dim | elements |
/// | 4..8 | `m` | op (0 add, 1 mul) | | rows | rows | rows | seq | seq | rows | |
/// | 8..12 | `k` | | | inner | vocab | | heads | | | |
/// | 12..16 | `alpha` (f32) | | factor | | | eps | `√head_dim` | | | |
/// | 16..20 | `batch` | | | | | | batch | batch | | |
/// | 20..24 | `aux` | | | | | | | | | |
/// | 24..32 | reserved, zero | | | | | | | | | |
///
/// The generation kernels:
///
/// | bytes | field | rms_norm | rope | swiglu | q_linear | q_gather | causal_attention | softmax, argmax |
/// |---|---|---|---|---|---|---|---|---|
/// | 0..4 | `n` | dim | head_dim | elements | columns | dim | head_dim | dim |
/// | 4..8 | `m` | rows | rows | | rows | rows | tokens | rows |
/// | 8..12 | `k` | | heads | | inner | vocab | heads | |
/// | 12..16 | `alpha` (f32) | eps | `log2(base)` | | | | `√head_dim` | |
/// | 16..20 | `batch` | | rope_dim | | ggml type id | ggml type id | kv_heads | |
/// | 20..24 | `aux` | | | | | | pos0 | |
///
/// Unused fields are zero.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Params {
    /// Elements, columns or row width (see the table).
    pub n: u32,
    /// Rows, op selector or sequence length.
    pub m: u32,
    /// Inner dimension, vocabulary size or heads.
    pub k: u32,
    /// Scale factor, epsilon or attention divisor.
    pub alpha: f32,
    /// Sequences (attention, mean pool), `rope_dim`, the weight format's ggml id or `kv_heads`.
    pub batch: u32,
    /// `pos0` (causal attention).
    pub aux: u32,
}

impl Params {
    /// Bytes of the uniform block.
    pub const SIZE: usize = 32;

    /// The uniform block's bytes (bytes 24..32 are zero).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.n.to_le_bytes());
        out[4..8].copy_from_slice(&self.m.to_le_bytes());
        out[8..12].copy_from_slice(&self.k.to_le_bytes());
        out[12..16].copy_from_slice(&self.alpha.to_le_bytes());
        out[16..20].copy_from_slice(&self.batch.to_le_bytes());
        out[20..24].copy_from_slice(&self.aux.to_le_bytes());
        out
    }

    /// The parameters of a kernel call.
    pub fn of(call: &KernelCall) -> Self {
        let z = Self::default();
        match *call {
            KernelCall::Binary { op, n, .. } => Self { n, m: op_code(op), ..z },
            KernelCall::Scale { n, alpha, .. } => Self { n, alpha, ..z },
            KernelCall::Matmul { m, k, n, .. } | KernelCall::Linear { m, k, n, .. } => Self { n, m, k, ..z },
            KernelCall::Gather { vocab, dim, rows, .. } => Self { n: dim, m: rows, k: vocab, ..z },
            KernelCall::LayerNorm { rows, dim, eps, .. } => Self { n: dim, m: rows, alpha: eps, ..z },
            KernelCall::Gelu { n, .. } => Self { n, ..z },
            KernelCall::Attention { batch, seq, heads, head_dim, .. } => Self {
                n: head_dim,
                m: seq,
                k: heads,
                alpha: reference::attention_scale(head_dim),
                batch,
                ..z
            },
            KernelCall::MeanPool { batch, seq, dim, .. } => Self { n: dim, m: seq, batch, ..z },
            KernelCall::L2Normalize { rows, dim, .. } => Self { n: dim, m: rows, ..z },
            KernelCall::RmsNorm { rows, dim, eps, .. } => Self { n: dim, m: rows, alpha: eps, ..z },
            KernelCall::Rope { rows, heads, head_dim, rope_dim, base, .. } => {
                Self { n: head_dim, m: rows, k: heads, alpha: libm::log2f(base), batch: rope_dim, ..z }
            }
            KernelCall::SwiGlu { n, .. } => Self { n, ..z },
            KernelCall::QLinear { m, k, n, wtype, .. } => Self { n, m, k, batch: wtype.ggml_id(), ..z },
            KernelCall::QGather { vocab, dim, rows, wtype, .. } => {
                Self { n: dim, m: rows, k: vocab, batch: wtype.ggml_id(), ..z }
            }
            KernelCall::CausalAttention { tokens, pos0, heads, kv_heads, head_dim, .. } => Self {
                n: head_dim,
                m: tokens,
                k: heads,
                alpha: reference::attention_scale(head_dim),
                batch: kv_heads,
                aux: pos0,
            },
            KernelCall::Softmax { rows, dim, .. } | KernelCall::Argmax { rows, dim, .. } => {
                Self { n: dim, m: rows, ..z }
            }
        }
    }
}

/// The op selector of a binary op (0 add, 1 mul), as the WGSL and CUDA kernels read it.
pub const fn op_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Mul => 1,
    }
}

/// Workgroup counts `(x, y)` covering `n` elements with 256-wide groups, folding into the
/// second dimension past 65,535 groups. The kernel computes `i = y * x_groups * 256 + x`.
pub const fn grid_1d(n: u32) -> (u32, u32) {
    let groups = n.div_ceil(WORKGROUP_1D);
    if groups <= MAX_GROUPS_PER_DIM {
        (groups, 1)
    } else {
        (MAX_GROUPS_PER_DIM, groups.div_ceil(MAX_GROUPS_PER_DIM))
    }
}

/// Workgroup counts `(x, y)` covering `groups` workgroups, folding into the second dimension
/// past 65,535; `None` past 65,535² groups. The kernel computes `g = y * x_groups + x` and skips
/// `g >= groups`.
pub const fn grid_groups(groups: u64) -> Option<(u32, u32)> {
    let max = MAX_GROUPS_PER_DIM as u64;
    if groups <= max {
        Some((groups as u32, 1))
    } else if groups <= max * max {
        Some((MAX_GROUPS_PER_DIM, groups.div_ceil(max) as u32))
    } else {
        None
    }
}

/// Thread blocks `(x, y)` of the CUDA linear kernel for `m` rows and `n` columns: one per
/// [`LINEAR_TILE`]² output tile, folded like [`grid_groups`]; `None` past 65,535² tiles.
pub const fn grid_linear_tiles(m: u32, n: u32) -> Option<(u32, u32)> {
    grid_groups(m.div_ceil(LINEAR_TILE) as u64 * n.div_ceil(LINEAR_TILE) as u64)
}

/// Workgroup counts `(x, y)` for a matmul with `m` rows and `n` columns.
pub const fn grid_matmul(m: u32, n: u32) -> (u32, u32) {
    (n.div_ceil(TILE), m.div_ceil(TILE))
}

/// A compiled kernel: one WGSL source, one CUDA entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// ADD and MUL.
    Binary,
    /// SCALE.
    Scale,
    /// MATMUL.
    Matmul,
    /// Embedding gather.
    Gather,
    /// Layer norm.
    LayerNorm,
    /// Linear layer, any inner dimension.
    Linear,
    /// GELU.
    Gelu,
    /// Attention.
    Attention,
    /// Mean pooling.
    MeanPool,
    /// L2 normalization.
    L2Normalize,
    /// Linear layer whose inner dimension is a positive multiple of 4.
    LinearVec4,
    /// RMSNorm.
    RmsNorm,
    /// RoPE.
    Rope,
    /// SiLU-gated product.
    SwiGlu,
    /// Linear layer over quantized weights.
    QLinear,
    /// Embedding rows from a quantized table.
    QGather,
    /// Causal grouped-query attention.
    CausalAttention,
    /// Softmax.
    Softmax,
    /// Argmax.
    Argmax,
    /// Linear layer in workgroup-memory tiles, for GPUs ([`Tiles::Gpu`]).
    LinearTiled,
}

/// The tile shapes a device's kernels are planned for ([`Launch::of_tiled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tiles {
    /// CPU implementations (lavapipe, SwiftShader): narrow workgroups, no workgroup memory.
    #[default]
    Cpu,
    /// Discrete and integrated GPUs: LINEAR as [`Kernel::LinearTiled`].
    Gpu,
}

/// Rows and columns of the output tile [`Kernel::LinearTiled`] computes per workgroup.
pub const LINEAR_TILED_TILE: u32 = 64;

impl Kernel {
    /// Every kernel, in declaration order (`kernel as usize` indexes this array).
    pub const ALL: [Self; 20] = [
        Self::Binary,
        Self::Scale,
        Self::Matmul,
        Self::Gather,
        Self::LayerNorm,
        Self::Linear,
        Self::Gelu,
        Self::Attention,
        Self::MeanPool,
        Self::L2Normalize,
        Self::LinearVec4,
        Self::RmsNorm,
        Self::Rope,
        Self::SwiGlu,
        Self::QLinear,
        Self::QGather,
        Self::CausalAttention,
        Self::Softmax,
        Self::Argmax,
        Self::LinearTiled,
    ];

    /// A short lower-case name, for labels and errors.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Scale => "scale",
            Self::Matmul => "matmul",
            Self::Gather => "gather",
            Self::LayerNorm => "layernorm",
            Self::Linear => "linear",
            Self::Gelu => "gelu",
            Self::Attention => "attention",
            Self::MeanPool => "meanpool",
            Self::L2Normalize => "l2norm",
            Self::LinearVec4 => "linear_vec4",
            Self::RmsNorm => "rms_norm",
            Self::Rope => "rope",
            Self::SwiGlu => "swiglu",
            Self::QLinear => "q_linear",
            Self::QGather => "q_gather",
            Self::CausalAttention => "causal_attention",
            Self::Softmax => "softmax",
            Self::Argmax => "argmax",
            Self::LinearTiled => "linear_tiled",
        }
    }

    /// The WGSL source.
    pub const fn wgsl(self) -> &'static str {
        match self {
            Self::Binary => wgsl::BINARY,
            Self::Scale => wgsl::SCALE,
            Self::Matmul => wgsl::MATMUL,
            Self::Gather => wgsl::GATHER,
            Self::LayerNorm => wgsl::LAYERNORM,
            Self::Linear => wgsl::LINEAR,
            Self::Gelu => wgsl::GELU,
            Self::Attention => wgsl::ATTENTION,
            Self::MeanPool => wgsl::MEANPOOL,
            Self::L2Normalize => wgsl::L2NORM,
            Self::LinearVec4 => wgsl::LINEAR_VEC4,
            Self::RmsNorm => wgsl::RMS_NORM,
            Self::Rope => wgsl::ROPE,
            Self::SwiGlu => wgsl::SWIGLU,
            Self::QLinear => wgsl::Q_LINEAR,
            Self::QGather => wgsl::Q_GATHER,
            Self::CausalAttention => wgsl::CAUSAL_ATTENTION,
            Self::Softmax => wgsl::SOFTMAX,
            Self::Argmax => wgsl::ARGMAX,
            Self::LinearTiled => wgsl::LINEAR_TILED,
        }
    }

    /// The entry point's name in [`CUDA_SOURCE`] (every linear kernel is `rela_linear`, CUDA's
    /// own 64×64-tile kernel).
    pub const fn cuda_name(self) -> &'static str {
        match self {
            Self::Binary => "rela_binary",
            Self::Scale => "rela_scale",
            Self::Matmul => "rela_matmul",
            Self::Gather => "rela_gather",
            Self::LayerNorm => "rela_layernorm",
            Self::Linear | Self::LinearVec4 | Self::LinearTiled => "rela_linear",
            Self::Gelu => "rela_gelu",
            Self::Attention => "rela_attention",
            Self::MeanPool => "rela_meanpool",
            Self::L2Normalize => "rela_l2norm",
            Self::RmsNorm => "rela_rms_norm",
            Self::Rope => "rela_rope",
            Self::SwiGlu => "rela_swiglu",
            Self::QLinear => "rela_q_linear",
            Self::QGather => "rela_q_gather",
            Self::CausalAttention => "rela_causal_attention",
            Self::Softmax => "rela_softmax",
            Self::Argmax => "rela_argmax",
        }
    }

    /// Storage buffers the kernel binds (before the uniform block).
    pub const fn storage_buffers(self) -> u32 {
        match self {
            Self::Scale | Self::Gelu | Self::L2Normalize | Self::Softmax | Self::Argmax => 2,
            Self::Binary
            | Self::Matmul
            | Self::Gather
            | Self::MeanPool
            | Self::RmsNorm
            | Self::Rope
            | Self::SwiGlu
            | Self::QLinear
            | Self::QGather => 3,
            Self::LayerNorm | Self::Linear | Self::LinearVec4 | Self::LinearTiled | Self::CausalAttention => {
                4
            }
            Self::Attention => 5,
        }
    }

    /// The kernel a call runs: [`LinearVec4`](Self::LinearVec4) for a linear call whose `k` is
    /// a positive multiple of 4, [`Linear`](Self::Linear) for any other. Every call has one
    /// (`Option` leaves room for a call no GPU kernel runs).
    pub const fn of(call: &KernelCall) -> Option<Self> {
        Some(match call {
            KernelCall::Binary { .. } => Self::Binary,
            KernelCall::Scale { .. } => Self::Scale,
            KernelCall::Matmul { .. } => Self::Matmul,
            KernelCall::Gather { .. } => Self::Gather,
            KernelCall::LayerNorm { .. } => Self::LayerNorm,
            KernelCall::Linear { k, .. } if *k > 0 && *k % 4 == 0 => Self::LinearVec4,
            KernelCall::Linear { .. } => Self::Linear,
            KernelCall::Gelu { .. } => Self::Gelu,
            KernelCall::Attention { .. } => Self::Attention,
            KernelCall::MeanPool { .. } => Self::MeanPool,
            KernelCall::L2Normalize { .. } => Self::L2Normalize,
            KernelCall::RmsNorm { .. } => Self::RmsNorm,
            KernelCall::Rope { .. } => Self::Rope,
            KernelCall::SwiGlu { .. } => Self::SwiGlu,
            KernelCall::QLinear { .. } => Self::QLinear,
            KernelCall::QGather { .. } => Self::QGather,
            KernelCall::CausalAttention { .. } => Self::CausalAttention,
            KernelCall::Softmax { .. } => Self::Softmax,
            KernelCall::Argmax { .. } => Self::Argmax,
        })
    }
}

/// Most storage buffers any kernel binds.
pub const MAX_STORAGE_BUFFERS: usize = 5;

/// Invocations per workgroup (threads per block) of the WGSL and CUDA Q_LINEAR kernels.
pub const Q_LINEAR_WORKGROUP: u32 = 64;
/// Output rows per workgroup of the WGSL and CUDA Q_LINEAR kernels.
pub const Q_LINEAR_ROWS: u32 = 4;
/// Output columns per workgroup of the WGSL and CUDA Q_LINEAR kernels.
pub const Q_LINEAR_COLS: u32 = 4;
/// Weights one invocation dequantizes at a time in the WGSL Q_LINEAR and Q_GATHER kernels.
pub const Q_CHUNK: u32 = 32;
/// Widest head the GPU CAUSAL_ATTENTION kernels take (four columns per invocation of 64);
/// wider heads are `Unsupported` there.
pub const MAX_GPU_HEAD_DIM: u32 = 256;

/// `Unsupported` unless a byte-addressed binding (quantized weights) fits `u32` byte offsets.
fn q_bytes_fit(bytes: u64) -> Result<(), BackendError> {
    if bytes > u64::from(u32::MAX) { Err(BackendError::Unsupported) } else { Ok(()) }
}

/// One GPU launch of a validated call: the kernel, its storage bindings and its grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Launch {
    /// The kernel.
    pub kernel: Kernel,
    /// Workgroups (thread blocks) in x and y; both at most [`MAX_GROUPS_PER_DIM`] except for
    /// matmul, whose grid is not folded (backends check it against their limits). For linear
    /// calls this is the WGSL kernels' grid; CUDA launches [`grid_linear_tiles`] instead.
    pub groups: (u32, u32),
    /// The uniform block.
    pub params: Params,
    buffers: [(BufferId, u64); MAX_STORAGE_BUFFERS],
    count: usize,
}

impl Launch {
    /// [`Launch::of`] for a device with tile shapes `tiles`: with [`Tiles::Gpu`], a LINEAR call
    /// runs [`Kernel::LinearTiled`] on a folded grid of `⌈m/64⌉·⌈n/64⌉` workgroups (same
    /// bindings and parameters); everything else is planned as for [`Tiles::Cpu`].
    pub fn of_tiled(call: &KernelCall, tiles: Tiles) -> Result<Option<Self>, BackendError> {
        let Some(mut launch) = Self::of(call)? else { return Ok(None) };
        if let (Tiles::Gpu, KernelCall::Linear { m, n, .. }) = (tiles, call) {
            let tiles = u64::from(m.div_ceil(LINEAR_TILED_TILE)) * u64::from(n.div_ceil(LINEAR_TILED_TILE));
            launch.kernel = Kernel::LinearTiled;
            launch.groups = grid_groups(tiles).ok_or(BackendError::Unsupported)?;
        }
        Ok(Some(launch))
    }

    /// Plans a call that [`KernelCall::validate`] accepted.
    ///
    /// `Ok(None)`: the output is empty, nothing to run. `Err(Unsupported)`: no GPU kernel runs
    /// the call yet ([`Kernel::of`] is `None`), a binding holds more than `u32::MAX` f32s
    /// (kernels index with `u32`) or the grid cannot be folded into 65,535 × 65,535 workgroups.
    pub fn of(call: &KernelCall) -> Result<Option<Self>, BackendError> {
        // Saturating, so a call that skipped validation cannot panic here (it fails below).
        let f = |count: u64| count.saturating_mul(4);
        let mul = |a: u32, b: u32| u64::from(a) * u64::from(b);
        let one_d = |count: u64| -> Result<(u32, u32), BackendError> {
            let count = u32::try_from(count).map_err(|_| BackendError::Unsupported)?;
            Ok(grid_1d(count))
        };
        let folded = |groups: u64| grid_groups(groups).ok_or(BackendError::Unsupported);
        let kernel = Kernel::of(call).ok_or(BackendError::Unsupported)?;
        let (buffers, out_elems, groups): (&[(BufferId, u64)], u64, (u32, u32)) = match *call {
            KernelCall::Binary { a, b, out, n, .. } => {
                let bytes = f(n.into());
                (&[(a, bytes), (b, bytes), (out, bytes)], n.into(), grid_1d(n))
            }
            KernelCall::Scale { x, out, n, .. } => {
                let bytes = f(n.into());
                (&[(x, bytes), (out, bytes)], n.into(), grid_1d(n))
            }
            KernelCall::Matmul { a, b, out, m, k, n } => {
                (&[(a, f(mul(m, k))), (b, f(mul(k, n))), (out, f(mul(m, n)))], mul(m, n), grid_matmul(m, n))
            }
            KernelCall::Gather { table, ids, out, vocab, dim, rows } => (
                &[(table, f(mul(vocab, dim))), (ids, f(rows.into())), (out, f(mul(rows, dim)))],
                mul(rows, dim),
                one_d(mul(rows, dim))?,
            ),
            KernelCall::LayerNorm { x, gamma, beta, out, rows, dim, .. } => (
                &[
                    (x, f(mul(rows, dim))),
                    (gamma, f(dim.into())),
                    (beta, f(dim.into())),
                    (out, f(mul(rows, dim))),
                ],
                mul(rows, dim),
                folded(rows.into())?,
            ),
            KernelCall::Linear { x, w, bias, out, m, k, n } => (
                &[(x, f(mul(m, k))), (w, f(mul(n, k))), (bias, f(n.into())), (out, f(mul(m, n)))],
                mul(m, n),
                folded(mul(m.div_ceil(LINEAR_ROWS), n.div_ceil(LINEAR_COLS)))?,
            ),
            KernelCall::Gelu { x, out, n } => {
                let bytes = f(n.into());
                (&[(x, bytes), (out, bytes)], n.into(), grid_1d(n))
            }
            KernelCall::Attention { q, k, v, mask, out, batch, seq, heads, head_dim } => {
                let tokens = mul(batch, seq);
                let elems = tokens.saturating_mul(mul(heads, head_dim));
                let bytes = f(elems);
                (
                    &[(q, bytes), (k, bytes), (v, bytes), (mask, f(tokens)), (out, bytes)],
                    elems,
                    folded(tokens.saturating_mul(heads.into()))?,
                )
            }
            KernelCall::MeanPool { x, mask, out, batch, seq, dim } => (
                &[
                    (x, f(mul(batch, seq).saturating_mul(dim.into()))),
                    (mask, f(mul(batch, seq))),
                    (out, f(mul(batch, dim))),
                ],
                mul(batch, dim),
                one_d(mul(batch, dim))?,
            ),
            KernelCall::L2Normalize { x, out, rows, dim } => {
                let bytes = f(mul(rows, dim));
                (&[(x, bytes), (out, bytes)], mul(rows, dim), folded(rows.into())?)
            }
            KernelCall::RmsNorm { x, w, out, rows, dim, .. } => {
                let bytes = f(mul(rows, dim));
                (&[(x, bytes), (w, f(dim.into())), (out, bytes)], mul(rows, dim), folded(rows.into())?)
            }
            KernelCall::Rope { x, pos, out, rows, heads, head_dim, .. } => {
                let elems = mul(rows, heads).saturating_mul(head_dim.into());
                let bytes = f(elems);
                (&[(x, bytes), (pos, f(rows.into())), (out, bytes)], elems, one_d(elems)?)
            }
            KernelCall::SwiGlu { gate, up, out, n } => {
                let bytes = f(n.into());
                (&[(gate, bytes), (up, bytes), (out, bytes)], n.into(), grid_1d(n))
            }
            KernelCall::QLinear { x, w, out, m, k, n, wtype } => {
                // The weights are addressed by byte in u32 arithmetic.
                let w_bytes = wtype.row_bytes(k).unwrap_or(u64::MAX).saturating_mul(n.into());
                q_bytes_fit(w_bytes)?;
                (
                    &[(x, f(mul(m, k))), (w, w_bytes), (out, f(mul(m, n)))],
                    mul(m, n),
                    folded(mul(m.div_ceil(Q_LINEAR_ROWS), n.div_ceil(Q_LINEAR_COLS)))?,
                )
            }
            KernelCall::QGather { table, ids, out, vocab, dim, rows, wtype } => {
                let table_bytes = wtype.row_bytes(dim).unwrap_or(u64::MAX).saturating_mul(vocab.into());
                q_bytes_fit(table_bytes)?;
                (
                    &[(table, table_bytes), (ids, f(rows.into())), (out, f(mul(rows, dim)))],
                    mul(rows, dim),
                    one_d(mul(rows, dim.div_ceil(Q_CHUNK)))?,
                )
            }
            KernelCall::CausalAttention { q, k, v, out, tokens, pos0, heads, kv_heads, head_dim } => {
                if head_dim > MAX_GPU_HEAD_DIM {
                    return Err(BackendError::Unsupported);
                }
                let elems = mul(tokens, heads).saturating_mul(head_dim.into());
                let kv = (u64::from(pos0) + u64::from(tokens)).saturating_mul(mul(kv_heads, head_dim));
                (
                    &[(q, f(elems)), (k, f(kv)), (v, f(kv)), (out, f(elems))],
                    elems,
                    folded(mul(tokens, heads))?,
                )
            }
            KernelCall::Softmax { x, out, rows, dim } => {
                let bytes = f(mul(rows, dim));
                (&[(x, bytes), (out, bytes)], mul(rows, dim), folded(rows.into())?)
            }
            KernelCall::Argmax { x, out, rows, dim } => {
                (&[(x, f(mul(rows, dim))), (out, f(rows.into()))], rows.into(), folded(rows.into())?)
            }
        };
        if out_elems == 0 {
            return Ok(None);
        }
        if buffers.iter().any(|&(_, bytes)| bytes / 4 > u64::from(u32::MAX)) {
            return Err(BackendError::Unsupported);
        }
        let mut all = [(call.output(), 0); MAX_STORAGE_BUFFERS];
        all[..buffers.len()].copy_from_slice(buffers);
        Ok(Some(Self { kernel, groups, params: Params::of(call), buffers: all, count: buffers.len() }))
    }

    /// The storage bindings in binding order (inputs, then the output), each with the bytes the
    /// kernel may touch (zero for an input it never reads).
    pub fn bindings(&self) -> &[(BufferId, u64)] {
        &self.buffers[..self.count]
    }
}

/// Plain-Rust reference kernels over little-endian f32 byte buffers.
///
/// Callers validate shapes first ([`KernelCall::validate`]); these functions then index only
/// within the slices they are given and never panic on validated shapes. Sums run in index
/// order in f32, except [`linear`](reference::linear)'s (eight interleaved partial sums, see
/// there). The GPU kernels keep index order wherever one thread owns a sum (matmul, CUDA's
/// linear, mean pool, attention's dot products and weighted sum, WGSL attention's softmax
/// sum), add four-element dot products in order (WGSL linear) or reduce in a tree elsewhere, so
/// they agree to a few ulp rather than bit for bit.
pub mod reference {
    use rela_core::backend::MAX_ATTENTION_SEQ;

    pub use crate::generation::{
        argmax, argmax_of, causal_attention, q_gather, q_linear, rms_norm, rope, rope_angle, softmax, swiglu,
    };

    use super::BinaryOp;

    fn f32_at(buf: &[u8], i: usize) -> f32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&buf[i * 4..i * 4 + 4]);
        f32::from_le_bytes(b)
    }

    fn set_f32(buf: &mut [u8], i: usize, v: f32) {
        buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The `len` f32s from element `start`.
    fn row(buf: &[u8], start: usize, len: usize) -> impl Iterator<Item = f32> + '_ {
        buf[start * 4..(start + len) * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// `out[i] = a[i] op b[i]` for `i < n`. Slices must hold at least `4 n` bytes.
    pub fn binary(op: BinaryOp, a: &[u8], b: &[u8], out: &mut [u8], n: usize) {
        for i in 0..n {
            let (x, y) = (f32_at(a, i), f32_at(b, i));
            set_f32(
                out,
                i,
                match op {
                    BinaryOp::Add => x + y,
                    BinaryOp::Mul => x * y,
                },
            );
        }
    }

    /// `out[i] = alpha * x[i]` for `i < n`.
    pub fn scale(x: &[u8], out: &mut [u8], n: usize, alpha: f32) {
        for i in 0..n {
            set_f32(out, i, alpha * f32_at(x, i));
        }
    }

    /// `out (m×n) = a (m×k) · b (k×n)`, row-major, summing over k in order.
    pub fn matmul(a: &[u8], b: &[u8], out: &mut [u8], m: usize, k: usize, n: usize) {
        for r in 0..m {
            for c in 0..n {
                let mut acc = 0.0f32;
                for i in 0..k {
                    acc += f32_at(a, r * k + i) * f32_at(b, i * n + c);
                }
                set_f32(out, r * n + c, acc);
            }
        }
    }

    /// `out[r, :] = table[ids[r], :]` for `r < rows`; `ids` are little-endian u32, and an id
    /// `>= vocab` gives a row of zeros.
    pub fn gather(table: &[u8], ids: &[u8], out: &mut [u8], vocab: usize, dim: usize, rows: usize) {
        for r in 0..rows {
            let id =
                u32::from_le_bytes([ids[r * 4], ids[r * 4 + 1], ids[r * 4 + 2], ids[r * 4 + 3]]) as usize;
            let dst = &mut out[r * dim * 4..(r + 1) * dim * 4];
            if id < vocab {
                dst.copy_from_slice(&table[id * dim * 4..(id + 1) * dim * 4]);
            } else {
                dst.fill(0);
            }
        }
    }

    /// Row-wise layer norm over `rows × dim`: mean, then biased variance of `x - mean` (two
    /// passes), then `(x - mean) · (1 / √(var + eps)) · gamma + beta`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        x: &[u8],
        gamma: &[u8],
        beta: &[u8],
        out: &mut [u8],
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        for r in 0..rows {
            let base = r * dim;
            let mean = row(x, base, dim).fold(0.0f32, |s, v| s + v) / dim as f32;
            let var = row(x, base, dim).fold(0.0f32, |s, v| s + (v - mean) * (v - mean)) / dim as f32;
            let inv = 1.0 / libm::sqrtf(var + eps);
            for c in 0..dim {
                let y = (f32_at(x, base + c) - mean) * inv * f32_at(gamma, c) + f32_at(beta, c);
                set_f32(out, base + c, y);
            }
        }
    }

    /// Partial sums per dot product in [`linear`]: eight f32 lanes, which the compiler keeps in
    /// vector registers.
    const LANES: usize = 8;
    /// Rows of `x` and of `w` that [`linear`] multiplies together per pass over `k`.
    const BLOCK: usize = 2;
    /// Rows of `w` (output columns) per cache block in [`linear`].
    const COLUMN_BLOCK: usize = 32;

    /// Elements `LANES q .. LANES q + LANES` of a row of little-endian f32s.
    #[inline(always)]
    fn lanes(row: &[u8], q: usize) -> [f32; LANES] {
        let bytes = &row[q * 4 * LANES..(q + 1) * 4 * LANES];
        core::array::from_fn(|l| {
            f32::from_le_bytes([bytes[4 * l], bytes[4 * l + 1], bytes[4 * l + 2], bytes[4 * l + 3]])
        })
    }

    /// The `R × C` dot products of rows `xs` with rows `ws` (each `k` little-endian f32s, the
    /// slices exactly `4 k` bytes). Each sum keeps [`LANES`] partial sums (lane `l` takes the
    /// terms `t ≡ l mod LANES` below `LANES ⌊k / LANES⌋`, in order), adds them lane by lane,
    /// then adds the remaining terms in order.
    #[inline(always)]
    fn dots<const R: usize, const C: usize>(xs: [&[u8]; R], ws: [&[u8]; C], k: usize) -> [[f32; C]; R] {
        let full = k / LANES;
        let mut acc = [[[0.0f32; LANES]; C]; R];
        for q in 0..full {
            let wv: [[f32; LANES]; C] = core::array::from_fn(|c| lanes(ws[c], q));
            for (xr, acc_r) in xs.iter().zip(acc.iter_mut()) {
                let xv = lanes(xr, q);
                for (wc, acc_rc) in wv.iter().zip(acc_r.iter_mut()) {
                    for ((a, &xe), &we) in acc_rc.iter_mut().zip(xv.iter()).zip(wc.iter()) {
                        *a += xe * we;
                    }
                }
            }
        }
        let mut out = [[0.0f32; C]; R];
        for ((xr, acc_r), out_r) in xs.iter().zip(acc.iter()).zip(out.iter_mut()) {
            for ((wc, acc_rc), o) in ws.iter().zip(acc_r.iter()).zip(out_r.iter_mut()) {
                let lanes = acc_rc.iter().fold(0.0f32, |s, &v| s + v);
                let tail = full * LANES;
                *o = row(xr, tail, k - tail).zip(row(wc, tail, k - tail)).fold(lanes, |s, (a, b)| s + a * b);
            }
        }
        out
    }

    /// Stores `sums[r][c] + bias[j + c]` at `out[i + r, j + c]` (`n` columns).
    fn store<const R: usize, const C: usize>(
        out: &mut [u8],
        bias: &[u8],
        sums: [[f32; C]; R],
        (i, j, n): (usize, usize, usize),
    ) {
        for (r, sums_r) in sums.iter().enumerate() {
            for (c, &v) in sums_r.iter().enumerate() {
                set_f32(out, (i + r) * n + j + c, v + f32_at(bias, j + c));
            }
        }
    }

    /// `R` rows of `x` from row `i` against columns `j0..j1`: [`BLOCK`] rows of `w` at a time,
    /// then one for an odd count.
    #[allow(clippy::too_many_arguments)]
    fn linear_rows<const R: usize>(
        x: &[u8],
        w: &[u8],
        bias: &[u8],
        out: &mut [u8],
        (i, j0, j1): (usize, usize, usize),
        k: usize,
        n: usize,
    ) {
        let bytes = k * 4;
        let xs: [&[u8]; R] = core::array::from_fn(|r| &x[(i + r) * bytes..(i + r + 1) * bytes]);
        let w_row = |j: usize| &w[j * bytes..(j + 1) * bytes];
        let mut j = j0;
        while j + BLOCK <= j1 {
            let ws: [&[u8]; BLOCK] = core::array::from_fn(|c| w_row(j + c));
            store(out, bias, dots(xs, ws, k), (i, j, n));
            j += BLOCK;
        }
        if j < j1 {
            store(out, bias, dots(xs, [w_row(j)], k), (i, j, n));
        }
    }

    /// `out[i, j] = Σ_t x[i, t] · w[j, t] + bias[j]`: `x` is `m × k`, `w` is `n × k`.
    ///
    /// Each sum runs in eight interleaved f32 partial sums (lane `l` adds the terms
    /// `t ≡ l mod 8` of the first `8 ⌊k / 8⌋` in order), which are added lane by lane; the last
    /// `k mod 8` terms follow in order, then the bias. The loop works on 2 rows of `x` by 2 rows
    /// of `w` at a time (each load feeds two products) over blocks of 32 rows of `w`, so the
    /// compiler vectorizes it; results differ from a sum in index order by rounding only.
    pub fn linear(x: &[u8], w: &[u8], bias: &[u8], out: &mut [u8], m: usize, k: usize, n: usize) {
        let mut j0 = 0;
        while j0 < n {
            let j1 = (j0 + COLUMN_BLOCK).min(n);
            let mut i = 0;
            while i + BLOCK <= m {
                linear_rows::<BLOCK>(x, w, bias, out, (i, j0, j1), k, n);
                i += BLOCK;
            }
            if i < m {
                linear_rows::<1>(x, w, bias, out, (i, j0, j1), k, n);
            }
            j0 = j1;
        }
    }

    /// Abramowitz–Stegun 7.1.26 for `erfc(z)`, `z >= 0` (absolute error below 1.5e-7):
    /// `t = 1 / (1 + p z)`, `erfc(z) ≈ t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(−z²)`.
    /// The WGSL and CUDA kernels evaluate the same expression.
    fn erfc_as(z: f32) -> f32 {
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = t
            * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
        poly * libm::expf(-z * z)
    }

    /// `erf(x)` by Abramowitz–Stegun 7.1.26 (absolute error below 1.5e-7), odd in `x`.
    pub fn erf(x: f32) -> f32 {
        let e = 1.0 - erfc_as(x.abs());
        if x < 0.0 { -e } else { e }
    }

    /// Exact (erf) GELU of one value: `0.5 x (1 + erf(x / √2))`, with `1 + erf` computed as
    /// `2 − erfc(|z|)` for `x >= 0` and `erfc(|z|)` below, so the negative tail does not cancel
    /// (absolute error at most `0.5 |x| · 1.5e-7`).
    pub fn gelu_one(x: f32) -> f32 {
        let e = erfc_as(x.abs() * core::f32::consts::FRAC_1_SQRT_2);
        let c = if x >= 0.0 { 2.0 - e } else { e };
        0.5 * x * c
    }

    /// `out[i] = gelu(x[i])` for `i < n` (see [`gelu_one`]).
    pub fn gelu(x: &[u8], out: &mut [u8], n: usize) {
        for i in 0..n {
            set_f32(out, i, gelu_one(f32_at(x, i)));
        }
    }

    /// The divisor of attention scores, `√head_dim` (in f32, correctly rounded). The GPU kernels
    /// receive this value rather than computing it.
    pub fn attention_scale(head_dim: u32) -> f32 {
        libm::sqrtf(head_dim as f32)
    }

    /// Masked scaled dot-product attention (see `KernelCall::Attention`). For each (batch `b`,
    /// head `h`, query `i`): `s_j = (q_i · k_j) / √head_dim` in order over the head's columns,
    /// for keys with `mask[b, j] != 0`; `p_j = exp(s_j − max s)`; `out_i = (Σ_j p_j v_j) / Σ_j p_j`
    /// summing keys in order and skipping `p_j = 0`. All keys masked: zeros. `seq` must be at most
    /// [`MAX_ATTENTION_SEQ`].
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
        let scale = attention_scale(head_dim as u32);
        let mut p = [0.0f32; MAX_ATTENTION_SEQ as usize];
        let p = &mut p[..seq];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..seq {
                    let qbase = (b * seq + i) * width + h * head_dim;
                    let mut max = f32::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        *pj = 0.0;
                        if f32_at(mask, b * seq + j) != 0.0 {
                            let kbase = (b * seq + j) * width + h * head_dim;
                            let dot = row(q, qbase, head_dim)
                                .zip(row(k, kbase, head_dim))
                                .fold(0.0f32, |s, (a, c)| s + a * c);
                            *pj = dot / scale;
                            max = max.max(*pj);
                        }
                    }
                    let mut sum = 0.0f32;
                    for (j, pj) in p.iter_mut().enumerate() {
                        *pj = if f32_at(mask, b * seq + j) != 0.0 { libm::expf(*pj - max) } else { 0.0 };
                        sum += *pj;
                    }
                    for d in 0..head_dim {
                        let mut acc = 0.0f32;
                        for (j, &pj) in p.iter().enumerate() {
                            if pj != 0.0 {
                                acc += pj * f32_at(v, (b * seq + j) * width + h * head_dim + d);
                            }
                        }
                        set_f32(out, qbase + d, if sum > 0.0 { acc / sum } else { 0.0 });
                    }
                }
            }
        }
    }

    /// `out[b, :] = Σ_s mask[b, s] · x[b·seq + s, :] / max(Σ_s mask[b, s], 1e-9)`, summing over
    /// `s` in order and skipping zero weights.
    pub fn mean_pool(x: &[u8], mask: &[u8], out: &mut [u8], batch: usize, seq: usize, dim: usize) {
        for b in 0..batch {
            for c in 0..dim {
                let (mut acc, mut weight) = (0.0f32, 0.0f32);
                for s in 0..seq {
                    let w = f32_at(mask, b * seq + s);
                    weight += w;
                    if w != 0.0 {
                        acc += w * f32_at(x, (b * seq + s) * dim + c);
                    }
                }
                set_f32(out, b * dim + c, acc / weight.max(1e-9));
            }
        }
    }

    /// `out[r, :] = x[r, :] / max(‖x[r, :]‖₂, 1e-12)` over `rows × dim`.
    pub fn l2_normalize(x: &[u8], out: &mut [u8], rows: usize, dim: usize) {
        for r in 0..rows {
            let base = r * dim;
            let ss = row(x, base, dim).fold(0.0f32, |s, v| s + v * v);
            let denom = libm::sqrtf(ss).max(1e-12);
            for c in 0..dim {
                set_f32(out, base + c, f32_at(x, base + c) / denom);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_folds_past_limit() {
        assert_eq!(grid_1d(0), (0, 1));
        assert_eq!(grid_1d(1), (1, 1));
        assert_eq!(grid_1d(256), (1, 1));
        assert_eq!(grid_1d(257), (2, 1));
        let (x, y) = grid_1d(u32::MAX);
        assert!(x as u64 * y as u64 * 256 >= u32::MAX as u64);
        assert!(x <= MAX_GROUPS_PER_DIM && y <= MAX_GROUPS_PER_DIM);
    }

    #[test]
    fn folded_grids_cover_and_stay_in_limits() {
        assert_eq!(grid_groups(0), Some((0, 1)));
        assert_eq!(grid_groups(65_535), Some((65_535, 1)));
        assert_eq!(grid_groups(65_536), Some((65_535, 2)));
        let max = u64::from(MAX_GROUPS_PER_DIM);
        let (x, y) = grid_groups(max * max).expect("fits");
        assert_eq!(u64::from(x) * u64::from(y), max * max);
        assert_eq!(grid_groups(max * max + 1), None);
    }

    #[test]
    fn launch_plans_bindings_and_skips_empty_outputs() {
        use rela_core::backend::BufferId as B;
        let call = KernelCall::Linear { x: B(1), w: B(2), bias: B(3), out: B(4), m: 130, k: 0, n: 70 };
        let launch = Launch::of(&call).expect("plannable").expect("non-empty output");
        assert_eq!(launch.kernel, Kernel::Linear, "k = 0 binds nothing of x and w as vec4");
        assert_eq!(launch.bindings(), &[(B(1), 0), (B(2), 0), (B(3), 280), (B(4), 130 * 70 * 4)]);
        assert_eq!(launch.groups, (17, 1), "⌈130 / 8⌉ row blocks, one 128-column block");
        assert_eq!(grid_linear_tiles(130, 70), Some((3 * 2, 1)));
        let vec4 = KernelCall::Linear { x: B(1), w: B(2), bias: B(3), out: B(4), m: 9, k: 384, n: 1536 };
        let launch = Launch::of(&vec4).expect("plannable").expect("non-empty output");
        assert_eq!(launch.kernel, Kernel::LinearVec4);
        assert_eq!(launch.groups, (2 * 12, 1));
        for (k, want) in [(1, Kernel::Linear), (6, Kernel::Linear), (8, Kernel::LinearVec4)] {
            let call = KernelCall::Linear { x: B(1), w: B(2), bias: B(3), out: B(4), m: 1, k, n: 1 };
            assert_eq!(Kernel::of(&call), Some(want), "k = {k}");
        }
        let empty = KernelCall::Attention {
            q: B(1),
            k: B(2),
            v: B(3),
            mask: B(5),
            out: B(4),
            batch: 2,
            seq: 3,
            heads: 4,
            head_dim: 0,
        };
        assert_eq!(Launch::of(&empty), Ok(None));
        let huge = KernelCall::Gelu { x: B(1), out: B(2), n: u32::MAX };
        assert!(Launch::of(&huge).is_ok(), "u32::MAX elements still index with u32");
        let too_many = KernelCall::L2Normalize { x: B(1), out: B(2), rows: 1 << 20, dim: 1 << 13 };
        assert_eq!(Launch::of(&too_many), Err(BackendError::Unsupported));
        for k in Kernel::ALL {
            assert_eq!(Kernel::ALL[k as usize], k);
        }
    }

    #[test]
    fn erf_and_gelu_match_known_values() {
        // erf(0.5), erf(1), erf(2) to 1e-9 (tables); A-S 7.1.26 promises 1.5e-7.
        for (x, want) in [(0.5f32, 0.520_499_877_8f64), (1.0, 0.842_700_792_9), (2.0, 0.995_322_265_0)] {
            assert!((f64::from(reference::erf(x)) - want).abs() < 3e-7, "erf({x})");
            assert!((f64::from(reference::erf(-x)) + want).abs() < 3e-7, "erf(-{x})");
        }
        assert_eq!(reference::gelu_one(0.0), 0.0);
        // gelu(1) = 0.5 (1 + erf(1/√2)) = 0.841344746...
        assert!((f64::from(reference::gelu_one(1.0)) - 0.841_344_746).abs() < 1e-6);
        // The negative tail does not cancel to zero: gelu(-5) = -1.43326e-6, within A-S's
        // 0.5 · 5 · 1.5e-7.
        let tail = f64::from(reference::gelu_one(-5.0));
        assert!(tail < 0.0 && (tail + 1.433_26e-6).abs() < 3.75e-7, "gelu(-5) = {tail:e}");
    }

    #[test]
    fn reference_linear_matches_f64() {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<std::vec::Vec<u8>>();
        // Odd m and n (single-row and single-column tails), k below, at and past the lane width.
        for (m, k, n) in
            [(1usize, 1usize, 1usize), (3, 17, 5), (5, 33, 70), (2, 0, 3), (4, 8, 2), (7, 64, 33)]
        {
            let value = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0;
            let xv: std::vec::Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
            let wv: std::vec::Vec<f32> = (0..n * k).map(|i| value(i, 2) * 0.2).collect();
            let bv: std::vec::Vec<f32> = (0..n).map(|i| value(i, 3)).collect();
            let mut out = std::vec![0u8; m * n * 4];
            reference::linear(&f(&xv), &f(&wv), &f(&bv), &mut out, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut scale) = (f64::from(bv[j]), f64::from(bv[j]).abs());
                    for t in 0..k {
                        let p = f64::from(xv[i * k + t]) * f64::from(wv[j * k + t]);
                        want += p;
                        scale += p.abs();
                    }
                    let q = (i * n + j) * 4;
                    let got = f64::from(f32::from_le_bytes([out[q], out[q + 1], out[q + 2], out[q + 3]]));
                    assert!((got - want).abs() <= 1e-6 * scale.max(1e-30), "m {m} k {k} n {n} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn reference_matmul_small() {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<std::vec::Vec<u8>>();
        let a = f(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); // 2x3
        let b = f(&[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]); // 3x2
        let mut out = [0u8; 16];
        reference::matmul(&a, &b, &mut out, 2, 3, 2);
        assert_eq!(out.to_vec(), f(&[58.0, 64.0, 139.0, 154.0]));
    }
}
