//! The shared conformance suite on the Vulkan backend (lavapipe in CI).
//!
//! With `RELA_VK_VALIDATION=1` every case runs with the validation layer on, and fails if the
//! layer reported any warning or error by the time the case drops its backend.

mod common;

use rela_backend_vulkan::VulkanBackend;
use rela_core::backend::{BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage};

/// The Vulkan backend, asserting on drop that the validation layer stayed silent.
struct Checked(VulkanBackend);

impl Drop for Checked {
    fn drop(&mut self) {
        let messages = self.0.validation_messages();
        if messages != 0 && !std::thread::panicking() {
            panic!("the validation layer reported {messages} message(s) (see stderr)");
        }
    }
}

impl GpuBackend for Checked {
    fn info(&self) -> DeviceInfo {
        self.0.info()
    }
    fn usage(&self) -> Usage {
        self.0.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.0.alloc(size)
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.0.free(id)
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.0.size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.write(id, offset, data)
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(id, offset, out)
    }
    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        self.0.copy(src, src_offset, dst, dst_offset, len)
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.0.fill(id, offset, len, value)
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.0.dispatch(call)
    }
}

// The default: on unified memory (lavapipe in CI) buffers are mapped and written and read
// directly; on a discrete GPU this is the staging path.
rela_conformance::testgen!("vulkan", || {
    VulkanBackend::new(common::config(rela_conformance::SUITE_CAPACITY))
        .map(|b| Box::new(Checked(b)) as Box<dyn GpuBackend>)
        .map_err(|e| e.to_string())
});

/// The same suite forced through the staging buffer, so both paths run on any device.
mod staging {
    use rela_backend_vulkan::{HostAccess, VulkanBackend, VulkanConfig};
    use rela_core::backend::GpuBackend;

    use super::{Checked, common};

    rela_conformance::testgen!("vulkan", || {
        let config = VulkanConfig {
            host_access: HostAccess::Staging,
            ..common::config(rela_conformance::SUITE_CAPACITY)
        };
        VulkanBackend::new(config)
            .map(|b| {
                assert!(!b.host_mapped(), "HostAccess::Staging never maps");
                Box::new(Checked(b)) as Box<dyn GpuBackend>
            })
            .map_err(|e| e.to_string())
    });
}

/// The LINEAR cases with the GPU tile shapes forced ([`Tiles::Gpu`]: `linear_tiled`, 16×16
/// workgroups through workgroup memory), so the shapes a discrete GPU gets run here too.
#[test]
fn linear_with_gpu_tiles() {
    use rela_backend_vulkan::Tiles;
    for name in ["kernel_linear", "kernel_model_invalid_rejected"] {
        rela_conformance::__run_case_test("vulkan", name, || {
            let mut b = VulkanBackend::new(common::config(rela_conformance::SUITE_CAPACITY))
                .map_err(|e| e.to_string())?;
            if !b.set_tiles(Tiles::Gpu) {
                return Err("the device cannot run the GPU tile shapes (workgroups of 256)".into());
            }
            Ok(Box::new(Checked(b)) as Box<dyn GpuBackend>)
        });
    }
}
