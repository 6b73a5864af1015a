//! [`WgpuBackend`]: buffers, transfers and kernels.

use std::cell::Cell;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rela_core::backend::{
    BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage, check_copy_overlap,
    check_range,
};
use rela_kernels::{Kernel, Launch, Params, Tiles};

use crate::init::{self, Fault, Pipelines};
use crate::{InitError, WgpuConfig};

/// Bytes of each staging buffer (read, bounce) and of each queued write chunk, clamped to the
/// device's limit.
const STAGING_SIZE: u64 = 4 << 20;

/// Submissions queued without a wait before the next call waits for all of them, so the
/// command buffers, bind groups and staging memory wgpu holds for them stay bounded.
const MAX_IN_FLIGHT: u32 = 64;

/// Bytes queued through `Queue::write_buffer` without a wait before the next call waits.
const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// Bytes of the [`Params`] uniform.
const PARAMS_SIZE: u64 = Params::SIZE as u64;

/// wgpu's copy and write alignment (`COPY_BUFFER_ALIGNMENT`).
const ALIGN: u64 = wgpu::COPY_BUFFER_ALIGNMENT;

/// States of a map request, shared with its callback.
const MAP_PENDING: u8 = 0;
const MAP_OK: u8 = 1;
const MAP_FAILED: u8 = 2;

const fn round_down(x: u64) -> u64 {
    x & !(ALIGN - 1)
}

/// Rounds up to the copy alignment. Callers keep `x` at or below a buffer's padded size,
/// which is itself at most `u64::MAX - 3`, so this cannot overflow.
const fn round_up(x: u64) -> u64 {
    round_down(x.saturating_add(ALIGN - 1))
}

/// `u64` byte counts that index host slices. Every such count is bounded by the length of a
/// slice in memory or by the staging size, so it fits `usize`.
const fn us(x: u64) -> usize {
    x as usize
}

/// One 4-byte word of a buffer.
type Word = [u8; 4];

/// One live buffer.
#[derive(Debug)]
struct Entry {
    buffer: wgpu::Buffer,
    /// Logical size; the wgpu buffer is this rounded up to 4.
    size: u64,
}

/// What a staged write puts in the destination.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// One byte value, repeated.
    Fill(u8),
}

/// A [`GpuBackend`] on one wgpu device.
///
/// See the crate docs for how the contract maps onto wgpu. Copies, fills, kernels, frees and
/// aligned writes are queued and return without waiting for the device; reads wait for
/// everything queued before them.
#[derive(Debug)]
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    api: wgpu::Backend,
    capacity: u64,
    /// Largest storage binding, rounded down to 4.
    max_binding: u64,
    max_groups: u32,
    buffers: HashMap<u64, Entry>,
    next_id: u64,
    usage: Usage,
    pipelines: Pipelines,
    /// The tile shapes kernels are planned for ([`Launch::of_tiled`]).
    tiles: Tiles,
    /// The 32-byte [`Params`] uniform.
    params: wgpu::Buffer,
    staging_size: u64,
    /// `MAP_READ | COPY_DST`: device-to-host.
    read_staging: wgpu::Buffer,
    /// `COPY_SRC | COPY_DST`: same-buffer copies (wgpu refuses a buffer as its own source),
    /// and the pattern that non-zero fills copy from.
    bounce: wgpu::Buffer,
    /// Submissions since the last wait.
    in_flight: Cell<u32>,
    /// Bytes queued through `Queue::write_buffer` since the last wait.
    queued_bytes: Cell<u64>,
    /// Host bounce for copies whose offsets differ modulo 4. Allocated on first use.
    scratch: Vec<u8>,
    map_state: Arc<AtomicU8>,
    fault: Arc<Fault>,
}

impl WgpuBackend {
    /// Opens the adapter `config` selects and compiles the kernels.
    ///
    /// Never panics: wgpu failures (including panics while loading drivers) become an
    /// [`InitError`].
    pub fn new(config: WgpuConfig) -> Result<Self, InitError> {
        let opened = init::open(&config)?;
        let device = opened.device;
        let limits = opened.limits;
        let max_buffer = round_down(limits.max_buffer_size);
        let staging_size = STAGING_SIZE.min(max_buffer & !7);
        if staging_size == 0 {
            return Err(InitError::Unsupported(format!("max_buffer_size is {}", limits.max_buffer_size)));
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let make = |label: &str, size: u64, usage: wgpu::BufferUsages, mapped: bool| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: mapped,
            })
        };
        use wgpu::BufferUsages as U;
        let params = make("rela-params", PARAMS_SIZE, U::UNIFORM | U::COPY_DST, false);
        let read_staging = make("rela-read-staging", staging_size, U::MAP_READ | U::COPY_DST, false);
        let bounce = make("rela-bounce", staging_size, U::COPY_SRC | U::COPY_DST, false);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(InitError::Device(format!("staging buffers: {e}")));
        }
        let info = DeviceInfo::new(
            BackendKind::WGPU,
            &opened.info.name,
            vendor_name(&opened.info),
            config.capacity,
            config.capacity.min(max_buffer),
        );
        // CPU adapters keep the narrow shapes; GPUs get workgroup-memory tiles where they run.
        let gpu = matches!(
            opened.info.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu
        );
        let tiles =
            if gpu && opened.pipelines.get(Kernel::LinearTiled).is_some() { Tiles::Gpu } else { Tiles::Cpu };
        Ok(Self {
            tiles,
            queue: opened.queue,
            info,
            api: opened.info.backend,
            capacity: config.capacity,
            max_binding: round_down(limits.max_storage_buffer_binding_size),
            max_groups: limits.max_compute_workgroups_per_dimension,
            buffers: HashMap::new(),
            next_id: 1,
            usage: Usage::default(),
            pipelines: opened.pipelines,
            params,
            staging_size,
            read_staging,
            bounce,
            in_flight: Cell::new(0),
            queued_bytes: Cell::new(0),
            scratch: Vec::new(),
            map_state: Arc::new(AtomicU8::new(MAP_PENDING)),
            fault: opened.fault,
            device,
        })
    }

    /// The tile shapes kernels are planned for: [`Tiles::Gpu`] on a discrete, integrated or
    /// virtual GPU that runs them, [`Tiles::Cpu`] on a CPU adapter (lavapipe, llvmpipe).
    pub fn tiles(&self) -> Tiles {
        self.tiles
    }

    /// Plans kernels for `tiles` from now on, for example [`Tiles::Gpu`] on lavapipe to check
    /// the GPU shapes on a machine without a GPU. Returns `false`, changing nothing, for
    /// [`Tiles::Gpu`] on an adapter that cannot run them.
    pub fn set_tiles(&mut self, tiles: Tiles) -> bool {
        if tiles == Tiles::Gpu && self.pipelines.get(Kernel::LinearTiled).is_none() {
            return false;
        }
        self.tiles = tiles;
        true
    }

    /// The wgpu API this backend runs on (Vulkan, Gl, …).
    pub fn api(&self) -> wgpu::Backend {
        self.api
    }

    /// The last error or device-loss message wgpu reported, for logging.
    pub fn fault(&self) -> Option<String> {
        self.fault.message()
    }

    fn entry(&self, id: BufferId) -> Result<&Entry, BackendError> {
        self.buffers.get(&id.0).ok_or(BackendError::NoSuchBuffer)
    }

    /// Fails fast once the device is lost.
    fn alive(&self) -> Result<(), BackendError> {
        if self.fault.is_lost() { Err(BackendError::DeviceLost) } else { Ok(()) }
    }

    /// Blocks until all submitted work is done, then reports any error recorded meanwhile.
    fn wait(&self) -> Result<(), BackendError> {
        // Writes queued since the last submission go to the device with this (empty) one.
        if self.queued_bytes.get() > 0 {
            self.queue.submit([]);
        }
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.in_flight.set(0);
        self.queued_bytes.set(0);
        if polled.is_err() || self.fault.take() {
            return Err(BackendError::DeviceLost);
        }
        Ok(())
    }

    /// Submits `enc` without waiting for it. wgpu validates while recording and submitting,
    /// so an error in this call's work is reported here; a failure while the device runs it
    /// (device loss) is reported by the next call that waits. Waits once
    /// [`MAX_IN_FLIGHT`] submissions or [`MAX_QUEUED_BYTES`] of writes are outstanding.
    fn submit(&self, enc: wgpu::CommandEncoder) -> Result<(), BackendError> {
        self.queue.submit([enc.finish()]);
        if self.fault.take() {
            return Err(BackendError::DeviceLost);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        if self.in_flight.get() >= MAX_IN_FLIGHT || self.queued_bytes.get() >= MAX_QUEUED_BYTES {
            return self.wait();
        }
        Ok(())
    }

    /// Queues `len` bytes for `buffer` at `offset` (both multiples of 4, `len` non-zero and at
    /// most the staging size), written by `fill` into wgpu's staging memory. The write is
    /// ordered after every earlier submission and before the next one.
    fn queue_write(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: u64,
        fill: impl FnOnce(wgpu::WriteOnly<'_, [u8]>),
    ) -> Result<(), BackendError> {
        let size = NonZeroU64::new(len).ok_or(BackendError::InvalidArgument)?;
        let Some(mut view) = self.queue.write_buffer_with(buffer, offset, size) else {
            self.fault.take();
            return Err(BackendError::DeviceLost);
        };
        fill(view.slice(..));
        drop(view);
        if self.fault.take() {
            return Err(BackendError::DeviceLost);
        }
        self.queued_bytes.set(self.queued_bytes.get() + len);
        Ok(())
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Maps `buffer[..size]` and waits for it.
    fn map(&self, buffer: &wgpu::Buffer, mode: wgpu::MapMode, size: u64) -> Result<(), BackendError> {
        self.map_state.store(MAP_PENDING, Ordering::SeqCst);
        let state = Arc::clone(&self.map_state);
        buffer.map_async(mode, 0..size, move |r| {
            state.store(if r.is_ok() { MAP_OK } else { MAP_FAILED }, Ordering::SeqCst);
        });
        self.wait()?;
        match self.map_state.load(Ordering::SeqCst) {
            MAP_OK => Ok(()),
            _ => Err(BackendError::DeviceLost),
        }
    }

    /// Reads `out.len()` bytes at `offset` of `buffer`; any alignment. The range must lie in
    /// the buffer's padded size.
    fn read_raw(&self, buffer: &wgpu::Buffer, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let end = offset + out.len() as u64;
        let mut pos = round_down(offset);
        let stop = round_up(end);
        while pos < stop {
            let n = (stop - pos).min(self.staging_size);
            let mut enc = self.encoder();
            enc.copy_buffer_to_buffer(buffer, pos, &self.read_staging, 0, n);
            self.submit(enc)?;
            self.map(&self.read_staging, wgpu::MapMode::Read, n)?;
            let copied = self.read_staging.get_mapped_range(0..n).map(|view| {
                let (lo, hi) = (pos.max(offset), (pos + n).min(end));
                out[us(lo - offset)..us(hi - offset)].copy_from_slice(&view[us(lo - pos)..us(hi - pos)]);
            });
            self.read_staging.unmap();
            copied.map_err(|_| BackendError::DeviceLost)?;
            pos += n;
        }
        Ok(())
    }

    /// The 4-byte words at `head` and `tail` (aligned, when wanted), in one round trip.
    fn read_edges(
        &self,
        buffer: &wgpu::Buffer,
        head: Option<u64>,
        tail: Option<u64>,
    ) -> Result<(Option<Word>, Option<Word>), BackendError> {
        if head.is_none() && tail.is_none() {
            return Ok((None, None));
        }
        let mut enc = self.encoder();
        for (slot, at) in [head, tail].into_iter().enumerate() {
            if let Some(at) = at {
                enc.copy_buffer_to_buffer(buffer, at, &self.read_staging, slot as u64 * ALIGN, ALIGN);
            }
        }
        self.submit(enc)?;
        self.map(&self.read_staging, wgpu::MapMode::Read, 2 * ALIGN)?;
        let words = self.read_staging.get_mapped_range(0..2 * ALIGN).map(|view| {
            let mut w = [[0u8; 4]; 2];
            w[0].copy_from_slice(&view[..4]);
            w[1].copy_from_slice(&view[4..8]);
            (head.map(|_| w[0]), tail.map(|_| w[1]))
        });
        self.read_staging.unmap();
        words.map_err(|_| BackendError::DeviceLost)
    }

    /// Writes `len` bytes from `src` at `offset` of `buffer`; any alignment. Partial words at
    /// the edges are read first and merged. The range must lie in the buffer's padded size.
    fn write_raw(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: u64,
        src: Source<'_>,
    ) -> Result<(), BackendError> {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (start, stop) = (round_down(offset), round_up(end));
        let head_at = (start != offset).then_some(start);
        // A partial last word that is also the partial first word is read once, as the head.
        let tail_at = (end != stop && (head_at.is_none() || stop - start > ALIGN)).then_some(stop - ALIGN);
        let (head, tail) = self.read_edges(buffer, head_at, tail_at)?;
        let tail = if end != stop && tail.is_none() { head } else { tail };
        let mut pos = start;
        while pos < stop {
            let n = (stop - pos).min(self.staging_size);
            self.queue_write(buffer, pos, n, |mut view| {
                if let (true, Some(h)) = (pos == start, head) {
                    view.slice(0..4).copy_from_slice(&h);
                }
                if let (true, Some(t)) = (pos + n == stop, tail) {
                    view.slice(us(n) - 4..us(n)).copy_from_slice(&t);
                }
                let (lo, hi) = (pos.max(offset), (pos + n).min(end));
                let mut dst = view.slice(us(lo - pos)..us(hi - pos));
                match src {
                    Source::Bytes(data) => dst.copy_from_slice(&data[us(lo - offset)..us(hi - offset)]),
                    Source::Fill(v) => dst.fill(v),
                }
            })?;
            pos += n;
        }
        Ok(())
    }

    /// Fills the aligned range `start..stop` of `buffer` with `value`: a clear for zero,
    /// otherwise one pattern write into the bounce buffer and one copy per chunk, in a single
    /// submission.
    fn fill_aligned(
        &self,
        buffer: &wgpu::Buffer,
        start: u64,
        stop: u64,
        value: u8,
    ) -> Result<(), BackendError> {
        let mut enc = self.encoder();
        if value == 0 {
            enc.clear_buffer(buffer, start, Some(stop - start));
        } else {
            let n = (stop - start).min(self.staging_size);
            self.queue_write(&self.bounce, 0, n, |mut view| view.fill(value))?;
            let mut pos = start;
            while pos < stop {
                let m = (stop - pos).min(n);
                enc.copy_buffer_to_buffer(&self.bounce, 0, buffer, pos, m);
                pos += m;
            }
        }
        self.submit(enc)
    }

    /// Device-side copy of an aligned range, through the bounce buffer when `src` is `dst`.
    fn copy_aligned(
        &self,
        src: &wgpu::Buffer,
        so: u64,
        dst: &wgpu::Buffer,
        dof: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let mut enc = self.encoder();
        if src == dst {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(self.staging_size);
                enc.copy_buffer_to_buffer(src, so + done, &self.bounce, 0, n);
                enc.copy_buffer_to_buffer(&self.bounce, 0, dst, dof + done, n);
                done += n;
            }
        } else {
            enc.copy_buffer_to_buffer(src, so, dst, dof, len);
        }
        self.submit(enc)
    }

    /// Host-side copy, for ranges whose offsets differ modulo 4.
    fn copy_via_host(
        &mut self,
        src: &wgpu::Buffer,
        so: u64,
        dst: &wgpu::Buffer,
        dof: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let mut scratch = core::mem::take(&mut self.scratch);
        scratch.resize(us(self.staging_size), 0);
        let mut result = Ok(());
        let mut done = 0;
        while done < len && result.is_ok() {
            let n = (len - done).min(self.staging_size);
            let chunk = &mut scratch[..us(n)];
            result = self
                .read_raw(src, so + done, chunk)
                .and_then(|()| self.write_raw(dst, dof + done, n, Source::Bytes(chunk)));
            done += n;
        }
        self.scratch = scratch;
        result
    }

    /// A storage binding of the first `need` bytes of buffer `id` (at least 4 bytes; no
    /// buffer is empty). The caller keeps `need` within the buffer and the binding limit.
    fn binding(&self, id: BufferId, need: u64) -> Result<wgpu::BindingResource<'_>, BackendError> {
        let entry = self.entry(id)?;
        let size = round_up(need).max(ALIGN);
        Ok(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &entry.buffer,
            offset: 0,
            size: NonZeroU64::new(size),
        }))
    }
}

fn vendor_name(info: &wgpu::AdapterInfo) -> &'static str {
    match info.vendor {
        0x1002 => "AMD",
        0x10de => "NVIDIA",
        0x8086 => "Intel",
        0x13b5 => "ARM",
        0x5143 => "Qualcomm",
        0x106b => "Apple",
        0x10005 => "Mesa",
        _ => match info.device_type {
            wgpu::DeviceType::Cpu => "software",
            _ => "unknown",
        },
    }
}

impl GpuBackend for WgpuBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    /// `InvalidArgument` for 0 bytes; `OutOfMemory` past the capacity left, past
    /// `max_alloc`, or when the driver cannot allocate.
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.alive()?;
        if size == 0 {
            return Err(BackendError::InvalidArgument);
        }
        let left = self.capacity - self.usage.used;
        if size > left || size > self.info.max_alloc || self.usage.buffers == u32::MAX {
            return Err(BackendError::OutOfMemory);
        }
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: round_up(size),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        if invalid.is_some() || oom.is_some() {
            buffer.destroy();
            self.alive()?;
            return Err(BackendError::OutOfMemory);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.buffers.insert(id, Entry { buffer, size });
        self.usage.used += size;
        self.usage.buffers += 1;
        Ok(BufferId(id))
    }

    /// Queues a clear of the buffer, then releases it, without waiting. The clear is ordered
    /// after all earlier work on the buffer, and wgpu defers destroying a buffer until the
    /// submissions that use it (the clear included) have finished, so its memory goes back to
    /// the driver zeroed. If the device is lost, or the clear is not accepted, the buffer stays
    /// live (and accounted) and the call may be retried.
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        let buffer = self.entry(id)?.buffer.clone();
        self.alive()?;
        let mut enc = self.encoder();
        enc.clear_buffer(&buffer, 0, None);
        self.submit(enc)?;
        if let Some(entry) = self.buffers.remove(&id.0) {
            self.usage.used -= entry.size;
            self.usage.buffers -= 1;
            entry.buffer.destroy();
        }
        Ok(())
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        Ok(self.entry(id)?.size)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let entry = self.entry(id)?;
        check_range(entry.size, offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.alive()?;
        let buffer = entry.buffer.clone();
        self.write_raw(&buffer, offset, data.len() as u64, Source::Bytes(data))
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let entry = self.entry(id)?;
        check_range(entry.size, offset, out.len() as u64)?;
        if out.is_empty() {
            return Ok(());
        }
        self.alive()?;
        self.read_raw(&entry.buffer, offset, out)
    }

    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let (s, d) = (self.entry(src)?, self.entry(dst)?);
        let src_range = check_range(s.size, src_offset, len)?;
        let dst_range = check_range(d.size, dst_offset, len)?;
        check_copy_overlap(src, &src_range, dst, &dst_range)?;
        if len == 0 {
            return Ok(());
        }
        self.alive()?;
        let (s, d) = (s.buffer.clone(), d.buffer.clone());
        if src_offset % ALIGN != dst_offset % ALIGN {
            return self.copy_via_host(&s, src_offset, &d, dst_offset, len);
        }
        // Same phase: bytes up to the first word boundary and after the last one go through
        // the host; the aligned middle stays on the device.
        let head = ((ALIGN - src_offset % ALIGN) % ALIGN).min(len);
        let mid = round_down(len - head);
        let tail = len - head - mid;
        let mut edge = [0u8; 4];
        if head > 0 {
            let b = &mut edge[..us(head)];
            self.read_raw(&s, src_offset, b)?;
            self.write_raw(&d, dst_offset, head, Source::Bytes(b))?;
        }
        if mid > 0 {
            self.copy_aligned(&s, src_offset + head, &d, dst_offset + head, mid)?;
        }
        if tail > 0 {
            let (so, dof) = (src_offset + head + mid, dst_offset + head + mid);
            let b = &mut edge[..us(tail)];
            self.read_raw(&s, so, b)?;
            self.write_raw(&d, dof, tail, Source::Bytes(b))?;
        }
        Ok(())
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        let entry = self.entry(id)?;
        let range = check_range(entry.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.alive()?;
        let buffer = entry.buffer.clone();
        // The padding past the logical end is invisible, so a fill reaching the end may
        // cover it and stay aligned.
        let end = if range.end == entry.size { round_up(range.end) } else { range.end };
        let (start, stop) = (round_up(offset), round_down(end));
        if start >= stop {
            return self.write_raw(&buffer, offset, len, Source::Fill(value));
        }
        self.write_raw(&buffer, offset, start - offset, Source::Fill(value))?;
        self.fill_aligned(&buffer, start, stop, value)?;
        self.write_raw(&buffer, stop, end - stop, Source::Fill(value))
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        call.validate(|id| self.buffers.get(&id.0).map(|e| e.size))?;
        self.alive()?;
        let Some(launch) = Launch::of_tiled(call, self.tiles)? else {
            return Ok(());
        };
        let groups = launch.groups;
        if groups.0 > self.max_groups || groups.1 > self.max_groups {
            return Err(BackendError::Unsupported);
        }
        let storage = launch.bindings();
        if storage.iter().any(|&(_, need)| need > self.max_binding) {
            return Err(BackendError::Unsupported);
        }
        if self.pipelines.get(launch.kernel).is_none() {
            return Err(BackendError::Unsupported);
        }
        // The params write is ordered after every earlier submission (which may still read the
        // previous params) and before this one.
        let params = launch.params.to_bytes();
        self.queue_write(&self.params, 0, PARAMS_SIZE, |mut view| view.copy_from_slice(&params))?;
        let (pipeline, layout) = self.pipelines.get(launch.kernel).ok_or(BackendError::Unsupported)?;
        let count = storage.len();
        let mut entries = Vec::with_capacity(count + 1);
        for (i, &(id, need)) in storage.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32, resource: self.binding(id, need)? });
        }
        entries
            .push(wgpu::BindGroupEntry { binding: count as u32, resource: self.params.as_entire_binding() });
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout,
            entries: &entries,
        });
        let mut enc = self.encoder();
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        }
        self.submit(enc)
    }
}

impl Drop for WgpuBackend {
    /// Zeroes every live buffer before the device goes away.
    fn drop(&mut self) {
        if self.buffers.is_empty() || self.fault.is_lost() {
            return;
        }
        let mut enc = self.encoder();
        for entry in self.buffers.values() {
            enc.clear_buffer(&entry.buffer, 0, None);
        }
        self.queue.submit([enc.finish()]);
        // Nothing to report to from drop; a failure here means the device is gone anyway.
        let _ = self.wait();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Api;

    #[test]
    fn destroyed_device_reports_lost_without_panicking() {
        let cfg = WgpuConfig { capacity: 1 << 20, backends: Api::Vulkan, adapter: None };
        let Ok(mut b) = WgpuBackend::new(cfg) else {
            eprintln!("SKIP wgpu-vulkan: no adapter");
            return;
        };
        let id = b.alloc(100).unwrap();
        b.device.destroy();
        let mut out = [0u8; 8];
        // Loss is noticed by the first operation that waits on the device, then sticks.
        assert_eq!(b.read(id, 0, &mut out), Err(BackendError::DeviceLost));
        assert_eq!(b.alloc(10), Err(BackendError::DeviceLost));
        assert_eq!(b.write(id, 1, &[1, 2, 3]), Err(BackendError::DeviceLost));
        assert_eq!(b.free(id), Err(BackendError::DeviceLost));
        assert!(b.fault().is_some_and(|m| m.contains("lost")));
        // The free did not happen: the buffer is still there, and still accounted.
        assert_eq!(b.size(id), Ok(100));
        assert_eq!(b.usage(), Usage { used: 100, buffers: 1 });
        assert_eq!(b.free(id), Err(BackendError::DeviceLost), "a retry fails the same way");
        drop(b);
    }
}
