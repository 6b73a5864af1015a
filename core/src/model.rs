//! The seam between a session and the node's model runtime (MODEL_LOAD, MODEL_UNLOAD, INFER).
//!
//! The core is `no_std` and cannot tokenize or read files, so a std host supplies a
//! [`ModelHost`], one per session, and passes it to
//! [`Session::handle_frame_with`](crate::session::Session::handle_frame_with). The session
//! keeps the protocol rules: state checks, the MODELS capability, seq echo, typed errors, and
//! charging model bytes to the session's quota. The host does the work on the backend.
//!
//! Hosts without models use [`NoModels`]; MODEL_* requests are then answered `UNSUPPORTED`.
//!
//! # Cleanup
//!
//! When a session closes for any reason it forgets its models and their bytes; the host must
//! then call [`ModelHost::release_all`] so every model's memory is freed and zeroed.

use core::fmt;

use crate::backend::{BackendError, BufferId, GpuBackend};
use crate::wire::ErrorCode;
use crate::wire::msg::Infer;

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
    /// The input is outside the model's limits (reason for humans).
    InvalidInput(&'static str),
    /// The model files are unusable (reason for humans).
    BadModel(&'static str),
    /// The backend failed.
    Backend(BackendError),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchModel => f.write_str("no such model"),
            Self::QuotaExceeded => f.write_str("model does not fit the session quota"),
            Self::InvalidInput(r) => write!(f, "invalid input: {r}"),
            Self::BadModel(r) => write!(f, "unusable model: {r}"),
            Self::Backend(e) => write!(f, "backend: {e}"),
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
            Self::BadModel(r) => (ErrorCode::INTERNAL, r),
            Self::Backend(e) => (e.into(), "backend failure"),
        }
    }
}

/// A session's model runtime. One instance per session.
pub trait ModelHost<B: GpuBackend + ?Sized> {
    /// Loads the model `name` (already validated: `[A-Za-z0-9._-]`, 1–64 bytes, no leading
    /// dot) into `backend`. Must fail with [`ModelError::QuotaExceeded`] before touching the
    /// device if its weights need more than `budget` bytes.
    fn load(&mut self, backend: &mut B, name: &str, budget: u64) -> Result<LoadedModel, ModelError>;

    /// Frees and zeroes every byte of model `id`.
    fn unload(&mut self, backend: &mut B, id: u32) -> Result<(), ModelError>;

    /// Runs model `id` on the request's texts.
    fn infer(&mut self, backend: &mut B, id: u32, request: &Infer<'_>) -> Result<InferOutput, ModelError>;

    /// Frees and zeroes every model this host holds (the session closed).
    fn release_all(&mut self, backend: &mut B);
}

/// The model host of a node that serves no models.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoModels;

impl<B: GpuBackend + ?Sized> ModelHost<B> for NoModels {
    fn load(&mut self, _: &mut B, _: &str, _: u64) -> Result<LoadedModel, ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn unload(&mut self, _: &mut B, _: u32) -> Result<(), ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn infer(&mut self, _: &mut B, _: u32, _: &Infer<'_>) -> Result<InferOutput, ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn release_all(&mut self, _: &mut B) {}
}
