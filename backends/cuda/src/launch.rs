//! Kernel launches: the elementwise kernels, MATMUL in grid-sized row chunks, and the model
//! and generation kernels on the grids `rela_kernels::Launch` plans, each on the stream of the
//! call's output.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use rela_core::backend::{BackendError, KernelCall};
use rela_kernels::{
    ATTENTION_WORKGROUP, Kernel, Launch, Q_LINEAR_WORKGROUP, TILE, WORKGROUP_1D, grid_linear_tiles, op_code,
};

use crate::{CudaBackend, map_err, usize_range};

/// Largest grid `y` dimension CUDA accepts.
const MAX_GRID_Y: u32 = 65_535;

impl CudaBackend {
    pub(crate) fn launch_binary(
        &self,
        call: &KernelCall,
        out: &mut CudaSlice<u8>,
    ) -> Result<(), BackendError> {
        let KernelCall::Binary { op, a, b, n, .. } = *call else {
            return Err(BackendError::InvalidArgument);
        };
        if n == 0 {
            return Ok(());
        }
        let (a, b) = (self.buffer(a)?, self.buffer(b)?);
        let op = op_code(op);
        let cfg = grid_1d(n);
        let stream = Arc::clone(out.stream());
        let mut builder = stream.launch_builder(&self.kernels.binary);
        builder.arg(a).arg(b).arg(&mut *out).arg(&n).arg(&op);
        // SAFETY: `rela_binary(const float* a, const float* b, float* out, unsigned int n,
        // unsigned int op)`: three device pointers (each CudaSlice argument passes its
        // `CUdeviceptr`) then two 4-byte `u32`s, in that order. `validate` checked that `a`,
        // `b` and `out` hold at least `4 n` bytes and that `out` aliases neither input; the
        // kernel touches only indices `< n`. The grid covers `n` with 256-thread blocks.
        unsafe { builder.launch(cfg) }.map_err(map_err)?;
        Ok(())
    }

    pub(crate) fn launch_scale(
        &self,
        call: &KernelCall,
        out: &mut CudaSlice<u8>,
    ) -> Result<(), BackendError> {
        let KernelCall::Scale { x, n, alpha, .. } = *call else {
            return Err(BackendError::InvalidArgument);
        };
        if n == 0 {
            return Ok(());
        }
        let x = self.buffer(x)?;
        let cfg = grid_1d(n);
        let stream = Arc::clone(out.stream());
        let mut builder = stream.launch_builder(&self.kernels.scale);
        builder.arg(x).arg(&mut *out).arg(&n).arg(&alpha);
        // SAFETY: `rela_scale(const float* x, float* out, unsigned int n, float alpha)`: two
        // device pointers, a `u32` and an `f32`, in that order. `validate` checked that `x` and
        // `out` hold at least `4 n` bytes and do not alias; the kernel touches only indices
        // `< n`.
        unsafe { builder.launch(cfg) }.map_err(map_err)?;
        Ok(())
    }

    pub(crate) fn launch_matmul(
        &self,
        call: &KernelCall,
        out: &mut CudaSlice<u8>,
    ) -> Result<(), BackendError> {
        let KernelCall::Matmul { a, b, m, k, n, .. } = *call else {
            return Err(BackendError::InvalidArgument);
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (a, b) = (self.buffer(a)?, self.buffer(b)?);
        let b_view = b.as_view();
        let stream = Arc::clone(out.stream());
        // Grid y is limited to 65,535 blocks, so rows go in chunks of up to 65,535 tiles, each
        // launch seeing its rows of `a` and `out` through views.
        let rows_per_launch = MAX_GRID_Y * TILE;
        let mut row = 0u32;
        while row < m {
            let rows = (m - row).min(rows_per_launch);
            let a_range = f32_range(row, rows, k)?;
            let out_range = f32_range(row, rows, n)?;
            let a_view = a.try_slice(a_range).ok_or(BackendError::OutOfBounds)?;
            let mut out_view = out.try_slice_mut(out_range).ok_or(BackendError::OutOfBounds)?;
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(TILE), rows.div_ceil(TILE), 1),
                block_dim: (TILE, TILE, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = stream.launch_builder(&self.kernels.matmul);
            builder.arg(&a_view).arg(&b_view).arg(&mut out_view).arg(&rows).arg(&k).arg(&n);
            // SAFETY: `rela_matmul(const float* a, const float* b, float* out, unsigned int m,
            // unsigned int k, unsigned int n)`: three device pointers then three `u32`s, in that
            // order. The `a` view holds exactly `rows × k` f32s from row `row`, the `out` view
            // `rows × n` f32s from row `row` (both inside the buffers, which `validate` checked
            // hold `m × k` and `m × n` f32s), and `b` holds at least `k × n` f32s. The kernel
            // reads only rows `< rows`, columns `< n` and inner indices `< k`; `out` aliases
            // neither input. Grid: `n / 16` (≤ 2^28) by `rows / 16` (≤ 65,535) blocks of 16×16,
            // using 2 KiB of static shared memory.
            unsafe { builder.launch(cfg) }.map_err(map_err)?;
            row += rows;
        }
        Ok(())
    }
    /// Launches a model or generation kernel (GATHER … ARGMAX) with the grid [`Launch`] plans
    /// (LINEAR: one block per 64×64 output tile, [`grid_linear_tiles`]).
    pub(crate) fn launch_model(
        &self,
        call: &KernelCall,
        out: &mut CudaSlice<u8>,
    ) -> Result<(), BackendError> {
        let Some(launch) = Launch::of(call)? else {
            return Ok(());
        };
        let f = self
            .kernels
            .model
            .get(launch.kernel as usize)
            .and_then(Option::as_ref)
            .ok_or(BackendError::Unsupported)?;
        let block = match launch.kernel {
            Kernel::Attention | Kernel::CausalAttention => ATTENTION_WORKGROUP,
            Kernel::QLinear => Q_LINEAR_WORKGROUP,
            _ => WORKGROUP_1D,
        };
        let groups = match *call {
            KernelCall::Linear { m, n, .. } => grid_linear_tiles(m, n).ok_or(BackendError::Unsupported)?,
            _ => launch.groups,
        };
        let cfg =
            LaunchConfig { grid_dim: (groups.0, groups.1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        let stream = Arc::clone(out.stream());
        let mut builder = stream.launch_builder(f);
        // Scalars outlive `builder`: they are bound here, before it is used.
        let (p, scale) = (launch.params, launch.params.alpha);
        let buf = |id| self.buffer(id);
        match *call {
            KernelCall::Gather { table, ids, .. } => {
                // rela_gather(table, ids, out, vocab, dim, rows)
                builder.arg(buf(table)?).arg(buf(ids)?).arg(&mut *out).arg(&p.k).arg(&p.n).arg(&p.m);
            }
            KernelCall::LayerNorm { x, gamma, beta, .. } => {
                // rela_layernorm(x, gamma, beta, out, rows, dim, eps)
                builder
                    .arg(buf(x)?)
                    .arg(buf(gamma)?)
                    .arg(buf(beta)?)
                    .arg(&mut *out)
                    .arg(&p.m)
                    .arg(&p.n)
                    .arg(&scale);
            }
            KernelCall::Linear { x, w, bias, .. } => {
                // rela_linear(x, w, bias, out, m, k, n)
                builder
                    .arg(buf(x)?)
                    .arg(buf(w)?)
                    .arg(buf(bias)?)
                    .arg(&mut *out)
                    .arg(&p.m)
                    .arg(&p.k)
                    .arg(&p.n);
            }
            KernelCall::Gelu { x, .. } => {
                // rela_gelu(x, out, n)
                builder.arg(buf(x)?).arg(&mut *out).arg(&p.n);
            }
            KernelCall::Attention { q, k, v, mask, .. } => {
                // rela_attention(q, k, v, mask, out, batch, seq, heads, head_dim, scale)
                builder
                    .arg(buf(q)?)
                    .arg(buf(k)?)
                    .arg(buf(v)?)
                    .arg(buf(mask)?)
                    .arg(&mut *out)
                    .arg(&p.batch)
                    .arg(&p.m)
                    .arg(&p.k)
                    .arg(&p.n)
                    .arg(&scale);
            }
            KernelCall::MeanPool { x, mask, .. } => {
                // rela_meanpool(x, mask, out, batch, seq, dim)
                builder.arg(buf(x)?).arg(buf(mask)?).arg(&mut *out).arg(&p.batch).arg(&p.m).arg(&p.n);
            }
            KernelCall::L2Normalize { x, .. } => {
                // rela_l2norm(x, out, rows, dim)
                builder.arg(buf(x)?).arg(&mut *out).arg(&p.m).arg(&p.n);
            }
            KernelCall::RmsNorm { x, w, .. } => {
                // rela_rms_norm(x, w, out, rows, dim, eps)
                builder.arg(buf(x)?).arg(buf(w)?).arg(&mut *out).arg(&p.m).arg(&p.n).arg(&scale);
            }
            KernelCall::Rope { x, pos, .. } => {
                // rela_rope(x, pos, out, rows, heads, head_dim, rope_dim, log2_base)
                builder
                    .arg(buf(x)?)
                    .arg(buf(pos)?)
                    .arg(&mut *out)
                    .arg(&p.m)
                    .arg(&p.k)
                    .arg(&p.n)
                    .arg(&p.batch)
                    .arg(&scale);
            }
            KernelCall::SwiGlu { gate, up, .. } => {
                // rela_swiglu(gate, up, out, n)
                builder.arg(buf(gate)?).arg(buf(up)?).arg(&mut *out).arg(&p.n);
            }
            KernelCall::QLinear { x, w, .. } => {
                // rela_q_linear(x, w, out, m, k, n, type)
                builder.arg(buf(x)?).arg(buf(w)?).arg(&mut *out).arg(&p.m).arg(&p.k).arg(&p.n).arg(&p.batch);
            }
            KernelCall::QGather { table, ids, .. } => {
                // rela_q_gather(table, ids, out, vocab, dim, rows, type)
                builder
                    .arg(buf(table)?)
                    .arg(buf(ids)?)
                    .arg(&mut *out)
                    .arg(&p.k)
                    .arg(&p.n)
                    .arg(&p.m)
                    .arg(&p.batch);
            }
            KernelCall::CausalAttention { q, k, v, .. } => {
                // rela_causal_attention(q, k, v, out, tokens, pos0, heads, kv_heads, head_dim, scale)
                builder
                    .arg(buf(q)?)
                    .arg(buf(k)?)
                    .arg(buf(v)?)
                    .arg(&mut *out)
                    .arg(&p.m)
                    .arg(&p.aux)
                    .arg(&p.k)
                    .arg(&p.batch)
                    .arg(&p.n)
                    .arg(&scale);
            }
            KernelCall::Softmax { x, .. } | KernelCall::Argmax { x, .. } => {
                // rela_softmax(x, out, rows, dim), rela_argmax(x, out, rows, dim)
                builder.arg(buf(x)?).arg(&mut *out).arg(&p.m).arg(&p.n);
            }
            // Launched on their own.
            KernelCall::Binary { .. } | KernelCall::Scale { .. } | KernelCall::Matmul { .. } => {
                return Err(BackendError::Unsupported);
            }
        }
        // SAFETY: each arm pushes exactly the parameters of its kernel in `CUDA_SOURCE`, in
        // order: device pointers (a `CudaSlice` passes its `CUdeviceptr`) for the inputs and the
        // output, then `u32`s and `f32`s (`Params` fields, named in the comments). `validate`
        // checked that every buffer holds what the shape needs and that the output aliases no
        // input; `Launch::of` checked that every element count fits `u32` (and the quantized
        // weights' byte count, which Q_LINEAR and Q_GATHER address by byte) and that a
        // CAUSAL_ATTENTION head has at most 256 columns. The kernels index only below those
        // counts (ids are range-checked against `vocab` on the device, a query reads keys
        // `0 ..= pos0 + t` of a cache validated to hold `pos0 + tokens` rows), and skip folded
        // block indices past their work. Grid: at most 65,535 × 65,535 blocks of 256 (64 for
        // attention, causal attention and Q_LINEAR) threads, at most 8 KiB of static shared
        // memory.
        unsafe { builder.launch(cfg) }.map_err(map_err)?;
        Ok(())
    }
}

/// Byte range of `rows` rows of `cols` f32s starting at row `row`.
fn f32_range(row: u32, rows: u32, cols: u32) -> Result<core::ops::Range<usize>, BackendError> {
    let row_bytes = u64::from(cols).checked_mul(4).ok_or(BackendError::InvalidArgument)?;
    let start = u64::from(row).checked_mul(row_bytes).ok_or(BackendError::InvalidArgument)?;
    let len = u64::from(rows).checked_mul(row_bytes).ok_or(BackendError::InvalidArgument)?;
    let end = start.checked_add(len).ok_or(BackendError::InvalidArgument)?;
    usize_range(start..end)
}

/// Launch shape for the elementwise kernels: 256-thread blocks over `n` in one dimension.
/// `n.div_ceil(256)` is at most 2^24 blocks, well under the grid x limit of 2^31 − 1.
fn grid_1d(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(WORKGROUP_1D), 1, 1),
        block_dim: (WORKGROUP_1D, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_shapes_fit_cuda_limits() {
        let cfg = grid_1d(u32::MAX);
        assert!(u64::from(cfg.grid_dim.0) * 256 >= u64::from(u32::MAX));
        assert!(cfg.grid_dim.0 <= i32::MAX as u32);
        assert_eq!(grid_1d(1).grid_dim, (1, 1, 1));
        assert_eq!(grid_1d(256).grid_dim, (1, 1, 1));
        assert_eq!(grid_1d(257).grid_dim, (2, 1, 1));
        assert!((MAX_GRID_Y * TILE).div_ceil(TILE) <= MAX_GRID_Y);
    }

    #[test]
    fn row_ranges_are_overflow_safe() {
        assert_eq!(f32_range(2, 3, 4), Ok(32..80));
        assert_eq!(f32_range(0, 0, 0), Ok(0..0));
        assert_eq!(f32_range(u32::MAX, u32::MAX, u32::MAX), Err(BackendError::InvalidArgument));
        assert!(f32_range(u32::MAX, 1, 1).is_ok());
    }
}
