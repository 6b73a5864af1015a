//! Which generation kernels a backend lacks: each tried on small buffers, so a test of a model
//! that runs on them can skip naming exactly what is missing while a backend's kernels are
//! being written (rather than a list kept by hand).

use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, QueueId, WeightType};

/// The generation kernels (ADD, RMS_NORM, ROPE, SWIGLU, CAUSAL_ATTENTION, ARGMAX, and
/// Q_LINEAR / Q_GATHER over each format of `types`) that `backend` answers
/// [`BackendError::Unsupported`] for, by name (`"Q_LINEAR(Q4_1)"` for a format). Allocates a few
/// small buffers and frees them.
///
/// # Panics
/// If the backend cannot allocate or free 12 KiB (a test helper: the test cannot go on).
pub fn missing_generation_kernels(backend: &mut dyn GpuBackend, types: &[WeightType]) -> Vec<String> {
    let mut bufs = Vec::new();
    for bytes in [4096, 4096, 4096, 64] {
        bufs.push(backend.alloc(bytes).expect("alloc a probe buffer"));
    }
    let (x, w, out, pos) = (bufs[0], bufs[1], bufs[2], bufs[3]);
    let mut calls: Vec<(String, KernelCall)> = vec![
        ("ADD".into(), KernelCall::Binary { op: BinaryOp::Add, a: x, b: w, out, n: 16 }),
        ("RMS_NORM".into(), KernelCall::RmsNorm { x, w, out, rows: 2, dim: 8, eps: 1e-5 }),
        (
            "ROPE".into(),
            KernelCall::Rope { x, pos, out, rows: 2, heads: 2, head_dim: 8, rope_dim: 8, base: 10000.0 },
        ),
        ("SWIGLU".into(), KernelCall::SwiGlu { gate: x, up: w, out, n: 16 }),
        (
            "CAUSAL_ATTENTION".into(),
            KernelCall::CausalAttention {
                q: x,
                k: w,
                v: pos,
                out,
                tokens: 1,
                pos0: 0,
                heads: 2,
                kv_heads: 1,
                head_dim: 8,
            },
        ),
        ("ARGMAX".into(), KernelCall::Argmax { x, out, rows: 1, dim: 8 }),
    ];
    for &wtype in types {
        let k = wtype.block_elems().max(32);
        calls.push((format!("Q_LINEAR({wtype:?})"), KernelCall::QLinear { x, w, out, m: 1, k, n: 2, wtype }));
        calls.push((
            format!("Q_GATHER({wtype:?})"),
            KernelCall::QGather { table: w, ids: pos, out, vocab: 2, dim: k, rows: 1, wtype },
        ));
    }
    let missing = calls
        .iter()
        .filter(|(_, call)| backend.dispatch(call) == Err(BackendError::Unsupported))
        .map(|(name, _)| name.clone())
        .collect();
    for id in bufs {
        backend.free(id).expect("free a probe buffer");
    }
    missing
}

/// A backend that forwards every call to `inner` but answers [`BackendError::Unsupported`] for
/// the kernel calls `refuse` picks, as a backend whose kernel has not landed does.
pub struct Refusing<B> {
    /// The backend every other call goes to.
    pub inner: B,
    /// The calls to refuse.
    pub refuse: fn(&KernelCall) -> bool,
}

impl<B: GpuBackend> GpuBackend for Refusing<B> {
    fn info(&self) -> rela_core::backend::DeviceInfo {
        self.inner.info()
    }
    fn usage(&self) -> rela_core::backend::Usage {
        self.inner.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.inner.alloc(size)
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.inner.free(id)
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.inner.size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.inner.write(id, offset, data)
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read(id, offset, out)
    }
    fn copy(&mut self, s: BufferId, so: u64, d: BufferId, dof: u64, len: u64) -> Result<(), BackendError> {
        self.inner.copy(s, so, d, dof, len)
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.inner.fill(id, offset, len, value)
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        if (self.refuse)(call) { Err(BackendError::Unsupported) } else { self.inner.dispatch(call) }
    }
    fn dispatch_part(&mut self, call: &KernelCall, units: core::ops::Range<u32>) -> Result<(), BackendError> {
        if (self.refuse)(call) {
            Err(BackendError::Unsupported)
        } else {
            self.inner.dispatch_part(call, units)
        }
    }
    fn commit(&mut self, id: BufferId, offset: u64, len: u64) -> Result<(), BackendError> {
        self.inner.commit(id, offset, len)
    }
    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<core::ops::Range<usize>> {
        self.inner.storage_range(id, offset, len)
    }
    fn select_queue(&mut self, queue: QueueId) {
        self.inner.select_queue(queue)
    }
    fn end_queue(&mut self, queue: QueueId) {
        self.inner.end_queue(queue)
    }
}
