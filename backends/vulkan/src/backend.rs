//! The [`VulkanBackend`] itself: buffers, transfers, fills, copies and kernel dispatch.

use std::{collections::BTreeMap, sync::Arc, sync::atomic::Ordering};

use rela_core::backend::{
    BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage, check_copy_overlap,
    check_range,
};
use rela_kernels::{Kernel, Launch, Params, Tiles};
use vulkano::device::physical::PhysicalDeviceType;
use vulkano::{
    buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer},
    command_buffer::{
        AutoCommandBufferBuilder, CommandBufferExecError, CommandBufferUsage, CopyBufferInfo,
        PrimaryAutoCommandBuffer, PrimaryCommandBufferAbstract,
        allocator::{StandardCommandBufferAllocator, StandardCommandBufferAllocatorCreateInfo},
    },
    descriptor_set::{
        DescriptorSet, WriteDescriptorSet,
        allocator::{StandardDescriptorSetAllocator, StandardDescriptorSetAllocatorCreateInfo},
    },
    device::{Device, DeviceCreateInfo, DeviceExtensions, Queue, QueueCreateInfo},
    instance::Instance,
    memory::{
        MemoryHeapFlags, MemoryPropertyFlags,
        allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator},
    },
    pipeline::{ComputePipeline, Pipeline, PipelineBindPoint},
    sync::{GpuFuture, HostAccessError},
};

use crate::{
    HostAccess, InitError, VulkanConfig,
    error::{alloc, describe, record, validated},
    instance::{Validation, create_instance, select},
    kernels::Pipelines,
};

/// Bytes of the host-visible staging buffer; writes and reads larger than this are chunked.
pub const STAGING_SIZE: u64 = 8 << 20;

/// Bytes of the kernel uniform block ([`Params`]).
const PARAMS_SIZE: u64 = Params::SIZE as u64;

type Builder = AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>;

/// One live buffer.
struct Buf {
    /// The whole device buffer, padded to a multiple of 4 bytes so `vkCmdFillBuffer` reaches
    /// every byte. Bytes past `size` are never exposed.
    sub: Subbuffer<[u8]>,
    /// The size the client asked for (what accounting and bounds use).
    size: u64,
}

/// A [`GpuBackend`] on one Vulkan device (see the [crate docs](crate)).
///
/// Every operation records one command buffer, submits it to the single queue and waits on a
/// fence before returning, so operations are strictly ordered and complete on return.
pub struct VulkanBackend {
    queue: Arc<Queue>,
    memory: Arc<StandardMemoryAllocator>,
    commands: Arc<StandardCommandBufferAllocator>,
    descriptors: Arc<StandardDescriptorSetAllocator>,
    /// Host-visible transfer buffer of [`STAGING_SIZE`] bytes, reused by every transfer.
    staging: Subbuffer<[u8]>,
    /// Host-visible uniform buffer holding the current kernel's [`Params`].
    params: Subbuffer<[u8]>,
    pipelines: Pipelines,
    buffers: BTreeMap<u64, Buf>,
    next_id: u64,
    used: u64,
    info: DeviceInfo,
    /// Largest range a storage-buffer descriptor may cover.
    max_storage_range: u64,
    /// Largest workgroup count per dimension.
    max_groups: [u32; 3],
    /// Buffers are host-visible and written and read through their mapping ([`HostAccess`]).
    mapped: bool,
    /// How buffers are allocated: device-local, plus host-visible when `mapped`.
    buffer_memory: MemoryTypeFilter,
    /// The tile shapes kernels are planned for ([`Launch::of_tiled`]).
    tiles: Tiles,
    _instance: Arc<Instance>,
    /// Declared last so the messenger outlives the device and sees its destruction.
    validation: Option<Validation>,
}

impl VulkanBackend {
    /// Opens the configured device, builds the staging buffers and the kernel pipelines.
    ///
    /// Fails with [`InitError::Unavailable`] when there is no Vulkan loader, driver or matching
    /// device; never panics.
    pub fn new(config: VulkanConfig) -> Result<Self, InitError> {
        if config.capacity == 0 {
            return Err(InitError::InvalidConfig("capacity is zero".into()));
        }
        let (instance, validation) = create_instance(config.validation)?;
        let (physical, family) = select(&instance, &config.device)?;

        let supported = physical.supported_extensions();
        let enabled_extensions = DeviceExtensions {
            khr_storage_buffer_storage_class: physical.api_version() < vulkano::Version::V1_1
                && supported.khr_storage_buffer_storage_class,
            ..DeviceExtensions::empty()
        };
        let (device, mut queues) = Device::new(
            physical.clone(),
            DeviceCreateInfo {
                queue_create_infos: vec![QueueCreateInfo {
                    queue_family_index: family,
                    ..Default::default()
                }],
                enabled_extensions,
                ..Default::default()
            },
        )
        .map_err(|e| InitError::Device(format!("device creation failed: {}", describe(&e))))?;
        let queue = queues.next().ok_or_else(|| InitError::Device("the device returned no queue".into()))?;

        let memory = Arc::new(StandardMemoryAllocator::new_default(device.clone()));
        let commands = Arc::new(StandardCommandBufferAllocator::new(
            device.clone(),
            StandardCommandBufferAllocatorCreateInfo::default(),
        ));
        let descriptors = Arc::new(StandardDescriptorSetAllocator::new(
            device.clone(),
            StandardDescriptorSetAllocatorCreateInfo::default(),
        ));
        let host_buffer = |usage, size| {
            Buffer::new_slice::<u8>(
                memory.clone(),
                BufferCreateInfo { usage, ..Default::default() },
                AllocationCreateInfo {
                    memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
                    ..Default::default()
                },
                size,
            )
            .map_err(|e| InitError::Device(format!("host buffer: {}", describe(&e))))
        };
        let staging = host_buffer(BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST, STAGING_SIZE)?;
        let params = host_buffer(BufferUsage::UNIFORM_BUFFER, PARAMS_SIZE)?;

        let props = physical.properties();
        let pipelines = Pipelines::new(
            &device,
            props.max_per_stage_descriptor_storage_buffers,
            props.max_compute_work_group_invocations,
        )?;
        // CPU implementations keep the narrow shapes; GPUs get workgroup-memory tiles where the
        // device can run them.
        let gpu = matches!(
            props.device_type,
            PhysicalDeviceType::DiscreteGpu
                | PhysicalDeviceType::IntegratedGpu
                | PhysicalDeviceType::VirtualGpu
        );
        let tiles = if gpu && pipelines.get(Kernel::LinearTiled).is_some() { Tiles::Gpu } else { Tiles::Cpu };
        let heap = physical
            .memory_properties()
            .memory_heaps
            .iter()
            .filter(|h| h.flags.intersects(MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .max()
            .unwrap_or(0);
        let total = config.capacity.min(heap);
        if total == 0 {
            return Err(InitError::Unavailable("the device has no device-local memory".into()));
        }
        let driver_max = props
            .max_memory_allocation_size
            .unwrap_or(u64::MAX)
            .min(props.max_buffer_size.unwrap_or(u64::MAX))
            // Buffers are padded up to a multiple of 4 bytes.
            & !3;
        // Unified memory: every device-local memory type is host-visible too.
        let types = &physical.memory_properties().memory_types;
        let unified = types.iter().any(|t| t.property_flags.intersects(MemoryPropertyFlags::DEVICE_LOCAL))
            && types
                .iter()
                .filter(|t| t.property_flags.intersects(MemoryPropertyFlags::DEVICE_LOCAL))
                .all(|t| t.property_flags.intersects(MemoryPropertyFlags::HOST_VISIBLE));
        let mapped = unified && config.host_access == HostAccess::Auto;
        // Host-cached memory makes READs through the mapping fast; where the device has none
        // that is also device-local, plain host-visible memory still works (writes combine).
        let cached = types.iter().any(|t| {
            t.property_flags.contains(
                MemoryPropertyFlags::DEVICE_LOCAL
                    | MemoryPropertyFlags::HOST_VISIBLE
                    | MemoryPropertyFlags::HOST_CACHED,
            )
        });
        let buffer_memory = match (mapped, cached) {
            (false, _) => MemoryTypeFilter::PREFER_DEVICE,
            (true, true) => MemoryTypeFilter::PREFER_DEVICE | MemoryTypeFilter::HOST_RANDOM_ACCESS,
            (true, false) => MemoryTypeFilter::PREFER_DEVICE | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
        };
        let info = DeviceInfo::new(
            BackendKind::VULKAN,
            &props.device_name,
            &vendor_name(props.vendor_id, props.driver_name.as_deref()),
            total,
            total.min(driver_max),
        );

        Ok(Self {
            max_storage_range: u64::from(props.max_storage_buffer_range),
            max_groups: props.max_compute_work_group_count,
            mapped,
            buffer_memory,
            tiles,
            queue,
            memory,
            commands,
            descriptors,
            staging,
            params,
            pipelines,
            buffers: BTreeMap::new(),
            next_id: 1,
            used: 0,
            info,
            _instance: instance,
            validation,
        })
    }

    /// Warnings and errors the validation layer has reported so far (0 without validation).
    pub fn validation_messages(&self) -> u64 {
        self.validation.as_ref().map_or(0, |v| v.count.load(Ordering::Relaxed))
    }

    /// The tile shapes kernels are planned for: [`Tiles::Gpu`] on a discrete, integrated or
    /// virtual GPU that runs them, [`Tiles::Cpu`] on a CPU implementation (lavapipe).
    pub fn tiles(&self) -> Tiles {
        self.tiles
    }

    /// Plans kernels for `tiles` from now on, for example [`Tiles::Gpu`] on lavapipe to check
    /// the GPU shapes on a machine without a GPU. Returns `false`, changing nothing, for
    /// [`Tiles::Gpu`] on a device that cannot run them (too few invocations per workgroup).
    pub fn set_tiles(&mut self, tiles: Tiles) -> bool {
        if tiles == Tiles::Gpu && self.pipelines.get(Kernel::LinearTiled).is_none() {
            return false;
        }
        self.tiles = tiles;
        true
    }

    /// Whether buffers are written and read through their mapping rather than staging
    /// ([`HostAccess::Auto`] on unified memory).
    pub fn host_mapped(&self) -> bool {
        self.mapped
    }

    /// Whether this backend was created with the validation layer on.
    pub fn validation_enabled(&self) -> bool {
        self.validation.is_some()
    }

    fn buf(&self, id: BufferId) -> Result<&Buf, BackendError> {
        self.buffers.get(&id.0).ok_or(BackendError::NoSuchBuffer)
    }

    /// Records one command buffer, submits it and waits on its fence.
    fn submit(
        &self,
        record_fn: impl FnOnce(&mut Builder) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let mut builder = AutoCommandBufferBuilder::primary(
            self.commands.clone(),
            self.queue.queue_family_index(),
            CommandBufferUsage::OneTimeSubmit,
        )
        .map_err(validated)?;
        record_fn(&mut builder)?;
        let cb = builder.build().map_err(validated)?;
        let future =
            cb.execute(self.queue.clone()).map_err(exec)?.then_signal_fence_and_flush().map_err(validated)?;
        future.wait(None).map_err(validated)
    }

    /// Fills `sub` (4-byte aligned offset and size, non-empty) with zeros.
    fn zero(&self, sub: Subbuffer<[u8]>) -> Result<(), BackendError> {
        self.submit(|b| {
            b.fill_buffer(sub.reinterpret::<[u32]>(), 0).map_err(record)?;
            Ok(())
        })
    }

    /// Puts `data` (at most [`STAGING_SIZE`] bytes) at the start of the staging buffer.
    fn stage(&self, data: &[u8]) -> Result<(), BackendError> {
        let mut guard = self.staging.write().map_err(host)?;
        let dst = guard.get_mut(..data.len()).ok_or(BackendError::InvalidArgument)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    /// Writes the uniform block for a kernel launch.
    fn set_params(&self, params: &Params) -> Result<(), BackendError> {
        let bytes = params.to_bytes();
        let mut guard = self.params.write().map_err(host)?;
        let dst = guard.get_mut(..bytes.len()).ok_or(BackendError::InvalidArgument)?;
        dst.copy_from_slice(&bytes);
        Ok(())
    }

    /// The first `bytes` bytes of a live buffer, for binding to a kernel; the first 4 (padded)
    /// bytes when `bytes` is zero, for an input the kernel will not read. `bytes` is within the
    /// buffer (the caller validated the call).
    fn binding(&self, id: BufferId, bytes: u64) -> Result<Subbuffer<[u8]>, BackendError> {
        let buf = self.buf(id)?;
        check_range(buf.size, 0, bytes)?;
        if bytes == 0 {
            // Every buffer is padded to a non-zero multiple of 4 bytes.
            return Ok(buf.sub.clone().slice(0..4));
        }
        // Rounded up to whole words, within the buffer's padding: kernels that read raw bytes
        // (quantized weights) see every byte of the last word.
        let bytes = bytes.next_multiple_of(4);
        if bytes > self.max_storage_range {
            return Err(BackendError::Unsupported);
        }
        Ok(buf.sub.clone().slice(0..bytes))
    }

    /// Binds `inputs` then `out` as storage buffers 0.., the params at the next binding, and
    /// dispatches `groups` workgroups.
    fn run_kernel(
        &self,
        pipeline: &Arc<ComputePipeline>,
        params: &Params,
        storage: &[Subbuffer<[u8]>],
        groups: (u32, u32),
    ) -> Result<(), BackendError> {
        let (x, y) = groups;
        if x > self.max_groups[0] || y > self.max_groups[1] {
            return Err(BackendError::Unsupported);
        }
        self.set_params(params)?;
        let layout = pipeline.layout().set_layouts().first().ok_or(BackendError::DeviceLost)?.clone();
        let mut writes: Vec<WriteDescriptorSet> = Vec::with_capacity(storage.len() + 1);
        let mut binding = 0u32;
        for sub in storage {
            writes.push(WriteDescriptorSet::buffer(binding, sub.clone()));
            binding += 1;
        }
        writes.push(WriteDescriptorSet::buffer(binding, self.params.clone()));
        let set = DescriptorSet::new(self.descriptors.clone(), layout, writes, []).map_err(validated)?;
        self.submit(|b| {
            b.bind_pipeline_compute(pipeline.clone())
                .map_err(record)?
                .bind_descriptor_sets(PipelineBindPoint::Compute, pipeline.layout().clone(), 0, set)
                .map_err(record)?;
            // SAFETY: the shader is naga output with ReadZeroSkipWrite bounds checks on every
            // buffer access, so it cannot access memory outside the ranges bound above; every
            // descriptor the shader uses is bound; the group counts are within device limits.
            unsafe { b.dispatch([x, y, 1]) }.map_err(record)?;
            Ok(())
        })
    }
}

impl GpuBackend for VulkanBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn usage(&self) -> Usage {
        // Live buffers fit in u32 because each holds at least one byte of a bounded capacity,
        // but saturate rather than trust that.
        Usage { used: self.used, buffers: u32::try_from(self.buffers.len()).unwrap_or(u32::MAX) }
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        if size == 0 {
            return Err(BackendError::InvalidArgument);
        }
        if size > self.info.max_alloc {
            return Err(BackendError::OutOfMemory);
        }
        let used = self.used.checked_add(size).ok_or(BackendError::OutOfMemory)?;
        if used > self.info.total {
            return Err(BackendError::OutOfMemory);
        }
        let id = self.next_id;
        let next = id.checked_add(1).ok_or(BackendError::OutOfMemory)?;
        // `size <= max_alloc`, which is a multiple of 4 below u64::MAX, so this cannot overflow.
        let padded = size.checked_next_multiple_of(4).ok_or(BackendError::OutOfMemory)?;
        let sub = Buffer::new_slice::<u8>(
            self.memory.clone(),
            BufferCreateInfo {
                usage: BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
                ..Default::default()
            },
            AllocationCreateInfo { memory_type_filter: self.buffer_memory, ..Default::default() },
            padded,
        )
        .map_err(alloc)?;
        // Fresh device memory may hold anything: zero it before anyone can read it.
        self.zero(sub.clone())?;
        self.buffers.insert(id, Buf { sub, size });
        self.next_id = next;
        self.used = used;
        Ok(BufferId(id))
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        let sub = self.buf(id)?.sub.clone();
        // Zero before release; if that fails the buffer stays live (and accounted).
        self.zero(sub)?;
        if let Some(buf) = self.buffers.remove(&id.0) {
            self.used = self.used.saturating_sub(buf.size);
        }
        Ok(())
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        Ok(self.buf(id)?.size)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let buf = self.buf(id)?;
        let range = check_range(buf.size, offset, data.len() as u64)?;
        if self.mapped {
            if range.is_empty() {
                return Ok(());
            }
            // No device work is in flight (every operation waited on its fence), so the host
            // may write; vulkano flushes non-coherent memory when the guard drops.
            let dst = buf.sub.clone().slice(range);
            let mut guard = dst.write().map_err(host)?;
            guard.copy_from_slice(data);
            return Ok(());
        }
        let dst = buf.sub.clone();
        let mut at = range.start;
        for chunk in data.chunks(STAGING_SIZE as usize) {
            let len = chunk.len() as u64;
            self.stage(chunk)?;
            let src = self.staging.clone().slice(0..len);
            let dst = dst.clone().slice(at..at + len);
            self.submit(|b| {
                b.copy_buffer(CopyBufferInfo::buffers(src, dst)).map_err(record)?;
                Ok(())
            })?;
            at += len;
        }
        Ok(())
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let buf = self.buf(id)?;
        let range = check_range(buf.size, offset, out.len() as u64)?;
        if self.mapped {
            if range.is_empty() {
                return Ok(());
            }
            let src = buf.sub.clone().slice(range);
            let guard = src.read().map_err(host)?;
            out.copy_from_slice(&guard);
            return Ok(());
        }
        let src = buf.sub.clone();
        let mut at = range.start;
        for chunk in out.chunks_mut(STAGING_SIZE as usize) {
            let len = chunk.len() as u64;
            let from = src.clone().slice(at..at + len);
            let to = self.staging.clone().slice(0..len);
            self.submit(|b| {
                b.copy_buffer(CopyBufferInfo::buffers(from, to)).map_err(record)?;
                Ok(())
            })?;
            let guard = self.staging.read().map_err(host)?;
            chunk.copy_from_slice(guard.get(..chunk.len()).ok_or(BackendError::InvalidArgument)?);
            at += len;
        }
        Ok(())
    }

    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let from = self.buf(src)?;
        let to = self.buf(dst)?;
        let src_range = check_range(from.size, src_offset, len)?;
        let dst_range = check_range(to.size, dst_offset, len)?;
        check_copy_overlap(src, &src_range, dst, &dst_range)?;
        if len == 0 {
            return Ok(());
        }
        let from = from.sub.clone().slice(src_range);
        let to = to.sub.clone().slice(dst_range);
        self.submit(|b| {
            b.copy_buffer(CopyBufferInfo::buffers(from, to)).map_err(record)?;
            Ok(())
        })
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        let buf = self.buf(id)?;
        let range = check_range(buf.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let sub = buf.sub.clone();
        // `vkCmdFillBuffer` writes whole 4-byte words at 4-aligned offsets: fill the aligned
        // middle on the device and copy the (at most 3-byte) head and tail from staging.
        // `range.end <= size <= max_alloc`, a multiple of 4 below u64::MAX: no overflow.
        let mid_start = range.start.next_multiple_of(4);
        let mid_end = range.end & !3;
        let head = range.start..mid_start.min(range.end);
        let tail = mid_end.max(head.end)..range.end;
        if !head.is_empty() || !tail.is_empty() {
            self.stage(&[value; 4])?;
        }
        self.submit(|b| {
            if mid_start < mid_end {
                let words = sub.clone().slice(mid_start..mid_end).reinterpret::<[u32]>();
                b.fill_buffer(words, u32::from_ne_bytes([value; 4])).map_err(record)?;
            }
            for edge in [head, tail] {
                if !edge.is_empty() {
                    let src = self.staging.clone().slice(0..edge.end - edge.start);
                    b.copy_buffer(CopyBufferInfo::buffers(src, sub.clone().slice(edge))).map_err(record)?;
                }
            }
            Ok(())
        })
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        call.validate(|id| self.buffers.get(&id.0).map(|b| b.size))?;
        let Some(launch) = Launch::of_tiled(call, self.tiles)? else {
            return Ok(());
        };
        let pipeline = self.pipelines.get(launch.kernel).ok_or(BackendError::Unsupported)?;
        let storage = launch
            .bindings()
            .iter()
            .map(|&(id, bytes)| self.binding(id, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_kernel(pipeline, &launch.params, &storage, launch.groups)
    }
}

impl Drop for VulkanBackend {
    /// Zero on free covers buffers still live when the backend goes away (best effort: a lost
    /// device cannot be zeroed, and its memory is the driver's to scrub).
    fn drop(&mut self) {
        let subs: Vec<_> = self.buffers.values().map(|b| b.sub.clone()).collect();
        if subs.is_empty() {
            return;
        }
        let result = self.submit(|b| {
            for sub in subs {
                b.fill_buffer(sub.reinterpret::<[u32]>(), 0).map_err(record)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            eprintln!("rela-backend-vulkan: zeroing live buffers on drop failed: {e}");
        }
    }
}

fn exec(e: CommandBufferExecError) -> BackendError {
    eprintln!("rela-backend-vulkan: submission rejected: {e}");
    BackendError::DeviceLost
}

fn host(e: HostAccessError) -> BackendError {
    eprintln!("rela-backend-vulkan: host access to mapped memory failed: {e}");
    BackendError::DeviceLost
}

/// A vendor name from a PCI vendor id (or Khronos vendor id), falling back to the driver name.
fn vendor_name(id: u32, driver: Option<&str>) -> String {
    match id {
        0x1002 | 0x1022 => "AMD".into(),
        0x10DE => "NVIDIA".into(),
        0x8086 => "Intel".into(),
        0x13B5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x1010 => "Imagination".into(),
        0x106B => "Apple".into(),
        0x1AE0 => "Google".into(),
        0x10005 => "Mesa".into(),
        _ => driver.map_or_else(|| format!("0x{id:04x}"), str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a Vulkan backend with the validation layer must start: `RELA_REQUIRE_BACKENDS`
    /// lists `vulkan`, or `RELA_VK_VALIDATION=1` asks for the layer.
    fn validation_required() -> bool {
        let listed = std::env::var("RELA_REQUIRE_BACKENDS")
            .is_ok_and(|v| v.split([',', ' ', ':']).any(|name| name.trim().eq_ignore_ascii_case("vulkan")));
        listed || std::env::var("RELA_VK_VALIDATION").is_ok_and(|v| v == "1")
    }

    /// The messenger really counts: record a copy into a buffer without `TRANSFER_DST` through
    /// vulkano's unchecked path, so only the validation layer can catch it. Skips without a
    /// device or the layer, unless Vulkan or validation is required: then it fails.
    #[test]
    fn validation_messages_are_counted() {
        let config = VulkanConfig { validation: true, ..VulkanConfig::new(1 << 20) };
        let backend = match VulkanBackend::new(config) {
            Ok(b) => b,
            Err(e) if validation_required() => {
                panic!("vulkan with the validation layer is required but unavailable: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: vulkan backend with validation unavailable: {e}");
                return;
            }
        };
        assert!(backend.validation_enabled(), "the layer was asked for and the backend started");
        assert_eq!(backend.validation_messages(), 0);
        let bad = Buffer::new_slice::<u8>(
            backend.memory.clone(),
            BufferCreateInfo { usage: BufferUsage::TRANSFER_SRC, ..Default::default() },
            AllocationCreateInfo {
                memory_type_filter: MemoryTypeFilter::PREFER_DEVICE,
                ..Default::default()
            },
            16,
        )
        .expect("alloc");
        let src = backend.staging.clone().slice(0..16);
        backend
            .submit(|b| {
                // SAFETY (test only): deliberately invalid usage; the layer reports it and
                // lavapipe performs the copy harmlessly on memory we own.
                unsafe { b.copy_buffer_unchecked(CopyBufferInfo::buffers(src, bad)) };
                Ok(())
            })
            .expect("submit");
        assert!(backend.validation_messages() > 0, "the layer's report was counted");
    }
}
