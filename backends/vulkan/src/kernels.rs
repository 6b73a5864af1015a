//! WGSL → SPIR-V with naga, and the compute pipelines, built at each kernel's first call.

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

use rela_core::backend::BackendError;
use rela_kernels::Kernel;

use crate::{InitError, error::describe};

/// A kernel's pipeline on one device.
enum Slot {
    /// The device cannot run the kernel (too few storage buffers per stage, or workgroup
    /// invocations): its calls are `Unsupported`.
    Unsupported,
    /// Not dispatched yet: built at the first dispatch.
    Unbuilt,
    /// Built, and kept for the backend's life.
    Built(Arc<ComputePipeline>),
    /// Building it failed (the reason): its calls are `Unsupported`, and it is not tried again.
    Failed(String),
}

/// The compute pipelines of the built-in kernels, each built at its first dispatch and kept.
///
/// Building every pipeline when the backend opens cost about 4 s of CPU on lavapipe (its
/// compiler, for some 30 kernels), paid by every backend a process opens whether or not it runs
/// a kernel; now each kernel's first call pays for its own. [`Pipelines::build_all`] builds the
/// rest at once, for a host that wants every kernel checked (or warm) before serving.
pub(crate) struct Pipelines {
    device: Arc<Device>,
    /// Indexed by `Kernel as usize`.
    slots: Vec<Slot>,
}

impl Pipelines {
    /// The kernels `device` can run, none built yet. `max_storage_buffers` is the device's
    /// `maxPerStageDescriptorStorageBuffers`, `max_invocations` its
    /// `maxComputeWorkGroupInvocations` (the Vulkan minimum, 128, is below what
    /// [`Kernel::LinearTiled`]'s 16×16 workgroups need; such a device keeps the CPU shapes).
    pub(crate) fn new(device: &Arc<Device>, max_storage_buffers: u32, max_invocations: u32) -> Self {
        let slots = Kernel::ALL
            .iter()
            .map(|&k| {
                if k.storage_buffers() > max_storage_buffers
                    || (k == Kernel::LinearTiled && max_invocations < 256)
                {
                    Slot::Unsupported
                } else {
                    Slot::Unbuilt
                }
            })
            .collect();
        Self { device: device.clone(), slots }
    }

    /// Whether the device can run `kernel` (as far as is known: a pipeline that failed to
    /// build counts as not).
    pub(crate) fn supports(&self, kernel: Kernel) -> bool {
        matches!(self.slots.get(kernel as usize), Some(Slot::Unbuilt | Slot::Built(_)))
    }

    /// The pipeline of `kernel`, built now if this is its first call; `Unsupported` if the
    /// device cannot run it or its pipeline failed to build.
    pub(crate) fn get(&mut self, kernel: Kernel) -> Result<Arc<ComputePipeline>, BackendError> {
        let slot = self.slots.get_mut(kernel as usize).ok_or(BackendError::Unsupported)?;
        if matches!(slot, Slot::Unbuilt) {
            *slot = match pipeline(&self.device, kernel.name(), kernel.wgsl()) {
                Ok(p) => Slot::Built(p),
                Err(e) => Slot::Failed(e.to_string()),
            };
        }
        match slot {
            Slot::Built(p) => Ok(p.clone()),
            _ => Err(BackendError::Unsupported),
        }
    }

    /// Builds every pipeline the device supports that is not built yet; the first failure (all
    /// are tried, and a failed one stays `Unsupported`).
    pub(crate) fn build_all(&mut self) -> Result<(), InitError> {
        let mut first = None;
        for kernel in Kernel::ALL {
            if self.get(kernel).is_err()
                && let Some(Slot::Failed(why)) = self.slots.get(kernel as usize)
            {
                first.get_or_insert_with(|| InitError::Kernel(why.clone()));
            }
        }
        first.map_or(Ok(()), Err)
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
