//! The [`VulkanBackend`] itself: buffers, transfers, fills, copies and kernel dispatch.

use std::{collections::BTreeMap, sync::Arc, sync::atomic::Ordering};

use rela_core::backend::{
    BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage, check_copy_overlap,
    check_range,
};
use rela_kernels::{Kernel, Launch, Params, Tiles};
use vulkano::device::physical::PhysicalDeviceType;
use vulkano::{
    buffer::{
        Buffer, BufferCreateInfo, BufferUsage, Subbuffer,
        allocator::{SubbufferAllocator, SubbufferAllocatorCreateInfo},
    },
    command_buffer::{
        AutoCommandBufferBuilder, CommandBufferExecError, CommandBufferExecFuture, CommandBufferUsage,
        CopyBufferInfo, PrimaryAutoCommandBuffer, PrimaryCommandBufferAbstract,
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
    sync::{
        GpuFuture, HostAccessError,
        future::{FenceSignalFuture, NowFuture},
    },
};

use crate::{
    HostAccess, InitError, VulkanConfig,
    error::{alloc, describe, record, validated},
    instance::{Validation, create_instance, select},
    kernels::Pipelines,
};

/// Bytes of the host-visible staging buffer; writes and reads larger than this are chunked.
pub const STAGING_SIZE: u64 = 8 << 20;

/// Commands recorded into one command buffer before it is submitted without waiting.
const BATCH: usize = 64;

/// Bytes of each arena of the per-command upload allocator (kernel params, fill edges).
const UPLOAD_ARENA: u64 = 64 << 10;

type Builder = AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>;

/// A submitted batch and the fence it signals.
type InFlight = FenceSignalFuture<CommandBufferExecFuture<NowFuture>>;

/// One queued device command, recorded into a command buffer when its batch is submitted
/// (vulkano's command builders cannot move between threads; these can).
enum Command {
    /// Fill whole words with a value.
    Fill { words: Subbuffer<[u32]>, value: u32 },
    /// Copy between non-overlapping ranges of equal length.
    Copy { src: Subbuffer<[u8]>, dst: Subbuffer<[u8]> },
    /// Run a kernel: storage bindings 0.., then the params block, on a grid of workgroups.
    Dispatch {
        pipeline: Arc<ComputePipeline>,
        storage: Vec<Subbuffer<[u8]>>,
        params: Subbuffer<[u8]>,
        groups: [u32; 3],
    },
}

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
/// Allocations, frees, fills, copies and kernels are recorded into an open command buffer and
/// return without waiting for the device. The open command buffer is submitted once it holds
/// 64 commands (`BATCH`) (after waiting for the batch submitted before it, so one batch runs
/// while the next is recorded), and whenever the host needs the device's memory: READ and
/// WRITE submit the open batch and wait for all work before touching memory. Operations stay
/// strictly ordered: within a batch vulkano inserts the barriers, and batches never overlap.
pub struct VulkanBackend {
    queue: Arc<Queue>,
    memory: Arc<StandardMemoryAllocator>,
    commands: Arc<StandardCommandBufferAllocator>,
    descriptors: Arc<StandardDescriptorSetAllocator>,
    /// Host-visible transfer buffer of [`STAGING_SIZE`] bytes, reused by every transfer.
    staging: Subbuffer<[u8]>,
    /// Host-visible memory for data a recorded command reads: each kernel's [`Params`] and
    /// each fill's edge bytes get their own block, kept alive by the command buffer.
    uploads: SubbufferAllocator,
    /// Commands queued since the last submission, in order.
    queued: Vec<Command>,
    /// The last submitted batch, not yet waited for.
    in_flight: Option<InFlight>,
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
    /// Opens the configured device and builds the staging buffers. Kernel pipelines are built
    /// at each kernel's first dispatch ([`build_pipelines`](Self::build_pipelines) builds them
    /// all at once).
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
        let uploads = SubbufferAllocator::new(
            memory.clone(),
            SubbufferAllocatorCreateInfo {
                arena_size: UPLOAD_ARENA,
                buffer_usage: BufferUsage::UNIFORM_BUFFER | BufferUsage::TRANSFER_SRC,
                memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
                ..Default::default()
            },
        );

        let props = physical.properties();
        let pipelines = Pipelines::new(
            &device,
            props.max_per_stage_descriptor_storage_buffers,
            props.max_compute_work_group_invocations,
        );
        // CPU implementations keep the narrow shapes; GPUs get workgroup-memory tiles where the
        // device can run them.
        let gpu = matches!(
            props.device_type,
            PhysicalDeviceType::DiscreteGpu
                | PhysicalDeviceType::IntegratedGpu
                | PhysicalDeviceType::VirtualGpu
        );
        let tiles = if gpu && pipelines.supports(Kernel::LinearTiled) { Tiles::Gpu } else { Tiles::Cpu };
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
            uploads,
            queued: Vec::new(),
            in_flight: None,
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

    /// Builds the compute pipeline of every kernel the device supports that no dispatch has
    /// built yet: every kernel then starts without compiling at its first call, and a driver
    /// that cannot compile one is found now. Fails with [`InitError::Kernel`] naming the first
    /// kernel that did not build (its calls are `Unsupported`; the others are built).
    pub fn build_pipelines(&mut self) -> Result<(), InitError> {
        self.pipelines.build_all()
    }

    /// Plans kernels for `tiles` from now on, for example [`Tiles::Gpu`] on lavapipe to check
    /// the GPU shapes on a machine without a GPU. Returns `false`, changing nothing, for
    /// [`Tiles::Gpu`] on a device that cannot run them (too few invocations per workgroup).
    pub fn set_tiles(&mut self, tiles: Tiles) -> bool {
        if tiles == Tiles::Gpu && !self.pipelines.supports(Kernel::LinearTiled) {
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

    /// Queues `command`, and submits the queue without waiting once it holds [`BATCH`]
    /// commands. A failure of earlier, already queued work may be reported here.
    fn queue(&mut self, command: Command) -> Result<(), BackendError> {
        self.queued.push(command);
        if self.queued.len() >= BATCH { self.flush() } else { Ok(()) }
    }

    /// Records `commands` into `b`, in order; vulkano puts the barriers between them.
    fn record_all(&self, b: &mut Builder, commands: Vec<Command>) -> Result<(), BackendError> {
        for command in commands {
            match command {
                Command::Fill { words, value } => {
                    b.fill_buffer(words, value).map_err(record)?;
                }
                Command::Copy { src, dst } => {
                    b.copy_buffer(CopyBufferInfo::buffers(src, dst)).map_err(record)?;
                }
                Command::Dispatch { pipeline, storage, params, groups } => {
                    let layout =
                        pipeline.layout().set_layouts().first().ok_or(BackendError::DeviceLost)?.clone();
                    let mut writes: Vec<WriteDescriptorSet> = Vec::with_capacity(storage.len() + 1);
                    let mut binding = 0u32;
                    for sub in storage {
                        writes.push(WriteDescriptorSet::buffer(binding, sub));
                        binding += 1;
                    }
                    writes.push(WriteDescriptorSet::buffer(binding, params));
                    let set = DescriptorSet::new(self.descriptors.clone(), layout, writes, [])
                        .map_err(validated)?;
                    b.bind_pipeline_compute(pipeline.clone())
                        .map_err(record)?
                        .bind_descriptor_sets(PipelineBindPoint::Compute, pipeline.layout().clone(), 0, set)
                        .map_err(record)?;
                    // SAFETY: the shader is naga output with ReadZeroSkipWrite bounds checks on
                    // every buffer access, so it cannot access memory outside the ranges bound
                    // above; every descriptor the shader uses is bound; the group counts were
                    // checked against the device limits when the command was queued.
                    unsafe { b.dispatch(groups) }.map_err(record)?;
                }
            }
        }
        Ok(())
    }

    /// Waits for the batch in flight, if any.
    fn wait_in_flight(&mut self) -> Result<(), BackendError> {
        match self.in_flight.take() {
            // Dropping the future after the wait releases vulkano's locks on its resources and
            // the command buffer with them (and so the memory of buffers freed meanwhile).
            Some(future) => future.wait(None).map_err(validated),
            None => Ok(()),
        }
    }

    /// Submits the queued commands, if any, as one command buffer without waiting for it;
    /// first waits for the batch submitted before it, so at most one batch is in flight and
    /// batches never overlap.
    fn flush(&mut self) -> Result<(), BackendError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let commands = core::mem::take(&mut self.queued);
        let mut builder = AutoCommandBufferBuilder::primary(
            self.commands.clone(),
            self.queue.queue_family_index(),
            CommandBufferUsage::OneTimeSubmit,
        )
        .map_err(validated)?;
        self.record_all(&mut builder, commands)?;
        let cb = builder.build().map_err(validated)?;
        self.wait_in_flight()?;
        let future =
            cb.execute(self.queue.clone()).map_err(exec)?.then_signal_fence_and_flush().map_err(validated)?;
        self.in_flight = Some(future);
        Ok(())
    }

    /// Submits everything recorded and waits until the device has finished it all: before
    /// the host touches memory the device may use. Reports any failure of queued work.
    fn finish(&mut self) -> Result<(), BackendError> {
        self.flush()?;
        self.wait_in_flight()
    }

    /// Queues `command` and waits for it (and everything before it) to finish.
    fn submit_now(&mut self, command: Command) -> Result<(), BackendError> {
        self.queued.push(command);
        self.finish()
    }

    /// Queues a fill of `sub` (4-byte aligned offset and size, non-empty) with zeros.
    fn zero(&mut self, sub: Subbuffer<[u8]>) -> Result<(), BackendError> {
        self.queue(Command::Fill { words: sub.reinterpret::<[u32]>(), value: 0 })
    }

    /// Puts `data` (at most [`STAGING_SIZE`] bytes) at the start of the staging buffer. Only
    /// after [`Self::finish`]: no queued command reads the staging buffer then.
    fn stage(&self, data: &[u8]) -> Result<(), BackendError> {
        let mut guard = self.staging.write().map_err(host)?;
        let dst = guard.get_mut(..data.len()).ok_or(BackendError::InvalidArgument)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    /// A fresh host-visible block holding `data`, for one recorded command to read.
    fn upload(&self, data: &[u8]) -> Result<Subbuffer<[u8]>, BackendError> {
        let block = self.uploads.allocate_slice::<u8>(data.len() as u64).map_err(|e| {
            eprintln!("rela-backend-vulkan: upload block: {e}");
            BackendError::OutOfMemory
        })?;
        block.write().map_err(host)?.copy_from_slice(data);
        Ok(block)
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
        &mut self,
        pipeline: &Arc<ComputePipeline>,
        params: &Params,
        storage: &[Subbuffer<[u8]>],
        groups: (u32, u32),
    ) -> Result<(), BackendError> {
        let (x, y) = groups;
        if x > self.max_groups[0] || y > self.max_groups[1] {
            return Err(BackendError::Unsupported);
        }
        let params = self.upload(&params.to_bytes())?;
        self.queue(Command::Dispatch {
            pipeline: pipeline.clone(),
            storage: storage.to_vec(),
            params,
            groups: [x, y, 1],
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
        let create = |memory: Arc<StandardMemoryAllocator>, filter| {
            Buffer::new_slice::<u8>(
                memory,
                BufferCreateInfo {
                    usage: BufferUsage::STORAGE_BUFFER
                        | BufferUsage::TRANSFER_SRC
                        | BufferUsage::TRANSFER_DST,
                    ..Default::default()
                },
                AllocationCreateInfo { memory_type_filter: filter, ..Default::default() },
                padded,
            )
            .map_err(alloc)
        };
        let sub = match create(self.memory.clone(), self.buffer_memory) {
            // Buffers freed by queued work hold their memory until their zeroing has run:
            // let it run, then try once more.
            Err(BackendError::OutOfMemory) if !self.queued.is_empty() || self.in_flight.is_some() => {
                self.finish()?;
                create(self.memory.clone(), self.buffer_memory)?
            }
            other => other?,
        };
        // Fresh device memory may hold anything: zero it before anyone can read it.
        self.zero(sub.clone())?;
        self.buffers.insert(id, Buf { sub, size });
        self.next_id = next;
        self.used = used;
        Ok(BufferId(id))
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        let sub = self.buf(id)?.sub.clone();
        // Zero before release; if that cannot be recorded the buffer stays live (and
        // accounted). The command buffer holds the buffer until the zeroing has run, so its
        // memory goes back to the allocator zeroed, after every earlier command that uses it.
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
        let range = check_range(self.buf(id)?.size, offset, data.len() as u64)?;
        if range.is_empty() {
            return Ok(());
        }
        // Queued commands may still read or write this buffer, or the staging buffer.
        self.finish()?;
        let buf = self.buf(id)?;
        if self.mapped {
            // No device work is in flight, so the host may write; vulkano flushes non-coherent
            // memory when the guard drops.
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
            self.submit_now(Command::Copy { src, dst })?;
            at += len;
        }
        Ok(())
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let range = check_range(self.buf(id)?.size, offset, out.len() as u64)?;
        if range.is_empty() {
            return Ok(());
        }
        // Wait for every queued command: the last ones may write this buffer.
        self.finish()?;
        let buf = self.buf(id)?;
        if self.mapped {
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
            self.submit_now(Command::Copy { src: from, dst: to })?;
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
        self.queue(Command::Copy { src: from, dst: to })
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
        let edges = if !head.is_empty() || !tail.is_empty() { Some(self.upload(&[value; 4])?) } else { None };
        if mid_start < mid_end {
            let words = sub.clone().slice(mid_start..mid_end).reinterpret::<[u32]>();
            self.queue(Command::Fill { words, value: u32::from_ne_bytes([value; 4]) })?;
        }
        for edge in [head, tail] {
            if let (false, Some(src)) = (edge.is_empty(), &edges) {
                let src = src.clone().slice(0..edge.end - edge.start);
                self.queue(Command::Copy { src, dst: sub.clone().slice(edge) })?;
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        call.validate(|id| self.buffers.get(&id.0).map(|b| b.size))?;
        let Some(launch) = Launch::of_tiled(call, self.tiles)? else {
            return Ok(());
        };
        let pipeline = self.pipelines.get(launch.kernel)?;
        let storage = launch
            .bindings()
            .iter()
            .map(|&(id, bytes)| self.binding(id, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_kernel(&pipeline, &launch.params, &storage, launch.groups)
    }
}

impl Drop for VulkanBackend {
    /// Zero on free covers buffers still live when the backend goes away (best effort: a lost
    /// device cannot be zeroed, and its memory is the driver's to scrub).
    fn drop(&mut self) {
        let subs: Vec<_> = self.buffers.values().map(|b| b.sub.clone()).collect();
        // Queued work (the zeroing of freed buffers included) runs first.
        self.queued.extend(subs.into_iter().map(|sub| Command::Fill { words: sub.reinterpret(), value: 0 }));
        if let Err(e) = self.finish() {
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
        let mut b = AutoCommandBufferBuilder::primary(
            backend.commands.clone(),
            backend.queue.queue_family_index(),
            CommandBufferUsage::OneTimeSubmit,
        )
        .expect("builder");
        // SAFETY (test only): deliberately invalid usage; the layer reports it and lavapipe
        // performs the copy harmlessly on memory we own.
        unsafe { b.copy_buffer_unchecked(CopyBufferInfo::buffers(src, bad)) };
        let cb = b.build().expect("build");
        let future = cb.execute(backend.queue.clone()).expect("execute");
        future.then_signal_fence_and_flush().expect("flush").wait(None).expect("wait");
        assert!(backend.validation_messages() > 0, "the layer's report was counted");
    }
}
