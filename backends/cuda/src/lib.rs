//! CUDA GpuBackend on cudarc (dynamic loading), kernels through NVRTC
