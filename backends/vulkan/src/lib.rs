//! Vulkan [`GpuBackend`](rela_core::backend::GpuBackend) on vulkano, kernels from WGSL through naga.
//!
//! [`VulkanBackend`] lends device-local storage buffers of one Vulkan device and runs the
//! built-in RELA kernels on it:
//!
//! - Buffers are device-local `STORAGE_BUFFER | TRANSFER_SRC | TRANSFER_DST` buffers, zeroed on
//!   the device (`vkCmdFillBuffer`) when allocated and again before they are released.
//! - Host data moves through one host-visible staging buffer, created once and reused; large
//!   writes and reads are chunked through it ([`STAGING_SIZE`] bytes at a time). On unified
//!   memory (every device-local memory type is also host-visible) buffers are allocated
//!   host-visible instead and written and read through their mapping ([`HostAccess`]); fills,
//!   copies and kernels still run on the device.
//! - The kernels in [`rela_kernels::wgsl`] are translated to SPIR-V with naga and their compute
//!   pipelines built at each kernel's first dispatch, then kept (building all of them when the
//!   backend opened cost about 4 s of CPU on lavapipe; [`VulkanBackend::build_pipelines`]
//!   builds the rest at once). Every call runs on the
//!   grid and bindings [`rela_kernels::Launch`] plans; a kernel needing more storage buffers per
//!   stage than the device binds (attention needs 5) is `Unsupported`.
//! - **Submission is asynchronous.** Allocation and free (their zeroing), fills, copies and
//!   kernels are queued and return without waiting for the device. Queued commands are recorded
//!   into one command buffer and submitted, without a wait, once 64 are queued; before a batch
//!   is submitted the one before it is waited for, so one batch runs while the next is queued
//!   and batches never overlap on the device. READ and WRITE submit what is queued and wait on
//!   its fence before the host touches a mapped buffer or the staging buffer. Each kernel's
//!   parameters and each fill's edge bytes get their own small host-visible block (vulkano's
//!   `SubbufferAllocator`), held by the command buffer until it has run, so queued work never
//!   reads data the host has since overwritten. A freed buffer's memory is likewise held until
//!   its zeroing has run; an allocation the driver refuses meanwhile waits for queued work and
//!   is tried once more. Work in flight is bounded: at most one submitted batch and 63 queued
//!   commands.
//! - **Errors of queued work.** Each call checks its ranges, bindings and grid size before it
//!   queues anything and reports those errors itself. vulkano checks the commands again when a
//!   batch is recorded; a failure while recording, submitting or running a batch is reported as
//!   `DeviceLost` by the call that submits or waits for it (the call that fills a batch, or the
//!   next READ or WRITE).
//!
//! With [`VulkanConfig::validation`] the Khronos validation layer is enabled and every warning
//! or error it reports is logged to stderr and counted ([`VulkanBackend::validation_messages`]).
//!
//! Creating a backend never panics: a missing loader, driver or device is
//! [`InitError::Unavailable`].
//!
//! # Limitations
//!
//! Commands are recorded with vulkano's `AutoCommandBufferBuilder`, which places barriers
//! between commands of one command buffer but not between submissions, nor a `HOST_READ`
//! barrier before the host reads the staging buffer (or a mapped buffer). Batches rely on the
//! fence wait before the next submission or host access for ordering and visibility, which holds on the drivers in use (Mesa,
//! NVIDIA, AMD) but is weaker than the specification asks; moving to explicit barriers needs
//! vulkano's unsafe raw command-buffer path.

mod backend;
mod error;
mod instance;
mod kernels;

pub use backend::{STAGING_SIZE, VulkanBackend};
pub use error::InitError;
pub use instance::{DeviceSelector, DeviceType, list_devices};
/// The tile shapes kernels are planned for ([`VulkanBackend::tiles`], [`VulkanBackend::set_tiles`]).
pub use rela_kernels::Tiles;

/// How to create a [`VulkanBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulkanConfig {
    /// Bytes this backend lends. Accounting and [`OutOfMemory`] are enforced against
    /// `min(capacity, device-local heap size)`, which is also reported as `DeviceInfo::total`.
    ///
    /// [`OutOfMemory`]: rela_core::backend::BackendError::OutOfMemory
    pub capacity: u64,
    /// Which physical device to use.
    pub device: DeviceSelector,
    /// Enable `VK_LAYER_KHRONOS_validation` and count its messages. Creation fails with
    /// [`InitError::ValidationUnavailable`] if the layer is not installed.
    pub validation: bool,
    /// How WRITE and READ data reach the buffers.
    pub host_access: HostAccess,
}

/// How the host's bytes reach a [`VulkanBackend`]'s buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostAccess {
    /// On a device whose device-local memory is all host-visible (unified memory: integrated
    /// GPUs, Jetson-class boards, lavapipe), buffers are allocated host-visible and written and
    /// read through their mapping: one memcpy, no command buffer, no fence. Elsewhere (discrete
    /// GPUs, where host-visible device memory is a small BAR window), through staging.
    #[default]
    Auto,
    /// Always through the staging buffer and a device copy.
    Staging,
}

impl VulkanConfig {
    /// A configuration lending `capacity` bytes of the automatically chosen device, without
    /// validation, with [`HostAccess::Auto`].
    pub const fn new(capacity: u64) -> Self {
        Self { capacity, device: DeviceSelector::Auto, validation: false, host_access: HostAccess::Auto }
    }
}
