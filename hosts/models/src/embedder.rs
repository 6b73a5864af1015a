//! A BERT sentence embedder running on a [`GpuBackend`] through its kernels.

use std::cmp::Reverse;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;

use rela_core::backend::{BackendError, BackendKind, BinaryOp, BufferId, GpuBackend, KernelCall};

use crate::config::MAX_CONFIG_BYTES;
use crate::tokenize::{MAX_TOKENIZER_BYTES, TextTokenizer, Tokens};
use crate::weights::{self, Checked, EMBEDDING_TENSORS, LAYER_TENSORS, MAX_SAFETENSORS_BYTES};
use crate::{BertConfig, MAX_TEXT_BYTES, MAX_TEXTS, MAX_TOKENS, ModelError, ModelFiles};

/// Largest single `backend.write` while uploading weights.
pub const UPLOAD_CHUNK: usize = 16 << 20;

/// Tokens one forward pass handles at most. A request is sorted by length and split into
/// passes of at most this many tokens (padded tokens on GPU backends, where each text is padded
/// to the longest of its sub-batch; real tokens on the host backend, which packs them), which
/// bounds the intermediate buffers (about 100 MiB for all-MiniLM-L6-v2).
pub const BATCH_TOKENS: usize = 4096;

/// Cost of one more attention group in a packed pass, in padded tokens (see
/// [`Embedder::embed`]): small, since only attention and mean pooling see the padding.
const PACKED_GROUP_COST: usize = 8;

/// One encoder layer's weight buffers.
#[derive(Debug, Clone, Copy)]
struct Layer {
    q_w: BufferId,
    q_b: BufferId,
    k_w: BufferId,
    k_b: BufferId,
    v_w: BufferId,
    v_b: BufferId,
    o_w: BufferId,
    o_b: BufferId,
    ln1_g: BufferId,
    ln1_b: BufferId,
    f1_w: BufferId,
    f1_b: BufferId,
    f2_w: BufferId,
    f2_b: BufferId,
    ln2_g: BufferId,
    ln2_b: BufferId,
}

impl Layer {
    /// From 16 ids in [`weights::specs`] order.
    const fn from_ids(i: &[BufferId; LAYER_TENSORS]) -> Self {
        Self {
            q_w: i[0],
            q_b: i[1],
            k_w: i[2],
            k_b: i[3],
            v_w: i[4],
            v_b: i[5],
            o_w: i[6],
            o_b: i[7],
            ln1_g: i[8],
            ln1_b: i[9],
            f1_w: i[10],
            f1_b: i[11],
            f2_w: i[12],
            f2_b: i[13],
            ln2_g: i[14],
            ln2_b: i[15],
        }
    }
}

/// Intermediate buffers, sized for `tokens` padded tokens in `batch` sequences.
#[derive(Debug)]
struct Workspace {
    tokens: usize,
    batch: usize,
    ids: BufferId,
    pos: BufferId,
    types: BufferId,
    mask: BufferId,
    h: BufferId,
    q: BufferId,
    k: BufferId,
    v: BufferId,
    ctx: BufferId,
    t1: BufferId,
    t2: BufferId,
    h1: BufferId,
    f: BufferId,
    g: BufferId,
    pooled: BufferId,
    out: BufferId,
    bytes: u64,
}

impl Workspace {
    fn buffers(&self) -> [BufferId; 16] {
        [
            self.ids,
            self.pos,
            self.types,
            self.mask,
            self.h,
            self.q,
            self.k,
            self.v,
            self.ctx,
            self.t1,
            self.t2,
            self.h1,
            self.f,
            self.g,
            self.pooled,
            self.out,
        ]
    }

    /// Allocates every buffer, freeing the ones already made if one fails.
    fn alloc(
        backend: &mut dyn GpuBackend,
        c: &BertConfig,
        tokens: usize,
        batch: usize,
    ) -> Result<Self, ModelError> {
        let (t, b, h, f) = (tokens as u64, batch as u64, c.hidden_size as u64, c.intermediate_size as u64);
        let sizes =
            [t, t, t, t, t * h, t * h, t * h, t * h, t * h, t * h, t * h, t * h, t * f, t * f, b * h, b * h];
        let mut ids = Vec::with_capacity(sizes.len());
        for words in sizes {
            match backend.alloc(words.max(1) * 4) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        let _ = backend.free(id);
                    }
                    return Err(e.into());
                }
            }
        }
        let i = |n: usize| ids[n];
        Ok(Self {
            tokens,
            batch,
            ids: i(0),
            pos: i(1),
            types: i(2),
            mask: i(3),
            h: i(4),
            q: i(5),
            k: i(6),
            v: i(7),
            ctx: i(8),
            t1: i(9),
            t2: i(10),
            h1: i(11),
            f: i(12),
            g: i(13),
            pooled: i(14),
            out: i(15),
            bytes: sizes.iter().map(|w| w.max(&1) * 4).sum(),
        })
    }

    /// Frees every buffer; returns the first error but frees the rest regardless.
    fn free(self, backend: &mut dyn GpuBackend) -> Result<(), BackendError> {
        let mut first = Ok(());
        for id in self.buffers() {
            if let Err(e) = backend.free(id)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

/// A BERT sentence-embedding model (all-MiniLM-L6-v2 or one of the same architecture) whose
/// weights live in a [`GpuBackend`].
///
/// Texts are tokenized on the node, truncated to [`MAX_TOKENS`] tokens (including `[CLS]` and
/// `[SEP]`, as sentence-transformers does), run through the encoder with
/// [`GpuBackend::dispatch`] only, mean-pooled over their tokens and L2-normalized.
///
/// The embedder holds buffers of the backend it was loaded into: always pass that same backend,
/// and give them back with [`unload`](Self::unload) (dropping an `Embedder` cannot reach the
/// backend, so its buffers stay allocated).
pub struct Embedder {
    config: BertConfig,
    tokenizer: TextTokenizer,
    max_tokens: usize,
    word: BufferId,
    position: BufferId,
    token_type: BufferId,
    emb_ln_g: BufferId,
    emb_ln_b: BufferId,
    layers: Vec<Layer>,
    weight_buffers: Vec<BufferId>,
    device_bytes: u64,
    workspace: Option<Workspace>,
}

impl fmt::Debug for Embedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Embedder")
            .field("config", &self.config)
            .field("max_tokens", &self.max_tokens)
            .field("weight_buffers", &self.weight_buffers.len())
            .field("device_bytes", &self.device_bytes)
            .field("workspace_bytes", &self.workspace_bytes())
            .finish_non_exhaustive()
    }
}

/// Reads a file of at most `max` bytes.
fn read_capped(path: &Path, what: &'static str, max: u64) -> Result<Vec<u8>, ModelError> {
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let file = fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(ModelError::FileTooLarge { what, bytes: len, max });
    }
    let mut buf = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while we read it.
    file.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(ModelError::FileTooLarge { what, bytes: buf.len() as u64, max });
    }
    Ok(buf)
}

fn u32_of(x: usize) -> Result<u32, ModelError> {
    u32::try_from(x).map_err(|_| ModelError::Backend(BackendError::InvalidArgument))
}

fn le_bytes(words: impl Iterator<Item = [u8; 4]>) -> Vec<u8> {
    words.flatten().collect()
}

/// Checks a request's size limits (count first, then each text's length).
fn check_request(lens: impl ExactSizeIterator<Item = usize>) -> Result<(), ModelError> {
    if lens.len() > MAX_TEXTS {
        return Err(ModelError::TooManyTexts { count: lens.len(), max: MAX_TEXTS });
    }
    for (index, bytes) in lens.enumerate() {
        if bytes > MAX_TEXT_BYTES {
            return Err(ModelError::TextTooLong { index, bytes, max: MAX_TEXT_BYTES });
        }
    }
    Ok(())
}

impl Embedder {
    /// Loads a model from its files into `backend`. See [`load_from_bytes`](Self::load_from_bytes).
    pub fn load(backend: &mut dyn GpuBackend, files: &ModelFiles) -> Result<Self, ModelError> {
        Self::load_with_progress(backend, files, &mut |_, _| {})
    }

    /// Like [`load`](Self::load), calling `progress(bytes_uploaded, total_bytes)` as weights
    /// are uploaded (first with 0, last with `total_bytes`).
    pub fn load_with_progress(
        backend: &mut dyn GpuBackend,
        files: &ModelFiles,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        Self::load_within(backend, files, None, u64::MAX, progress)
    }

    /// Loads a model whose weights need at most `budget` bytes of device memory, checked
    /// before the backend is touched ([`ModelError::OverBudget`]). The tokenizer and config
    /// come from `files`; the weights too, unless `safetensors` supplies them (a client's
    /// upload for a model of the same architecture). Progress as in
    /// [`load_with_progress`](Self::load_with_progress).
    pub fn load_within(
        backend: &mut dyn GpuBackend,
        files: &ModelFiles,
        safetensors: Option<&[u8]>,
        budget: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        let config = read_capped(&files.config, "config.json", MAX_CONFIG_BYTES as u64)?;
        let tokenizer = read_capped(&files.tokenizer, "tokenizer.json", MAX_TOKENIZER_BYTES as u64)?;
        let on_disk;
        let safetensors = match safetensors {
            Some(bytes) => bytes,
            None => {
                on_disk = read_capped(&files.safetensors, "model.safetensors", MAX_SAFETENSORS_BYTES)?;
                &on_disk
            }
        };
        Self::load_bytes_within(backend, safetensors, &tokenizer, &config, budget, progress)
    }

    /// Loads a model from the bytes of its `model.safetensors`, `tokenizer.json` and
    /// `config.json`.
    ///
    /// Everything is checked before the backend is touched: the config (a BERT with exact GELU),
    /// the tokenizer, and the safetensors file (header and offsets, and every tensor the forward
    /// pass needs present with the exact shape the config implies). Tensors stored as F16 or
    /// BF16 are converted to f32 on upload; other dtypes are [`ModelError::Dtype`]. Extra tensors
    /// (such as `pooler.*` or `embeddings.position_ids`) are ignored. Weights are uploaded with
    /// writes of at most [`UPLOAD_CHUNK`] bytes; if anything fails, every buffer allocated so far
    /// is freed.
    pub fn load_from_bytes(
        backend: &mut dyn GpuBackend,
        safetensors: &[u8],
        tokenizer_json: &[u8],
        config_json: &[u8],
    ) -> Result<Self, ModelError> {
        Self::load_from_bytes_with_progress(backend, safetensors, tokenizer_json, config_json, &mut |_, _| {})
    }

    /// Like [`load_from_bytes`](Self::load_from_bytes), calling `progress(bytes_uploaded,
    /// total_bytes)` as weights are uploaded (first with 0, last with `total_bytes`).
    pub fn load_from_bytes_with_progress(
        backend: &mut dyn GpuBackend,
        safetensors: &[u8],
        tokenizer_json: &[u8],
        config_json: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        Self::load_bytes_within(backend, safetensors, tokenizer_json, config_json, u64::MAX, progress)
    }

    fn load_bytes_within(
        backend: &mut dyn GpuBackend,
        safetensors: &[u8],
        tokenizer_json: &[u8],
        config_json: &[u8],
        budget: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        let config = BertConfig::from_json(config_json)?;
        let max_tokens = MAX_TOKENS.min(config.max_position_embeddings);
        let tokenizer = TextTokenizer::from_json(tokenizer_json, max_tokens)?;
        let checked = weights::check(safetensors, &config)?;
        let total: u64 = checked.iter().map(Checked::device_bytes).sum();
        if total > budget {
            return Err(ModelError::OverBudget { bytes: total, budget });
        }
        // Checked: from here on the backend is touched.
        let mut ids = Vec::with_capacity(checked.len());
        if let Err(e) = upload(backend, &checked, &mut ids, total, progress) {
            for id in ids {
                let _ = backend.free(id);
            }
            return Err(e);
        }
        let layers = ids[EMBEDDING_TENSORS..]
            .chunks_exact(LAYER_TENSORS)
            .map(|c| {
                let arr: &[BufferId; LAYER_TENSORS] =
                    c.try_into().map_err(|_| ModelError::Backend(BackendError::InvalidArgument))?;
                Ok(Layer::from_ids(arr))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            max_tokens,
            word: ids[0],
            position: ids[1],
            token_type: ids[2],
            emb_ln_g: ids[3],
            emb_ln_b: ids[4],
            layers,
            weight_buffers: ids,
            device_bytes: total,
            workspace: None,
            config,
            tokenizer,
        })
    }

    /// Another embedder over the same weight buffers, with a workspace of its own: one loaded
    /// model served to several sessions, each embedding with its own intermediates.
    ///
    /// A share owns no weights: its [`unload`](Self::unload) frees only its workspace. The
    /// weights stay valid until the embedder that loaded them is unloaded, which its owner does
    /// only once every share is gone. [`owns_weights`](Self::owns_weights) tells them apart.
    pub fn share(&self) -> Self {
        Self {
            config: self.config.clone(),
            tokenizer: self.tokenizer.clone(),
            max_tokens: self.max_tokens,
            word: self.word,
            position: self.position,
            token_type: self.token_type,
            emb_ln_g: self.emb_ln_g,
            emb_ln_b: self.emb_ln_b,
            layers: self.layers.clone(),
            weight_buffers: Vec::new(),
            device_bytes: self.device_bytes,
            workspace: None,
        }
    }

    /// Frees (and so zeroes) the intermediate buffers, keeping the weights; the next
    /// [`embed`](Self::embed) allocates them again.
    pub fn release_workspace(&mut self, backend: &mut dyn GpuBackend) -> Result<(), ModelError> {
        match self.workspace.take() {
            Some(ws) => ws.free(backend).map_err(ModelError::from),
            None => Ok(()),
        }
    }

    /// Whether this embedder loaded (and so frees) its weights, rather than being a
    /// [`share`](Self::share).
    pub fn owns_weights(&self) -> bool {
        !self.weight_buffers.is_empty()
    }

    /// Bytes of backend memory the weights take (as f32). Intermediates come on top:
    /// [`workspace_bytes`](Self::workspace_bytes).
    pub const fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    /// Bytes of backend memory the intermediate buffers take now (0 before the first
    /// [`embed`](Self::embed); they grow to the largest sub-batch seen, at most
    /// [`BATCH_TOKENS`] padded tokens).
    pub fn workspace_bytes(&self) -> u64 {
        self.workspace.as_ref().map_or(0, |w| w.bytes)
    }

    /// Width of the embeddings (384 for all-MiniLM-L6-v2).
    pub const fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The model's configuration.
    pub const fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Tokens per text after truncation ([`MAX_TOKENS`], or fewer for a model with fewer
    /// position embeddings).
    pub const fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids of `text` as the embedder sees them: `[CLS] … [SEP]`, truncated to
    /// [`max_tokens`](Self::max_tokens).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self.tokenizer.encode(text)?.ids)
    }

    /// Embeds `texts`: one L2-normalized vector of [`dim`](Self::dim) floats per text, in order.
    ///
    /// At most [`MAX_TEXTS`] texts ([`ModelError::TooManyTexts`]) of at most [`MAX_TEXT_BYTES`]
    /// bytes each ([`ModelError::TextTooLong`]); longer token sequences are truncated to
    /// [`MAX_TOKENS`]. The texts are sorted by length.
    ///
    /// - On the host backend, texts are packed: every token-wise step (embeddings, the linear
    ///   layers, layer norms, GELU, residual adds) runs once over all the texts' tokens end to
    ///   end, with no padding, in passes of at most [`BATCH_TOKENS`] tokens. Only attention and
    ///   mean pooling need a `[batch, seq]` layout: for them, texts of similar lengths are copied
    ///   into padded groups (memory copies on the host), whose padded keys are masked.
    /// - On other backends (where a copy is a device submission), texts run in sub-batches of
    ///   at most [`BATCH_TOKENS`] padded tokens, each padded to its own longest text.
    ///
    /// Padding does not change the result. An empty `texts` gives an empty result without
    /// touching the backend.
    pub fn embed(
        &mut self,
        backend: &mut dyn GpuBackend,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        check_request(texts.iter().map(|t| t.len()))?;
        let tokens = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>, _>>()?;
        self.embed_tokens(backend, &tokens)
    }

    /// Like [`embed`](Self::embed), for texts as raw bytes (as they arrive from the wire): the
    /// limits are checked first, then each text must be UTF-8 ([`ModelError::InvalidUtf8`]).
    pub fn embed_bytes(
        &mut self,
        backend: &mut dyn GpuBackend,
        texts: &[&[u8]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        check_request(texts.iter().map(|t| t.len()))?;
        let strs = texts
            .iter()
            .enumerate()
            .map(|(index, t)| std::str::from_utf8(t).map_err(|_| ModelError::InvalidUtf8 { index }))
            .collect::<Result<Vec<_>, _>>()?;
        self.embed(backend, &strs)
    }

    /// Frees (and so zeroes) every buffer the embedder holds: weights and intermediates. Frees
    /// all of them even if one fails, and returns the first failure.
    pub fn unload(self, backend: &mut dyn GpuBackend) -> Result<(), ModelError> {
        let mut first = Ok(());
        if let Some(ws) = self.workspace {
            first = ws.free(backend);
        }
        for id in self.weight_buffers {
            if let Err(e) = backend.free(id)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first.map_err(ModelError::from)
    }

    /// Tokenizes and checks ids against the embedding tables.
    fn tokenize(&self, text: &str) -> Result<Tokens, ModelError> {
        let t = self.tokenizer.encode(text)?;
        if let Some(id) = t.ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(ModelError::Tokenizer(format!(
                "token id {id} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        if let Some(id) = t.type_ids.iter().find(|&&i| i as usize >= self.config.type_vocab_size) {
            return Err(ModelError::Tokenizer(format!(
                "token type id {id} is outside the {} token types",
                self.config.type_vocab_size
            )));
        }
        Ok(t)
    }

    fn embed_tokens(
        &mut self,
        backend: &mut dyn GpuBackend,
        tokens: &[Tokens],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| Reverse(tokens[i].ids.len()));
        let lens: Vec<usize> = order.iter().map(|&i| tokens[i].ids.len().max(1)).collect();
        let mut out = vec![Vec::new(); tokens.len()];
        if backend.info().backend == BackendKind::HOST {
            for range in packs(&lens) {
                let chunk = &order[range];
                let batch: Vec<&Tokens> = chunk.iter().map(|&i| &tokens[i]).collect();
                let embeddings = self.forward_packed(backend, &batch)?;
                for (&i, e) in chunk.iter().zip(embeddings) {
                    out[i] = e;
                }
            }
            return Ok(out);
        }
        for range in sub_batches(&lens, SUB_BATCH_COST) {
            // Sorted longest first: the first text of a sub-batch sets its padded length.
            let seq = lens[range.start];
            let chunk = &order[range];
            let batch: Vec<&Tokens> = chunk.iter().map(|&i| &tokens[i]).collect();
            let embeddings = self.forward(backend, &batch, seq)?;
            for (&i, e) in chunk.iter().zip(embeddings) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    /// Makes sure the workspace holds `tokens` padded tokens in `batch` sequences.
    fn ensure_workspace(
        &mut self,
        backend: &mut dyn GpuBackend,
        tokens: usize,
        batch: usize,
    ) -> Result<(), ModelError> {
        if let Some(ws) = &self.workspace
            && ws.tokens >= tokens
            && ws.batch >= batch
        {
            return Ok(());
        }
        let (mut tokens, mut batch) = (tokens, batch);
        if let Some(old) = self.workspace.take() {
            tokens = tokens.max(old.tokens);
            batch = batch.max(old.batch);
            old.free(backend)?;
        }
        self.workspace = Some(Workspace::alloc(backend, &self.config, tokens, batch)?);
        Ok(())
    }

    /// One forward pass over `batch` padded to `seq` tokens.
    fn forward(
        &mut self,
        backend: &mut dyn GpuBackend,
        batch: &[&Tokens],
        seq: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let b = batch.len();
        let t = b * seq;
        self.ensure_workspace(backend, t, b)?;
        let ws = self.workspace.as_ref().ok_or(ModelError::Backend(BackendError::InvalidArgument))?;
        let c = &self.config;

        // Inputs: ids, token types and positions as u32, the mask as f32; padding is id 0, mask 0.
        let padded = |field: fn(&Tokens) -> &[u32]| {
            le_bytes(batch.iter().flat_map(|tk| {
                let v = field(tk);
                (0..seq).map(move |s| v.get(s).copied().unwrap_or(0).to_le_bytes())
            }))
        };
        let ids = padded(|tk| &tk.ids);
        let types = padded(|tk| &tk.type_ids);
        let pos = le_bytes((0..b).flat_map(|_| (0..seq).map(|s| (s as u32).to_le_bytes())));
        let mask =
            le_bytes(batch.iter().flat_map(|tk| {
                (0..seq).map(move |s| if s < tk.ids.len() { 1.0f32 } else { 0.0 }.to_le_bytes())
            }));
        backend.write(ws.ids, 0, &ids)?;
        backend.write(ws.types, 0, &types)?;
        backend.write(ws.pos, 0, &pos)?;
        backend.write(ws.mask, 0, &mask)?;

        let (rows, h, f) = (u32_of(t)?, u32_of(c.hidden_size)?, u32_of(c.intermediate_size)?);
        let (bu, su) = (u32_of(b)?, u32_of(seq)?);
        let n = rows * h; // ≤ BATCH_TOKENS · 8192: fits.
        let eps = c.layer_norm_eps;
        let mut run = |call: KernelCall| backend.dispatch(&call);
        let add = |a, b2, out| KernelCall::Binary { op: BinaryOp::Add, a, b: b2, out, n };
        let linear = |x, w, bias, out, k, n| KernelCall::Linear { x, w, bias, out, m: rows, k, n };
        let norm = |x, gamma, beta, out| KernelCall::LayerNorm { x, gamma, beta, out, rows, dim: h, eps };

        // Embeddings: word + position + token type, then LayerNorm.
        run(KernelCall::Gather {
            table: self.word,
            ids: ws.ids,
            out: ws.t1,
            vocab: u32_of(c.vocab_size)?,
            dim: h,
            rows,
        })?;
        run(KernelCall::Gather {
            table: self.position,
            ids: ws.pos,
            out: ws.t2,
            vocab: u32_of(c.max_position_embeddings)?,
            dim: h,
            rows,
        })?;
        run(add(ws.t1, ws.t2, ws.q))?;
        run(KernelCall::Gather {
            table: self.token_type,
            ids: ws.types,
            out: ws.t1,
            vocab: u32_of(c.type_vocab_size)?,
            dim: h,
            rows,
        })?;
        run(add(ws.q, ws.t1, ws.t2))?;
        run(norm(ws.t2, self.emb_ln_g, self.emb_ln_b, ws.h))?;

        for l in &self.layers {
            run(linear(ws.h, l.q_w, l.q_b, ws.q, h, h))?;
            run(linear(ws.h, l.k_w, l.k_b, ws.k, h, h))?;
            run(linear(ws.h, l.v_w, l.v_b, ws.v, h, h))?;
            run(KernelCall::Attention {
                q: ws.q,
                k: ws.k,
                v: ws.v,
                mask: ws.mask,
                out: ws.ctx,
                batch: bu,
                seq: su,
                heads: u32_of(c.num_attention_heads)?,
                head_dim: u32_of(c.head_dim())?,
            })?;
            run(linear(ws.ctx, l.o_w, l.o_b, ws.t1, h, h))?;
            run(add(ws.t1, ws.h, ws.t2))?;
            run(norm(ws.t2, l.ln1_g, l.ln1_b, ws.h1))?;
            run(linear(ws.h1, l.f1_w, l.f1_b, ws.f, h, f))?;
            run(KernelCall::Gelu { x: ws.f, out: ws.g, n: rows * f })?;
            run(linear(ws.g, l.f2_w, l.f2_b, ws.t1, f, h))?;
            run(add(ws.t1, ws.h1, ws.t2))?;
            run(norm(ws.t2, l.ln2_g, l.ln2_b, ws.h))?;
        }

        run(KernelCall::MeanPool { x: ws.h, mask: ws.mask, out: ws.pooled, batch: bu, seq: su, dim: h })?;
        run(KernelCall::L2Normalize { x: ws.pooled, out: ws.out, rows: bu, dim: h })?;

        let mut raw = vec![0u8; b * c.hidden_size * 4];
        backend.read(ws.out, 0, &mut raw)?;
        let floats: Vec<f32> =
            raw.chunks_exact(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        Ok(floats.chunks_exact(c.hidden_size).map(<[f32]>::to_vec).collect())
    }
    /// One packed forward pass over `batch` (sorted longest first; see [`embed`](Self::embed)).
    ///
    /// Token-wise steps run over the texts' tokens end to end (`rows` = all tokens, none of
    /// them padding). For attention, each group of similar lengths is copied into padded
    /// buffers (`t1`, `t2`, `h1` for q, k, v; `f` for the context; the group's mask in `mask`),
    /// and the context copied back; mean pooling takes the same route through `t1` and `g`.
    /// Padded rows hold stale values: their keys are masked, and their outputs are never read.
    fn forward_packed(
        &mut self,
        backend: &mut dyn GpuBackend,
        batch: &[&Tokens],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let b = batch.len();
        let lens: Vec<usize> = batch.iter().map(|tk| tk.ids.len().max(1)).collect();
        let starts: Vec<usize> = lens.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
        let total: usize = lens.iter().sum();
        let groups = sub_batches(&lens, PACKED_GROUP_COST);
        let padded = groups.iter().map(|g| g.len() * lens[g.start]).max().unwrap_or(0);
        self.ensure_workspace(backend, total.max(padded), b)?;
        let ws = self.workspace.as_ref().ok_or(ModelError::Backend(BackendError::InvalidArgument))?;
        let c = &self.config;

        // Inputs: ids, token types and positions of every token, end to end (an empty text keeps
        // one row of id 0, masked out below, as the padded path does).
        let field = |f: fn(&Tokens) -> &[u32]| {
            le_bytes(batch.iter().zip(&lens).flat_map(|(tk, &l)| {
                let v = f(tk);
                (0..l).map(move |s| v.get(s).copied().unwrap_or(0).to_le_bytes())
            }))
        };
        backend.write(ws.ids, 0, &field(|tk| &tk.ids))?;
        backend.write(ws.types, 0, &field(|tk| &tk.type_ids))?;
        backend.write(
            ws.pos,
            0,
            &le_bytes(lens.iter().flat_map(|&l| (0..l).map(|s| (s as u32).to_le_bytes()))),
        )?;
        // Each group's mask, `[texts, seq]`, written before each use of the group.
        let masks: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| {
                let seq = lens[g.start];
                le_bytes(batch[g.clone()].iter().flat_map(|tk| {
                    (0..seq).map(move |s| if s < tk.ids.len() { 1.0f32 } else { 0.0 }.to_le_bytes())
                }))
            })
            .collect();

        let (rows, h, f) = (u32_of(total)?, u32_of(c.hidden_size)?, u32_of(c.intermediate_size)?);
        let row_bytes = c.hidden_size as u64 * 4;
        let n = rows * h; // ≤ BATCH_TOKENS · 8192: fits.
        let eps = c.layer_norm_eps;
        let add = |a, b2, out| KernelCall::Binary { op: BinaryOp::Add, a, b: b2, out, n };
        let linear = |x, w, bias, out, k, n| KernelCall::Linear { x, w, bias, out, m: rows, k, n };
        let norm = |x, gamma, beta, out| KernelCall::LayerNorm { x, gamma, beta, out, rows, dim: h, eps };
        // Copies text `i`'s rows between the packed layout and slot `slot` of a padded group.
        let to_group = |backend: &mut dyn GpuBackend, src, dst, i: usize, slot: usize, seq: usize| {
            let bytes = lens[i] as u64 * row_bytes;
            backend.copy(src, starts[i] as u64 * row_bytes, dst, (slot * seq) as u64 * row_bytes, bytes)
        };
        let from_group = |backend: &mut dyn GpuBackend, src, dst, i: usize, slot: usize, seq: usize| {
            let bytes = lens[i] as u64 * row_bytes;
            backend.copy(src, (slot * seq) as u64 * row_bytes, dst, starts[i] as u64 * row_bytes, bytes)
        };

        // Embeddings: word + position + token type, then LayerNorm.
        backend.dispatch(&KernelCall::Gather {
            table: self.word,
            ids: ws.ids,
            out: ws.t1,
            vocab: u32_of(c.vocab_size)?,
            dim: h,
            rows,
        })?;
        backend.dispatch(&KernelCall::Gather {
            table: self.position,
            ids: ws.pos,
            out: ws.t2,
            vocab: u32_of(c.max_position_embeddings)?,
            dim: h,
            rows,
        })?;
        backend.dispatch(&add(ws.t1, ws.t2, ws.q))?;
        backend.dispatch(&KernelCall::Gather {
            table: self.token_type,
            ids: ws.types,
            out: ws.t1,
            vocab: u32_of(c.type_vocab_size)?,
            dim: h,
            rows,
        })?;
        backend.dispatch(&add(ws.q, ws.t1, ws.t2))?;
        backend.dispatch(&norm(ws.t2, self.emb_ln_g, self.emb_ln_b, ws.h))?;

        let (heads, head_dim) = (u32_of(c.num_attention_heads)?, u32_of(c.head_dim())?);
        // With one group (always at batch 1) its mask is written once for the whole pass: a
        // WRITE ends the job's turn on the node, and getting the backend back costs two thread
        // hand-offs, more than a short text's layer takes to compute on some machines.
        let one_group = groups.len() == 1;
        if let (true, Some(mask)) = (one_group, masks.first()) {
            backend.write(ws.mask, 0, mask)?;
        }
        for l in &self.layers {
            backend.dispatch(&linear(ws.h, l.q_w, l.q_b, ws.q, h, h))?;
            backend.dispatch(&linear(ws.h, l.k_w, l.k_b, ws.k, h, h))?;
            backend.dispatch(&linear(ws.h, l.v_w, l.v_b, ws.v, h, h))?;
            for (g, mask) in groups.iter().zip(&masks) {
                let seq = lens[g.start];
                for (slot, i) in g.clone().enumerate() {
                    to_group(backend, ws.q, ws.t1, i, slot, seq)?;
                    to_group(backend, ws.k, ws.t2, i, slot, seq)?;
                    to_group(backend, ws.v, ws.h1, i, slot, seq)?;
                }
                if !one_group {
                    backend.write(ws.mask, 0, mask)?;
                }
                backend.dispatch(&KernelCall::Attention {
                    q: ws.t1,
                    k: ws.t2,
                    v: ws.h1,
                    mask: ws.mask,
                    out: ws.f,
                    batch: u32_of(g.len())?,
                    seq: u32_of(seq)?,
                    heads,
                    head_dim,
                })?;
                for (slot, i) in g.clone().enumerate() {
                    from_group(backend, ws.f, ws.ctx, i, slot, seq)?;
                }
            }
            backend.dispatch(&linear(ws.ctx, l.o_w, l.o_b, ws.t1, h, h))?;
            backend.dispatch(&add(ws.t1, ws.h, ws.t2))?;
            backend.dispatch(&norm(ws.t2, l.ln1_g, l.ln1_b, ws.h1))?;
            backend.dispatch(&linear(ws.h1, l.f1_w, l.f1_b, ws.f, h, f))?;
            backend.dispatch(&KernelCall::Gelu { x: ws.f, out: ws.g, n: rows * f })?;
            backend.dispatch(&linear(ws.g, l.f2_w, l.f2_b, ws.t1, f, h))?;
            backend.dispatch(&add(ws.t1, ws.h1, ws.t2))?;
            backend.dispatch(&norm(ws.t2, l.ln2_g, l.ln2_b, ws.h))?;
        }

        // Mean pooling per group (padded, masked), into `pooled` in text order; then L2.
        for (g, mask) in groups.iter().zip(&masks) {
            let seq = lens[g.start];
            for (slot, i) in g.clone().enumerate() {
                to_group(backend, ws.h, ws.t1, i, slot, seq)?;
            }
            if !one_group {
                backend.write(ws.mask, 0, mask)?;
            }
            let (gb, su) = (u32_of(g.len())?, u32_of(seq)?);
            backend.dispatch(&KernelCall::MeanPool {
                x: ws.t1,
                mask: ws.mask,
                out: ws.g,
                batch: gb,
                seq: su,
                dim: h,
            })?;
            backend.copy(ws.g, 0, ws.pooled, g.start as u64 * row_bytes, g.len() as u64 * row_bytes)?;
        }
        let bu = u32_of(b)?;
        backend.dispatch(&KernelCall::L2Normalize { x: ws.pooled, out: ws.out, rows: bu, dim: h })?;

        let mut raw = vec![0u8; b * c.hidden_size * 4];
        backend.read(ws.out, 0, &mut raw)?;
        let floats: Vec<f32> =
            raw.chunks_exact(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        Ok(floats.chunks_exact(c.hidden_size).map(<[f32]>::to_vec).collect())
    }
}

/// Cost of one extra sub-batch, in padded tokens (dispatch and synchronization overhead).
const SUB_BATCH_COST: usize = 64;

/// Splits texts with token counts `lens` (sorted longest first) into contiguous sub-batches of
/// at most [`BATCH_TOKENS`] padded tokens, minimizing padded tokens plus `cost` per sub-batch
/// (dynamic programming; n ≤ [`MAX_TEXTS`]).
fn sub_batches(lens: &[usize], cost: usize) -> Vec<std::ops::Range<usize>> {
    let n = lens.len();
    // best[j]: cost of the first j texts; from[j]: where the last sub-batch starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut from = vec![0; n + 1];
    best[0] = 0;
    for j in 1..=n {
        for i in 0..j {
            let padded = (j - i) * lens[i];
            if best[i] == usize::MAX || (padded > BATCH_TOKENS && j - i > 1) {
                continue;
            }
            let total = best[i] + padded + cost;
            if total < best[j] {
                best[j] = total;
                from[j] = i;
            }
        }
    }
    let mut out = Vec::new();
    let mut j = n;
    while j > 0 {
        out.push(from[j]..j);
        j = from[j];
    }
    out.reverse();
    out
}

/// Splits texts with token counts `lens` into contiguous packs of at most [`BATCH_TOKENS`]
/// tokens in all (a longer text goes alone; texts are at most [`MAX_TOKENS`] tokens).
fn packs(lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        if i > start && total + len > BATCH_TOKENS {
            out.push(start..i);
            (start, total) = (i, 0);
        }
        total += len;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

/// Allocates and fills one buffer per checked tensor, pushing each id to `ids` as soon as it is
/// allocated (so the caller can free them on failure).
fn upload(
    backend: &mut dyn GpuBackend,
    checked: &[Checked<'_>],
    ids: &mut Vec<BufferId>,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), ModelError> {
    progress(0, total);
    let mut done = 0u64;
    let mut staging = Vec::with_capacity(UPLOAD_CHUNK);
    for tensor in checked {
        let id = backend.alloc(tensor.device_bytes())?;
        ids.push(id);
        // Source bytes per chunk such that the f32 output is at most UPLOAD_CHUNK bytes.
        let src_chunk = UPLOAD_CHUNK / 4 * tensor.stored.size();
        let mut offset = 0u64;
        for src in tensor.data.chunks(src_chunk) {
            staging.clear();
            weights::to_f32_le(tensor.stored, src, &mut staging);
            backend.write(id, offset, &staging)?;
            offset += staging.len() as u64;
            done += staging.len() as u64;
            progress(done, total);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_batches_cover_everything_within_budget() {
        assert!(sub_batches(&[], SUB_BATCH_COST).is_empty());
        assert_eq!(sub_batches(&[5], SUB_BATCH_COST), vec![0..1]);
        // Similar lengths share one sub-batch; a long outlier goes alone.
        assert_eq!(sub_batches(&[256, 12, 11, 10, 9], SUB_BATCH_COST), vec![0..1, 1..5]);
        let lens: Vec<usize> = (0..64).map(|_| 256).collect();
        let parts = sub_batches(&lens, SUB_BATCH_COST);
        assert_eq!(parts.len(), 4);
        let mut next = 0;
        for r in parts {
            assert_eq!(r.start, next);
            assert!((r.end - r.start) * lens[r.start] <= BATCH_TOKENS);
            next = r.end;
        }
        assert_eq!(next, 64);
    }

    #[test]
    fn packs_hold_at_most_batch_tokens() {
        assert!(packs(&[]).is_empty());
        assert_eq!(packs(&[3, 2]), vec![0..2]);
        let lens = vec![256; 40];
        let parts = packs(&lens);
        assert_eq!(parts, vec![0..16, 16..32, 32..40]);
        assert_eq!(packs(&[BATCH_TOKENS + 1, 5]), vec![0..1, 1..2]);
    }

    #[test]
    fn request_limits() {
        assert!(check_request([1usize; MAX_TEXTS].into_iter()).is_ok());
        assert!(matches!(
            check_request([1usize; MAX_TEXTS + 1].into_iter()),
            Err(ModelError::TooManyTexts { count: 65, max: MAX_TEXTS })
        ));
        assert!(matches!(
            check_request([1, MAX_TEXT_BYTES + 1].into_iter()),
            Err(ModelError::TextTooLong { index: 1, .. })
        ));
    }
}
