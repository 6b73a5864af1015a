//! Host-memory GpuBackend: the reference backend and the embedded default (no_std, no alloc)
