//! The shared `rela-conformance` suite, run against the CUDA backend.
//!
//! Without a usable CUDA device every case prints `SKIPPED cuda/<case>: <reason>` and passes,
//! unless `RELA_REQUIRE_BACKENDS` lists `cuda`.

use rela_backend_cuda::{CudaBackend, CudaConfig};
use rela_core::backend::GpuBackend;

rela_conformance::testgen!("cuda", || {
    CudaBackend::new(CudaConfig::new(rela_conformance::SUITE_CAPACITY))
        .map(|b| Box::new(b) as Box<dyn GpuBackend>)
        .map_err(|e| e.to_string())
});
