//! MATMUL and LINEAR through cuBLAS's SGEMM, when the library is there.
//!
//! cuBLAS is column-major; the kernels' matrices are row-major, and a row-major `r × c` matrix
//! is the column-major `c × r` matrix of the same bytes (its transpose). So:
//!
//! - MATMUL, `out (m×n) = a (m×k) · b (k×n)`: column-major `outᵀ (n×m) = bᵀ (n×k) · aᵀ (k×m)`,
//!   one SGEMM with both operands as they lie (`lda = n`, `ldb = k`, `ldc = n`);
//! - LINEAR, `out (m×n) = x (m×k) · wᵀ + bias` with `w` as `n×k`: column-major
//!   `outᵀ (n×m) = w (n×k, read as the transpose of its bytes) · xᵀ (k×m)`. The bias goes in
//!   first as a rank-1 product, `outᵀ = bias (n×1) · 1 (1×m)`, and the main product adds to it
//!   (`beta = 1`), so no kernel of our own is needed.
//!
//! Sums run in cuBLAS's order, with fused multiply-adds: results agree with the reference
//! kernels within the conformance tolerance, not bit for bit. TF32 is not enabled (the
//! handle's default math mode), so the products stay in f32.
//!
//! [`Blas::new`] checks that `libcublas` loads before cudarc touches it (cudarc panics when a
//! library is missing); without it the backend keeps its own MATMUL and LINEAR kernels.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use rela_core::backend::{BackendError, KernelCall};

/// SGEMM on the stream of each call's output, or nothing when cuBLAS is missing.
pub(crate) struct Blas {
    blas: Option<CudaBlas>,
    /// The stream the handle is set to.
    on: Option<Arc<CudaStream>>,
    /// `m` ones (f32) for LINEAR's bias, grown as calls need.
    ones: Option<CudaSlice<f32>>,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas").field("cublas", &self.blas.is_some()).finish_non_exhaustive()
    }
}

/// What one SGEMM call needs to know, in cuBLAS's (column-major) terms.
struct Sgemm {
    transa: bool,
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    beta: f32,
}

impl Blas {
    /// cuBLAS on `stream`, if the library loads and a handle can be made; `None` inside
    /// otherwise (the backend then runs its own kernels).
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Self {
        // SAFETY: only tries to `dlopen` the library's candidate names; nothing is called.
        let present = unsafe { blas_sys::is_culib_present() };
        let blas = if present { CudaBlas::new(Arc::clone(stream)).ok() } else { None };
        Self { blas, on: Some(Arc::clone(stream)), ones: None }
    }

    /// Whether SGEMM is available.
    pub(crate) fn available(&self) -> bool {
        self.blas.is_some()
    }

    /// Runs a validated MATMUL or LINEAR call through SGEMM: `Ok(true)` when it ran, `Ok(false)`
    /// when SGEMM cannot take it (no cuBLAS, another kernel, a dimension past `i32`) and the
    /// caller runs its own kernel. `inputs` are the call's input buffers in order (MATMUL: `a`,
    /// `b`; LINEAR: `x`, `w`, `bias`).
    ///
    /// The products run on `stream` (the output's).
    pub(crate) fn run(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        call: &KernelCall,
        inputs: &[&CudaSlice<u8>],
        out: &mut CudaSlice<u8>,
    ) -> Result<bool, BackendError> {
        let Some(handle) = self.blas.as_mut() else { return Ok(false) };
        if !self.on.as_ref().is_some_and(|on| Arc::ptr_eq(on, stream)) {
            // SAFETY: the handle is this backend's alone and is used from one call at a time
            // (`&mut self`); work already enqueued through it stays ordered on its old stream,
            // and every buffer the next products touch carries cudarc's events, which make the
            // new stream wait for their last writes on any other.
            unsafe { handle.set_stream(Arc::clone(stream)) }.map_err(|_| BackendError::DeviceLost)?;
            self.on = Some(Arc::clone(stream));
        }
        let Some(blas) = self.blas.as_ref() else { return Ok(false) };
        let fits = |v: u32| i32::try_from(v).is_ok();
        match (*call, inputs) {
            (KernelCall::Matmul { m, k, n, .. }, [a, b]) => {
                // k = 0 (an output of zeros) is left to the kernel: its inputs may be shorter
                // than one f32.
                if !(fits(m) && fits(k) && fits(n)) || k == 0 {
                    return Ok(false);
                }
                if m == 0 || n == 0 {
                    return Ok(true);
                }
                let cfg = Sgemm { transa: false, m: n, n: m, k, lda: n, ldb: k, ldc: n, beta: 0.0 };
                sgemm(blas, cfg, b, f32s(k, n), a, f32s(m, k), out, f32s(m, n))?;
                Ok(true)
            }
            (KernelCall::Linear { m, k, n, .. }, [x, w, bias]) => {
                if !(fits(m) && fits(k) && fits(n)) {
                    return Ok(false);
                }
                if m == 0 || n == 0 {
                    return Ok(true);
                }
                self.grow_ones(ctx, stream, m)?;
                let (Some(blas), Some(ones)) = (self.blas.as_ref(), self.ones.as_ref()) else {
                    return Err(BackendError::DeviceLost);
                };
                // outᵀ = bias · 1ᵀ, then outᵀ += w(read transposed) · xᵀ.
                let rank1 = Sgemm { transa: false, m: n, n: m, k: 1, lda: n, ldb: 1, ldc: n, beta: 0.0 };
                sgemm_f32(blas, rank1, bias, f32s(1, n), ones, m as usize, out, f32s(m, n))?;
                if k > 0 {
                    let main = Sgemm { transa: true, m: n, n: m, k, lda: k, ldb: k, ldc: n, beta: 1.0 };
                    sgemm(blas, main, w, f32s(n, k), x, f32s(m, k), out, f32s(m, n))?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Makes `ones` hold at least `m` ones on the device. The old ones may have been read on
    /// several streams (cudarc's free waits only for the last), so the device is synchronized
    /// before they go.
    fn grow_ones(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        m: u32,
    ) -> Result<(), BackendError> {
        let m = m as usize;
        if self.ones.as_ref().is_none_or(|o| o.len() < m) {
            if self.ones.is_some() {
                ctx.synchronize().map_err(crate::map_err)?;
            }
            let host = vec![1f32; m.next_power_of_two()];
            self.ones = Some(stream.clone_htod(&host).map_err(crate::map_err)?);
        }
        Ok(())
    }
}

/// `rows × cols` f32s.
const fn f32s(rows: u32, cols: u32) -> usize {
    rows as usize * cols as usize
}

/// One SGEMM, `C = A·B + beta·C` in cuBLAS's terms, over byte buffers viewed as f32:
/// `a` holds `a_len` f32s, `b` `b_len`, `c` `c_len` (the call's validated sizes).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    blas: &CudaBlas,
    cfg: Sgemm,
    a: &CudaSlice<u8>,
    a_len: usize,
    b: &CudaSlice<u8>,
    b_len: usize,
    c: &mut CudaSlice<u8>,
    c_len: usize,
) -> Result<(), BackendError> {
    // SAFETY: the buffers are device allocations of bytes; `validate` checked each holds at
    // least its length in f32s (4 bytes each), and `transmute` checks that again and returns
    // `None` rather than a view past the allocation. f32 has no invalid bit patterns.
    let a = unsafe { a.transmute::<f32>(a_len) }.ok_or(BackendError::OutOfBounds)?;
    let b = unsafe { b.transmute::<f32>(b_len) }.ok_or(BackendError::OutOfBounds)?;
    let mut c = unsafe { c.transmute_mut::<f32>(c_len) }.ok_or(BackendError::OutOfBounds)?;
    launch(blas, cfg, &a, &b, &mut c)
}

/// [`sgemm`] with `b` already f32 (LINEAR's ones).
#[allow(clippy::too_many_arguments)]
fn sgemm_f32(
    blas: &CudaBlas,
    cfg: Sgemm,
    a: &CudaSlice<u8>,
    a_len: usize,
    b: &CudaSlice<f32>,
    b_len: usize,
    c: &mut CudaSlice<u8>,
    c_len: usize,
) -> Result<(), BackendError> {
    // SAFETY: as in `sgemm`.
    let a = unsafe { a.transmute::<f32>(a_len) }.ok_or(BackendError::OutOfBounds)?;
    let b = b.try_slice(..b_len).ok_or(BackendError::OutOfBounds)?;
    let mut c = unsafe { c.transmute_mut::<f32>(c_len) }.ok_or(BackendError::OutOfBounds)?;
    launch(blas, cfg, &a, &b, &mut c)
}

fn launch<A, B, C>(blas: &CudaBlas, cfg: Sgemm, a: &A, b: &B, c: &mut C) -> Result<(), BackendError>
where
    A: cudarc::driver::DevicePtr<f32>,
    B: cudarc::driver::DevicePtr<f32>,
    C: cudarc::driver::DevicePtrMut<f32>,
{
    let op = |t: bool| {
        if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N }
    };
    // Every dimension was checked to fit `i32` by the caller (`run`).
    let int = |v: u32| i32::try_from(v).map_err(|_| BackendError::Unsupported);
    let gemm = GemmConfig {
        transa: op(cfg.transa),
        transb: op(false),
        m: int(cfg.m)?,
        n: int(cfg.n)?,
        k: int(cfg.k)?,
        alpha: 1.0f32,
        lda: int(cfg.lda.max(1))?,
        ldb: int(cfg.ldb.max(1))?,
        beta: cfg.beta,
        ldc: int(cfg.ldc.max(1))?,
    };
    // SAFETY: column-major `C (m×n) = op(A) · B + beta·C` with `op(A)` `m×k` (A stored
    // `lda × (transa ? m : k)`), B `k×n` (`ldb × n`), C `ldc × n`: the callers pass views of
    // exactly those sizes (MATMUL: A = b's `k·n`, B = a's `m·k`, C = out's `m·n`; LINEAR: the
    // rank-1 product reads `n` of bias and `m` ones, the main one w's `n·k` and x's `m·k`), all
    // on the handle's stream, and C aliases neither input (`validate`).
    unsafe { blas.gemm(gemm, a, b, c) }.map_err(|_| BackendError::DeviceLost)
}
