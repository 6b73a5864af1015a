//! The llama architecture's forward pass on the host: the reference the device kernels are checked
//! against.
//!
//! Activations are f32; weights stay as the file stores them. One token (decode,
//! [`Model::forward`]) goes through fused dequantize-and-dot matrix-vector products; a prompt
//! ([`Model::prefill`]) goes through in batches of up to [`PREFILL_BATCH`] tokens, each weight
//! panel dequantized once per batch and multiplied with every token of it (a batch of up to 16
//! tokens instead dequantizes each row once and multiplies it with every token, `qbatch.rs`, or
//! runs the fused kernels on every token where that path does not apply), with causal
//! attention over the batch (`qmatmul.rs`, `attention.rs`). [`Model::forward_batch`] runs the
//! next token of several sequences through one pass, reading each weight once for all of them.
//! Work is split across the pool of [`crate::threads`]. Buffers live in the [`KvCache`], so a
//! decode step allocates nothing. [`quant::dot`] and [`quant::dequantize`] remain the reference
//! the kernels are tested against.
//!
//! The steps per block are llama.cpp's (`llm_build_llama`):
//! `h = x + Wo·attn(rope(Wq·n), rope(Wk·n), Wv·n)` with `n = rmsnorm(x)·attn_norm`, then
//! `x' = h + Wdown·(silu(Wgate·m) ⊙ Wup·m)` with `m = rmsnorm(h)·ffn_norm`; after the last block
//! `logits = Wout·(rmsnorm(x)·output_norm)`, where `Wout` is the token embedding when the file
//! has no `output.weight`.
//!
//! RoPE is the "normal" style llama.cpp uses for `llama` (`LLAMA_ROPE_TYPE_NORM`): within a head,
//! dimensions `(2i, 2i+1)` are rotated by `pos·base^(−2i/rope_dim)`. llama.cpp's converter
//! permutes the rows of `attn_q`/`attn_k` so that this layout is right for GGUF files; Hugging
//! Face's checkpoints use the "half" (NEOX) layout on unpermuted weights, which gives the same
//! attention scores.

use crate::attention::{self, Heads, KvElem};
use crate::config::{LlamaConfig, ModelError};
use crate::gguf::{GgmlType, GgufFile};
use crate::qmatmul::{self, QMat};
use crate::quant;
use crate::simd::{Kernel, Madd, dispatch};
use crate::threads;
use zeroize::Zeroize;

/// Prompt tokens processed together by [`Model::prefill`] (longer prompts run in batches of
/// this many, bounding the batch's buffers).
pub const PREFILL_BATCH: usize = 256;

/// A weight matrix as stored in the file: `rows` rows of `cols` elements of `ty`.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    /// Element type.
    pub ty: GgmlType,
    /// Output size.
    pub rows: usize,
    /// Input size.
    pub cols: usize,
    /// The raw bytes, `rows` rows of `row_bytes` each.
    pub data: &'a [u8],
    row_bytes: usize,
}

impl<'a> QMatrix<'a> {
    /// The matrix `name` of `file`, checked to be `rows × cols` of a supported type.
    pub fn from_file(file: &'a GgufFile, name: &str, rows: usize, cols: usize) -> Result<Self, ModelError> {
        let t = file.gguf.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        let bad_shape = || ModelError::BadTensorShape {
            name: name.to_owned(),
            dims: t.dims.clone(),
            expected: vec![cols as u64, rows as u64],
        };
        let shape_ok = match t.dims[..] {
            [c, r] => c == cols as u64 && r == rows as u64,
            [c] => rows == 1 && c == cols as u64,
            _ => false,
        };
        if !shape_ok {
            return Err(bad_shape());
        }
        if !t.ty.is_supported() {
            return Err(ModelError::UnsupportedTensorType { name: name.to_owned(), ty: t.ty });
        }
        let (be, bb) = t.ty.block();
        if !cols.is_multiple_of(be) {
            return Err(bad_shape());
        }
        let row_bytes = cols / be * bb;
        let data = file.tensor_data(t).filter(|d| d.len() == row_bytes * rows).ok_or_else(bad_shape)?;
        Ok(Self { ty: t.ty, rows, cols, data, row_bytes })
    }

    /// The raw bytes of row `r`.
    pub fn row_bytes(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` dequantized into `out` (length `cols`).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        // The type and the byte length were checked in `from_file`.
        quant::dequantize(self.ty, self.row_bytes(r), out).expect("row checked at load");
    }

    /// `y = W·x` with `x` of length `cols` and `y` of length `rows`, rows split across the pool's
    /// threads.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "matvec input length");
        assert_eq!(y.len(), self.rows, "matvec output length");
        let mut sums = Vec::new();
        if qmatmul::needs_sums(self.ty) {
            sums.resize(self.cols / 32, 0.0);
            qmatmul::block_sums(x, &mut sums);
        }
        qmatmul::matvec(self.qmat(), x, &sums, y);
    }

    /// `y = x·Wᵀ` for a batch of `tokens` inputs: `x` is `tokens × cols` (one input per row),
    /// `y` is `tokens × rows`.
    pub fn matmul(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        qmatmul::matmul(self.qmat(), x, tokens, y);
    }

    fn qmat(&self) -> QMat<'a> {
        QMat { ty: self.ty, rows: self.rows, cols: self.cols, row_bytes: self.row_bytes, data: self.data }
    }

    /// A vector (a 1-D tensor, `rows == 1`) dequantized.
    fn to_vec(self) -> Vec<f32> {
        let mut v = vec![0f32; self.cols * self.rows];
        // Checked in `from_file`.
        quant::dequantize(self.ty, self.data, &mut v).expect("vector checked at load");
        v
    }
}

/// One transformer block's weights.
#[derive(Debug, Clone)]
struct Layer<'a> {
    attn_norm: Vec<f32>,
    wq: QMatrix<'a>,
    wk: QMatrix<'a>,
    wv: QMatrix<'a>,
    wo: QMatrix<'a>,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix<'a>,
    w_up: QMatrix<'a>,
    w_down: QMatrix<'a>,
}

/// How the forward pass multiplies activations with quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// f32 activations throughout: each product equals the dequantized weights' product up to
    /// f32 rounding. The path checked against the transformers fixture (greedy ids, logits).
    #[default]
    F32,
    /// Decode steps and prompt chunks of up to 16 tokens with the activations rounded to 8 bits
    /// per block of 32 before their products with Q4_0, Q4_1 and Q4_K weights, as llama.cpp does:
    /// faster, and less exact (each product may move by up to half a rounding step of the
    /// input per weight, so greedy paths can leave f32's at near ties). Other weight types,
    /// longer prompt batches and CPUs without AVX-512 run as with [`Activations::F32`]. Its
    /// caches ([`Model::new_cache`]) keep keys and values as f16, as llama.cpp's do: half the
    /// memory, and half the bytes attention reads per step.
    Q8,
}

impl Activations {
    /// The name `--activations` takes: `f32` or `q8`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8 => "q8",
        }
    }

    /// Whether this CPU runs these activations as they say: [`Activations::Q8`] needs AVX-512
    /// (without it the products run as with [`Activations::F32`]).
    pub fn runs_here(self) -> bool {
        match self {
            Self::F32 => true,
            #[cfg(target_arch = "x86_64")]
            Self::Q8 => pulp::x86::V4::try_new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Q8 => false,
        }
    }
}

impl core::str::FromStr for Activations {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "q8" => Ok(Self::Q8),
            _ => Err(format!("unknown activations {s:?} (f32 or q8)")),
        }
    }
}

/// A llama-architecture model over a GGUF file's tensors (borrowed, not copied).
#[derive(Debug, Clone)]
pub struct Model<'a> {
    /// Its hyperparameters.
    pub config: LlamaConfig,
    tok_embd: QMatrix<'a>,
    output: QMatrix<'a>,
    output_norm: Vec<f32>,
    layers: Vec<Layer<'a>>,
    /// `base^(−2i/rope_dim)` for `i` in `0..rope_dim/2`.
    inv_freq: Vec<f32>,
    /// How its products treat the activations.
    activations: Activations,
}

/// The keys and values of past positions, per layer, in f32 or f16 ([`KvCache::new`],
/// [`KvCache::new_f16`]). Values are stored a position at a time (`[layer][position][kv_dim]`);
/// keys transposed in tiles (per layer `kv_dim · stride` values, `stride` the capacity rounded up
/// to 16, the attention kernel's chunk of positions, laid out as `attention::key_at` says), so
/// that attention scores sixteen positions at once with no horizontal sums and reads a head's
/// keys in one sequential run.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv: KvData,
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
    /// The forward pass's buffers, kept between steps.
    scratch: Scratch,
}

/// A cache's keys and values, as stored.
#[derive(Debug, Clone)]
enum KvData {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    /// f16 bits.
    F16 {
        k: Vec<u16>,
        v: Vec<u16>,
    },
}

impl KvData {
    /// Zeroed storage for `keys` and `values` elements.
    fn zeroed(f16: bool, keys: usize, values: usize) -> Self {
        if f16 {
            Self::F16 { k: vec![0; keys], v: vec![0; values] }
        } else {
            Self::F32 { k: vec![0.0; keys], v: vec![0.0; values] }
        }
    }

    /// Mutable views of the keys and values.
    fn slices(&mut self) -> KvSlices<'_> {
        match self {
            Self::F32 { k, v } => KvSlices::F32(k, v),
            Self::F16 { k, v } => KvSlices::F16(k, v),
        }
    }
}

/// A cache's keys and values, lent to a forward step.
enum KvSlices<'c> {
    F32(&'c mut [f32], &'c mut [f32]),
    F16(&'c mut [u16], &'c mut [u16]),
}

impl KvCache {
    /// An empty f32 cache for `capacity` positions of `config`'s model ([`kv_cache_floats`]
    /// floats).
    pub fn new(config: &LlamaConfig, capacity: usize) -> Self {
        Self::with_elements(config, capacity, false)
    }

    /// An empty f16 cache for `capacity` positions of `config`'s model ([`kv_cache_floats`]
    /// values of two bytes): each key and value rounded to f16 as it is stored.
    pub fn new_f16(config: &LlamaConfig, capacity: usize) -> Self {
        Self::with_elements(config, capacity, true)
    }

    fn with_elements(config: &LlamaConfig, capacity: usize, f16: bool) -> Self {
        let kv_dim = config.n_kv_heads * config.head_dim;
        let values = config.n_layers * capacity * kv_dim;
        let keys = config.n_layers * kv_dim * attention::key_stride(capacity);
        Self {
            kv: KvData::zeroed(f16, keys, values),
            n_layers: config.n_layers,
            kv_dim,
            capacity,
            len: 0,
            scratch: Scratch::default(),
        }
    }

    /// A cache of no positions for no model, allocating nothing: what stands in for a cache
    /// while it is lent elsewhere (`std::mem::replace`). Every forward step refuses it.
    pub fn empty() -> Self {
        Self {
            kv: KvData::F32 { k: Vec::new(), v: Vec::new() },
            n_layers: 0,
            kv_dim: 0,
            capacity: 0,
            len: 0,
            scratch: Scratch::default(),
        }
    }

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

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether keys and values are stored as f16.
    pub fn is_f16(&self) -> bool {
        matches!(self.kv, KvData::F16 { .. })
    }
}

/// Floats of a [`KvCache`] for `capacity` positions of `config`'s model: `n_layers ·
/// n_kv_heads · head_dim` per position for the values, and as many per position of the keys'
/// stride (the capacity rounded up to 16, the attention kernel's chunk of positions).
pub fn kv_cache_floats(config: &LlamaConfig, capacity: usize) -> usize {
    let per_position = config.n_layers * config.n_kv_heads * config.head_dim;
    per_position * (capacity + attention::key_stride(capacity))
}

/// Bytes of the KV cache [`Model::new_cache`] makes for `capacity` positions of `config`'s model
/// with `activations`: [`kv_cache_floats`] values of 4 bytes (f32), or of 2 with
/// [`Activations::Q8`] (f16).
pub fn kv_cache_bytes(config: &LlamaConfig, capacity: usize, activations: Activations) -> u64 {
    let width = if activations == Activations::Q8 { 2 } else { 4 };
    width * kv_cache_floats(config, capacity) as u64
}

/// Why a forward step was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// The token id is not in the vocabulary.
    BadToken(u32),
    /// The KV cache is full (the context length was reached).
    ContextFull(usize),
    /// The cache was made for another model's shape.
    CacheMismatch,
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadToken(t) => write!(f, "token id {t} is outside the vocabulary"),
            Self::ContextFull(n) => write!(f, "the context of {n} positions is full"),
            Self::CacheMismatch => write!(f, "the KV cache was made for another model"),
        }
    }
}

impl std::error::Error for ForwardError {}

/// `out = x / sqrt(mean(x²) + eps) ⊙ w` (RMSNorm), the mean square accumulated in f64.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // Eight lanes, so the loop vectorizes.
    let (chunks, rest) = x.as_chunks::<8>();
    let mut lanes = [0f64; 8];
    for c in chunks {
        for i in 0..8 {
            lanes[i] += f64::from(c[i]) * f64::from(c[i]);
        }
    }
    let sum = lanes.iter().sum::<f64>() + rest.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    let ms = sum / x.len() as f64;
    let scale = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// Rotates one head's vector in place for position `pos`, llama.cpp's "normal" RoPE: pairs
/// `(2i, 2i+1)` for `i < inv_freq.len()` turn by `pos·inv_freq[i]`; dimensions past
/// `2·inv_freq.len()` are left as they are.
pub fn rope_norm(head: &mut [f32], pos: usize, inv_freq: &[f32]) {
    for (pair, (sin, cos)) in head.chunks_exact_mut(2).zip(rope_angles(pos, inv_freq)) {
        turn(pair, sin, cos);
    }
}

/// `(sin, cos)` of each pair's angle at position `pos`.
fn rope_angles(pos: usize, inv_freq: &[f32]) -> impl Iterator<Item = (f32, f32)> + '_ {
    inv_freq.iter().map(move |&f| (pos as f32 * f).sin_cos())
}

/// [`rope_norm`] with the angles of [`rope_angles`] given: every head of a position turns by
/// the same angles, so a step computes them once per position.
fn rope_with(head: &mut [f32], angles: &[(f32, f32)]) {
    for (pair, &(sin, cos)) in head.chunks_exact_mut(2).zip(angles) {
        turn(pair, sin, cos);
    }
}

/// Turns the pair `(a, b)` by the angle of `sin` and `cos`.
#[inline]
fn turn(pair: &mut [f32], sin: f32, cos: f32) {
    let (a, b) = (pair[0], pair[1]);
    pair[0] = a * cos - b * sin;
    pair[1] = a * sin + b * cos;
}

/// RoPE's inverse frequencies `base^(−2i/rope_dim)` for `i` in `0..rope_dim/2`.
pub fn rope_inv_freq(rope_dim: usize, base: f32) -> Vec<f32> {
    (0..rope_dim / 2).map(|i| base.powf(-2.0 * i as f32 / rope_dim as f32)).collect()
}

/// In-place softmax (max subtracted first); an empty slice is left alone.
pub fn softmax(x: &mut [f32]) {
    let Some(max) = x.iter().copied().reduce(f32::max) else { return };
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `x·sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) ⊙ up`, with `exp` in a form that vectorizes (`rela_kernels::fast::exp`,
/// within 4e-7 of the standard library's), compiled for the CPU's best instruction set.
fn swiglu(gate: &mut [f32], up: &[f32]) {
    struct Swiglu<'a>(&'a mut [f32], &'a [f32]);
    impl Kernel for Swiglu<'_> {
        type Output = ();

        #[inline(always)]
        fn run<M: Madd>(self) {
            for (g, u) in self.0.iter_mut().zip(self.1) {
                *g = *g / (1.0 + rela_kernels::fast::exp(-*g)) * u;
            }
        }
    }
    dispatch(Swiglu(gate, up));
}

/// The buffers of a forward step over `t` tokens (each `t ×` its width), kept in the
/// [`KvCache`] between steps and grown when a step needs more.
#[derive(Debug, Clone, Default)]
struct Scratch {
    x: Vec<f32>,
    n: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att_out: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Per-32 sums of a matrix-vector product's input.
    sums: Vec<f32>,
    /// Attention scores of the calling thread.
    scores: Vec<f32>,
    /// RoPE's `(sin, cos)` per pair for each row's position.
    angles: Vec<(f32, f32)>,
}

impl Scratch {
    /// Sizes every buffer for `t` tokens of `c`'s model.
    fn size_for(&mut self, c: &LlamaConfig, t: usize) {
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        for (v, w) in [
            (&mut self.x, c.dim),
            (&mut self.n, c.dim),
            (&mut self.q, q_dim),
            (&mut self.k, kv_dim),
            (&mut self.v, kv_dim),
            (&mut self.att_out, q_dim),
            (&mut self.proj, c.dim),
            (&mut self.gate, c.ffn_dim),
            (&mut self.up, c.ffn_dim),
        ] {
            v.resize(t * w, 0.0);
        }
        self.sums.resize(c.dim.max(c.ffn_dim).max(q_dim) / 32, 0.0);
    }

    /// Zeroes every buffer, its whole capacity included.
    fn scrub(&mut self) {
        for v in [
            &mut self.x,
            &mut self.n,
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.att_out,
            &mut self.proj,
            &mut self.gate,
            &mut self.up,
            &mut self.sums,
            &mut self.scores,
        ] {
            v.zeroize();
        }
    }
}

/// A cache holds what the prompt and the generated tokens became inside the model: zeroed (its
/// whole allocation) before the memory goes back to the allocator.
impl Drop for KvCache {
    fn drop(&mut self) {
        match &mut self.kv {
            KvData::F32 { k, v } => {
                k.zeroize();
                v.zeroize();
            }
            KvData::F16 { k, v } => {
                k.zeroize();
                v.zeroize();
            }
        }
        self.scratch.scrub();
    }
}

/// One sequence's part of a forward step: its cache's keys and values, where its rows go.
struct Segment<'c> {
    /// Keys (transposed in tiles, [`KvCache`]) and values.
    kv: KvSlices<'c>,
    capacity: usize,
    /// The position of its first row.
    pos: usize,
    /// Consecutive rows (tokens) of the step that are this sequence's.
    rows: usize,
}

/// One sequence's rows of a layer's attention: its segment, and its rows of the step's queries,
/// keys, values, rotation angles and attention output.
struct SegStep<'s, 'c> {
    seg: &'s mut Segment<'c>,
    q: &'s mut [f32],
    k: &'s mut [f32],
    v: &'s [f32],
    angles: &'s [(f32, f32)],
    out: &'s mut [f32],
}

impl SegStep<'_, '_> {
    /// Turns the rows' queries and keys (RoPE), writes the keys and values into layer `li` of
    /// the sequence's cache, and computes the rows' attention: on the calling thread alone
    /// with `scores` `None` (a task of a parallel job), else with [`attention::attend`], which
    /// spreads heads over the pool when there is enough work.
    fn run(&mut self, li: usize, heads: Heads, pairs: usize, scores: Option<&mut Vec<f32>>) {
        let hd = heads.head_dim;
        let (q_dim, kv_dim) = (heads.n_heads * hd, heads.n_kv_heads * hd);
        let Self { seg, q, k, v, angles, out } = self;
        let rows = q.chunks_exact_mut(q_dim).zip(k.chunks_exact_mut(kv_dim));
        for ((q, k), angles) in rows.zip(angles.chunks_exact(pairs.max(1))) {
            for h in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope_with(h, angles);
            }
        }
        let at = CachePlace { li, pos0: seg.pos, rows: seg.rows, capacity: seg.capacity };
        match &mut seg.kv {
            KvSlices::F32(keys, values) => at.store_and_attend(heads, keys, values, q, k, v, out, scores),
            KvSlices::F16(keys, values) => at.store_and_attend(heads, keys, values, q, k, v, out, scores),
        }
    }
}

/// Where a step's rows go in a sequence's cache: layer `li`, `rows` positions from `pos0`.
struct CachePlace {
    li: usize,
    pos0: usize,
    rows: usize,
    capacity: usize,
}

impl CachePlace {
    /// Stores the rows' keys `k` and values `v` (one row of `kv_dim` each) in the cache's
    /// `keys` and `values`, then computes the rows' attention for queries `q` into `out`:
    /// spread over the pool by [`attention::attend`] with `scores`, else on this thread.
    #[allow(clippy::too_many_arguments)]
    fn store_and_attend<E: KvElem>(
        &self,
        heads: Heads,
        keys: &mut [E],
        values: &mut [E],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        scores: Option<&mut Vec<f32>>,
    ) {
        let Self { li, pos0, rows: n, capacity } = *self;
        let kv_dim = heads.n_kv_heads * heads.head_dim;
        let stride = attention::key_stride(capacity);
        let layer_keys = li * kv_dim * stride..(li + 1) * kv_dim * stride;
        let (layer, hd) = (&mut keys[layer_keys.clone()], heads.head_dim);
        for (t, k) in k.chunks_exact(kv_dim).enumerate() {
            // Element `d` of a KV head's key lands in the position's lane of run `d` of its tile.
            for (kv, k) in k.chunks_exact(hd).enumerate() {
                let at = attention::key_at(hd, stride, kv * hd, pos0 + t);
                for (d, &k) in k.iter().enumerate() {
                    layer[at + d * attention::KEY_CHUNK] = E::store(k);
                }
            }
        }
        let base = li * capacity * kv_dim;
        let end = base + (pos0 + n) * kv_dim;
        E::store_slice(&mut values[end - n * kv_dim..end], v);
        let (keys, values) = (&keys[layer_keys], &values[base..end]);
        match scores {
            Some(scores) => attention::attend(heads, q, keys, values, pos0, n, out, scores),
            None => attention::attend_on_this_thread(heads, q, keys, values, pos0, n, out),
        }
    }
}

/// `y = m·x` for each of `t` inputs (rows of `x`): with [`Activations::Q8`] the 8-bit-input
/// product where it applies; else one fused matrix-vector product for a single input, a
/// batched product for more.
fn linear(m: &QMatrix<'_>, x: &[f32], t: usize, act: Activations, sums: &mut [f32], y: &mut [f32]) {
    if act == Activations::Q8 && qmatmul::matmul_q8(m.qmat(), x, t, y) {
        return;
    }
    if t == 1 {
        let sums = block_sums_for(&[m.ty], x, sums);
        qmatmul::matvec(m.qmat(), x, sums, y);
    } else {
        qmatmul::matmul(m.qmat(), x, t, y);
    }
}

/// `x`'s per-32 sums in `buf` when products of one of `types` read them (else an empty slice).
fn block_sums_for<'s>(types: &[GgmlType], x: &[f32], buf: &'s mut [f32]) -> &'s [f32] {
    if !types.iter().any(|&ty| qmatmul::needs_sums(ty)) {
        return &[];
    }
    let buf = &mut buf[..x.len() / 32];
    qmatmul::block_sums(x, buf);
    buf
}

impl<'a> Model<'a> {
    /// The model of a GGUF file: its config checked ([`LlamaConfig::from_gguf`]) and its tensors
    /// borrowed.
    pub fn new(file: &'a GgufFile) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(&file.gguf)?;
        let c = &config;
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let vec_of = |name: &str, n: usize| QMatrix::from_file(file, name, 1, n).map(QMatrix::to_vec);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let m = |s: &str, rows, cols| QMatrix::from_file(file, &p(s), rows, cols);
            layers.push(Layer {
                attn_norm: vec_of(&p("attn_norm"), c.dim)?,
                wq: m("attn_q", q_dim, c.dim)?,
                wk: m("attn_k", kv_dim, c.dim)?,
                wv: m("attn_v", kv_dim, c.dim)?,
                wo: m("attn_output", c.dim, q_dim)?,
                ffn_norm: vec_of(&p("ffn_norm"), c.dim)?,
                w_gate: m("ffn_gate", c.ffn_dim, c.dim)?,
                w_up: m("ffn_up", c.ffn_dim, c.dim)?,
                w_down: m("ffn_down", c.dim, c.ffn_dim)?,
            });
        }
        let tok_embd = QMatrix::from_file(file, "token_embd.weight", c.vocab_size, c.dim)?;
        let output = if c.tied_embeddings {
            tok_embd
        } else {
            QMatrix::from_file(file, "output.weight", c.vocab_size, c.dim)?
        };
        let output_norm = vec_of("output_norm.weight", c.dim)?;
        let inv_freq = rope_inv_freq(c.rope_dim, c.rope_freq_base);
        Ok(Self { config, tok_embd, output, output_norm, layers, inv_freq, activations: Activations::F32 })
    }

    /// The model with its products run as `activations` says (new models run
    /// [`Activations::F32`]).
    pub fn with_activations(self, activations: Activations) -> Self {
        Self { activations, ..self }
    }

    /// How its products treat the activations.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// An empty KV cache for `capacity` positions (at most the trained context length).
    /// Its keys and values are f16 with [`Activations::Q8`], f32 otherwise
    /// ([`kv_cache_bytes`]).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.config.context_length);
        KvCache::with_elements(&self.config, capacity, self.activations == Activations::Q8)
    }

    /// Runs `token` at the next position of `cache` and writes the next-token logits
    /// (`vocab_size` of them) into `logits`.
    pub fn forward(&self, token: u32, cache: &mut KvCache, logits: &mut [f32]) -> Result<(), ForwardError> {
        self.check(&[token], cache)?;
        self.run(&[token], cache);
        self.logits(cache, logits);
        Ok(())
    }

    /// Runs every token of `tokens` in order and returns the logits after the last one
    /// (an empty vector for no tokens). The tokens go through in batches of up to
    /// [`PREFILL_BATCH`]; only the last token's logits are computed. On an error nothing is run
    /// and the cache is unchanged.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ForwardError> {
        self.check(tokens, cache)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        for batch in tokens.chunks(PREFILL_BATCH) {
            self.run(batch, cache);
        }
        let mut logits = vec![0.0; self.config.vocab_size];
        self.logits(cache, &mut logits);
        Ok(logits)
    }

    /// Whether `tokens` can run at the next positions of `cache`.
    fn check(&self, tokens: &[u32], cache: &KvCache) -> Result<(), ForwardError> {
        let c = &self.config;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ForwardError::BadToken(bad));
        }
        if cache.n_layers != c.n_layers || cache.kv_dim != c.n_kv_heads * c.head_dim {
            return Err(ForwardError::CacheMismatch);
        }
        if cache.len + tokens.len() > cache.capacity {
            return Err(ForwardError::ContextFull(cache.capacity));
        }
        Ok(())
    }

    /// The logits after the last token run, from the residual stream's last row.
    fn logits(&self, cache: &mut KvCache, logits: &mut [f32]) {
        self.logits_rows(&mut cache.scratch, 1, logits);
    }

    /// `tokens` (checked) through every block at the next positions of `cache`; leaves the
    /// residual stream, one row per token, in the cache's scratch.
    fn run(&self, tokens: &[u32], cache: &mut KvCache) {
        let KvCache { kv, capacity, len, scratch, .. } = cache;
        let mut seg = [Segment { kv: kv.slices(), capacity: *capacity, pos: *len, rows: tokens.len() }];
        self.run_segments(tokens, &mut seg, scratch);
        *len += tokens.len();
    }

    /// Runs one token for each of several sequences in one pass, so each weight is read once
    /// for all of them: `tokens[i]` at the next position of `caches[i]`, its next-token logits
    /// into `logits[i·vocab_size..(i+1)·vocab_size]`. The sequences may be at different
    /// positions. On an error nothing is run and every cache is unchanged.
    ///
    /// # Panics
    /// If `caches` or `logits` do not match `tokens` in number.
    pub fn forward_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        logits: &mut [f32],
    ) -> Result<(), ForwardError> {
        let vocab = self.config.vocab_size;
        assert_eq!(caches.len(), tokens.len(), "forward_batch: one cache per token");
        assert_eq!(logits.len(), tokens.len() * vocab, "forward_batch: vocab_size logits per token");
        for (t, cache) in tokens.iter().zip(caches.iter()) {
            self.check(std::slice::from_ref(t), cache)?;
        }
        let Some(first) = caches.first_mut() else { return Ok(()) };
        // The first cache lends its buffers to the batch.
        let mut scratch = std::mem::take(&mut first.scratch);
        let mut segs: Vec<Segment<'_>> = caches
            .iter_mut()
            .map(|c| {
                let KvCache { kv, capacity, len, .. } = &mut **c;
                Segment { kv: kv.slices(), capacity: *capacity, pos: *len, rows: 1 }
            })
            .collect();
        self.run_segments(tokens, &mut segs, &mut scratch);
        drop(segs);
        self.logits_rows(&mut scratch, tokens.len(), logits);
        for c in caches.iter_mut() {
            c.len += 1;
        }
        caches[0].scratch = scratch;
        Ok(())
    }

    /// Logits for the last `n` rows of the residual stream in `s`, `vocab_size` per row.
    fn logits_rows(&self, s: &mut Scratch, n: usize, logits: &mut [f32]) {
        let c = &self.config;
        let rows = s.x.len() / c.dim;
        let x = &s.x[(rows - n) * c.dim..];
        let normed = &mut s.n[..n * c.dim];
        for (x, o) in x.chunks_exact(c.dim).zip(normed.chunks_exact_mut(c.dim)) {
            rms_norm(x, &self.output_norm, c.rms_norm_eps, o);
        }
        linear(&self.output, normed, n, self.activations, &mut s.sums, logits);
    }

    /// `tokens` (checked) through every block: the rows of each segment in turn at the next
    /// positions of its sequence's cache (whose length the caller advances); leaves the
    /// residual stream, one row per token, in `s`.
    fn run_segments(&self, tokens: &[u32], segs: &mut [Segment<'_>], s: &mut Scratch) {
        let c = &self.config;
        let t_n = tokens.len();
        let kv_dim = c.n_kv_heads * c.head_dim;
        let q_dim = c.n_heads * c.head_dim;
        let (dim, hd) = (c.dim, c.head_dim);
        let heads = Heads { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: hd };
        s.size_for(c, t_n);
        for (&t, x) in tokens.iter().zip(s.x.chunks_exact_mut(dim)) {
            self.tok_embd.row(t as usize, x);
        }
        // Every row's rotation angles, for all layers and heads.
        let pairs = self.inv_freq.len();
        s.angles.clear();
        for seg in segs.iter() {
            for p in seg.pos..seg.pos + seg.rows {
                s.angles.extend(rope_angles(p, &self.inv_freq));
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            for (x, n) in s.x.chunks_exact(dim).zip(s.n.chunks_exact_mut(dim)) {
                rms_norm(x, &l.attn_norm, c.rms_norm_eps, n);
            }
            // q, k and v (then gate and up) as one parallel job.
            let (q, k, v) = (l.wq.qmat(), l.wk.qmat(), l.wv.qmat());
            let q8 = self.activations == Activations::Q8
                && qmatmul::matmul_q8_many(&[q, k, v], &s.n, t_n, &mut [&mut s.q, &mut s.k, &mut s.v]);
            if !q8 && t_n == 1 {
                let sums = block_sums_for(&[l.wq.ty, l.wk.ty, l.wv.ty], &s.n, &mut s.sums);
                qmatmul::matvec3(q, &mut s.q, k, &mut s.k, v, &mut s.v, &s.n, sums);
            } else if !q8 {
                linear(&l.wq, &s.n, t_n, self.activations, &mut s.sums, &mut s.q);
                linear(&l.wk, &s.n, t_n, self.activations, &mut s.sums, &mut s.k);
                linear(&l.wv, &s.n, t_n, self.activations, &mut s.sums, &mut s.v);
            }
            // RoPE, this layer's keys and values into each sequence's cache, and attention.
            let mut steps = Vec::with_capacity(segs.len());
            let (mut q, mut k, mut v) = (&mut s.q[..], &mut s.k[..], &s.v[..]);
            let (mut out, mut angles) = (&mut s.att_out[..], &s.angles[..]);
            for seg in segs.iter_mut() {
                let n = seg.rows;
                let (sq, rq) = std::mem::take(&mut q).split_at_mut(n * q_dim);
                let (sk, rk) = std::mem::take(&mut k).split_at_mut(n * kv_dim);
                let (sv, rv) = v.split_at(n * kv_dim);
                let (so, ro) = std::mem::take(&mut out).split_at_mut(n * q_dim);
                let (sa, ra) = angles.split_at(n * pairs);
                (q, k, v, out, angles) = (rq, rk, rv, ro, ra);
                steps.push(SegStep { seg, q: sq, k: sk, v: sv, angles: sa, out: so });
            }
            if steps.len() > 1 && threads::threads() > 1 {
                // One task per sequence: its rows' RoPE, cache writes and every head, so the
                // sequence's keys stay in the core's cache from their write to their reads.
                threads::for_each_mut(&mut steps, |_, step| step.run(li, heads, pairs, None));
            } else {
                for step in &mut steps {
                    step.run(li, heads, pairs, Some(&mut s.scores));
                }
            }
            linear(&l.wo, &s.att_out, t_n, self.activations, &mut s.sums, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
            for (x, n) in s.x.chunks_exact(dim).zip(s.n.chunks_exact_mut(dim)) {
                rms_norm(x, &l.ffn_norm, c.rms_norm_eps, n);
            }
            let (g, u) = (l.w_gate.qmat(), l.w_up.qmat());
            let q8 = self.activations == Activations::Q8
                && qmatmul::matmul_q8_many(&[g, u], &s.n, t_n, &mut [&mut s.gate, &mut s.up]);
            if !q8 && t_n == 1 {
                let sums = block_sums_for(&[l.w_gate.ty, l.w_up.ty], &s.n, &mut s.sums);
                qmatmul::matvec2(g, &mut s.gate, u, &mut s.up, &s.n, sums);
            } else if !q8 {
                linear(&l.w_gate, &s.n, t_n, self.activations, &mut s.sums, &mut s.gate);
                linear(&l.w_up, &s.n, t_n, self.activations, &mut s.sums, &mut s.up);
            }
            swiglu(&mut s.gate, &s.up);
            linear(&l.w_down, &s.gate, t_n, self.activations, &mut s.sums, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
        }
    }
}
