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

use rela_core::backend::{BackendError, BinaryOp, BufferId, GpuBackend, KernelCall, WeightType};

use crate::config::{LlamaConfig, ModelError};
use crate::forward::{ForwardError, QMatrix};
use crate::gguf::{GgmlType, GgufFile};
use crate::loaded::LoadedLlm;
use crate::quant;

/// Largest single `backend.write` while uploading weights.
pub const UPLOAD_CHUNK: usize = 16 << 20;

/// Tokens one device pass runs at most: a longer run goes through in passes of this many,
/// which bounds the scratch buffers (SmolLM2-135M: about 2 MiB).
pub const DEVICE_BATCH: usize = 64;

/// Why a device model or one of its steps failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DeviceError {
    /// A weight matrix is stored in a type no device kernel reads (no [`WeightType`]).
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

fn u32_of(x: usize) -> Result<u32, DeviceError> {
    u32::try_from(x).map_err(|_| DeviceError::TooLarge)
}

/// A weight matrix in device memory: `rows` rows of `cols` weights in `wtype`'s blocks.
#[derive(Debug, Clone, Copy)]
struct DMat {
    buf: BufferId,
    wtype: WeightType,
    rows: u32,
    cols: u32,
}

/// One transformer block's buffers.
#[derive(Debug, Clone, Copy)]
struct DLayer {
    attn_norm: BufferId,
    wq: DMat,
    wk: DMat,
    wv: DMat,
    wo: DMat,
    ffn_norm: BufferId,
    w_gate: DMat,
    w_up: DMat,
    w_down: DMat,
}

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
    tok_embd: DMat,
    output: DMat,
    output_norm: BufferId,
    layers: Vec<DLayer>,
    /// Every weight buffer, when this model owns them (empty in a [`share`](Self::share)).
    weight_buffers: Vec<BufferId>,
    device_bytes: u64,
}

impl fmt::Debug for DeviceLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceLlm")
            .field("layers", &self.layers.len())
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
        Ok(Self { config, tok_embd, output, output_norm, layers, weight_buffers: ids, device_bytes })
    }

    /// Another model over the same weight buffers: one upload served to several generations.
    /// A share owns no weights: its [`unload`](Self::unload) frees nothing, and the weights stay
    /// valid until the model that loaded them is unloaded, which its owner does only once every
    /// share is gone. [`owns_weights`](Self::owns_weights) tells them apart.
    pub fn share(&self) -> Self {
        Self {
            config: self.config.clone(),
            tok_embd: self.tok_embd,
            output: self.output,
            output_norm: self.output_norm,
            layers: self.layers.clone(),
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
            k: ids,
            v,
            n_layers: c.n_layers,
            kv_dim,
            capacity,
            len: 0,
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
        if kv.n_layers != c.n_layers || kv.kv_dim != c.n_kv_heads * c.head_dim {
            return Err(ForwardError::CacheMismatch);
        }
        if kv.len + tokens.len() > kv.capacity {
            return Err(ForwardError::ContextFull(kv.capacity));
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
        for pass in tokens.chunks(DEVICE_BATCH) {
            self.run(backend, pass, kv)?;
            kv.len += pass.len();
        }
        Ok(())
    }

    /// One pass of `tokens` (at most the scratch's rows) at positions `kv.len ..`.
    fn run(
        &self,
        backend: &mut dyn GpuBackend,
        tokens: &[u32],
        kv: &mut DeviceKv,
    ) -> Result<(), DeviceError> {
        let c = &self.config;
        let t = u32_of(tokens.len())?;
        let pos0 = u32_of(kv.len)?;
        let (dim, ffn) = (c.dim as u32, c.ffn_dim as u32);
        let (heads, kv_heads, hd) = (c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32);
        let kv_dim = kv_heads * hd;
        let eps = c.rms_norm_eps;
        let Some(s) = kv.scratch.as_mut() else { return Err(BackendError::InvalidArgument.into()) };
        let ids: Vec<u8> = tokens.iter().flat_map(|id| id.to_le_bytes()).collect();
        backend.write(s.ids, 0, &ids)?;
        let pos: Vec<u8> = (pos0..pos0 + t).flat_map(u32::to_le_bytes).collect();
        backend.write(s.pos, 0, &pos)?;
        let e = self.tok_embd;
        backend.dispatch(&KernelCall::QGather {
            table: e.buf,
            ids: s.ids,
            out: s.x,
            vocab: e.rows,
            dim: e.cols,
            rows: t,
            wtype: e.wtype,
        })?;
        let kv_row = u64::from(kv_dim) * 4;
        for (li, l) in self.layers.iter().enumerate() {
            backend.dispatch(&KernelCall::RmsNorm { x: s.x, w: l.attn_norm, out: s.n, rows: t, dim, eps })?;
            linear(backend, &l.wq, s.n, s.q, t)?;
            linear(backend, &l.wk, s.n, s.k, t)?;
            linear(backend, &l.wv, s.n, s.v, t)?;
            let rope = |x, out, heads| KernelCall::Rope {
                x,
                pos: s.pos,
                out,
                rows: t,
                heads,
                head_dim: hd,
                rope_dim: c.rope_dim as u32,
                base: c.rope_freq_base,
            };
            backend.dispatch(&rope(s.q, s.qr, heads))?;
            backend.dispatch(&rope(s.k, s.kr, kv_heads))?;
            let at = u64::from(pos0) * kv_row;
            let len = u64::from(t) * kv_row;
            backend.copy(s.kr, 0, kv.k[li], at, len)?;
            backend.copy(s.v, 0, kv.v[li], at, len)?;
            backend.dispatch(&KernelCall::CausalAttention {
                q: s.qr,
                k: kv.k[li],
                v: kv.v[li],
                out: s.att,
                tokens: t,
                pos0,
                heads,
                kv_heads,
                head_dim: hd,
            })?;
            linear(backend, &l.wo, s.att, s.proj, t)?;
            backend.dispatch(&KernelCall::Binary {
                op: BinaryOp::Add,
                a: s.x,
                b: s.proj,
                out: s.x2,
                n: t * dim,
            })?;
            std::mem::swap(&mut s.x, &mut s.x2);
            backend.dispatch(&KernelCall::RmsNorm { x: s.x, w: l.ffn_norm, out: s.n, rows: t, dim, eps })?;
            linear(backend, &l.w_gate, s.n, s.gate, t)?;
            linear(backend, &l.w_up, s.n, s.up, t)?;
            backend.dispatch(&KernelCall::SwiGlu { gate: s.gate, up: s.up, out: s.act, n: t * ffn })?;
            linear(backend, &l.w_down, s.act, s.proj, t)?;
            backend.dispatch(&KernelCall::Binary {
                op: BinaryOp::Add,
                a: s.x,
                b: s.proj,
                out: s.x2,
                n: t * dim,
            })?;
            std::mem::swap(&mut s.x, &mut s.x2);
        }
        // The last row only: copied to the front of `last`, normed, projected.
        let row = u64::from(dim) * 4;
        backend.copy(s.x, u64::from(t - 1) * row, s.last, 0, row)?;
        backend.dispatch(&KernelCall::RmsNorm {
            x: s.last,
            w: self.output_norm,
            out: s.last_n,
            rows: 1,
            dim,
            eps,
        })?;
        linear(backend, &self.output, s.last_n, s.logits, 1)?;
        Ok(())
    }
}

/// `out = x · mᵀ` for `rows` inputs (Q_LINEAR).
fn linear(
    backend: &mut dyn GpuBackend,
    m: &DMat,
    x: BufferId,
    out: BufferId,
    rows: u32,
) -> Result<(), BackendError> {
    backend.dispatch(&KernelCall::QLinear { x, w: m.buf, out, m: rows, k: m.cols, n: m.rows, wtype: m.wtype })
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

/// Frees every buffer of `ids`, all of them even if one fails; returns the first failure.
fn free_all(
    backend: &mut dyn GpuBackend,
    ids: impl IntoIterator<Item = BufferId>,
) -> Result<(), DeviceError> {
    let mut first = Ok(());
    for id in ids {
        if let Err(e) = backend.free(id)
            && first.is_ok()
        {
            first = Err(e.into());
        }
    }
    first
}

/// The buffers of a pass over up to `rows` tokens (each `rows ×` its width).
#[derive(Debug)]
struct Scratch {
    rows: usize,
    ids: BufferId,
    pos: BufferId,
    x: BufferId,
    x2: BufferId,
    n: BufferId,
    q: BufferId,
    k: BufferId,
    v: BufferId,
    qr: BufferId,
    kr: BufferId,
    att: BufferId,
    proj: BufferId,
    gate: BufferId,
    up: BufferId,
    act: BufferId,
    last: BufferId,
    last_n: BufferId,
    logits: BufferId,
    argmax: BufferId,
    bytes: u64,
}

impl Scratch {
    fn buffers(&self) -> [BufferId; 19] {
        [
            self.ids,
            self.pos,
            self.x,
            self.x2,
            self.n,
            self.q,
            self.k,
            self.v,
            self.qr,
            self.kr,
            self.att,
            self.proj,
            self.gate,
            self.up,
            self.act,
            self.last,
            self.last_n,
            self.logits,
            self.argmax,
        ]
    }

    /// Allocates every buffer for `rows` tokens of `c`'s model, freeing the ones already made
    /// if one fails.
    fn alloc(backend: &mut dyn GpuBackend, c: &LlamaConfig, rows: usize) -> Result<Self, DeviceError> {
        let r = rows as u64;
        let (dim, ffn) = (c.dim as u64, c.ffn_dim as u64);
        let q_dim = (c.n_heads * c.head_dim) as u64;
        let kv_dim = (c.n_kv_heads * c.head_dim) as u64;
        let words = [
            r,
            r,
            r * dim,
            r * dim,
            r * dim,
            r * q_dim,
            r * kv_dim,
            r * kv_dim,
            r * q_dim,
            r * kv_dim,
            r * q_dim,
            r * dim,
            r * ffn,
            r * ffn,
            r * ffn,
            dim,
            dim,
            c.vocab_size as u64,
            1,
        ];
        let mut ids = Vec::with_capacity(words.len());
        for w in words {
            match backend.alloc(w.max(1) * 4) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // The allocation's error is the one to report.
                    let _ = free_all(backend, ids);
                    return Err(e.into());
                }
            }
        }
        let i = |n: usize| ids[n];
        Ok(Self {
            rows,
            ids: i(0),
            pos: i(1),
            x: i(2),
            x2: i(3),
            n: i(4),
            q: i(5),
            k: i(6),
            v: i(7),
            qr: i(8),
            kr: i(9),
            att: i(10),
            proj: i(11),
            gate: i(12),
            up: i(13),
            act: i(14),
            last: i(15),
            last_n: i(16),
            logits: i(17),
            argmax: i(18),
            bytes: words.iter().map(|w| w.max(&1) * 4).sum(),
        })
    }

    fn free(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        free_all(backend, self.buffers())
    }
}

/// One generation's keys and values of past positions in device memory (f32, a buffer per
/// block for each), and the buffers of its passes. Made by [`DeviceLlm::new_kv`]; give it back
/// with [`free`](Self::free).
#[derive(Debug)]
pub struct DeviceKv {
    k: Vec<BufferId>,
    v: Vec<BufferId>,
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
    cache_bytes: u64,
    scratch: Option<Scratch>,
}

impl DeviceKv {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Device bytes held now: the caches and the scratch buffers of the largest pass so far.
    pub fn bytes(&self) -> u64 {
        self.cache_bytes + self.scratch.as_ref().map_or(0, |s| s.bytes)
    }

    /// Device bytes the caches for `capacity` positions and the scratch of a pass over `rows`
    /// tokens of `c`'s model take: what a generation holds at most.
    pub fn bytes_for(c: &LlamaConfig, capacity: usize, rows: usize) -> u64 {
        let (r, cap) = (rows.clamp(1, DEVICE_BATCH) as u64, capacity.min(c.context_length) as u64);
        let (dim, ffn, vocab) = (c.dim as u64, c.ffn_dim as u64, c.vocab_size as u64);
        let (q_dim, kv_dim) = ((c.n_heads * c.head_dim) as u64, (c.n_kv_heads * c.head_dim) as u64);
        let caches = 2 * c.n_layers as u64 * (cap * kv_dim * 4).max(4);
        let scratch =
            4 * (2 * r + 4 * r * dim + 3 * r * q_dim + 3 * r * kv_dim + 3 * r * ffn + 2 * dim + vocab + 1);
        caches.saturating_add(scratch)
    }

    /// Makes sure the scratch holds passes of `rows` tokens.
    fn ensure_scratch(
        &mut self,
        backend: &mut dyn GpuBackend,
        c: &LlamaConfig,
        rows: usize,
    ) -> Result<(), DeviceError> {
        if self.scratch.as_ref().is_some_and(|s| s.rows >= rows) {
            return Ok(());
        }
        if let Some(old) = self.scratch.take() {
            old.free(backend)?;
        }
        self.scratch = Some(Scratch::alloc(backend, c, rows)?);
        Ok(())
    }

    /// Frees (and so zeroes) every buffer: the caches and the scratch. Frees all of them even
    /// if one fails, and returns the first failure.
    pub fn free(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        let scratch = self.scratch.map(|s| s.free(backend)).unwrap_or(Ok(()));
        let caches = free_all(backend, self.k.into_iter().chain(self.v));
        scratch.and(caches)
    }
}
