//! Why a device model, or one of its steps, failed ([`DeviceError`]).

use std::fmt;

use rela_core::backend::BackendError;

use crate::config::ModelError;
use crate::forward::ForwardError;
use crate::gguf::GgmlType;

/// Why a device model or one of its steps failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DeviceError {
    /// A weight matrix is stored in a type no device kernel reads (no [`WeightType`](rela_core::backend::WeightType)).
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// The file's tensors are not the llama model its config describes.
    Model(ModelError),
    /// A step was refused before any device work (a token outside the vocabulary, a full
    /// cache, a cache of another model).
    Forward(ForwardError),
    /// The backend failed a call; `Unsupported` when it has not got one of the kernels.
    Backend(BackendError),
    /// A dimension does not fit a kernel's 32-bit parameters.
    TooLarge,
    /// A batched step was given more generations than its [`DeviceBatch`](crate::DeviceBatch)
    /// holds.
    BatchTooLarge {
        /// Generations given.
        steps: usize,
        /// Generations the batch holds.
        max: usize,
    },
    /// A batched step was given one cache twice (both would write the same position).
    DuplicateCache,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedTensorType { name, ty } => write!(
                f,
                "tensor {name:?} has type {ty:?}, which no device kernel reads (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K do)"
            ),
            Self::Model(e) => write!(f, "{e}"),
            Self::Forward(e) => write!(f, "{e}"),
            Self::Backend(BackendError::Unsupported) => {
                f.write_str("the backend does not run one of the generation kernels (Unsupported)")
            }
            Self::Backend(e) => write!(f, "backend: {e}"),
            Self::TooLarge => f.write_str("a dimension does not fit the kernels' 32-bit parameters"),
            Self::BatchTooLarge { steps, max } => {
                write!(f, "a batched step of {steps} generations, where the batch holds {max}")
            }
            Self::DuplicateCache => f.write_str("a batched step was given the same KV cache twice"),
        }
    }
}

impl std::error::Error for DeviceError {}

impl From<BackendError> for DeviceError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

impl From<ForwardError> for DeviceError {
    fn from(e: ForwardError) -> Self {
        Self::Forward(e)
    }
}

/// `x` as a kernel parameter, or [`DeviceError::TooLarge`].
pub(crate) fn u32_of(x: usize) -> Result<u32, DeviceError> {
    u32::try_from(x).map_err(|_| DeviceError::TooLarge)
}
