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

/// The LINEAR cases with the GPU tile shapes forced ([`Tiles::Gpu`]: `linear_tiled`, 16×16
/// workgroups through workgroup memory), so the shapes a discrete GPU gets run on the CPU
/// adapters here too.
#[test]
fn linear_with_gpu_tiles() {
    use rela_backend_wgpu::Tiles;
    for (label, api) in [("wgpu-vulkan", Api::Vulkan), ("wgpu-gl", Api::Gl)] {
        for name in ["kernel_linear", "kernel_model_invalid_rejected"] {
            rela_conformance::__run_case_test(label, name, || {
                let config = WgpuConfig { capacity: SUITE_CAPACITY, backends: api, adapter: None };
                let mut b = WgpuBackend::new(config).map_err(|e| e.to_string())?;
                if !b.set_tiles(Tiles::Gpu) {
                    return Err("the adapter cannot run the GPU tile shapes (workgroups of 256)".into());
                }
                Ok(Box::new(b) as Box<dyn GpuBackend>)
            });
        }
    }
}
