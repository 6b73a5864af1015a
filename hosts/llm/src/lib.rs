//! Text generation models for a RELA node: GGUF files, their quantized tensors, their tokenizer
//! and their chat template.
//!
//! - [`gguf`]: the file format (header, metadata, tensor table), parsed as untrusted input.
//! - [`quant`]: host reference dequantization and quantized dot products (F32, F16, BF16, Q8_0,
//!   Q4_0, Q4_1, Q4_K, Q6_K), the oracle for device kernels.
//! - [`config`]: the llama architecture's hyperparameters and tensor checks; other architectures
//!   and tensor types are refused by name.
//! - [`tokenizer`]: the byte-level BPE tokenizer built from the file's vocabulary and merges.
//! - [`chat`]: chat messages rendered with the file's own Jinja template.
//! - [`forward`]: the llama forward pass on the host (f32 activations, quantized weights).
//! - [`device`]: the same forward pass on a `GpuBackend` (weights in device memory, the
//!   backend's generation kernels), and [`device_stream`]: a generation step by step on it.
//! - [`generate`](mod@generate): sampling, UTF-8 streaming and the generation loop.
//! - [`threads`]: the thread pool the forward pass runs on, and its size.
//! - [`stream`]: generation one step at a time (prompt chunks, then one token per step), with
//!   stop strings, for servers that interleave sessions and cancel between steps.
//! - [`loaded`]: a file, its tokenizer and its chat template checked and owned together, for a
//!   node's shared registry; prompts (text, chat messages, token ids) to token ids.

mod attention;
pub mod chat;
pub mod config;
pub mod device;
mod device_error;
mod device_kv;
mod device_pass;
pub mod device_stream;
pub mod forward;
pub mod generate;
pub mod gguf;
pub mod loaded;
mod qbatch;
#[cfg(target_arch = "x86_64")]
mod qbatch_q8;
#[cfg(target_arch = "x86_64")]
mod qdot_avx2;
#[cfg(target_arch = "x86_64")]
mod qdot_avx512;
mod qmatmul;
pub mod quant;
mod simd;
pub mod stream;
pub mod threads;
pub mod tokenizer;

pub use chat::{ChatError, ChatTemplate, Message};
pub use config::{LlamaConfig, ModelError};
pub use device::{DeviceBatch, DeviceError, DeviceKv, DeviceLlm, KvView};
pub use device_stream::DeviceStream;
pub use forward::{Activations, ForwardError, KvCache, Model};
pub use generate::{
    FinishReason, GenerateError, Generation, Sampler, SamplingParams, Utf8Stream, generate, generate_ids,
};
pub use gguf::{GgmlType, Gguf, GgufError, GgufFile, OpenError};
pub use loaded::{LoadError, LoadedLlm, PromptError};
pub use quant::QuantError;
pub use stream::{Finish, Step, StreamError, TokenStream};
pub use tokenizer::{GgufTokenizer, TokenizerError};
