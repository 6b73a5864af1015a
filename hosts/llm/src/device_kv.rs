//! What a generation holds on a device: its KV cache ([`DeviceKv`]); what a batched decode step
//! sees of it ([`KvView`]); and the buffers of batched steps ([`DeviceBatch`]).

use rela_core::backend::{BufferId, GpuBackend};

use crate::config::LlamaConfig;
use crate::device::DEVICE_BATCH;
use crate::device_error::DeviceError;
use crate::device_pass::{Scratch, free_all};
use crate::forward::ForwardError;

/// One generation's keys and values of past positions in device memory (f32, a buffer per
/// block for each), and the buffers of its passes. Made by
/// [`DeviceLlm::new_kv`](crate::DeviceLlm::new_kv); give it back with [`free`](Self::free).
#[derive(Debug)]
pub struct DeviceKv {
    /// Its buffers, shape and length: what [`view`](Self::view) hands out.
    pub(crate) cache: KvView,
    pub(crate) cache_bytes: u64,
    pub(crate) scratch: Option<Scratch>,
}

impl DeviceKv {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.cache.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity
    }

    /// Device bytes held now: the caches and the scratch buffers of the largest pass so far.
    pub fn bytes(&self) -> u64 {
        self.cache_bytes + self.scratch.as_ref().map_or(0, |s| s.bytes)
    }

    /// Device bytes the caches for `capacity` positions and the scratch of a pass over `rows`
    /// tokens of `c`'s model take: what a generation holds at most.
    pub fn bytes_for(c: &LlamaConfig, capacity: usize, rows: usize) -> u64 {
        let cap = capacity.min(c.context_length) as u64;
        let kv_dim = (c.n_kv_heads * c.head_dim) as u64;
        let caches = 2 * c.n_layers as u64 * (cap * kv_dim * 4).max(4);
        caches.saturating_add(Scratch::bytes_for(c, rows.clamp(1, DEVICE_BATCH), 1))
    }

    /// What a batched step ([`DeviceLlm::forward_batch`](crate::DeviceLlm::forward_batch))
    /// needs of this cache: its buffers and how many positions it holds now. The cache must run
    /// no other step until the batched one is [`accept`](Self::accept)ed (or has failed).
    pub fn view(&self) -> KvView {
        self.cache.clone()
    }

    /// Takes in the position a batched step wrote through `view`, a view of this cache at its
    /// current length. Refused (`CacheMismatch`, nothing changed) for a view of another cache or
    /// of another length.
    pub fn accept(&mut self, view: &KvView) -> Result<(), ForwardError> {
        if *view != self.cache || self.cache.len >= self.cache.capacity {
            return Err(ForwardError::CacheMismatch);
        }
        self.cache.len += 1;
        Ok(())
    }

    /// Makes sure the scratch holds passes of `rows` tokens.
    pub(crate) fn ensure_scratch(
        &mut self,
        backend: &mut dyn GpuBackend,
        c: &LlamaConfig,
        rows: usize,
    ) -> Result<(), DeviceError> {
        if self.scratch.as_ref().is_some_and(|s| s.rows >= rows) {
            return Ok(());
        }
        if let Some(old) = self.scratch.take() {
            old.free(backend)?;
        }
        self.scratch = Some(Scratch::alloc(backend, c, rows, 1)?);
        Ok(())
    }

    /// Frees (and so zeroes) every buffer: the caches and the scratch. Frees all of them even
    /// if one fails, and returns the first failure.
    pub fn free(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        let scratch = self.scratch.map(|s| s.free(backend)).unwrap_or(Ok(()));
        let caches = free_all(backend, self.cache.k.into_iter().chain(self.cache.v));
        scratch.and(caches)
    }
}

/// A generation's KV cache as a batched step sees it: its buffers and its length when the view
/// was taken ([`DeviceKv::view`]). It owns nothing: the [`DeviceKv`] it came from does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvView {
    pub(crate) k: Vec<BufferId>,
    pub(crate) v: Vec<BufferId>,
    pub(crate) n_layers: usize,
    pub(crate) kv_dim: usize,
    pub(crate) capacity: usize,
    pub(crate) len: usize,
}

impl KvView {
    /// Positions the cache held when the view was taken.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache held no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The buffers of a decode step for up to [`seqs`](Self::seqs) generations at once
/// ([`DeviceLlm::forward_batch`](crate::DeviceLlm::forward_batch)). Made by
/// [`DeviceLlm::new_batch`](crate::DeviceLlm::new_batch); give it back with
/// [`free`](Self::free) (dropping it cannot reach the backend).
#[derive(Debug)]
pub struct DeviceBatch {
    pub(crate) scratch: Scratch,
    /// The model's width and vocabulary, to refuse a batch of another model.
    pub(crate) dim: usize,
    pub(crate) vocab: usize,
}

impl DeviceBatch {
    /// Most generations one step serves.
    pub fn seqs(&self) -> usize {
        self.scratch.seqs
    }

    /// Device bytes the buffers take.
    pub fn bytes(&self) -> u64 {
        self.scratch.bytes
    }

    /// Device bytes of the buffers for `seqs` generations of `c`'s model.
    pub fn bytes_for(c: &LlamaConfig, seqs: usize) -> u64 {
        Scratch::bytes_for(c, seqs.max(1), seqs.max(1))
    }

    /// Frees (and so zeroes) the buffers, all of them even if one fails.
    pub fn free(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        self.scratch.free(backend)
    }
}
