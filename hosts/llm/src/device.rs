//! The llama forward pass on a [`GpuBackend`]: the weights uploaded once into device buffers
//! ([`DeviceLlm`]), a KV cache per generation ([`DeviceKv`]), every step run with the backend's
//! generation kernels ([`KernelCall`]) and only the logits read back.
//!
//! The steps are [`crate::forward`]'s, kernel for kernel: for a run of `t` tokens at positions
//! `pos0 ..`, `Q_GATHER` (token embeddings), then per block `RMS_NORM`, `Q_LINEAR` q/k/v, `ROPE`
//! on q and k, a device-side copy of the rotated keys and the values into the caches at `pos0`,
//! `CAUSAL_ATTENTION`, `Q_LINEAR` o, `ADD` (residual), `RMS_NORM`, `Q_LINEAR` gate/up, `SWIGLU`,
//! `Q_LINEAR` down, `ADD`; after the last block `RMS_NORM` and `Q_LINEAR` over the output matrix
//! (the token embedding when the file has no `output.weight`) for the last row only. The logits
//! are read back for the host sampler ([`crate::generate::Sampler`]), or reduced on the device
//! with `ARGMAX` for greedy decoding ([`DeviceLlm::greedy`], 4 bytes read back).
//!
//! - Matrices stay in their GGUF block format in device memory (their file size); the
//!   formats with a [`WeightType`] are accepted, any other matrix type is refused with
//!   [`DeviceError::UnsupportedTensorType`], naming the tensor, before the backend is touched.
//!   Norm vectors are dequantized to f32 on upload.
//! - Activations, the caches and the logits are f32.
//! - A backend without one of the kernels answers `Unsupported`, which comes back as
//!   [`DeviceError::Backend`] (never a panic).
//! - A [`DeviceLlm`] holds buffers of the backend it was loaded into: always pass that same
//!   backend, and give them back with [`DeviceLlm::unload`] and [`DeviceKv::free`] (dropping
//!   either cannot reach the backend). Freeing zeroes the memory (the backend contract). Every
//!   buffer a failed call allocated is freed before it returns.

use std::fmt;

use rela_core::backend::{BackendError, BufferId, GpuBackend, KernelCall, WeightType};

use crate::config::{LlamaConfig, ModelError};
pub use crate::device_error::DeviceError;
use crate::device_error::u32_of;
pub use crate::device_kv::{DeviceBatch, DeviceKv, KvView};
use crate::device_pass::{DLayer, DMat, Scratch, Seg, Weights, free_all, pass};
use crate::forward::{ForwardError, QMatrix};
use crate::gguf::GgufFile;
use crate::loaded::LoadedLlm;
use crate::quant;

/// Largest single `backend.write` while uploading weights.
pub const UPLOAD_CHUNK: usize = 16 << 20;

/// Tokens one device pass runs at most: a longer run goes through in passes of this many,
/// which bounds the scratch buffers (SmolLM2-135M: about 2 MiB).
pub const DEVICE_BATCH: usize = 64;

/// What one uploaded tensor is made of.
enum Source<'a> {
    /// Raw GGUF blocks.
    Blocks(&'a [u8]),
    /// An f32 vector (a norm's weights, dequantized).
    Vector(Vec<f32>),
}

impl Source<'_> {
    fn bytes(&self) -> u64 {
        match self {
            Self::Blocks(b) => b.len() as u64,
            Self::Vector(v) => v.len() as u64 * 4,
        }
    }
}

/// A matrix of `file`, checked as [`QMatrix::from_file`] does and against the device formats.
fn matrix<'a>(
    file: &'a GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(QMatrix<'a>, WeightType), DeviceError> {
    let m = QMatrix::from_file(file, name, rows, cols).map_err(DeviceError::Model)?;
    let wtype = WeightType::from_ggml_id(m.ty.id())
        .ok_or_else(|| DeviceError::UnsupportedTensorType { name: name.to_owned(), ty: m.ty })?;
    Ok((m, wtype))
}

/// A 1-D tensor of `file` dequantized to f32.
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, DeviceError> {
    let m = QMatrix::from_file(file, name, 1, n).map_err(DeviceError::Model)?;
    let mut v = vec![0f32; n];
    quant::dequantize(m.ty, m.data, &mut v).map_err(|_| {
        DeviceError::Model(ModelError::UnsupportedTensorType { name: name.to_owned(), ty: m.ty })
    })?;
    Ok(v)
}

/// A llama model whose weights live in a [`GpuBackend`]. See the [module docs](self).
pub struct DeviceLlm {
    config: LlamaConfig,
    weights: Weights,
    /// Every weight buffer, when this model owns them (empty in a [`share`](Self::share)).
    weight_buffers: Vec<BufferId>,
    device_bytes: u64,
}

impl fmt::Debug for DeviceLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceLlm")
            .field("layers", &self.weights.layers.len())
            .field("device_bytes", &self.device_bytes)
            .field("owns_weights", &self.owns_weights())
            .finish_non_exhaustive()
    }
}

impl DeviceLlm {
    /// Uploads `llm`'s weights into `backend`. Every tensor is checked before the backend is
    /// touched (matrix types: [`DeviceError::UnsupportedTensorType`]); writes are at most
    /// [`UPLOAD_CHUNK`] bytes; if anything fails, every buffer allocated so far is freed.
    pub fn load(backend: &mut dyn GpuBackend, llm: &LoadedLlm) -> Result<Self, DeviceError> {
        Self::from_file(backend, llm.file())
    }

    /// [`load`](Self::load) from a parsed file (its config checked by
    /// [`LlamaConfig::from_gguf`]).
    pub fn from_file(backend: &mut dyn GpuBackend, file: &GgufFile) -> Result<Self, DeviceError> {
        let config = LlamaConfig::from_gguf(&file.gguf).map_err(DeviceError::Model)?;
        let c = &config;
        for x in [c.dim, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim, c.rope_dim, c.vocab_size] {
            u32_of(x)?;
        }
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        // Every tensor, in upload order, checked before any device work.
        let mut sources: Vec<(Source<'_>, Option<WeightType>)> = Vec::new();
        let add_matrix = |sources: &mut Vec<_>, name: &str, rows, cols| -> Result<(), DeviceError> {
            let (m, wtype) = matrix(file, name, rows, cols)?;
            sources.push((Source::Blocks(m.data), Some(wtype)));
            Ok(())
        };
        add_matrix(&mut sources, "token_embd.weight", c.vocab_size, c.dim)?;
        if !c.tied_embeddings {
            add_matrix(&mut sources, "output.weight", c.vocab_size, c.dim)?;
        }
        sources.push((Source::Vector(vector(file, "output_norm.weight", c.dim)?), None));
        for i in 0..c.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            sources.push((Source::Vector(vector(file, &p("attn_norm"), c.dim)?), None));
            add_matrix(&mut sources, &p("attn_q"), q_dim, c.dim)?;
            add_matrix(&mut sources, &p("attn_k"), kv_dim, c.dim)?;
            add_matrix(&mut sources, &p("attn_v"), kv_dim, c.dim)?;
            add_matrix(&mut sources, &p("attn_output"), c.dim, q_dim)?;
            sources.push((Source::Vector(vector(file, &p("ffn_norm"), c.dim)?), None));
            add_matrix(&mut sources, &p("ffn_gate"), c.ffn_dim, c.dim)?;
            add_matrix(&mut sources, &p("ffn_up"), c.ffn_dim, c.dim)?;
            add_matrix(&mut sources, &p("ffn_down"), c.dim, c.ffn_dim)?;
        }
        // Checked: from here on the backend is touched.
        let mut ids = Vec::with_capacity(sources.len());
        if let Err(e) = upload(backend, &sources, &mut ids) {
            // The upload's error is the one to report.
            let _ = free_all(backend, ids);
            return Err(e);
        }
        let device_bytes = sources.iter().map(|(s, _)| s.bytes()).sum();
        // `ids[i]` holds `sources[i]`, in the order pushed above; every matrix has a type.
        let mat = |at: usize, rows: usize, cols: usize| DMat {
            buf: ids[at],
            wtype: sources[at].1.unwrap_or(WeightType::F32),
            rows: rows as u32,
            cols: cols as u32,
        };
        let tok_embd = mat(0, c.vocab_size, c.dim);
        let mut at = 1;
        let output = if c.tied_embeddings {
            tok_embd
        } else {
            at += 1;
            mat(1, c.vocab_size, c.dim)
        };
        let output_norm = ids[at];
        at += 1;
        let mut layers = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            layers.push(DLayer {
                attn_norm: ids[at],
                wq: mat(at + 1, q_dim, c.dim),
                wk: mat(at + 2, kv_dim, c.dim),
                wv: mat(at + 3, kv_dim, c.dim),
                wo: mat(at + 4, c.dim, q_dim),
                ffn_norm: ids[at + 5],
                w_gate: mat(at + 6, c.ffn_dim, c.dim),
                w_up: mat(at + 7, c.ffn_dim, c.dim),
                w_down: mat(at + 8, c.dim, c.ffn_dim),
            });
            at += 9;
        }
        let weights = Weights { tok_embd, output, output_norm, layers };
        Ok(Self { config, weights, weight_buffers: ids, device_bytes })
    }

    /// Another model over the same weight buffers: one upload served to several generations.
    /// A share owns no weights: its [`unload`](Self::unload) frees nothing, and the weights stay
    /// valid until the model that loaded them is unloaded, which its owner does only once every
    /// share is gone. [`owns_weights`](Self::owns_weights) tells them apart.
    pub fn share(&self) -> Self {
        Self {
            config: self.config.clone(),
            weights: self.weights.clone(),
            weight_buffers: Vec::new(),
            device_bytes: self.device_bytes,
        }
    }

    /// Whether this model loaded (and so frees) its weights, rather than being a
    /// [`share`](Self::share).
    pub fn owns_weights(&self) -> bool {
        !self.weight_buffers.is_empty()
    }

    /// Bytes of device memory the weights take (the matrices' file size, the norms as f32).
    pub const fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    /// The hyperparameters.
    pub const fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Frees (and so zeroes) the weights, if this model owns them. Frees all of them even if
    /// one fails, and returns the first failure.
    pub fn unload(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        free_all(backend, self.weight_buffers)
    }

    /// An empty KV cache in `backend` for `capacity` positions (at most the trained context
    /// length): two f32 buffers per block, `capacity · n_kv_heads · head_dim` each. On an error
    /// nothing stays allocated.
    pub fn new_kv(&self, backend: &mut dyn GpuBackend, capacity: usize) -> Result<DeviceKv, DeviceError> {
        let c = &self.config;
        let capacity = capacity.min(c.context_length);
        let kv_dim = c.n_kv_heads * c.head_dim;
        u32_of(capacity)?;
        let bytes = (capacity as u64)
            .checked_mul(kv_dim as u64)
            .and_then(|n| n.checked_mul(4))
            .ok_or(DeviceError::TooLarge)?
            .max(4);
        let mut ids = Vec::with_capacity(2 * c.n_layers);
        for _ in 0..2 * c.n_layers {
            match backend.alloc(bytes) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // The allocation's error is the one to report.
                    let _ = free_all(backend, ids);
                    return Err(e.into());
                }
            }
        }
        let v = ids.split_off(c.n_layers);
        Ok(DeviceKv {
            cache: KvView { k: ids, v, n_layers: c.n_layers, kv_dim, capacity, len: 0 },
            cache_bytes: bytes * 2 * c.n_layers as u64,
            scratch: None,
        })
    }

    /// Whether `tokens` can run at the next positions of `kv`.
    fn check(&self, tokens: &[u32], kv: &DeviceKv) -> Result<(), ForwardError> {
        let c = &self.config;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ForwardError::BadToken(bad));
        }
        let cache = &kv.cache;
        if cache.n_layers != c.n_layers || cache.kv_dim != c.n_kv_heads * c.head_dim {
            return Err(ForwardError::CacheMismatch);
        }
        if cache.len + tokens.len() > cache.capacity {
            return Err(ForwardError::ContextFull(cache.capacity));
        }
        Ok(())
    }

    /// Runs `tokens` at the next positions of `kv` (in passes of at most [`DEVICE_BATCH`]) and
    /// writes the logits after the last one (`vocab_size` of them) into `logits`. Refused before
    /// any device work for a bad token or a full cache ([`DeviceError::Forward`]); for no
    /// tokens `logits` is left empty. After a backend error the cache holds the passes that
    /// completed.
    pub fn prefill(
        &self,
        backend: &mut dyn GpuBackend,
        tokens: &[u32],
        kv: &mut DeviceKv,
        logits: &mut Vec<f32>,
    ) -> Result<(), DeviceError> {
        self.check(tokens, kv)?;
        logits.clear();
        if tokens.is_empty() {
            return Ok(());
        }
        self.run_all(backend, tokens, kv)?;
        let s = kv.scratch.as_ref().ok_or(DeviceError::Backend(BackendError::InvalidArgument))?;
        let mut bytes = vec![0u8; self.config.vocab_size * 4];
        backend.read(s.logits, 0, &mut bytes)?;
        logits.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Ok(())
    }

    /// Runs `token` at the next position of `kv` and writes the next-token logits into
    /// `logits` ([`prefill`](Self::prefill) of one token).
    pub fn forward(
        &self,
        backend: &mut dyn GpuBackend,
        token: u32,
        kv: &mut DeviceKv,
        logits: &mut Vec<f32>,
    ) -> Result<(), DeviceError> {
        self.prefill(backend, &[token], kv, logits)
    }

    /// Runs `tokens` like [`prefill`](Self::prefill) and returns the greedy next token:
    /// `ARGMAX` over the logits on the device (the lowest index on ties), 4 bytes read back.
    /// `None` for no tokens.
    pub fn greedy(
        &self,
        backend: &mut dyn GpuBackend,
        tokens: &[u32],
        kv: &mut DeviceKv,
    ) -> Result<Option<u32>, DeviceError> {
        self.check(tokens, kv)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        self.run_all(backend, tokens, kv)?;
        let s = kv.scratch.as_ref().ok_or(DeviceError::Backend(BackendError::InvalidArgument))?;
        let vocab = u32_of(self.config.vocab_size)?;
        backend.dispatch(&KernelCall::Argmax { x: s.logits, out: s.argmax, rows: 1, dim: vocab })?;
        let mut out = [0u8; 4];
        backend.read(s.argmax, 0, &mut out)?;
        Ok(Some(u32::from_le_bytes(out)))
    }

    /// `tokens` (checked, not empty) through the model in passes of at most
    /// [`DEVICE_BATCH`], leaving the last token's logits in the scratch's `logits` buffer.
    fn run_all(
        &self,
        backend: &mut dyn GpuBackend,
        tokens: &[u32],
        kv: &mut DeviceKv,
    ) -> Result<(), DeviceError> {
        let rows = tokens.len().min(DEVICE_BATCH);
        kv.ensure_scratch(backend, &self.config, rows)?;
        let DeviceKv { cache: KvView { k, v, len, .. }, scratch, .. } = kv;
        let Some(s) = scratch.as_mut() else { return Err(BackendError::InvalidArgument.into()) };
        for run in tokens.chunks(DEVICE_BATCH) {
            let seg = Seg { k, v, pos0: u32_of(*len)?, tokens: u32_of(run.len())? };
            pass(backend, &self.config, &self.weights, s, run, &[seg])?;
            *len += run.len();
        }
        Ok(())
    }

    /// Buffers for decode steps of up to `seqs` generations at once
    /// ([`forward_batch`](Self::forward_batch)); on an error nothing stays allocated.
    pub fn new_batch(&self, backend: &mut dyn GpuBackend, seqs: usize) -> Result<DeviceBatch, DeviceError> {
        let c = &self.config;
        u32_of(seqs)?;
        let scratch = Scratch::alloc(backend, c, seqs, seqs)?;
        Ok(DeviceBatch { scratch, dim: c.dim, vocab: c.vocab_size })
    }

    /// One decode step of several generations in one pass: token `steps[i].0` at the next
    /// position of the cache `steps[i].1` views, each weight read once for all of them. The
    /// logits after each token go to `logits`, one row of `vocab_size` per step, in order.
    ///
    /// The caches are not changed as values: the step writes each one's keys and values at its
    /// next position, and each owner takes that position in with
    /// [`DeviceKv::accept`] once the step has succeeded. Refused before any device work
    /// ([`DeviceError::Forward`]) for a bad token, a full cache or a cache of another model;
    /// [`DeviceError::BatchTooLarge`] for more steps than `batch` holds and
    /// [`DeviceError::DuplicateCache`] for one cache given twice. After a backend error, no
    /// cache has taken a position in (the step may have written past each one's length). No
    /// steps: `logits` is left empty.
    pub fn forward_batch(
        &self,
        backend: &mut dyn GpuBackend,
        batch: &mut DeviceBatch,
        steps: &[(u32, &KvView)],
        logits: &mut Vec<f32>,
    ) -> Result<(), DeviceError> {
        let c = &self.config;
        logits.clear();
        if steps.is_empty() {
            return Ok(());
        }
        if steps.len() > batch.seqs() {
            return Err(DeviceError::BatchTooLarge { steps: steps.len(), max: batch.seqs() });
        }
        if batch.dim != c.dim || batch.vocab != c.vocab_size {
            return Err(ForwardError::CacheMismatch.into());
        }
        for (i, &(token, view)) in steps.iter().enumerate() {
            if token as usize >= c.vocab_size {
                return Err(ForwardError::BadToken(token).into());
            }
            if view.n_layers != c.n_layers
                || view.kv_dim != c.n_kv_heads * c.head_dim
                || view.k.len() != c.n_layers
                || view.v.len() != c.n_layers
            {
                return Err(ForwardError::CacheMismatch.into());
            }
            if view.len >= view.capacity {
                return Err(ForwardError::ContextFull(view.capacity).into());
            }
            if steps[..i].iter().any(|(_, other)| other.k == view.k || other.v == view.v) {
                return Err(DeviceError::DuplicateCache);
            }
        }
        let tokens: Vec<u32> = steps.iter().map(|&(t, _)| t).collect();
        let segs = steps
            .iter()
            .map(|&(_, view)| Ok(Seg { k: &view.k, v: &view.v, pos0: u32_of(view.len)?, tokens: 1 }))
            .collect::<Result<Vec<_>, DeviceError>>()?;
        pass(backend, c, &self.weights, &mut batch.scratch, &tokens, &segs)?;
        let mut bytes = vec![0u8; steps.len() * c.vocab_size * 4];
        backend.read(batch.scratch.logits, 0, &mut bytes)?;
        logits.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Ok(())
    }
}

/// Uploads `sources` in order, one buffer each, pushing each id to `ids` as it is allocated
/// (so the caller can free them on an error).
fn upload(
    backend: &mut dyn GpuBackend,
    sources: &[(Source<'_>, Option<WeightType>)],
    ids: &mut Vec<BufferId>,
) -> Result<(), DeviceError> {
    let mut staging = Vec::new();
    for (source, _) in sources {
        let id = backend.alloc(source.bytes().max(4))?;
        ids.push(id);
        match source {
            Source::Blocks(bytes) => {
                for (i, chunk) in bytes.chunks(UPLOAD_CHUNK).enumerate() {
                    backend.write(id, (i * UPLOAD_CHUNK) as u64, chunk)?;
                }
            }
            Source::Vector(v) => {
                staging.clear();
                staging.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                backend.write(id, 0, &staging)?;
            }
        }
    }
    Ok(())
}
