//! The node's model runtime: one [`SessionModels`] per session, implementing the core's
//! [`ModelHost`] seam with `rela-models`.
//!
//! - MODEL_LOAD names a model in the node's repository (`serve --models DIR`). Its weights are
//!   charged to the **session's quota**: the size of `model.safetensors` is checked against the
//!   quota left before anything touches the device, and the loaded size again after.
//! - INFER runs the forward pass on the node's backend. The embeddings are staged in a small
//!   backend buffer the session's host owns (at most `MAX_TEXTS × dim × 4` bytes; reused), from
//!   which the core reads the response payload. The forward pass's working memory is bounded
//!   by `rela_models::BATCH_TOKENS` and is not charged to the quota.
//! - MODEL_UNLOAD and session close free and zero every byte: weights, working memory and the
//!   staging buffer.

use std::sync::Arc;

use rela_core::backend::{BufferId, GpuBackend};
use rela_core::model::{InferOutput, LoadedModel, ModelError, ModelHost};
use rela_core::wire::msg::Infer;
use rela_models::{Embedder, ModelRepository};

/// One session's models.
pub(crate) struct SessionModels {
    repository: Option<Arc<ModelRepository>>,
    loaded: Vec<(u32, Embedder)>,
    next_id: u32,
    /// Staging buffer for INFER results and its size.
    output: Option<(BufferId, u64)>,
}

impl std::fmt::Debug for SessionModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionModels").field("loaded", &self.loaded.len()).finish_non_exhaustive()
    }
}

impl SessionModels {
    /// A session's model host over `repository` (`None`: the node serves no models).
    pub(crate) fn new(repository: Option<Arc<ModelRepository>>) -> Self {
        Self { repository, loaded: Vec::new(), next_id: 0, output: None }
    }

    fn embedder(&mut self, id: u32) -> Result<&mut Embedder, ModelError> {
        self.loaded.iter_mut().find(|(i, _)| *i == id).map(|(_, e)| e).ok_or(ModelError::NoSuchModel)
    }

    /// A staging buffer of at least `bytes`, reusing the current one when it is large enough.
    fn output_buffer(&mut self, backend: &mut dyn GpuBackend, bytes: u64) -> Result<BufferId, ModelError> {
        match self.output {
            Some((id, size)) if size >= bytes => return Ok(id),
            Some((id, _)) => {
                self.output = None;
                backend.free(id)?;
            }
            None => {}
        }
        let id = backend.alloc(bytes.max(4))?;
        self.output = Some((id, bytes.max(4)));
        Ok(id)
    }
}

fn wire_error(e: rela_models::ModelError) -> ModelError {
    use rela_models::ModelError as E;
    match e {
        E::InvalidName { .. } | E::NotFound(_) => ModelError::NoSuchModel,
        E::TooManyTexts { .. } => ModelError::InvalidInput("too many texts"),
        E::TextTooLong { .. } => ModelError::InvalidInput("a text is too long"),
        E::InvalidUtf8 { .. } => ModelError::InvalidInput("a text is not UTF-8"),
        E::Backend(b) => ModelError::Backend(b),
        E::Tokenizer(_) => ModelError::InvalidInput("tokenizer failed on a text"),
        other => {
            tracing::error!(error = %other, "model files unusable");
            ModelError::BadModel("the model's files are unusable")
        }
    }
}

impl<'b> ModelHost<dyn GpuBackend + 'b> for SessionModels {
    fn load(
        &mut self,
        backend: &mut (dyn GpuBackend + 'b),
        name: &str,
        budget: u64,
    ) -> Result<LoadedModel, ModelError> {
        let repo = self.repository.as_ref().ok_or(ModelError::NoSuchModel)?;
        let files = repo.files(name).map_err(wire_error)?;
        let on_disk = std::fs::metadata(&files.safetensors).map(|m| m.len()).unwrap_or(u64::MAX);
        if on_disk > budget {
            return Err(ModelError::QuotaExceeded);
        }
        let started = std::time::Instant::now();
        let embedder = Embedder::load(backend, &files).map_err(wire_error)?;
        if embedder.device_bytes() > budget {
            let _ = embedder.unload(backend);
            return Err(ModelError::QuotaExceeded);
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        let loaded = LoadedModel { id, dim: embedder.dim() as u32, bytes: embedder.device_bytes() };
        tracing::info!(
            model = name,
            bytes = loaded.bytes,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        self.loaded.push((id, embedder));
        Ok(loaded)
    }

    fn unload(&mut self, backend: &mut (dyn GpuBackend + 'b), id: u32) -> Result<(), ModelError> {
        let i = self.loaded.iter().position(|(m, _)| *m == id).ok_or(ModelError::NoSuchModel)?;
        let (_, embedder) = self.loaded.swap_remove(i);
        embedder.unload(backend).map_err(wire_error)
    }

    fn infer(
        &mut self,
        backend: &mut (dyn GpuBackend + 'b),
        id: u32,
        request: &Infer<'_>,
    ) -> Result<InferOutput, ModelError> {
        let texts: Vec<&str> = request.texts().collect();
        let embedder = self.embedder(id)?;
        let dim = embedder.dim();
        let vectors = embedder.embed(backend, &texts).map_err(wire_error)?;
        let count = u16::try_from(vectors.len()).map_err(|_| ModelError::InvalidInput("too many texts"))?;
        let dim16 = u16::try_from(dim).map_err(|_| ModelError::BadModel("embedding too wide"))?;
        let bytes: Vec<u8> = vectors.iter().flatten().flat_map(|f| f.to_le_bytes()).collect();
        let buffer = self.output_buffer(backend, bytes.len() as u64)?;
        backend.write(buffer, 0, &bytes)?;
        Ok(InferOutput { buffer, count, dim: dim16 })
    }

    fn release_all(&mut self, backend: &mut (dyn GpuBackend + 'b)) {
        for (_, embedder) in self.loaded.drain(..) {
            if let Err(e) = embedder.unload(backend) {
                tracing::warn!(error = %e, "unloading a model failed");
            }
        }
        if let Some((id, _)) = self.output.take() {
            let _ = backend.free(id);
        }
    }
}
