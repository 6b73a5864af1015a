//! WGSL → SPIR-V with naga, and the cached compute pipelines.

use std::sync::Arc;

use naga::{
    back::spv,
    proc::{BoundsCheckPolicies, BoundsCheckPolicy},
    valid::{Capabilities, ValidationFlags, Validator},
};
use vulkano::{
    device::Device,
    pipeline::{
        ComputePipeline, PipelineLayout, PipelineShaderStageCreateInfo, compute::ComputePipelineCreateInfo,
        layout::PipelineDescriptorSetLayoutCreateInfo,
    },
    shader::{ShaderModule, ShaderModuleCreateInfo},
};

use rela_kernels::Kernel;

use crate::{InitError, error::describe};

/// The compute pipelines of every built-in kernel, built once per backend.
pub(crate) struct Pipelines {
    /// Indexed by `Kernel as usize`; `None` where the device binds too few storage buffers per
    /// stage for the kernel (its calls are `Unsupported`).
    pipelines: Vec<Option<Arc<ComputePipeline>>>,
}

impl Pipelines {
    /// Translates every kernel and builds its pipeline. `max_storage_buffers` is the device's
    /// `maxPerStageDescriptorStorageBuffers`, `max_invocations` its
    /// `maxComputeWorkGroupInvocations` (the Vulkan minimum, 128, is below what
    /// [`Kernel::LinearTiled`]'s 16×16 workgroups need; such a device keeps the CPU shapes).
    pub(crate) fn new(
        device: &Arc<Device>,
        max_storage_buffers: u32,
        max_invocations: u32,
    ) -> Result<Self, InitError> {
        let pipelines = Kernel::ALL
            .iter()
            .map(|&k| {
                if k.storage_buffers() > max_storage_buffers
                    || (k == Kernel::LinearTiled && max_invocations < 256)
                {
                    return Ok(None);
                }
                pipeline(device, k.name(), k.wgsl()).map(Some)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pipelines })
    }

    /// The pipeline of `kernel`, if the device can run it.
    pub(crate) fn get(&self, kernel: Kernel) -> Option<&Arc<ComputePipeline>> {
        self.pipelines.get(kernel as usize).and_then(Option::as_ref)
    }
}

/// Translates a WGSL compute shader with entry point `main` to SPIR-V 1.0 words.
///
/// Buffer and index accesses get naga's `ReadZeroSkipWrite` bounds checks, so a kernel can never
/// touch memory outside the ranges bound to it, whatever its parameters.
pub(crate) fn wgsl_to_spirv(name: &str, source: &str) -> Result<Vec<u32>, InitError> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| InitError::Kernel(format!("{name}: WGSL parse: {}", e.emit_to_string(source))))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .map_err(|e| InitError::Kernel(format!("{name}: validation: {}", e.emit_to_string(source))))?;
    let checks = BoundsCheckPolicies {
        index: BoundsCheckPolicy::ReadZeroSkipWrite,
        buffer: BoundsCheckPolicy::ReadZeroSkipWrite,
        image_load: BoundsCheckPolicy::ReadZeroSkipWrite,
        binding_array: BoundsCheckPolicy::ReadZeroSkipWrite,
    };
    let options = spv::Options {
        lang_version: (1, 0),
        // No debug info, no coordinate-space fixups: compute only.
        flags: spv::WriterFlags::empty(),
        bounds_check_policies: checks,
        ..spv::Options::default()
    };
    let pipeline =
        spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
    spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| InitError::Kernel(format!("{name}: SPIR-V output: {e}")))
}

fn pipeline(device: &Arc<Device>, name: &str, source: &str) -> Result<Arc<ComputePipeline>, InitError> {
    let words = wgsl_to_spirv(name, source)?;
    let kernel_err =
        |what: &str, e: &dyn std::fmt::Display| InitError::Kernel(format!("{name}: {what}: {e}"));
    // SAFETY: the words come from naga's SPIR-V writer after naga validated the module, so they
    // are valid SPIR-V; vulkano additionally parses and checks them against the device.
    let module = unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(&words)) }
        .map_err(|e| kernel_err("shader module", &describe(&e)))?;
    let entry = module.entry_point("main").ok_or_else(|| InitError::Kernel(format!("{name}: no `main`")))?;
    let stage = PipelineShaderStageCreateInfo::new(entry);
    let layout_info = PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage])
        .into_pipeline_layout_create_info(device.clone())
        .map_err(|e| kernel_err("layout", &e))?;
    let layout =
        PipelineLayout::new(device.clone(), layout_info).map_err(|e| kernel_err("layout", &describe(&e)))?;
    ComputePipeline::new(device.clone(), None, ComputePipelineCreateInfo::stage_layout(stage, layout))
        .map_err(|e| kernel_err("pipeline", &describe(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_translates() {
        for kernel in Kernel::ALL {
            let name = kernel.name();
            let words = wgsl_to_spirv(name, kernel.wgsl()).expect("kernel translates");
            assert_eq!(words.first(), Some(&0x0723_0203), "{name}: SPIR-V magic");
        }
    }
}
