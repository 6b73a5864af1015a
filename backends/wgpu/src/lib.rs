//! A [`GpuBackend`](rela_core::backend::GpuBackend) on [wgpu](https://wgpu.rs): WebGPU over
//! Vulkan, OpenGL (ES, through EGL), Metal or DX12, headless.
//!
//! ```no_run
//! use rela_backend_wgpu::{Api, WgpuBackend, WgpuConfig};
//! use rela_core::backend::GpuBackend;
//!
//! let mut gpu = WgpuBackend::new(WgpuConfig { capacity: 1 << 30, ..WgpuConfig::default() })?;
//! let buf = gpu.alloc(1024).map_err(|e| e.to_string())?;
//! gpu.write(buf, 3, b"hello").map_err(|e| e.to_string())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How the contract maps onto wgpu
//!
//! - **Buffers** are `STORAGE | COPY_SRC | COPY_DST`, padded up to a multiple of 4 bytes
//!   (`COPY_BUFFER_ALIGNMENT`); the logical size is what the caller asked for and is what
//!   bounds checks and [`Usage`](rela_core::backend::Usage) see. The padding is never visible.
//! - **Accounting** is enforced against [`WgpuConfig::capacity`], which is also
//!   [`DeviceInfo::total`](rela_core::backend::DeviceInfo::total). An allocation larger than
//!   [`DeviceInfo::max_alloc`](rela_core::backend::DeviceInfo::max_alloc) (the smaller of the
//!   capacity and the device's `max_buffer_size`) is
//!   [`OutOfMemory`](rela_core::backend::BackendError::OutOfMemory), as is a driver allocation
//!   failure.
//! - **Submission is asynchronous.** Kernels, copies, fills, frees and writes are queued on
//!   wgpu's one queue and return without waiting for the device; the queue runs them in order,
//!   and wgpu inserts the barriers between them. Writes (and kernel parameters) go through
//!   `Queue::write_buffer`, which is ordered after every earlier submission and before the
//!   next one, so a kernel queued before a WRITE reads the old bytes. Only a READ waits: it
//!   copies into a reusable `MAP_READ` staging buffer, chunked, and maps it, which waits for
//!   everything queued before it. An unaligned WRITE reads the partial 4-byte words at its
//!   edges first (a wait) and merges them. Work in flight is bounded: after 64 submissions or
//!   64 MiB of queued writes without a wait, the next call waits.
//! - **Zero on free**: `free` queues a clear of the buffer and then destroys it; wgpu defers
//!   the destruction until the submissions that use the buffer, the clear included, have
//!   finished, so the memory goes back to the driver zeroed. wgpu also zero-initialises every
//!   new buffer.
//! - **Kernels** are the [`rela_kernels::wgsl`] sources, compiled once at start-up and run on
//!   the grids and bindings [`rela_kernels::Launch`] plans. A kernel whose operands exceed the
//!   device's `max_storage_buffer_binding_size`, whose grid exceeds
//!   `max_compute_workgroups_per_dimension`, or which needs more storage buffers per stage than
//!   the device binds (attention needs 5), is
//!   [`Unsupported`](rela_core::backend::BackendError::Unsupported).
//! - **Failures**: wgpu's default error handler panics. This backend installs its own handlers
//!   that record uncaptured errors and device loss; the operation that observes one returns
//!   [`DeviceLost`](rela_core::backend::BackendError::DeviceLost), and after a device loss
//!   every operation does. wgpu validates work when it is recorded and submitted, so a
//!   validation error is reported by the call whose work caused it, even though that call
//!   does not wait. A device loss while queued work runs is reported by the next call that
//!   waits (a READ, an unaligned WRITE, or any call past the in-flight bound), and from then on
//!   by every call but `size`, `info` and `usage`. [`WgpuBackend::fault`] gives the recorded
//!   message for logging.

mod backend;
mod init;

use core::fmt;

pub use backend::WgpuBackend;
pub use init::list_adapters;
/// The tile shapes kernels are planned for ([`WgpuBackend::tiles`], [`WgpuBackend::set_tiles`]).
pub use rela_kernels::Tiles;

/// Which graphics API wgpu should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Api {
    /// Every API compiled in; the best adapter wins (discrete, integrated, virtual, CPU).
    #[default]
    Auto,
    /// Vulkan.
    Vulkan,
    /// OpenGL / OpenGL ES through EGL (needs compute shaders: GL 4.3 or GLES 3.1).
    Gl,
    /// Metal (only where wgpu was built with it).
    Metal,
    /// Direct3D 12 (only where wgpu was built with it).
    Dx12,
}

impl Api {
    /// The wgpu backend set this API selects.
    pub const fn backends(self) -> wgpu::Backends {
        match self {
            Self::Auto => wgpu::Backends::all(),
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Gl => wgpu::Backends::GL,
            Self::Metal => wgpu::Backends::METAL,
            Self::Dx12 => wgpu::Backends::DX12,
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Vulkan => "vulkan",
            Self::Gl => "gl",
            Self::Metal => "metal",
            Self::Dx12 => "dx12",
        })
    }
}

/// How to open a [`WgpuBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuConfig {
    /// Bytes this backend lends. Allocations are accounted against it
    /// ([`OutOfMemory`](rela_core::backend::BackendError::OutOfMemory) past it) and it is
    /// reported as [`DeviceInfo::total`](rela_core::backend::DeviceInfo::total).
    pub capacity: u64,
    /// Which API to use.
    pub backends: Api,
    /// Which adapter: a decimal index into [`list_adapters`]`(backends)`, or a case-insensitive
    /// substring of the adapter name. `None` picks the best adapter that can run compute.
    pub adapter: Option<String>,
}

impl Default for WgpuConfig {
    /// 256 MiB on the best adapter of any API.
    fn default() -> Self {
        Self { capacity: 256 << 20, backends: Api::Auto, adapter: None }
    }
}

/// Why a [`WgpuBackend`] could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitError {
    /// No usable adapter for the requested API (none present, or wgpu failed to start it).
    Unavailable(String),
    /// Adapters exist but none matches [`WgpuConfig::adapter`].
    NoMatchingAdapter {
        /// The selector that matched nothing.
        wanted: String,
        /// What is available, as [`list_adapters`] prints it.
        available: Vec<String>,
    },
    /// The adapter was found but cannot run the RELA kernels (no compute shaders, too few
    /// storage buffers, small workgroups).
    Unsupported(String),
    /// Opening the device failed.
    Device(String),
    /// A built-in kernel failed to compile.
    Shader(String),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "no wgpu adapter available: {why}"),
            Self::NoMatchingAdapter { wanted, available } => {
                write!(f, "no wgpu adapter matches {wanted:?}; available: [{}]", available.join(", "))
            }
            Self::Unsupported(why) => write!(f, "wgpu adapter cannot run the RELA kernels: {why}"),
            Self::Device(why) => write!(f, "opening the wgpu device failed: {why}"),
            Self::Shader(why) => write!(f, "compiling a RELA kernel failed: {why}"),
        }
    }
}

impl std::error::Error for InitError {}
