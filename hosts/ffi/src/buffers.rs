//! Buffers: alloc, free, write, read, copy, fill, and DISPATCH of the built-in kernels.

use rela_client::{Handle, Kernel};

use crate::boundary::{Failure, bytes, bytes_mut, non_null, non_null_mut, run};
use crate::clients::{self, RelaClient};

/// A buffer on the node: the node's handle for it, valid in the session that allocated it.
pub type RelaBuffer = u32;

/// `out[i] = a[i] + b[i]` for `i < n` (little-endian f32).
pub const RELA_KERNEL_ADD: u32 = 1;
/// `out[i] = a[i] * b[i]` for `i < n`.
pub const RELA_KERNEL_MUL: u32 = 2;
/// `out[i] = alpha * a[i]` for `i < n` (`b` unused).
pub const RELA_KERNEL_SCALE: u32 = 3;
/// Row-major `out (m×n) = a (m×k) · b (k×n)`.
pub const RELA_KERNEL_MATMUL: u32 = 4;

/// A built-in kernel invocation for [`rela_dispatch`]. Fields a kernel does not use are
/// ignored.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RelaKernel {
    /// One of the `RELA_KERNEL_*` values.
    pub kernel: u32,
    /// First input.
    pub a: RelaBuffer,
    /// Second input (ADD, MUL, MATMUL).
    pub b: RelaBuffer,
    /// Output.
    pub out: RelaBuffer,
    /// Rows of `a` (MATMUL).
    pub m: u32,
    /// Inner dimension (MATMUL).
    pub k: u32,
    /// Elements (ADD, MUL, SCALE) or columns of `b` and `out` (MATMUL).
    pub n: u32,
    /// Factor (SCALE).
    pub alpha: f32,
}

impl RelaKernel {
    fn to_kernel(self) -> Result<Kernel, Failure> {
        let (a, b, out) = (handle(self.a), handle(self.b), handle(self.out));
        Ok(match self.kernel {
            RELA_KERNEL_ADD => Kernel::Add { a, b, out, n: self.n },
            RELA_KERNEL_MUL => Kernel::Mul { a, b, out, n: self.n },
            RELA_KERNEL_SCALE => Kernel::Scale { x: a, out, n: self.n, alpha: self.alpha },
            RELA_KERNEL_MATMUL => Kernel::Matmul { a, b, out, m: self.m, k: self.k, n: self.n },
            other => {
                return Err(Failure::invalid(format!(
                    "unknown kernel {other} (1 to 4: ADD, MUL, SCALE, MATMUL)"
                )));
            }
        })
    }
}

/// A client handle for a buffer: the node knows the size, the client needs only the number.
const fn handle(raw: RelaBuffer) -> Handle {
    Handle::from_raw(raw, 0)
}

/// Allocates `size` bytes on the node (fresh memory reads as zeros) and writes the buffer's
/// handle to `*out_buffer`.
///
/// # Safety
/// `out_buffer` must point to a writable `RelaBuffer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_alloc(client: RelaClient, size: u64, out_buffer: *mut RelaBuffer) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { non_null_mut(out_buffer, "out_buffer")? };
        *out = clients::with_client(client, |c| Ok(c.alloc(size)?))?.raw();
        Ok(())
    })
}

/// Frees a buffer; the node zeroes its memory.
#[unsafe(no_mangle)]
pub extern "C" fn rela_free(client: RelaClient, buffer: RelaBuffer) -> i32 {
    run(|| clients::with_client(client, |c| Ok(c.free(handle(buffer))?)))
}

/// Writes `len` bytes from `data` into `buffer` at `offset`. Any size: large writes are split
/// into frames and pipelined.
///
/// # Safety
/// `data` must point to `len` readable bytes (it may be null when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_write(
    client: RelaClient,
    buffer: RelaBuffer,
    offset: u64,
    data: *const u8,
    len: usize,
) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let data = unsafe { bytes(data, len, "data")? };
        clients::with_client(client, |c| Ok(c.write(handle(buffer), offset, data)?))
    })
}

/// Reads `len` bytes of `buffer` from `offset` into `out`.
///
/// # Safety
/// `out` must point to `len` writable bytes (it may be null when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_read(
    client: RelaClient,
    buffer: RelaBuffer,
    offset: u64,
    out: *mut u8,
    len: usize,
) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { bytes_mut(out, len, "out")? };
        clients::with_client(client, |c| Ok(c.read_into(handle(buffer), offset, out)?))
    })
}

/// Copies `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`, on the node.
#[unsafe(no_mangle)]
pub extern "C" fn rela_copy(
    client: RelaClient,
    src: RelaBuffer,
    src_offset: u64,
    dst: RelaBuffer,
    dst_offset: u64,
    len: u64,
) -> i32 {
    run(|| {
        clients::with_client(client, |c| Ok(c.copy(handle(src), src_offset, handle(dst), dst_offset, len)?))
    })
}

/// Sets `len` bytes of `buffer` from `offset` to `value`, on the node.
#[unsafe(no_mangle)]
pub extern "C" fn rela_fill(client: RelaClient, buffer: RelaBuffer, offset: u64, len: u64, value: u8) -> i32 {
    run(|| clients::with_client(client, |c| Ok(c.fill(handle(buffer), offset, len, value)?)))
}

/// Runs a built-in kernel on the node and waits for it to finish.
///
/// # Safety
/// `kernel` must point to a `RelaKernel`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_dispatch(client: RelaClient, kernel: *const RelaKernel) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let kernel = unsafe { non_null(kernel, "kernel")? }.to_kernel()?;
        clients::with_client(client, |c| Ok(c.dispatch(kernel)?))
    })
}
