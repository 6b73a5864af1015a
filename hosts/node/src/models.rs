//! The node's model runtime: one [`SessionModels`] per session, implementing the core's
//! [`ModelHost`] seam with `rela-models`.
//!
//! - MODEL_LOAD names a model in the node's repository (`serve --models DIR`). Its weights are
//!   held once for every session that loads it ([`crate::shared_models`]) and charged to no
//!   session's quota (MODEL_LOADED reports 0 bytes charged).
//! - MODEL_UPLOAD / MODEL_CHUNK / MODEL_COMMIT load a client's own safetensors file for the
//!   architecture and tokenizer of a repository model. The file is staged in host memory (its
//!   size is charged to the session's quota until the commit, and all sessions together stage
//!   at most [`MAX_STAGED_BYTES`]), then parsed and checked (header, offsets, every tensor's
//!   dtype and shape) before anything touches the device. Uploaded weights are private to the
//!   session and charged to its quota: the device bytes they need are checked against the
//!   quota left before anything touches the device.
//! - Long loads send PROGRESS frames to clients that asked for them, straight to the
//!   connection's writer while the engine works.
//! - INFER runs the forward pass on the node's backend. The embeddings are staged in a small
//!   backend buffer the session's host owns (at most `MAX_TEXTS × dim × 4` bytes; reused), from
//!   which the core reads the response payload. The forward pass's working memory (bounded
//!   by `rela_models::BATCH_TOKENS`) and the staging buffer are charged to the session's quota
//!   ([`ModelHost::working_bytes`]): an INFER that leaves them above what the quota allows
//!   frees them again and is refused with QUOTA_EXCEEDED.
//! - MODEL_UNLOAD and session close free and zero every byte: weights, working memory and the
//!   staging buffer; close also drops a staged upload.
//! - A `NAME.gguf` file in the repository is a language model: MODEL_LOAD gives a share of the
//!   node's copy and GENERATE runs it ([`crate::llm`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rela_client::FastCrc32;
use rela_core::backend::{BufferId, GpuBackend};
use rela_core::model::{InferOutput, LoadedModel, ModelEntry, ModelError, ModelHost, ProgressTarget};
use rela_core::wire::model_list::ModelKind;
use rela_core::wire::msg::{Infer, valid_model_name};
use rela_models::{Embedder, ModelFiles, ModelRepository};

use crate::llm::{GenerateLimits, SharedLlms, TokenSink};
use crate::messages::{ConnState, INLINE_OUT, OutBuf, Outcome, Reply, ReplyTx};
use crate::shared_models::SharedModels;

/// Default of [`crate::NodeConfig::max_infer_tokens`]: what the embedding model takes at most
/// anyway (64 texts of 256 tokens).
pub const DEFAULT_MAX_INFER_TOKENS: u64 = 64 * 256;

/// Most bytes of uploaded weights all sessions of a node stage at once.
pub(crate) const MAX_STAGED_BYTES: u64 = 1 << 30;

/// A PROGRESS frame at most every this many bytes (besides the first and the last).
const PROGRESS_STEP: u64 = 4 << 20;

/// Every model `repo` serves, sorted by name: the complete embedding-model folders, and the
/// `.gguf` files whose stem is a valid model name (MODEL_LIST). The folder is read anew each
/// time, as MODEL_LOAD does.
pub(crate) fn catalog(repo: &ModelRepository) -> Vec<(ModelKind, String)> {
    let mut out: Vec<(ModelKind, String)> =
        repo.names().into_iter().map(|n| (ModelKind::EMBEDDING, n)).collect();
    if let Ok(entries) = std::fs::read_dir(repo.root()) {
        for name in entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()) {
            if let Some(stem) = name.strip_suffix(".gguf")
                && valid_model_name(stem)
                && crate::llm::gguf_path(repo.root(), stem).is_some()
            {
                out.push((ModelKind::GENERATION, stem.to_owned()));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Bytes staged by every session of a node, against [`MAX_STAGED_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct StagingBudget(AtomicU64);

/// One session's claim on the [`StagingBudget`], returned when dropped.
#[derive(Debug)]
struct StagingClaim {
    budget: Arc<StagingBudget>,
    bytes: u64,
}

impl StagingClaim {
    fn take(budget: &Arc<StagingBudget>, bytes: u64) -> Option<Self> {
        budget
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= MAX_STAGED_BYTES)
            })
            .ok()?;
        Some(Self { budget: budget.clone(), bytes })
    }
}

impl Drop for StagingClaim {
    fn drop(&mut self) {
        self.budget.0.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A client's upload being staged.
struct Staged {
    base: ModelFiles,
    bytes: Vec<u8>,
    _claim: StagingClaim,
}

impl Drop for Staged {
    /// The client's weights are zeroed before their memory goes back to the allocator, however
    /// the upload ends (committed, replaced, abandoned, or the session closed).
    fn drop(&mut self) {
        crate::pool::scrub(&mut self.bytes);
    }
}

/// Where PROGRESS frames go: the connection's writer queue.
#[derive(Debug, Clone)]
pub(crate) struct ProgressSink {
    pub(crate) replies: ReplyTx,
    pub(crate) state: Arc<ConnState>,
}

impl ProgressSink {
    /// A reporter for `target` that sends a frame for the first and last report and at most
    /// every [`PROGRESS_STEP`] bytes in between.
    fn reporter(&self, target: ProgressTarget) -> impl FnMut(u64, u64) + '_ {
        let mut last: Option<u64> = None;
        move |done, total| {
            let due = match last {
                None => true,
                Some(prev) => done == total || done.saturating_sub(prev) >= PROGRESS_STEP,
            };
            if due && last != Some(done) {
                last = Some(done);
                self.send(target, done, total);
            }
        }
    }

    fn send(&self, target: ProgressTarget, done: u64, total: u64) {
        let mut out = [0u8; INLINE_OUT];
        let Ok(len) = target.emit::<FastCrc32>(done, total, &mut out) else { return };
        // Counted as in flight like every reply, so the PING fast path keeps response order.
        self.state.inflight.fetch_add(1, Ordering::AcqRel);
        // No timer change: the answer that follows sets it.
        let outcome = Outcome { timeout: None, closed: false };
        let reply = Reply { out: OutBuf::Inline(out), len, outcome, data: None, _ticket: None };
        if self.replies.send(reply).is_err() {
            self.state.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One session's models.
pub(crate) struct SessionModels {
    repository: Option<Arc<ModelRepository>>,
    staging: Arc<StagingBudget>,
    /// The node's shared repository models.
    shared: Arc<SharedModels>,
    /// Most tokens one INFER may embed.
    max_infer_tokens: u64,
    /// Loaded models by id, with the repository name of the shared ones.
    loaded: Vec<(u32, Embedder, Option<String>)>,
    next_id: u32,
    /// Staging buffer for INFER results and its size.
    output: Option<(BufferId, u64)>,
    upload: Option<Staged>,
    /// Where this session's PROGRESS frames go.
    progress: Option<ProgressSink>,
    /// The node's shared GGUF models.
    llms: Arc<SharedLlms>,
    /// This session's GGUF models: id, model, name.
    loaded_llms: Vec<(u32, Arc<crate::llm::ServedLlm>, String)>,
    /// The node's limits on one GENERATE.
    limits: GenerateLimits,
    /// Set by the engine when the session's job must end (the session is going away).
    pub(crate) abort: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for SessionModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionModels")
            .field("loaded", &self.loaded.len())
            .field("staged", &self.upload.as_ref().map(|u| u.bytes.len()))
            .finish_non_exhaustive()
    }
}

impl SessionModels {
    /// A session's model host over `repository` (`None`: the node serves no models).
    pub(crate) fn new(
        repository: Option<Arc<ModelRepository>>,
        staging: Arc<StagingBudget>,
        shared: Arc<SharedModels>,
        max_infer_tokens: u64,
        progress: Option<ProgressSink>,
        llms: Arc<SharedLlms>,
        limits: GenerateLimits,
    ) -> Self {
        Self {
            repository,
            staging,
            shared,
            max_infer_tokens,
            loaded: Vec::new(),
            next_id: 0,
            output: None,
            upload: None,
            progress,
            llms,
            loaded_llms: Vec::new(),
            limits,
            abort: None,
        }
    }

    /// A fresh model id, unique among this session's models (embedding and GGUF), even after
    /// the counter wraps: the core undoes a load by id if the id were taken.
    fn fresh_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !self.loaded.iter().any(|(i, _, _)| *i == id)
                && !self.loaded_llms.iter().any(|(i, _, _)| *i == id)
            {
                return id;
            }
        }
    }

    /// Loads GGUF model `name` from `path` as a share of the node's copy (charged nothing; on a
    /// device backend the first load also uploads the weights, see [`crate::llm`]).
    fn load_llm(
        &mut self,
        name: &str,
        path: &std::path::Path,
        backend: &mut dyn GpuBackend,
    ) -> Result<LoadedModel, ModelError> {
        let llm = self.llms.acquire(name, path, backend)?;
        let id = self.fresh_id();
        self.loaded_llms.push((id, llm, name.to_owned()));
        // `dim` 0: a language model returns no embeddings.
        Ok(LoadedModel { id, dim: 0, bytes: 0 })
    }

    fn embedder(&mut self, id: u32) -> Result<&mut Embedder, ModelError> {
        self.loaded.iter_mut().find(|(i, _, _)| *i == id).map(|(_, e, _)| e).ok_or(ModelError::NoSuchModel)
    }

    /// Device bytes of this session's working memory: every model's intermediates and the
    /// INFER staging buffer (charged to the session's quota by the core).
    fn working(&self) -> u64 {
        let workspaces: u64 = self.loaded.iter().map(|(_, e, _)| e.workspace_bytes()).sum();
        workspaces + self.output.map_or(0, |(_, size)| size)
    }

    /// Frees the working memory: intermediates and the staging buffer.
    fn release_working(&mut self, backend: &mut dyn GpuBackend) {
        for (_, embedder, _) in &mut self.loaded {
            if let Err(e) = embedder.release_workspace(backend) {
                tracing::warn!(error = %e, "freeing a model's intermediates failed");
            }
        }
        if let Some((id, _)) = self.output.take() {
            let _ = backend.free(id);
        }
    }

    /// Gives a loaded model back: a share to the node's shared models, private weights freed.
    fn drop_model(
        &self,
        backend: &mut dyn GpuBackend,
        embedder: Embedder,
        shared: Option<String>,
    ) -> Result<(), ModelError> {
        match shared {
            Some(name) => self.shared.release(&name, embedder, backend),
            None => embedder.unload(backend),
        }
        .map_err(wire_error)
    }

    fn files(&self, name: &str) -> Result<ModelFiles, ModelError> {
        let repo = self.repository.as_ref().ok_or(ModelError::NoSuchModel)?;
        repo.files(name).map_err(wire_error)
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

    /// Loads a model and registers it: a repository model (`weights` is `None`) as a share of
    /// the node's copy, charged nothing; uploaded `weights` (in place of the base model's
    /// safetensors file) privately, within `budget`.
    fn load_model(
        &mut self,
        backend: &mut dyn GpuBackend,
        what: &str,
        files: &ModelFiles,
        weights: Option<&[u8]>,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        let started = std::time::Instant::now();
        let sink = self.progress.clone();
        let mut report = |_: u64, _: u64| {};
        let mut reporter;
        let report: &mut dyn FnMut(u64, u64) = match (progress, &sink) {
            (Some(target), Some(sink)) => {
                reporter = sink.reporter(target);
                &mut reporter
            }
            _ => &mut report,
        };
        let (embedder, shared) = match weights {
            Some(bytes) => {
                let e = Embedder::load_within(backend, files, Some(bytes), budget, report)
                    .map_err(upload_error)?;
                (e, None)
            }
            None => {
                let shared = self.shared.clone();
                let e = shared
                    .acquire(what, false, || Embedder::load_within(backend, files, None, u64::MAX, report))
                    .map_err(wire_error)?;
                (e, Some(what.to_owned()))
            }
        };
        let id = self.fresh_id();
        let charged = if shared.is_some() { 0 } else { embedder.device_bytes() };
        let loaded = LoadedModel { id, dim: embedder.dim() as u32, bytes: charged };
        tracing::info!(
            model = what,
            bytes = embedder.device_bytes(),
            shared = shared.is_some(),
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        self.loaded.push((id, embedder, shared));
        Ok(loaded)
    }
}

fn wire_error(e: rela_models::ModelError) -> ModelError {
    use rela_models::ModelError as E;
    match e {
        E::InvalidName { .. } | E::NotFound(_) => ModelError::NoSuchModel,
        E::OverBudget { .. } => ModelError::QuotaExceeded,
        E::TooManyTexts { .. } => ModelError::InvalidInput("too many texts"),
        E::TextTooLong { .. } => ModelError::InvalidInput("a text is too long"),
        E::InvalidUtf8 { .. } => ModelError::InvalidInput("a text is not UTF-8"),
        E::Backend(b) => ModelError::Backend(b),
        E::Tokenizer(_) => ModelError::InvalidInput("tokenizer failed on a text"),
        other => {
            tracing::error!(error = %other, "model files unusable");
            // The reason names the file at fault (the wire reason is static text; the node's
            // log has the detail).
            ModelError::BadModel(match other {
                E::Config(_) => {
                    "the model's config.json is unusable (missing or malformed field; see the node's log)"
                }
                E::Safetensors(_) => "the model's model.safetensors is not a valid safetensors file",
                E::MissingTensor(_) => "the model's model.safetensors lacks a tensor the architecture needs",
                E::Shape { .. } => "a tensor in the model's model.safetensors has the wrong shape",
                E::Dtype { .. } => "a tensor in the model's model.safetensors is not F32, F16 or BF16",
                E::FileTooLarge { .. } => "one of the model's files is larger than the node accepts",
                E::Io { .. } => "the node could not read the model's files (see the node's log)",
                _ => "the model's files are unusable (see the node's log)",
            })
        }
    }
}

/// Errors about a client's uploaded weights are the client's input errors.
fn upload_error(e: rela_models::ModelError) -> ModelError {
    use rela_models::ModelError as E;
    let reason = match &e {
        E::Safetensors(_) => "uploaded weights: not a valid safetensors file",
        E::MissingTensor(_) => "uploaded weights: a tensor the model needs is missing",
        E::Shape { .. } => "uploaded weights: a tensor has the wrong shape for the base model",
        E::Dtype { .. } => "uploaded weights: a tensor's dtype is not F32, F16 or BF16",
        E::FileTooLarge { .. } => "uploaded weights: file too large",
        _ => return wire_error(e),
    };
    tracing::info!(error = %e, "uploaded weights rejected");
    ModelError::InvalidInput(reason)
}

impl<'b> ModelHost<dyn GpuBackend + 'b> for SessionModels {
    fn load(
        &mut self,
        backend: &mut (dyn GpuBackend + 'b),
        name: &str,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        if let Some(path) = self.repository.as_ref().and_then(|r| crate::llm::gguf_path(r.root(), name)) {
            return self.load_llm(name, &path, backend);
        }
        let files = self.files(name)?;
        self.load_model(backend, name, &files, None, budget, progress)
    }

    fn upload_begin(&mut self, base: &str, size: u64) -> Result<(), ModelError> {
        self.upload = None;
        let files = self.files(base)?;
        let claim = StagingClaim::take(&self.staging, size).ok_or(ModelError::OutOfMemory)?;
        let mut bytes = Vec::new();
        let len = usize::try_from(size).map_err(|_| ModelError::OutOfMemory)?;
        bytes.try_reserve_exact(len).map_err(|_| ModelError::OutOfMemory)?;
        self.upload = Some(Staged { base: files, bytes, _claim: claim });
        Ok(())
    }

    fn upload_chunk(&mut self, data: &[u8]) -> Result<(), ModelError> {
        let staged = self.upload.as_mut().ok_or(ModelError::InvalidInput("no upload in progress"))?;
        // Within the reserved capacity: the session keeps the total at the announced size.
        staged.bytes.extend_from_slice(data);
        Ok(())
    }

    fn upload_commit(
        &mut self,
        backend: &mut (dyn GpuBackend + 'b),
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        let staged = self.upload.take().ok_or(ModelError::InvalidInput("no upload in progress"))?;
        self.load_model(backend, "(uploaded)", &staged.base, Some(&staged.bytes), budget, progress)
    }

    fn upload_cancel(&mut self) {
        self.upload = None;
    }

    fn unload(&mut self, backend: &mut (dyn GpuBackend + 'b), id: u32) -> Result<(), ModelError> {
        if let Some(i) = self.loaded_llms.iter().position(|(m, _, _)| *m == id) {
            let (_, llm, name) = self.loaded_llms.swap_remove(i);
            drop(llm);
            self.llms.release(&name, backend);
            return Ok(());
        }
        let i = self.loaded.iter().position(|(m, _, _)| *m == id).ok_or(ModelError::NoSuchModel)?;
        let (_, embedder, shared) = self.loaded.swap_remove(i);
        if self.loaded.is_empty()
            && let Some((id, _)) = self.output.take()
        {
            // No model left to answer with it: the staging buffer goes too.
            let _ = backend.free(id);
        }
        self.drop_model(backend, embedder, shared)
    }

    fn infer(
        &mut self,
        backend: &mut (dyn GpuBackend + 'b),
        id: u32,
        request: &Infer<'_>,
        budget: u64,
    ) -> Result<InferOutput, ModelError> {
        if self.loaded_llms.iter().any(|(m, _, _)| *m == id) {
            return Err(ModelError::Unsupported("a language model: use GENERATE"));
        }
        let texts: Vec<&str> = request.texts().collect();
        let limit = self.max_infer_tokens;
        let embedder = self.embedder(id)?;
        let dim = embedder.dim();
        // The request's cost, counted before any device work (tokenizing is host-side).
        let mut tokens = 0u64;
        for text in &texts {
            tokens += embedder.token_ids(text).map_err(wire_error)?.len() as u64;
        }
        if tokens > limit {
            return Err(ModelError::Backend(rela_core::backend::BackendError::LimitExceeded));
        }
        let vectors = embedder.embed(backend, &texts).map_err(wire_error)?;
        let count = u16::try_from(vectors.len()).map_err(|_| ModelError::InvalidInput("too many texts"))?;
        let dim16 = u16::try_from(dim).map_err(|_| ModelError::BadModel("embedding too wide"))?;
        let bytes: Vec<u8> = vectors.iter().flatten().flat_map(|f| f.to_le_bytes()).collect();
        let buffer = self.output_buffer(backend, bytes.len() as u64)?;
        backend.write(buffer, 0, &bytes)?;
        if self.working() > budget {
            // Over the quota: give back what this request grew (every model's intermediates
            // and the staging buffer), so the session holds no more than its quota allows.
            self.release_working(backend);
            return Err(ModelError::QuotaExceeded);
        }
        Ok(InferOutput { buffer, count, dim: dim16 })
    }

    fn generate(
        &mut self,
        backend: &mut (dyn GpuBackend + 'b),
        id: u32,
        request: &rela_core::wire::generate::Generate<'_>,
        budget: u64,
        seq: u16,
    ) -> Result<rela_core::wire::generate::Generated, ModelError> {
        let Some((_, llm, _)) = self.loaded_llms.iter().find(|(m, _, _)| *m == id) else {
            return Err(match self.loaded.iter().any(|(m, _, _)| *m == id) {
                true => ModelError::Unsupported("an embedding model does not generate text"),
                false => ModelError::NoSuchModel,
            });
        };
        let sink = self.progress.as_ref().ok_or(ModelError::BadModel("no connection to stream to"))?;
        // The session is locked by this job: the smallest payload cap any node allows bounds
        // the prompt's TOKEN frames instead of the session's own.
        let max_payload = crate::config::MIN_MAX_PAYLOAD as usize;
        let tokens = TokenSink {
            replies: &sink.replies,
            state: &sink.state,
            abort: self.abort.as_deref(),
            max_payload,
        };
        crate::llm::generate(llm, request, self.limits, budget, seq, &tokens, backend)
    }

    fn release_all(&mut self, backend: &mut (dyn GpuBackend + 'b)) {
        for (_, llm, name) in std::mem::take(&mut self.loaded_llms) {
            drop(llm);
            self.llms.release(&name, backend);
        }
        self.upload = None;
        for (_, embedder, shared) in std::mem::take(&mut self.loaded) {
            if let Err(e) = self.drop_model(backend, embedder, shared) {
                tracing::warn!(error = %e, "unloading a model failed");
            }
        }
        if let Some((id, _)) = self.output.take() {
            let _ = backend.free(id);
        }
    }

    fn list(&self, index: u16) -> ModelEntry {
        let catalog = self.repository.as_ref().map(|r| catalog(r)).unwrap_or_default();
        let mut entry =
            ModelEntry { count: u16::try_from(catalog.len()).unwrap_or(u16::MAX), ..ModelEntry::default() };
        if let Some((kind, name)) = catalog.get(usize::from(index)) {
            // Catalog names are valid model names, at most MAX_MODEL_NAME bytes: they fit.
            if entry.name.push_str(name).is_ok() {
                entry.kind = *kind;
            }
        }
        entry
    }

    fn shared_bytes(&self) -> u64 {
        self.shared.bytes() + self.llms.bytes()
    }

    fn working_bytes(&self) -> u64 {
        self.working()
    }
}
