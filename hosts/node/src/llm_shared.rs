//! GGUF models held once for every session that loads them ([`SharedLlms`]), each as the node
//! serves it ([`ServedLlm`]).
//!
//! - The first session to load a model parses and checks the file (`rela_llm::LoadedLlm`) and,
//!   on a backend other than the host backend, uploads its weights and the buffers of its
//!   batched decode steps into the backend. Sessions that load the same model meanwhile wait
//!   for that load instead of starting their own (one parse, one upload: N phones loading one
//!   model at once hold its weights once, and none of them runs the backend out of memory with
//!   a copy of its own). If the load fails, the next waiting session tries it in turn and gets
//!   its own answer.
//! - Each session's MODEL_LOAD takes a share and its MODEL_UNLOAD (or its end) gives it back;
//!   the last share frees (and so zeroes) the model's device buffers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rela_core::backend::{BackendKind, GpuBackend};
use rela_core::model::ModelError;
use rela_llm::{Activations, DeviceError, DeviceLlm, LoadError, LoadedLlm};

use crate::llm_batch::Batcher;
use crate::llm_device_batch::DeviceBatcher;

/// A GGUF model as the node serves it: the checked file, and either the batcher every session's
/// decode steps on it go through (host backend) or its weights in the backend's memory.
#[derive(Debug)]
pub(crate) struct ServedLlm {
    /// The file, its tokenizer and chat template.
    pub(crate) llm: Arc<LoadedLlm>,
    /// On the host backend: the batcher.
    pub(crate) batcher: Option<Batcher>,
    /// On any other backend: the weights in its memory (taken out and freed by the last
    /// release).
    device: Mutex<Option<DeviceLlm>>,
    /// On any other backend: the batch every session's decode steps go through, and its
    /// buffers (freed by the last release).
    pub(crate) device_batch: Option<DeviceBatcher>,
}

impl ServedLlm {
    /// Device bytes of the weights and the batch's buffers held in the backend (0 on the host
    /// backend).
    fn device_bytes(&self) -> u64 {
        let weights = self
            .device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, DeviceLlm::device_bytes);
        weights + self.device_batch.as_ref().map_or(0, DeviceBatcher::bytes)
    }

    /// Frees (and so zeroes) the weights and the batch's buffers in `backend`, if the model
    /// has any there.
    fn free_device(&self, backend: &mut dyn GpuBackend) {
        if let Some(Err(e)) = self.device_batch.as_ref().map(|b| b.free(backend)) {
            tracing::warn!(error = %e, "freeing a model's batch buffers failed");
        }
        let device = self.device.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(Err(e)) = device.map(|d| d.unload(backend)) {
            tracing::warn!(error = %e, "freeing a model's device weights failed");
        }
    }

    /// A share of the device weights, if the model runs on the device.
    pub(crate) fn device_share(&self) -> Option<DeviceLlm> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(DeviceLlm::share)
    }
}

/// A model's place in [`SharedLlms`].
enum Slot {
    /// A session is loading it; others wait for [`SharedLlms::loaded`].
    Loading,
    /// Loaded, with the number of shares out.
    Held(Arc<ServedLlm>, usize),
}

/// GGUF models held once for every session that loads them. See the [module docs](self).
#[derive(Default)]
pub(crate) struct SharedLlms {
    /// Models by name.
    entries: Mutex<HashMap<String, Slot>>,
    /// Signalled when a load ends (loaded or failed).
    loaded: Condvar,
    bytes: AtomicU64,
    /// How the host forward passes of the models it loads treat activations.
    activations: Activations,
}

impl std::fmt::Debug for SharedLlms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLlms").field("bytes", &self.bytes()).finish_non_exhaustive()
    }
}

/// A load in progress: dropped without [`done`](Self::done) (the load failed, or panicked),
/// it takes the model's `Loading` slot away and wakes the sessions waiting for it.
struct LoadingGuard<'a> {
    shared: &'a SharedLlms,
    name: &'a str,
    done: bool,
}

impl LoadingGuard<'_> {
    fn done(mut self, served: Arc<ServedLlm>) {
        self.shared.lock().insert(self.name.to_owned(), Slot::Held(served, 1));
        self.done = true;
    }
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut entries = self.shared.lock();
            if matches!(entries.get(self.name), Some(Slot::Loading)) {
                entries.remove(self.name);
            }
        }
        self.shared.loaded.notify_all();
    }
}

impl SharedLlms {
    /// No models yet; those it loads run their host forward passes as `activations` says.
    pub(crate) fn new(activations: Activations) -> Self {
        Self { activations, ..Self::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of the GGUF models held now: the files in host memory and, on a device backend,
    /// their weights and batch buffers in the backend.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// A share of model `name` from `path`, loading it first if nobody holds it; on a backend
    /// other than the host backend, loading also uploads the weights into `backend`. While a
    /// session loads a model, the others that ask for it wait for that load.
    pub(crate) fn acquire(
        &self,
        name: &str,
        path: &Path,
        backend: &mut dyn GpuBackend,
    ) -> Result<Arc<ServedLlm>, ModelError> {
        let mut entries = self.lock();
        loop {
            match entries.get_mut(name) {
                Some(Slot::Held(llm, users)) => {
                    *users += 1;
                    return Ok(llm.clone());
                }
                Some(Slot::Loading) => {
                    entries = self.loaded.wait(entries).unwrap_or_else(PoisonError::into_inner);
                }
                None => {
                    entries.insert(name.to_owned(), Slot::Loading);
                    break;
                }
            }
        }
        drop(entries);
        let guard = LoadingGuard { shared: self, name, done: false };
        // Loaded without the lock: other models load and other shares come and go meanwhile.
        let started = Instant::now();
        let served = load(path, backend, self.activations)?;
        let bytes = served.llm.bytes() + served.device_bytes();
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        tracing::info!(
            model = name,
            bytes,
            device = served.batcher.is_none(),
            ms = started.elapsed().as_millis() as u64,
            "GGUF model loaded"
        );
        let served = Arc::new(served);
        guard.done(served.clone());
        Ok(served)
    }

    /// Gives a share back; the last one drops the model, freeing (and so zeroing) its weights
    /// in `backend` if it had any there.
    pub(crate) fn release(&self, name: &str, backend: &mut dyn GpuBackend) {
        let removed = {
            let mut entries = self.lock();
            let last = match entries.get_mut(name) {
                Some(Slot::Held(_, users)) => {
                    *users = users.saturating_sub(1);
                    *users == 0
                }
                Some(Slot::Loading) | None => false,
            };
            if last { entries.remove(name) } else { None }
        };
        if let Some(Slot::Held(served, _)) = removed {
            self.bytes.fetch_sub(served.llm.bytes() + served.device_bytes(), Ordering::AcqRel);
            served.free_device(backend);
        }
    }
}

/// Parses and checks the file at `path` and readies it for `backend`: a batcher thread on the
/// host backend (its forward passes as `activations` says), the weights and the batch's buffers in any other. On an error nothing stays
/// allocated in `backend`.
fn load(
    path: &Path,
    backend: &mut dyn GpuBackend,
    activations: Activations,
) -> Result<ServedLlm, ModelError> {
    let loaded = Arc::new(LoadedLlm::open(path).map_err(load_error)?.with_activations(activations));
    if backend.info().backend == BackendKind::HOST {
        let batcher = Batcher::start(loaded.clone()).map_err(|e| {
            tracing::error!(error = %e, "no thread for a model's batcher");
            ModelError::OutOfMemory
        })?;
        return Ok(ServedLlm {
            llm: loaded,
            batcher: Some(batcher),
            device: Mutex::new(None),
            device_batch: None,
        });
    }
    let device = DeviceLlm::load(backend, &loaded).map_err(device_load_error)?;
    match DeviceBatcher::new(backend, &device) {
        Ok(batch) => Ok(ServedLlm {
            llm: loaded,
            batcher: None,
            device: Mutex::new(Some(device)),
            device_batch: Some(batch),
        }),
        Err(e) => {
            if let Err(e) = device.unload(backend) {
                tracing::warn!(error = %e, "freeing a model's device weights failed");
            }
            Err(device_load_error(e))
        }
    }
}

/// A model whose weights cannot go into the backend: a matrix type without a device kernel is
/// `UNSUPPORTED`; a backend failure (out of memory) is the backend's error.
fn device_load_error(e: DeviceError) -> ModelError {
    tracing::error!(error = %e, "GGUF model not loadable on the backend");
    match e {
        DeviceError::UnsupportedTensorType { .. } => ModelError::Unsupported(
            "a tensor's type has no kernel on this backend (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K do)",
        ),
        DeviceError::Backend(b) => ModelError::Backend(b),
        _ => {
            ModelError::BadModel("the model's tensors do not fit the backend's kernels (see the node's log)")
        }
    }
}

/// A GGUF file the node cannot serve: an architecture or tensor type it does not support is
/// `UNSUPPORTED`, anything else about the file `INTERNAL` (as for a repository model's damaged
/// files); the reason names what is wrong (the node's log has the detail).
fn load_error(e: LoadError) -> ModelError {
    tracing::error!(error = %e, "GGUF model unusable");
    match e {
        LoadError::Model(rela_llm::ModelError::UnsupportedArchitecture(_)) => {
            ModelError::Unsupported("the model's architecture is not supported (llama is)")
        }
        LoadError::Model(rela_llm::ModelError::UnsupportedTensorType { .. }) => ModelError::Unsupported(
            "a tensor's type is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are)",
        ),
        LoadError::Tokenizer(rela_llm::TokenizerError::UnsupportedModel(_)) => ModelError::Unsupported(
            "the model's tokenizer is not supported (byte-level BPE, `gpt2`, and SentencePiece, `llama`, are)",
        ),
        LoadError::Tokenizer(rela_llm::TokenizerError::UnsupportedPreTokenizer(_)) => {
            ModelError::Unsupported(
                "the model's pre-tokenizer is not supported (smollm, gpt2 and llama-bpe are)",
            )
        }
        LoadError::Open(_) => ModelError::BadModel(
            "the model's .gguf file is unreadable or not a valid GGUF file (see the node's log)",
        ),
        LoadError::Model(_) => ModelError::BadModel(
            "the model's hyperparameters or tensors are not llama's (see the node's log)",
        ),
        LoadError::Tokenizer(_) => {
            ModelError::BadModel("the model's tokenizer metadata is unusable (see the node's log)")
        }
        LoadError::Chat(_) => {
            ModelError::BadModel("the model's chat template does not compile (see the node's log)")
        }
        _ => ModelError::BadModel("the model's .gguf file is unusable (see the node's log)"),
    }
}
