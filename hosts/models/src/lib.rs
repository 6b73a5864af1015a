//! Models a RELA node serves to thin clients.
//!
//! - [`ModelRepository`] finds models in a directory by validated name ([`validate_name`]); each
//!   model is a directory with `model.safetensors`, `tokenizer.json` and `config.json`
//!   ([`ModelFiles`]).
//! - [`Embedder`] loads a BERT sentence-embedding model (all-MiniLM-L6-v2 and its shape
//!   relatives: mean pooling, L2 normalization) into any [`GpuBackend`] and embeds texts with the
//!   backend's kernels only ([`GpuBackend::dispatch`]).
//!
//! # Limits
//!
//! Requests are bounded: at most [`MAX_TEXTS`] texts of at most [`MAX_TEXT_BYTES`] bytes each.
//! Texts are **truncated** to [`MAX_TOKENS`] tokens including `[CLS]` and `[SEP]`, as
//! sentence-transformers does for this model (`max_seq_length` 256): the words past the limit do
//! not contribute to the embedding.
//!
//! # Safety of loading
//!
//! A safetensors file is parsed and checked completely (header, offsets, every tensor the forward
//! pass needs present with the exact shape from `config.json` and a float dtype) before anything
//! is allocated on the backend. A failed load frees whatever it allocated.
//!
//! [`GpuBackend`]: rela_core::backend::GpuBackend
//! [`GpuBackend::dispatch`]: rela_core::backend::GpuBackend::dispatch

use std::fmt;
use std::path::PathBuf;

use rela_core::backend::BackendError;

mod config;
mod embedder;
mod repository;
mod tokenize;
mod weights;

pub use config::BertConfig;
pub use embedder::{BATCH_TOKENS, Embedder, UPLOAD_CHUNK};
pub use repository::{CONFIG_FILE, ModelFiles, ModelRepository, SAFETENSORS_FILE, TOKENIZER_FILE};

/// Most texts one [`Embedder::embed`] call accepts.
pub const MAX_TEXTS: usize = 64;
/// Tokens per text, including `[CLS]` and `[SEP]`; longer texts are truncated.
pub const MAX_TOKENS: usize = 256;
/// Longest text, in UTF-8 bytes, one [`Embedder::embed`] call accepts.
pub const MAX_TEXT_BYTES: usize = 8192;
/// Longest model name [`validate_name`] accepts.
pub const MAX_NAME_LEN: usize = 64;

/// What loading or running a model can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum ModelError {
    /// A model name breaks the rules of [`validate_name`].
    InvalidName {
        /// The offending name (truncated to 80 characters for display).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// No model, or no file the model needs, under that name.
    NotFound(String),
    /// Reading a file failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input file is larger than this crate accepts for its kind.
    FileTooLarge {
        /// Which input (`"config.json"`, `"tokenizer.json"`, `"model.safetensors"`).
        what: &'static str,
        /// Its size in bytes.
        bytes: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// `config.json` is malformed or describes a model this crate cannot run.
    Config(String),
    /// The safetensors file is malformed (bad header, offsets outside the file, …).
    Safetensors(String),
    /// A tensor the forward pass needs is absent.
    MissingTensor(String),
    /// A tensor has a shape other than the one `config.json` implies.
    Shape {
        /// Tensor name.
        tensor: String,
        /// The shape the forward pass needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype that cannot be converted to f32 (only F32, F16 and BF16 can).
    Dtype {
        /// Tensor name.
        tensor: String,
        /// The dtype in the file.
        found: String,
    },
    /// `tokenizer.json` could not be loaded, or tokenizing a text failed.
    Tokenizer(String),
    /// More texts than [`MAX_TEXTS`].
    TooManyTexts {
        /// Texts in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text longer than [`MAX_TEXT_BYTES`].
    TextTooLong {
        /// Index of the text in the request.
        index: usize,
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A text is not valid UTF-8 ([`Embedder::embed_bytes`]).
    InvalidUtf8 {
        /// Index of the text in the request.
        index: usize,
    },
    /// The weights need more device memory than the budget the load was given.
    OverBudget {
        /// Device bytes the weights need (as f32).
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// The backend failed (out of memory, device lost, kernel unsupported, …).
    Backend(BackendError),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { name, reason } => {
                let shown: String = name.chars().take(80).collect();
                write!(f, "invalid model name {shown:?}: {reason}")
            }
            Self::NotFound(what) => write!(f, "not found: {what}"),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::FileTooLarge { what, bytes, max } => {
                write!(f, "{what} is {bytes} bytes, more than the {max} this node accepts")
            }
            Self::Config(msg) => write!(f, "config.json: {msg}"),
            Self::Safetensors(msg) => write!(f, "safetensors: {msg}"),
            Self::MissingTensor(name) => write!(f, "safetensors: tensor {name:?} is missing"),
            Self::Shape { tensor, expected, found } => {
                write!(f, "safetensors: tensor {tensor:?} has shape {found:?}, expected {expected:?}")
            }
            Self::Dtype { tensor, found } => {
                write!(f, "safetensors: tensor {tensor:?} has dtype {found}, expected F32, F16 or BF16")
            }
            Self::Tokenizer(msg) => write!(f, "tokenizer: {msg}"),
            Self::TooManyTexts { count, max } => write!(f, "{count} texts, at most {max} per request"),
            Self::TextTooLong { index, bytes, max } => {
                write!(f, "text {index} is {bytes} bytes, at most {max}")
            }
            Self::InvalidUtf8 { index } => write!(f, "text {index} is not valid UTF-8"),
            Self::OverBudget { bytes, budget } => {
                write!(f, "the weights need {bytes} bytes of device memory, more than the {budget} allowed")
            }
            Self::Backend(e) => write!(f, "backend: {e}"),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Backend(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BackendError> for ModelError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

/// Checks a model name: 1 to [`MAX_NAME_LEN`] characters from `[A-Za-z0-9._-]`, not starting
/// with `.`, and without `..`. (So no `/`, `\`, NUL or anything else a path could be built
/// from.)
pub fn validate_name(name: &str) -> Result<(), ModelError> {
    let bad = |reason| Err(ModelError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 characters");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return match c {
            '/' | '\\' => bad("contains a path separator"),
            _ => bad("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"),
        };
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if name.contains("..") {
        return bad("contains \"..\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["all-MiniLM-L6-v2", "a", "model_1.2", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a\\b", ".hidden", "a..b", "..", "a b", "é", "a\0", &"x".repeat(65)] {
            assert!(matches!(validate_name(bad), Err(ModelError::InvalidName { .. })), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod send_sync {
    /// The node moves an embedder into its engine thread.
    #[test]
    fn embedder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Embedder>();
        check::<crate::ModelRepository>();
        check::<crate::ModelError>();
    }
}
