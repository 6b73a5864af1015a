//! Repository models held once in device memory and shared by every session that loads them.
//!
//! - The first MODEL_LOAD of a repository model loads its weights; later loads (by any
//!   session) get a [`share`](rela_models::Embedder::share) of them: the same read-only weight
//!   buffers, with intermediates of their own. A load that arrives while another session is
//!   loading the same model waits for that load (without holding the backend) and shares it.
//! - Shared weights are charged to no session's quota: they are node memory, reported in
//!   DEVICE_INFO and STATS (`shared_models`). Each session's intermediates are its own.
//! - The last release (MODEL_UNLOAD or the end of the session) frees and zeroes the weights,
//!   unless the model was preloaded (`serve --preload NAME`), which keeps it until the node
//!   stops.
//! - Weights a client uploads are never shared (see [`crate::models`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use rela_core::backend::GpuBackend;
use rela_models::{Embedder, ModelError, ModelFiles};

/// A shared model's state.
enum Entry {
    /// A session is loading it; others wait for [`SharedModels::changed`].
    Loading,
    /// Loaded: `weights` owns the buffers; `users` shares are out.
    Ready { weights: Box<Embedder>, users: usize, pinned: bool },
}

/// The node's shared models, by repository name.
#[derive(Default)]
pub(crate) struct SharedModels {
    entries: Mutex<HashMap<String, Entry>>,
    /// Signalled when a load ends (ready or failed).
    changed: Condvar,
    /// Device bytes of the weights held.
    bytes: AtomicU64,
}

impl std::fmt::Debug for SharedModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModels").field("bytes", &self.bytes()).finish_non_exhaustive()
    }
}

impl SharedModels {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Device bytes of the shared weights held now.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// A share of repository model `name`, loading it with `load` first if nobody holds it.
    /// `pin` keeps it loaded with no users (a preload).
    pub(crate) fn acquire(
        &self,
        name: &str,
        pin: bool,
        load: impl FnOnce() -> Result<Embedder, ModelError>,
    ) -> Result<Embedder, ModelError> {
        let mut entries = self.lock();
        loop {
            match entries.get_mut(name) {
                Some(Entry::Ready { weights, users, pinned }) => {
                    if pin {
                        *pinned = true;
                    } else {
                        *users += 1;
                    }
                    return Ok(weights.share());
                }
                Some(Entry::Loading) => {
                    entries = self.changed.wait(entries).unwrap_or_else(PoisonError::into_inner);
                }
                None => break,
            }
        }
        entries.insert(name.to_owned(), Entry::Loading);
        drop(entries);
        // Loaded without the lock: other models load and other shares come and go meanwhile.
        let loaded = load();
        let mut entries = self.lock();
        let result = match loaded {
            Ok(weights) => {
                let share = weights.share();
                self.bytes.fetch_add(weights.device_bytes(), Ordering::AcqRel);
                entries.insert(
                    name.to_owned(),
                    Entry::Ready { weights: Box::new(weights), users: usize::from(!pin), pinned: pin },
                );
                Ok(share)
            }
            Err(e) => {
                entries.remove(name);
                Err(e)
            }
        };
        drop(entries);
        self.changed.notify_all();
        result
    }

    /// Gives a share back: frees its intermediates, and the weights too once nobody holds them
    /// (and the model is not preloaded).
    pub(crate) fn release(
        &self,
        name: &str,
        share: Embedder,
        backend: &mut dyn GpuBackend,
    ) -> Result<(), ModelError> {
        let result = share.unload(backend);
        let last = {
            let mut entries = self.lock();
            let done = match entries.get_mut(name) {
                Some(Entry::Ready { users, pinned, .. }) => {
                    *users = users.saturating_sub(1);
                    *users == 0 && !*pinned
                }
                _ => false,
            };
            if done { entries.remove(name) } else { None }
        };
        if let Some(Entry::Ready { weights, .. }) = last {
            self.free(*weights, backend)?;
        }
        result
    }

    /// Frees every model's weights (the node is stopping; no share is out any more).
    pub(crate) fn release_all(&self, backend: &mut dyn GpuBackend) {
        let all: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        for entry in all {
            if let Entry::Ready { weights, .. } = entry
                && let Err(e) = self.free(*weights, backend)
            {
                tracing::warn!(error = %e, "freeing a shared model failed");
            }
        }
    }

    fn free(&self, weights: Embedder, backend: &mut dyn GpuBackend) -> Result<(), ModelError> {
        self.bytes.fetch_sub(weights.device_bytes(), Ordering::AcqRel);
        weights.unload(backend)
    }

    /// Loads repository model `files` as a pinned model (kept until the node stops).
    pub(crate) fn preload(
        &self,
        name: &str,
        files: &ModelFiles,
        backend: &mut dyn GpuBackend,
    ) -> Result<(), ModelError> {
        let share = self.acquire(name, true, || Embedder::load(backend, files))?;
        share.unload(backend)
    }
}
