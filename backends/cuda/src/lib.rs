//! CUDA [`GpuBackend`] on [cudarc](https://docs.rs/cudarc) 0.19, kernels compiled at run time
//! by NVRTC.
//!
//! # Building
//!
//! The crate builds **without a CUDA toolkit or driver**: cudarc is used with its
//! `dynamic-loading` feature, so `libcuda` and `libnvrtc` are opened with `dlopen` at run time
//! and nothing is linked at build time. The driver API bindings are selected by the
//! `cuda-12080` feature (CUDA 12.8 headers), set once in the workspace's
//! `[workspace.dependencies]`; any driver that supports CUDA 12.8 or later works.
//!
//! # Run time
//!
//! [`CudaBackend::new`] never panics. Before calling into cudarc at all it checks that the
//! driver library (`libcuda` / `nvcuda`) and NVRTC can be loaded, because cudarc panics when a
//! library is missing. Missing libraries, no device, or no device at the requested ordinal give
//! [`InitError::Unavailable`]; other driver failures are [`InitError::Driver`], and NVRTC
//! failures [`InitError::Compile`]. Construction also runs under
//! [`std::panic::catch_unwind`], as a last line of defence, and a caught panic becomes
//! [`InitError::Unavailable`].
//!
//! # Behaviour
//!
//! - Buffers are `CudaSlice<u8>` device allocations, zeroed on allocation and zeroed again
//!   before they are released (`free`, and when the backend is dropped).
//! - Accounting is exact and enforced against [`CudaConfig::capacity`] (clamped to the device's
//!   total memory); a real device allocation failure is reported as
//!   [`BackendError::OutOfMemory`] too.
//! - **A stream per queue, no wait per call.** Each queue the host names
//!   ([`GpuBackend::select_queue`]; the node names one per session) gets a CUDA stream of its
//!   own on its first ALLOC, and a buffer's work (fills, copies into it, kernels writing it,
//!   its zeroing on free) runs on the stream it was allocated on. ALLOC, FREE, COPY, FILL and
//!   DISPATCH only enqueue; WRITE and READ wait for their buffer's stream, and no other. So one
//!   session's READ does not wait for another session's kernels. Order across streams:
//!   cudarc's events make a stream wait for the last write of every buffer it reads; the
//!   backend notes which other streams read a buffer, and before anything next changes or
//!   frees it, the buffer's stream waits for an event on each of them (cudarc keeps one read
//!   event per buffer, so readers on two other streams would otherwise race that change). No
//!   call waits on the host for that. An error in queued work surfaces as
//!   [`BackendError::DeviceLost`] on a later call that waits.
//! - WRITE and READ move whole megabytes through two pinned host chunks, one filling or
//!   draining while the device copies the other (`staging`); shorter pieces go straight from or
//!   to the caller's memory.
//! - MATMUL and LINEAR run as cuBLAS SGEMMs when `libcublas` loads (`blas`; checked first,
//!   like the driver), else on the kernels below. Driver errors map to
//!   [`BackendError::OutOfMemory`] (`CUDA_ERROR_OUT_OF_MEMORY`) or
//!   [`BackendError::DeviceLost`] (everything else).
//! - Kernels are `rela_kernels::CUDA_SOURCE`, compiled once by NVRTC at construction with FMA
//!   contraction disabled, so ADD, MUL, SCALE and MATMUL match `rela_kernels::reference` bit for
//!   bit. The model kernels (GATHER … L2_NORMALIZE) launch on the grids `rela_kernels::Launch`
//!   plans, except LINEAR, whose 64×64-tile kernel uses `rela_kernels::grid_linear_tiles`;
//!   their tree reductions and `expf` agree with the reference to a few ulp. Every call is
//!   checked with [`KernelCall::validate`] before any device work.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::string::String;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtrMut, DriverError, result as cu_result,
    sys as cu_sys,
};
use cudarc::nvrtc::{self, CompileOptions};
use rela_core::backend::{
    BackendError, BackendKind, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage,
    check_copy_overlap, check_range,
};
use rela_kernels::Kernel;

mod blas;
mod launch;
mod staging;

use blas::Blas;
use staging::Staging;

/// Names of the kernels in `rela_kernels::CUDA_SOURCE`.
const BINARY_KERNEL: &str = "rela_binary";
const SCALE_KERNEL: &str = "rela_scale";
const MATMUL_KERNEL: &str = "rela_matmul";

/// Configuration of a [`CudaBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaConfig {
    /// Bytes the backend lends. Accounting and [`BackendError::OutOfMemory`] are enforced
    /// against `min(capacity, device total memory)`. Must not be zero.
    pub capacity: u64,
    /// CUDA device ordinal.
    pub ordinal: usize,
}

impl CudaConfig {
    /// A configuration lending `capacity` bytes of device 0.
    pub const fn new(capacity: u64) -> Self {
        Self { capacity, ordinal: 0 }
    }
}

/// Why a [`CudaBackend`] could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitError {
    /// CUDA cannot be used on this machine: the driver library or NVRTC is missing, there is
    /// no device (or none at the requested ordinal), or the driver refused to initialize. The
    /// string says which.
    Unavailable(String),
    /// The configuration is invalid (for example a zero capacity).
    InvalidConfig(&'static str),
    /// A CUDA driver call failed during setup.
    Driver {
        /// What the backend was doing.
        step: &'static str,
        /// The `CUresult` code.
        code: u32,
        /// The driver's description of the error.
        message: String,
    },
    /// NVRTC failed to compile the built-in kernels; the string holds the compiler's log.
    Compile(String),
}

impl InitError {
    fn driver(step: &'static str, e: DriverError) -> Self {
        Self::Driver { step, code: e.0 as u32, message: describe(e) }
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "CUDA unavailable: {why}"),
            Self::InvalidConfig(why) => write!(f, "invalid CUDA backend configuration: {why}"),
            Self::Driver { step, code, message } => {
                write!(f, "CUDA driver error while trying to {step}: {message} (CUresult {code})")
            }
            Self::Compile(log) => write!(f, "NVRTC failed to compile the RELA kernels: {log}"),
        }
    }
}

impl std::error::Error for InitError {}

/// Whether the CUDA driver library (`libcuda` / `nvcuda`) can be loaded.
///
/// Never calls into the driver, so it is safe to use where no GPU is installed.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries to load candidate library names with `dlopen` and
    // closes them again; it runs no CUDA function. Loading a shared library runs its
    // initializers, which is why cudarc marks it unsafe; the driver library is designed to be
    // loaded this way.
    unsafe { cu_sys::is_culib_present() }
}

/// Whether the NVRTC library can be loaded.
///
/// Never calls into NVRTC, so it is safe to use where no toolkit is installed.
pub fn nvrtc_present() -> bool {
    // SAFETY: as in `driver_present`, this only opens and closes candidate libraries.
    unsafe { nvrtc::sys::is_culib_present() }
}

/// The compiled kernels.
#[derive(Debug)]
struct Kernels {
    binary: CudaFunction,
    scale: CudaFunction,
    matmul: CudaFunction,
    /// The model kernels, indexed by `Kernel as usize` (`None` for the three above).
    model: Vec<Option<CudaFunction>>,
}

/// A [`GpuBackend`] on one CUDA device.
///
/// `Send` and `Sync`: cudarc binds the context to the calling thread before each driver call,
/// so the backend may move between threads.
#[derive(Debug)]
pub struct CudaBackend {
    // Field order is drop order: buffers go before the kernels, stream and context they use.
    buffers: HashMap<u64, CudaSlice<u8>>,
    /// Buffers read on other streams than their own since they last changed, with those
    /// streams: the buffer's stream waits for them before it changes the buffer or frees it.
    crossed: HashMap<u64, Vec<Arc<CudaStream>>>,
    blas: Blas,
    staging: Staging,
    kernels: Kernels,
    /// The stream of each queue that allocated (made at its first ALLOC).
    queues: HashMap<QueueId, Arc<CudaStream>>,
    /// The queue calls are made for now.
    queue: QueueId,
    /// The context's default stream: [`QueueId::DEFAULT`]'s.
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    info: DeviceInfo,
    next_id: u64,
    used: u64,
}

impl CudaBackend {
    /// Opens device `config.ordinal`, compiles the kernels and returns the backend.
    ///
    /// Never panics: see the crate docs for how each failure is reported.
    pub fn new(config: CudaConfig) -> Result<Self, InitError> {
        if config.capacity == 0 {
            return Err(InitError::InvalidConfig("capacity must be at least one byte"));
        }
        match catch_unwind(AssertUnwindSafe(|| Self::open(config))) {
            Ok(result) => result,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(InitError::Unavailable(format!("CUDA initialization panicked: {what}")))
            }
        }
    }

    /// The device ordinal this backend uses.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    fn open(config: CudaConfig) -> Result<Self, InitError> {
        use cu_sys::CUresult as R;

        // cudarc panics when a library is missing, so check both before the first call into it.
        if !driver_present() {
            return Err(InitError::Unavailable(
                "the CUDA driver library (libcuda) could not be loaded; no NVIDIA driver is installed".into(),
            ));
        }
        if !nvrtc_present() {
            return Err(InitError::Unavailable(
                "the NVRTC library (libnvrtc) could not be loaded; install the CUDA runtime compiler".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| {
            if matches!(
                e.0,
                R::CUDA_ERROR_NO_DEVICE
                    | R::CUDA_ERROR_STUB_LIBRARY
                    | R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
                    | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
                    | R::CUDA_ERROR_SYSTEM_NOT_READY
                    | R::CUDA_ERROR_DEVICE_UNAVAILABLE
                    | R::CUDA_ERROR_NOT_INITIALIZED
            ) {
                InitError::Unavailable(format!("the CUDA driver could not initialize: {}", describe(e)))
            } else {
                InitError::driver("initialize the driver", e)
            }
        })?;
        let count = usize::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(InitError::Unavailable("the CUDA driver reports no devices".into()));
        }
        if config.ordinal >= count {
            return Err(InitError::Unavailable(format!(
                "no CUDA device at ordinal {} ({count} present)",
                config.ordinal
            )));
        }

        let ctx = CudaContext::new(config.ordinal).map_err(|e| InitError::driver("create a context", e))?;
        let stream = ctx.default_stream();

        let opts = CompileOptions {
            // Keep `a * b + c` as two roundings, like the Rust reference kernels.
            fmad: Some(false),
            name: Some("rela_kernels.cu".into()),
            ..Default::default()
        };
        let ptx = nvrtc::compile_ptx_with_opts(rela_kernels::CUDA_SOURCE, opts)
            .map_err(|e| InitError::Compile(compile_error_text(&e)))?;
        let module = ctx.load_module(ptx).map_err(|e| match e.0 {
            R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => InitError::Unavailable(format!(
                "the installed NVRTC emits PTX newer than the driver accepts; update the driver or \
                 use an NVRTC no newer than the driver ({})",
                describe(e)
            )),
            _ => InitError::driver("load the compiled kernels", e),
        })?;
        let load = |name: &'static str| {
            module.load_function(name).map_err(|e| InitError::driver("look up a kernel", e))
        };
        let kernels = Kernels {
            binary: load(BINARY_KERNEL)?,
            scale: load(SCALE_KERNEL)?,
            matmul: load(MATMUL_KERNEL)?,
            model: Kernel::ALL
                .iter()
                .map(|&k| match k {
                    // Launched on their own (the first three); `LinearTiled` is a WGSL shape, CUDA runs
                    // its own tiled `rela_linear`.
                    Kernel::Binary | Kernel::Scale | Kernel::Matmul | Kernel::LinearTiled => Ok(None),
                    _ => load(k.cuda_name()).map(Some),
                })
                .collect::<Result<_, _>>()?,
        };

        let name = ctx.name().map_err(|e| InitError::driver("query the device name", e))?;
        let device_total = ctx.total_mem().map_err(|e| InitError::driver("query the device memory", e))?;
        let total = config.capacity.min(u64::try_from(device_total).unwrap_or(u64::MAX));
        let info = DeviceInfo::new(BackendKind::CUDA, &name, "NVIDIA", total, total);

        let blas = Blas::new(&stream);
        let staging = Staging::new(&ctx);
        Ok(Self {
            buffers: HashMap::new(),
            crossed: HashMap::new(),
            blas,
            staging,
            kernels,
            queues: HashMap::new(),
            queue: QueueId::DEFAULT,
            stream,
            ctx,
            info,
            next_id: 1,
            used: 0,
        })
    }

    fn buffer(&self, id: BufferId) -> Result<&CudaSlice<u8>, BackendError> {
        self.buffers.get(&id.0).ok_or(BackendError::NoSuchBuffer)
    }

    fn buffer_mut(&mut self, id: BufferId) -> Result<&mut CudaSlice<u8>, BackendError> {
        self.buffers.get_mut(&id.0).ok_or(BackendError::NoSuchBuffer)
    }

    /// The stream of the selected queue, made on its first use.
    fn queue_stream(&mut self) -> Result<Arc<CudaStream>, BackendError> {
        if self.queue == QueueId::DEFAULT {
            return Ok(Arc::clone(&self.stream));
        }
        if let Some(s) = self.queues.get(&self.queue) {
            return Ok(Arc::clone(s));
        }
        let s = self.ctx.new_stream().map_err(map_err)?;
        self.queues.insert(self.queue, Arc::clone(&s));
        Ok(s)
    }

    /// The stream buffer `id` lives on: where everything that changes it runs.
    fn stream_of(&self, id: BufferId) -> Result<Arc<CudaStream>, BackendError> {
        Ok(Arc::clone(self.buffer(id)?.stream()))
    }

    /// Before buffer `id` changes or is freed: makes its stream wait for everything enqueued
    /// so far on each other stream that read it since it last changed (an event on each, no
    /// host wait), so that no reader sees the change. cudarc's own bookkeeping keeps one read
    /// event per buffer, which covers only the last of several reading streams.
    fn settle(&mut self, id: BufferId) -> Result<(), BackendError> {
        if let Some(readers) = self.crossed.remove(&id.0) {
            let own = self.stream_of(id)?;
            for reader in readers {
                own.join(&reader).map_err(map_err)?;
            }
        }
        Ok(())
    }

    /// Notes, for each buffer among `read` that lives on another stream than `on`, that `on`
    /// read it.
    fn mark_read(&mut self, read: &[BufferId], on: &Arc<CudaStream>) {
        for id in read {
            if self.buffers.get(&id.0).is_some_and(|s| !Arc::ptr_eq(s.stream(), on)) {
                let readers = self.crossed.entry(id.0).or_default();
                if !readers.iter().any(|r| Arc::ptr_eq(r, on)) {
                    readers.push(Arc::clone(on));
                }
            }
        }
    }

    /// Reports an error recorded by cudarc's event bookkeeping since the last call.
    fn recorded(&self) -> Result<(), BackendError> {
        self.ctx.check_err().map_err(map_err)
    }

    /// Takes `out` out of the map while `f` runs with the other buffers, then puts it back.
    /// Lets `f` hold shared borrows of inputs and a mutable borrow of the output at once.
    fn with_output<R>(
        &mut self,
        out: BufferId,
        f: impl FnOnce(&Self, &mut CudaSlice<u8>) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let mut slice = self.buffers.remove(&out.0).ok_or(BackendError::NoSuchBuffer)?;
        let result = f(self, &mut slice);
        self.buffers.insert(out.0, slice);
        result
    }

    /// Sets `len` bytes of `slice` from `start` to `value`, on the slice's stream (not
    /// synchronized).
    fn memset(
        &self,
        slice: &mut CudaSlice<u8>,
        start: usize,
        len: usize,
        value: u8,
    ) -> Result<(), BackendError> {
        let end = start.checked_add(len).ok_or(BackendError::OutOfBounds)?;
        let stream = Arc::clone(slice.stream());
        let mut view = slice.try_slice_mut(start..end).ok_or(BackendError::OutOfBounds)?;
        if value == 0 {
            return stream.memset_zeros(&mut view).map_err(map_err);
        }
        self.ctx.bind_to_thread().map_err(map_err)?;
        let (ptr, _record) = view.device_ptr_mut(&stream);
        // SAFETY: `ptr` addresses `view`, `len` bytes inside a live allocation of this context,
        // which the mutable borrow keeps alive and unaliased until the call is enqueued; the
        // context is bound to this thread and `cu_stream` belongs to it. The write is ordered
        // after every earlier use of the buffer: on its own stream by stream order, on others
        // by the event `device_ptr_mut` waited for (and `settle`, which the callers ran); and
        // the buffer is released only by `free`, which enqueues its zeroing behind this.
        unsafe { cu_result::memset_d8_async(ptr, value, len, stream.cu_stream()) }.map_err(map_err)
    }
}

impl GpuBackend for CudaBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn usage(&self) -> Usage {
        Usage { used: self.used, buffers: u32::try_from(self.buffers.len()).unwrap_or(u32::MAX) }
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        if size == 0 {
            return Err(BackendError::InvalidArgument);
        }
        let used = self.used.checked_add(size).ok_or(BackendError::OutOfMemory)?;
        if used > self.info.total {
            return Err(BackendError::OutOfMemory);
        }
        let len = usize::try_from(size).map_err(|_| BackendError::OutOfMemory)?;
        let id = self.next_id;
        let next_id = id.checked_add(1).ok_or(BackendError::OutOfMemory)?;
        let stream = self.queue_stream()?;
        // SAFETY: the memory is uninitialized only until the memset below, which is enqueued on
        // the slice's own stream before any other use (every later use waits for it: on that
        // stream by order, on others by the slice's write event); if it fails the slice is
        // dropped unread.
        let mut slice = unsafe { stream.alloc::<u8>(len) }.map_err(map_err)?;
        stream.memset_zeros(&mut slice).map_err(map_err)?;
        self.buffers.insert(id, slice);
        self.next_id = next_id;
        self.used = used;
        self.recorded()?;
        Ok(BufferId(id))
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.buffer(id)?;
        self.settle(id)?;
        let slice = self.buffers.get_mut(&id.0).ok_or(BackendError::NoSuchBuffer)?;
        let stream = Arc::clone(slice.stream());
        // Zero before release, on the buffer's stream: the release (cudarc's asynchronous
        // free, on the same stream) is ordered after it, and the driver hands the memory out
        // again only after the release. If zeroing cannot be enqueued the buffer stays live
        // (and accounted), so no unzeroed memory is ever handed back to the driver by this path.
        stream.memset_zeros(slice).map_err(map_err)?;
        let Some(slice) = self.buffers.remove(&id.0) else {
            return Err(BackendError::NoSuchBuffer);
        };
        self.used = self.used.saturating_sub(slice.len() as u64);
        drop(slice);
        // Surface a failed release (recorded by the slice's destructor).
        self.recorded()
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        Ok(self.buffer(id)?.len() as u64)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let range = usize_range(check_range(self.size(id)?, offset, data.len() as u64)?)?;
        if range.is_empty() {
            return Ok(());
        }
        self.settle(id)?;
        let stream = self.stream_of(id)?;
        let slice = self.buffers.get_mut(&id.0).ok_or(BackendError::NoSuchBuffer)?;
        self.staging.upload(&stream, data, slice, range.start)?;
        // The caller's bytes are all on their way; the staging chunks are free again once the
        // buffer's stream has run the copies (and with them this queue's earlier work).
        stream.synchronize().map_err(map_err)?;
        self.recorded()
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let range = usize_range(check_range(self.size(id)?, offset, out.len() as u64)?)?;
        if range.is_empty() {
            return Ok(());
        }
        let stream = self.stream_of(id)?;
        let slice = self.buffers.get(&id.0).ok_or(BackendError::NoSuchBuffer)?;
        self.staging.download(&stream, slice, range.start, out)?;
        stream.synchronize().map_err(map_err)?;
        self.recorded()
    }

    fn copy(
        &mut self,
        src: BufferId,
        src_offset: u64,
        dst: BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        let src_size = self.size(src)?;
        let dst_size = self.size(dst)?;
        let src_range = check_range(src_size, src_offset, len)?;
        let dst_range = check_range(dst_size, dst_offset, len)?;
        check_copy_overlap(src, &src_range, dst, &dst_range)?;
        if len == 0 {
            return Ok(());
        }
        let (src_range, dst_range) = (usize_range(src_range)?, usize_range(dst_range)?);
        self.settle(dst)?;
        // On the destination's stream, which changes.
        let stream = self.stream_of(dst)?;
        self.mark_read(&[src], &stream);
        if src == dst {
            // Non-overlapping ranges of one buffer: split it between them.
            let slice = self.buffer_mut(src)?;
            let mid = src_range.start.max(dst_range.start);
            let (lo, mut hi) = slice.try_split_at_mut(mid).ok_or(BackendError::OutOfBounds)?;
            if src_range.start < dst_range.start {
                let s = lo.try_slice(src_range).ok_or(BackendError::OutOfBounds)?;
                let mut d = hi.try_slice_mut(..dst_range.len()).ok_or(BackendError::OutOfBounds)?;
                stream.memcpy_dtod(&s, &mut d).map_err(map_err)?;
            } else {
                let mut lo = lo;
                let s = hi.try_slice(..src_range.len()).ok_or(BackendError::OutOfBounds)?;
                let mut d = lo.try_slice_mut(dst_range).ok_or(BackendError::OutOfBounds)?;
                stream.memcpy_dtod(&s, &mut d).map_err(map_err)?;
            }
        } else {
            self.with_output(dst, |this, out| {
                let s = this.buffer(src)?.try_slice(src_range).ok_or(BackendError::OutOfBounds)?;
                let mut d = out.try_slice_mut(dst_range).ok_or(BackendError::OutOfBounds)?;
                stream.memcpy_dtod(&s, &mut d).map_err(map_err)
            })?;
        }
        self.recorded()
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        let range = usize_range(check_range(self.size(id)?, offset, len)?)?;
        if range.is_empty() {
            return Ok(());
        }
        self.settle(id)?;
        self.with_output(id, |this, slice| this.memset(slice, range.start, range.len(), value))?;
        self.recorded()
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        // Every buffer the call names, as `validate` visits them.
        let named = RefCell::new(Vec::with_capacity(8));
        call.validate(|id| {
            named.borrow_mut().push(id);
            self.buffers.get(&id.0).map(|s| s.len() as u64)
        })?;
        let out = call.output();
        self.settle(out)?;
        // Kernels run on their output's stream; the inputs read there are marked.
        let stream = self.stream_of(out)?;
        let inputs: Vec<BufferId> = named.into_inner().into_iter().filter(|&id| id != out).collect();
        self.mark_read(&inputs, &stream);
        if !self.gemm(call, &stream)? {
            self.with_output(out, |this, out| match call {
                KernelCall::Binary { .. } => this.launch_binary(call, out),
                KernelCall::Scale { .. } => this.launch_scale(call, out),
                KernelCall::Matmul { .. } => this.launch_matmul(call, out),
                _ => this.launch_model(call, out),
            })?;
        }
        self.recorded()
    }

    fn select_queue(&mut self, queue: QueueId) {
        self.queue = queue;
    }

    fn end_queue(&mut self, queue: QueueId) {
        // Its buffers keep the stream alive (each slice holds it) until they are freed; the
        // driver destroys it once the last goes and its work is done.
        self.queues.remove(&queue);
        if self.queue == queue {
            self.queue = QueueId::DEFAULT;
        }
    }
}

impl CudaBackend {
    /// Runs a validated MATMUL or LINEAR through cuBLAS on `stream` if it can ([`Blas::run`]);
    /// `false` leaves the call to the kernels.
    fn gemm(&mut self, call: &KernelCall, stream: &Arc<CudaStream>) -> Result<bool, BackendError> {
        let inputs: &[BufferId] = match call {
            KernelCall::Matmul { a, b, .. } => &[*a, *b],
            KernelCall::Linear { x, w, bias, .. } => &[*x, *w, *bias],
            _ => return Ok(false),
        };
        if !self.blas.available() {
            return Ok(false);
        }
        let mut out = self.buffers.remove(&call.output().0).ok_or(BackendError::NoSuchBuffer)?;
        let result = {
            // `validate` checked that the output aliases no input.
            let found: Option<Vec<&CudaSlice<u8>>> =
                inputs.iter().map(|id| self.buffers.get(&id.0)).collect();
            match found {
                Some(slices) => self.blas.run(&self.ctx, stream, call, &slices, &mut out),
                None => Err(BackendError::NoSuchBuffer),
            }
        };
        self.buffers.insert(call.output().0, out);
        result
    }

    /// Whether MATMUL and LINEAR run through cuBLAS.
    pub fn uses_cublas(&self) -> bool {
        self.blas.available()
    }

    /// Whether WRITE and READ are staged through pinned host memory.
    pub fn uses_pinned_staging(&self) -> bool {
        self.staging.pinned()
    }

    /// Streams of queues that allocated and have not ended (the default stream not counted).
    pub fn queue_streams(&self) -> usize {
        self.queues.len()
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Zero every live buffer, each on its own stream, and wait for all of it before the
        // driver gets the memory back. Errors are ignored: there is no one to report them to,
        // and a failed device keeps nothing to leak.
        let _ = self.ctx.synchronize();
        for slice in self.buffers.values_mut() {
            let stream = Arc::clone(slice.stream());
            let _ = stream.memset_zeros(slice);
        }
        let _ = self.ctx.synchronize();
    }
}

/// Maps a driver error to the backend's error.
fn map_err(e: DriverError) -> BackendError {
    match e.0 {
        cu_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory,
        _ => BackendError::DeviceLost,
    }
}

/// A driver error's name and description.
fn describe(e: DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(name), Ok(text)) => format!("{name}: {text}"),
        (Ok(name), Err(_)) => name,
        _ => format!("CUresult {}", e.0 as u32),
    }
}

fn compile_error_text(e: &nvrtc::CompileError) -> String {
    match e {
        nvrtc::CompileError::CompileError { nvrtc, options, log } => {
            format!("{nvrtc:?} with options {options:?}: {}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
}

/// A `u64` byte range as `usize`.
fn usize_range(r: core::ops::Range<u64>) -> Result<core::ops::Range<usize>, BackendError> {
    let start = usize::try_from(r.start).map_err(|_| BackendError::OutOfBounds)?;
    let end = usize::try_from(r.end).map_err(|_| BackendError::OutOfBounds)?;
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CudaBackend>();
    }

    #[test]
    fn zero_capacity_is_invalid_config() {
        assert_eq!(
            CudaBackend::new(CudaConfig::new(0)).err(),
            Some(InitError::InvalidConfig("capacity must be at least one byte"))
        );
    }
}
