//! The built-in RELA kernels, in one place for every backend.
//!
//! - [`wgsl`]: one WGSL source per kernel. wgpu consumes them directly; the Vulkan backend
//!   turns them into SPIR-V with naga.
//! - [`CUDA_SOURCE`]: the same kernels in CUDA C, compiled at run time by NVRTC.
//! - [`reference`]: plain-Rust implementations over little-endian byte buffers. The host
//!   backend runs them, and the conformance suite checks every other backend against them.
//!
//! # Binding and launch conventions (WGSL)
//!
//! Every kernel has one entry point, `main`, and bind group 0:
//!
//! | kernel | bindings | workgroup | grid |
//! |---|---|---|---|
//! | binary (ADD, MUL) | 0: `a` (read), 1: `b` (read), 2: `out` (read_write), 3: [`Params`] (uniform) | 256 | [`grid_1d`]`(n)` |
//! | scale | 0: `x` (read), 1: `out` (read_write), 2: [`Params`] (uniform) | 256 | [`grid_1d`]`(n)` |
//! | matmul | 0: `a`, 1: `b`, 2: `out`, 3: [`Params`] | 16×16 | [`grid_matmul`]`(m, n)` |
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

use rela_core::backend::{BinaryOp, KernelCall};

/// WGSL sources.
pub mod wgsl {
    /// Elementwise add or multiply; `Params::m` selects the op (0 add, 1 mul).
    pub const BINARY: &str = include_str!("../wgsl/binary.wgsl");
    /// `out = alpha * x`.
    pub const SCALE: &str = include_str!("../wgsl/scale.wgsl");
    /// Row-major matmul, 16×16 tiles.
    pub const MATMUL: &str = include_str!("../wgsl/matmul.wgsl");
}

/// CUDA C source of every kernel (`rela_binary`, `rela_scale`, `rela_matmul`), for NVRTC.
///
/// Launches: `rela_binary(a, b, out, n, op)` and `rela_scale(x, out, n, alpha)` with 256-thread
/// blocks over `n`; `rela_matmul(a, b, out, m, k, n)` with 16×16 blocks over `(n, m)`.
pub const CUDA_SOURCE: &str = include_str!("../cuda/kernels.cu");

/// Elementwise workgroup size.
pub const WORKGROUP_1D: u32 = 256;
/// Matmul tile edge.
pub const TILE: u32 = 16;
/// Largest workgroup count per grid dimension that every API guarantees.
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// The 16-byte uniform block every WGSL kernel reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Elements (binary, scale) or columns of `b` and `out` (matmul).
    pub n: u32,
    /// Binary op selector (0 add, 1 mul), or rows of `a` (matmul).
    pub m: u32,
    /// Inner dimension (matmul).
    pub k: u32,
    /// Scale factor.
    pub alpha: f32,
}

impl Params {
    /// The uniform block's bytes (std140-compatible: four 4-byte scalars).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.n.to_le_bytes());
        out[4..8].copy_from_slice(&self.m.to_le_bytes());
        out[8..12].copy_from_slice(&self.k.to_le_bytes());
        out[12..16].copy_from_slice(&self.alpha.to_le_bytes());
        out
    }

    /// The parameters of a kernel call.
    pub fn of(call: &KernelCall) -> Self {
        match *call {
            KernelCall::Binary { op, n, .. } => Self { n, m: op_code(op), k: 0, alpha: 0.0 },
            KernelCall::Scale { n, alpha, .. } => Self { n, m: 0, k: 0, alpha },
            KernelCall::Matmul { m, k, n, .. } => Self { n, m, k, alpha: 0.0 },
            _ => Self { n: 0, m: 0, k: 0, alpha: 0.0 },
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

/// Workgroup counts `(x, y)` for a matmul with `m` rows and `n` columns.
pub const fn grid_matmul(m: u32, n: u32) -> (u32, u32) {
    (n.div_ceil(TILE), m.div_ceil(TILE))
}

/// Plain-Rust reference kernels over little-endian f32 byte buffers.
///
/// Callers validate shapes first ([`KernelCall::validate`]); these functions then index only
/// within the slices they are given and never panic on validated shapes.
pub mod reference {
    use super::BinaryOp;

    fn f32_at(buf: &[u8], i: usize) -> f32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&buf[i * 4..i * 4 + 4]);
        f32::from_le_bytes(b)
    }

    fn set_f32(buf: &mut [u8], i: usize, v: f32) {
        buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
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
    fn reference_matmul_small() {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<std::vec::Vec<u8>>();
        let a = f(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); // 2x3
        let b = f(&[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]); // 3x2
        let mut out = [0u8; 16];
        reference::matmul(&a, &b, &mut out, 2, 3, 2);
        assert_eq!(out.to_vec(), f(&[58.0, 64.0, 139.0, 154.0]));
    }
}
