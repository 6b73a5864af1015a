//! WebGPU GpuBackend on wgpu
