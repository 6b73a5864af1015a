//! The seam between a session and the node's model runtime (MODEL_LOAD, MODEL_UNLOAD, INFER,
//! GENERATE).
//!
//! The core is `no_std` and cannot tokenize or read files, so a std host supplies a
//! [`ModelHost`], one per session, and passes it to
//! [`Session::handle_frame_with`](crate::session::Session::handle_frame_with). The session
//! keeps the protocol rules: state checks, the MODELS capability, seq echo, typed errors, and
//! charging model bytes to the session's quota. The host does the work on the backend.
//!
//! Hosts without models use [`NoModels`]; MODEL_* requests are then answered `UNSUPPORTED`.
//!
//! # Uploads
//!
//! MODEL_UPLOAD, MODEL_CHUNK and MODEL_COMMIT stage a client's safetensors file in host memory
//! and then load it. The session checks the order (one upload at a time, chunks contiguous
//! from offset 0, commit only once every byte has arrived) and charges the staged bytes to the
//! session's quota until the commit; the host stores the bytes and, on commit, checks them
//! before anything touches the device.
//!
//! # Progress
//!
//! A long load (MODEL_LOAD, MODEL_COMMIT) of a client that asked for PROGRESS frames comes with
//! a [`ProgressTarget`]. The host encodes frames with it and sends them itself, ahead of the
//! answer the session queues: the core cannot do I/O in the middle of a call.
//!
//! # Cleanup
//!
//! When a session closes for any reason it forgets its models and their bytes; the host must
//! then call [`ModelHost::release_all`] so every model's memory is freed and zeroed.

use core::fmt;

use crate::backend::{BackendError, BufferId, GpuBackend};
use crate::crc32::Crc32;
use crate::wire::generate::{Generate, Generated};
use crate::wire::model_list::ModelKind;
use crate::wire::msg::{Infer, MAX_MODEL_NAME, Message, Progress};
use crate::wire::{EncodeError, ErrorCode, Flags, Kind, emit_frame};

/// Where PROGRESS frames for one request go: its kind and seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressTarget {
    /// The request being reported on.
    pub kind: Kind,
    /// Its seq (PROGRESS frames echo it).
    pub seq: u16,
}

impl ProgressTarget {
    /// Bytes of one PROGRESS frame.
    pub const FRAME_LEN: usize = crate::config::HEADER_LEN + Progress::LEN;

    /// Writes a complete PROGRESS frame (`done` of `total`) into `out`, returning its length
    /// ([`FRAME_LEN`](Self::FRAME_LEN)).
    pub fn emit<C: Crc32>(&self, done: u64, total: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
        let payload = out
            .get_mut(crate::config::HEADER_LEN..)
            .ok_or(EncodeError::BufferTooSmall { needed: Self::FRAME_LEN })?;
        let len = Progress { done, total }.emit(payload)?;
        emit_frame::<C>(out, Kind::PROGRESS, Flags::RESPONSE, self.seq, len)
    }
}

/// A model loaded for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedModel {
    /// The host's id for it (sent to the client as the model handle).
    pub id: u32,
    /// Embedding width of its output.
    pub dim: u32,
    /// Device bytes its weights hold.
    pub bytes: u64,
}

/// The result of INFER: `count × dim` f32 in a backend buffer the host owns, from offset 0.
/// It must stay valid until the host's next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferOutput {
    /// Buffer holding the embeddings.
    pub buffer: BufferId,
    /// Embeddings (one per text).
    pub count: u16,
    /// Floats per embedding.
    pub dim: u16,
}

/// Why a model operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// No such model in the repository, or no such loaded model.
    NoSuchModel,
    /// The weights would exceed the budget given to `load`.
    QuotaExceeded,
    /// The input is outside the model's limits, or uploaded weights fail their checks
    /// (reason for humans).
    InvalidInput(&'static str),
    /// The host has no room to stage an upload now.
    OutOfMemory,
    /// The model files are unusable (reason for humans).
    BadModel(&'static str),
    /// The backend failed.
    Backend(BackendError),
    /// The model or the host cannot serve this request (reason for humans): a GENERATE to an
    /// embedding model, an unknown prompt kind.
    Unsupported(&'static str),
    /// The request costs more than the node allows one request (reason for humans).
    LimitExceeded(&'static str),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchModel => f.write_str("no such model"),
            Self::QuotaExceeded => f.write_str("model does not fit the session quota"),
            Self::InvalidInput(r) => write!(f, "invalid input: {r}"),
            Self::OutOfMemory => f.write_str("no room to stage the upload"),
            Self::BadModel(r) => write!(f, "unusable model: {r}"),
            Self::Backend(e) => write!(f, "backend: {e}"),
            Self::Unsupported(r) => write!(f, "unsupported: {r}"),
            Self::LimitExceeded(r) => write!(f, "over the node's limit: {r}"),
        }
    }
}

impl core::error::Error for ModelError {}

impl From<BackendError> for ModelError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

impl ModelError {
    /// The ERROR code and reason a node sends for this error.
    pub fn wire(&self) -> (ErrorCode, &'static str) {
        match *self {
            Self::NoSuchModel => (ErrorCode::NO_SUCH_MODEL, "no such model"),
            Self::QuotaExceeded => (ErrorCode::QUOTA_EXCEEDED, "model does not fit the session quota"),
            Self::InvalidInput(r) => (ErrorCode::INVALID_INPUT, r),
            Self::OutOfMemory => (ErrorCode::OUT_OF_MEMORY, "no room to stage the upload"),
            Self::BadModel(r) => (ErrorCode::INTERNAL, r),
            Self::Backend(e) => (e.into(), "backend failure"),
            Self::Unsupported(r) => (ErrorCode::UNSUPPORTED, r),
            Self::LimitExceeded(r) => (ErrorCode::LIMIT_EXCEEDED, r),
        }
    }
}

/// One entry of the models a node serves (MODEL_LIST).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelEntry {
    /// Models the node serves now.
    pub count: u16,
    /// What the model at the index does; [`ModelKind::NONE`] past the end of the list.
    pub kind: ModelKind,
    /// Its name, as MODEL_LOAD takes it; empty past the end of the list.
    pub name: heapless::String<MAX_MODEL_NAME>,
}

impl Default for ModelKind {
    fn default() -> Self {
        Self::NONE
    }
}

/// A session's model runtime. One instance per session.
pub trait ModelHost<B: GpuBackend + ?Sized> {
    /// Loads the model `name` (already validated: `[A-Za-z0-9._-]`, 1–64 bytes, no leading
    /// dot) into `backend`. Must fail with [`ModelError::QuotaExceeded`] before touching the
    /// device if its weights need more than `budget` bytes. With `progress`, the host may send
    /// PROGRESS frames built by it.
    fn load(
        &mut self,
        backend: &mut B,
        name: &str,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError>;

    /// Starts staging `size` bytes of weights for a model like `base` (a repository model,
    /// name already validated), dropping any upload staged before. `size` is non-zero and
    /// already charged to the session's quota. [`ModelError::NoSuchModel`] if `base` is
    /// unknown, [`ModelError::OutOfMemory`] if the host cannot stage that much now.
    fn upload_begin(&mut self, base: &str, size: u64) -> Result<(), ModelError>;

    /// Appends `data` to the staged upload. The session guarantees an upload is staged and
    /// that the total stays within its `size`.
    fn upload_chunk(&mut self, data: &[u8]) -> Result<(), ModelError>;

    /// Checks the complete staged file and loads it into `backend`, dropping the staged bytes
    /// whatever the outcome. As [`load`](Self::load) for `budget` and `progress`; weights that
    /// fail their checks are [`ModelError::InvalidInput`], before the device is touched.
    fn upload_commit(
        &mut self,
        backend: &mut B,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError>;

    /// Drops the staged upload, if any.
    fn upload_cancel(&mut self);

    /// Frees and zeroes every byte of model `id`.
    fn unload(&mut self, backend: &mut B, id: u32) -> Result<(), ModelError>;

    /// Runs model `id` on the request's texts.
    ///
    /// `budget` is the working memory (intermediates, the result's staging buffer) the host may
    /// hold for this session once the call returns ([`working_bytes`](Self::working_bytes));
    /// past it the call fails with [`ModelError::QuotaExceeded`] and keeps no more than before.
    fn infer(
        &mut self,
        backend: &mut B,
        id: u32,
        request: &Infer<'_>,
        budget: u64,
    ) -> Result<InferOutput, ModelError>;

    /// Runs a GENERATE with model `id` to its end. The host sends the TOKEN frames itself
    /// (seq `seq`, see [`TokenMsg::emit_frame`](crate::wire::generate::TokenMsg::emit_frame)),
    /// ahead of the answer the session queues, and stops early (finish reason CANCELLED) when
    /// the client cancels or the session ends. The session has checked the sampling fields and
    /// `max_tokens` ≥ 1.
    ///
    /// `budget` is the working memory (the KV cache) the host may hold for the generation: past
    /// it the call fails with [`ModelError::QuotaExceeded`] before any work. The default
    /// answers [`ModelError::Unsupported`]: a host without language models.
    fn generate(
        &mut self,
        backend: &mut B,
        id: u32,
        request: &Generate<'_>,
        budget: u64,
        seq: u16,
    ) -> Result<Generated, ModelError> {
        let _ = (backend, id, request, budget, seq);
        Err(ModelError::Unsupported("this node does not generate text"))
    }

    /// Frees and zeroes every model this host holds and drops any staged upload (the session
    /// closed).
    fn release_all(&mut self, backend: &mut B);

    /// Entry `index` of the models this host can load, in name order, with their count
    /// (MODEL_LIST). The default lists none.
    fn list(&self, index: u16) -> ModelEntry {
        let _ = index;
        ModelEntry::default()
    }

    /// Device bytes of models this host holds once for every session that loads them
    /// (reported in DEVICE_INFO). 0 by default: nothing shared.
    fn shared_bytes(&self) -> u64 {
        0
    }

    /// Device bytes of working memory this host holds for the session now (intermediates,
    /// staging for results), which the session charges to its quota besides the weights.
    fn working_bytes(&self) -> u64 {
        0
    }
}

/// The model host of a node that serves no models.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoModels;

impl<B: GpuBackend + ?Sized> ModelHost<B> for NoModels {
    fn load(
        &mut self,
        _: &mut B,
        _: &str,
        _: u64,
        _: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_begin(&mut self, _: &str, _: u64) -> Result<(), ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_chunk(&mut self, _: &[u8]) -> Result<(), ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_commit(
        &mut self,
        _: &mut B,
        _: u64,
        _: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_cancel(&mut self) {}
    fn unload(&mut self, _: &mut B, _: u32) -> Result<(), ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn infer(&mut self, _: &mut B, _: u32, _: &Infer<'_>, _: u64) -> Result<InferOutput, ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn release_all(&mut self, _: &mut B) {}
}
