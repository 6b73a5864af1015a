//! Errors of backend creation, and the mapping of vulkano errors onto [`BackendError`].

use core::fmt;

use rela_core::backend::BackendError;
use vulkano::{Validated, VulkanError, buffer::AllocateBufferError, memory::allocator::MemoryAllocatorError};

/// Why a [`VulkanBackend`](crate::VulkanBackend) could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitError {
    /// No Vulkan loader, driver or matching device (or no device with a compute queue).
    Unavailable(String),
    /// Validation was requested but `VK_LAYER_KHRONOS_validation` (or `VK_EXT_debug_utils`) is
    /// not installed.
    ValidationUnavailable(String),
    /// The configuration is unusable (for example a zero capacity).
    InvalidConfig(String),
    /// A kernel failed to translate from WGSL to SPIR-V or to build into a pipeline.
    Kernel(String),
    /// The driver failed while creating the instance, device or a resource.
    Device(String),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(m) => write!(f, "vulkan unavailable: {m}"),
            Self::ValidationUnavailable(m) => write!(f, "vulkan validation unavailable: {m}"),
            Self::InvalidConfig(m) => write!(f, "invalid vulkan backend config: {m}"),
            Self::Kernel(m) => write!(f, "vulkan kernel build failed: {m}"),
            Self::Device(m) => write!(f, "vulkan device error: {m}"),
        }
    }
}

impl std::error::Error for InitError {}

/// Maps a driver error onto the backend contract's errors.
pub(crate) fn vk(e: VulkanError) -> BackendError {
    match e {
        VulkanError::OutOfHostMemory | VulkanError::OutOfDeviceMemory | VulkanError::OutOfPoolMemory => {
            BackendError::OutOfMemory
        }
        _ => BackendError::DeviceLost,
    }
}

/// Maps a validated driver error. A vulkano validation error means this backend built an
/// invalid command: report it as a device failure rather than panicking.
pub(crate) fn validated(e: Validated<VulkanError>) -> BackendError {
    match e {
        Validated::Error(e) => vk(e),
        Validated::ValidationError(err) => {
            eprintln!("rela-backend-vulkan: vulkano rejected a command: {err}");
            BackendError::DeviceLost
        }
    }
}

/// Maps a failed buffer allocation: anything but a lost device is out of memory.
pub(crate) fn alloc(e: Validated<AllocateBufferError>) -> BackendError {
    match e {
        Validated::Error(
            AllocateBufferError::CreateBuffer(VulkanError::DeviceLost)
            | AllocateBufferError::BindMemory(VulkanError::DeviceLost)
            | AllocateBufferError::AllocateMemory(MemoryAllocatorError::AllocateDeviceMemory(
                Validated::Error(VulkanError::DeviceLost),
            )),
        ) => BackendError::DeviceLost,
        _ => BackendError::OutOfMemory,
    }
}

/// Maps a command-recording validation error (our bug, never the caller's).
pub(crate) fn record(e: Box<vulkano::ValidationError>) -> BackendError {
    eprintln!("rela-backend-vulkan: vulkano rejected a command: {e}");
    BackendError::DeviceLost
}

/// Describes a vulkano error with its cause (vulkano's own Display of `Validated::Error` only
/// says "a non-validation error occurred").
pub(crate) fn describe<E: fmt::Display>(e: &Validated<E>) -> String {
    match e {
        Validated::Error(e) => e.to_string(),
        Validated::ValidationError(v) => v.to_string(),
    }
}
