//! Vulkan GpuBackend on vulkano, kernels from WGSL through naga
