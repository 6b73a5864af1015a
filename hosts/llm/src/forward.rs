//! The llama architecture's forward pass on the host: the reference the device kernels are checked
//! against.
//!
//! Activations are f32; weights stay as the file stores them and are read through
//! [`quant::dot`] row by row (a quantized matrix-vector product per token), with the rows of each
//! product split across rayon's threads. One token is processed per call to [`Model::forward`];
//! a prompt is fed token by token ([`Model::prefill`]).
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

use rayon::prelude::*;

use crate::config::{LlamaConfig, ModelError};
use crate::gguf::{GgmlType, GgufFile};
use crate::quant;

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

    /// `y = W·x` with `x` of length `cols` and `y` of length `rows`, rows split across threads.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "matvec input length");
        assert_eq!(y.len(), self.rows, "matvec output length");
        if self.ty == GgmlType::Q4_1 {
            // Q4_1's `m·Σx` term needs each block's sum of `x`: computed once, not once per row.
            let sums: Vec<f32> = x.chunks_exact(32).map(|b| b.iter().sum()).collect();
            y.par_iter_mut().with_min_len(64).enumerate().for_each(|(r, yr)| {
                *yr = dot_q4_1(self.row_bytes(r), x, &sums);
            });
            return;
        }
        y.par_iter_mut().with_min_len(64).enumerate().for_each(|(r, yr)| {
            // The type and the byte length were checked in `from_file`.
            *yr = quant::dot(self.ty, self.row_bytes(r), x).expect("row checked at load");
        });
    }

    /// A vector (a 1-D tensor, `rows == 1`) dequantized.
    fn to_vec(self) -> Vec<f32> {
        let mut v = vec![0f32; self.cols * self.rows];
        // Checked in `from_file`.
        quant::dequantize(self.ty, self.data, &mut v).expect("vector checked at load");
        v
    }
}

/// A Q4_1 row (blocks of 32: f16 d, f16 m, 16 bytes of nibbles) times `x`, given `x`'s block
/// sums: `Σ_b d_b·(q_b·x_b) + m_b·sums_b`.
fn dot_q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let f16_at = |b: &[u8], i: usize| half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32();
    let mut total = 0f32;
    for ((b, xs), &sx) in row.chunks_exact(20).zip(x.chunks_exact(32)).zip(sums) {
        let mut acc = [0f32; 16];
        let (lo, hi) = xs.split_at(16);
        for i in 0..16 {
            let q = b[4 + i];
            acc[i] = f32::from(q & 0x0F) * lo[i] + f32::from(q >> 4) * hi[i];
        }
        total += f16_at(b, 0) * acc.iter().sum::<f32>() + f16_at(b, 2) * sx;
    }
    total
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
}

/// The keys and values of past positions, per layer, in f32.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `capacity` positions of `config`'s model
    /// (`2 · n_layers · capacity · n_kv_heads · head_dim` floats).
    pub fn new(config: &LlamaConfig, capacity: usize) -> Self {
        let kv_dim = config.n_kv_heads * config.head_dim;
        let n = config.n_layers * capacity * kv_dim;
        Self { k: vec![0.0; n], v: vec![0.0; n], n_layers: config.n_layers, kv_dim, capacity, len: 0 }
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

    fn at(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
    }
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
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let scale = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// Rotates one head's vector in place for position `pos`, llama.cpp's "normal" RoPE: pairs
/// `(2i, 2i+1)` for `i < inv_freq.len()` turn by `pos·inv_freq[i]`; dimensions past
/// `2·inv_freq.len()` are left as they are.
pub fn rope_norm(head: &mut [f32], pos: usize, inv_freq: &[f32]) {
    for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
        let theta = pos as f32 * f;
        let (sin, cos) = theta.sin_cos();
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos - b * sin;
        pair[1] = a * sin + b * cos;
    }
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

/// Scratch buffers of one forward step.
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
        Ok(Self { config, tok_embd, output, output_norm, layers, inv_freq })
    }

    /// An empty KV cache for `capacity` positions (at most the trained context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(&self.config, capacity.min(self.config.context_length))
    }

    fn scratch(&self) -> Scratch {
        let c = &self.config;
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        Scratch {
            x: vec![0.0; c.dim],
            n: vec![0.0; c.dim],
            q: vec![0.0; q_dim],
            k: vec![0.0; kv_dim],
            v: vec![0.0; kv_dim],
            att_out: vec![0.0; q_dim],
            proj: vec![0.0; c.dim],
            gate: vec![0.0; c.ffn_dim],
            up: vec![0.0; c.ffn_dim],
        }
    }

    /// Runs `token` at the next position of `cache` and writes the next-token logits
    /// (`vocab_size` of them) into `logits`.
    pub fn forward(&self, token: u32, cache: &mut KvCache, logits: &mut [f32]) -> Result<(), ForwardError> {
        let mut s = self.scratch();
        self.step(token, cache, &mut s)?;
        self.logits(&mut s, logits);
        Ok(())
    }

    /// Runs every token of `tokens` in order and returns the logits after the last one
    /// (an empty vector for no tokens).
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ForwardError> {
        let mut s = self.scratch();
        for &t in tokens {
            self.step(t, cache, &mut s)?;
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut logits = vec![0.0; self.config.vocab_size];
        self.logits(&mut s, &mut logits);
        Ok(logits)
    }

    fn logits(&self, s: &mut Scratch, logits: &mut [f32]) {
        rms_norm(&s.x, &self.output_norm, self.config.rms_norm_eps, &mut s.n);
        self.output.matvec(&s.n, logits);
    }

    /// One token through every block; leaves the residual stream in `s.x`.
    fn step(&self, token: u32, cache: &mut KvCache, s: &mut Scratch) -> Result<(), ForwardError> {
        let c = &self.config;
        if token as usize >= c.vocab_size {
            return Err(ForwardError::BadToken(token));
        }
        if cache.n_layers != c.n_layers || cache.kv_dim != c.n_kv_heads * c.head_dim {
            return Err(ForwardError::CacheMismatch);
        }
        let pos = cache.len;
        if pos >= cache.capacity {
            return Err(ForwardError::ContextFull(cache.capacity));
        }
        let hd = c.head_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let kv_dim = cache.kv_dim;
        self.tok_embd.row(token as usize, &mut s.x);
        let mut scores = vec![0f32; pos + 1];
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&s.x, &l.attn_norm, c.rms_norm_eps, &mut s.n);
            l.wq.matvec(&s.n, &mut s.q);
            l.wk.matvec(&s.n, &mut s.k);
            l.wv.matvec(&s.n, &mut s.v);
            for h in s.q.chunks_exact_mut(hd) {
                rope_norm(h, pos, &self.inv_freq);
            }
            for h in s.k.chunks_exact_mut(hd) {
                rope_norm(h, pos, &self.inv_freq);
            }
            let at = cache.at(li, pos);
            cache.k[at..at + kv_dim].copy_from_slice(&s.k);
            cache.v[at..at + kv_dim].copy_from_slice(&s.v);
            let base = cache.at(li, 0);
            let ks = &cache.k[base..base + (pos + 1) * kv_dim];
            let vs = &cache.v[base..base + (pos + 1) * kv_dim];
            for (h, (q, out)) in s.q.chunks_exact(hd).zip(s.att_out.chunks_exact_mut(hd)).enumerate() {
                let off = (h / group) * hd;
                for (t, sc) in scores.iter_mut().enumerate() {
                    let k = &ks[t * kv_dim + off..t * kv_dim + off + hd];
                    *sc = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                softmax(&mut scores);
                out.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    let v = &vs[t * kv_dim + off..t * kv_dim + off + hd];
                    for (o, &vi) in out.iter_mut().zip(v) {
                        *o += p * vi;
                    }
                }
            }
            l.wo.matvec(&s.att_out, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
            rms_norm(&s.x, &l.ffn_norm, c.rms_norm_eps, &mut s.n);
            l.w_gate.matvec(&s.n, &mut s.gate);
            l.w_up.matvec(&s.n, &mut s.up);
            for (g, u) in s.gate.iter_mut().zip(&s.up) {
                *g = silu(*g) * u;
            }
            l.w_down.matvec(&s.gate, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
        }
        cache.len = pos + 1;
        Ok(())
    }
}
