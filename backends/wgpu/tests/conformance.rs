//! The conformance suite on wgpu, once per API: `wgpu-vulkan` (lavapipe in CI) and `wgpu-gl`
//! (llvmpipe through EGL in CI). Each case skips loudly when its API has no adapter, unless
//! `RELA_REQUIRE_BACKENDS` names it.

use rela_backend_wgpu::{Api, WgpuBackend, WgpuConfig};
use rela_conformance::SUITE_CAPACITY;
use rela_core::backend::GpuBackend;

fn make(api: Api) -> Result<Box<dyn GpuBackend>, String> {
    let config = WgpuConfig { capacity: SUITE_CAPACITY, backends: api, adapter: None };
    WgpuBackend::new(config).map(|b| Box::new(b) as Box<dyn GpuBackend>).map_err(|e| e.to_string())
}

mod vulkan {
    use super::*;

    rela_conformance::testgen!("wgpu-vulkan", || make(Api::Vulkan));
}

mod gl {
    use super::*;

    rela_conformance::testgen!("wgpu-gl", || make(Api::Gl));
}
