//! Language models: `.gguf` files in the node's model directory, served under their file name
//! without the extension, and GENERATE.
//!
//! - A GGUF model is loaded once (parsed and checked: llama architecture, supported tensor
//!   types, tokenizer, chat template; see `rela_llm::LoadedLlm`) and shared by every session
//!   that loads it ([`SharedLlms`]); the last session to let go of it drops it. Its bytes are
//!   node memory reported with the other shared models (DEVICE_INFO `shared_models`), charged to
//!   no session.
//! - Where the forward pass runs depends on the node's backend:
//!   - **The host backend**: the weights stay quantized in host memory and the forward pass runs
//!     on the host CPU with its fast kernels (`rela_llm::Model`). A generation runs one
//!     `rela_llm::TokenStream` step at a time (a chunk of the prompt, or one token); the
//!     one-token steps of every session's generation go through the model's batcher
//!     ([`crate::llm_batch`]), one forward pass for all waiting streams.
//!   - **Any other backend** (Vulkan, wgpu, CUDA): the first MODEL_LOAD also uploads the
//!     weights into the backend (`rela_llm::DeviceLlm`, quantized blocks as in the file), shared
//!     by every session like the parsed file; the last release frees and zeroes them. A
//!     generation runs one `rela_llm::DeviceStream` step at a time with the backend's generation
//!     kernels, through the job's `Turns` like an embedding model's INFER, so the engine's
//!     fairness holds: every kernel, copy and read is a step of bounded device time between
//!     other sessions' turns. Only the logits come back to the host, for the sampler. A
//!     stream's prompt runs in its own passes; its decode steps go through the model's
//!     [`DeviceBatcher`] ([`crate::llm_device_batch`]), where one of the waiting generations
//!     runs the next token of all of them in one pass on its own turns.
//! - A generation runs on the session's job thread. Between steps it checks whether the client
//!   sent CANCEL or the session is ending, and stops there with finish reason CANCELLED. Each
//!   token goes to the connection's writer as a TOKEN frame as soon as it is produced.
//! - Its KV cache (f32, `min(prompt + max_tokens, context)` positions; on a device backend with
//!   the buffers of a prompt chunk) is charged to the session's quota for the generation and
//!   freed (on a device backend: freed and zeroed) when it ends, however it ends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rela_client::FastCrc32;
use rela_core::backend::{BackendKind, GpuBackend};
use rela_core::model::ModelError;
use rela_core::wire::generate::{FinishReason, Generate, Generated, PromptKind, TokenMsg};
use rela_llm::{
    DeviceError, DeviceKv, DeviceLlm, DeviceStream, Finish, ForwardError, LoadError, LoadedLlm, PromptError,
    SamplingParams, Step, TokenStream,
};

use crate::llm_batch::Batcher;
use crate::llm_device_batch::DeviceBatcher;

use crate::messages::{ConnState, INLINE_OUT, OutBuf, Outcome, Reply, ReplyTx};

/// Default of [`crate::NodeConfig::max_generate_tokens`].
pub const DEFAULT_MAX_GENERATE_TOKENS: u32 = 1024;
/// Default of [`crate::NodeConfig::max_context`].
pub const DEFAULT_MAX_CONTEXT: u32 = 2048;

/// The node's limits on one GENERATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateLimits {
    /// Most tokens one GENERATE may ask for (`max_tokens`); more is LIMIT_EXCEEDED.
    pub max_tokens: u32,
    /// Most positions (prompt and generated tokens) of one generation, below the model's own
    /// context length; a prompt that leaves no room for a token is LIMIT_EXCEEDED.
    pub max_context: u32,
}

impl Default for GenerateLimits {
    fn default() -> Self {
        Self { max_tokens: DEFAULT_MAX_GENERATE_TOKENS, max_context: DEFAULT_MAX_CONTEXT }
    }
}

/// The path of `name` as a GGUF model in `root`, if that file exists.
pub(crate) fn gguf_path(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    let path = root.join(format!("{name}.gguf"));
    path.is_file().then_some(path)
}

/// A GGUF model as the node serves it: the checked file, and either the batcher every session's
/// decode steps on it go through (host backend) or its weights in the backend's memory.
#[derive(Debug)]
pub(crate) struct ServedLlm {
    /// The file, its tokenizer and chat template.
    pub(crate) llm: Arc<LoadedLlm>,
    /// On the host backend: the batcher.
    batcher: Option<Batcher>,
    /// On any other backend: the weights in its memory (taken out and freed by the last
    /// release).
    device: Mutex<Option<DeviceLlm>>,
    /// On any other backend: the batch every session's decode steps go through, and its
    /// buffers (freed by the last release).
    device_batch: Option<DeviceBatcher>,
}

impl ServedLlm {
    /// Device bytes of the weights and the batch's buffers held in the backend (0 on the host
    /// backend).
    fn device_bytes(&self) -> u64 {
        let weights = self
            .device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, DeviceLlm::device_bytes);
        weights + self.device_batch.as_ref().map_or(0, DeviceBatcher::bytes)
    }

    /// Frees (and so zeroes) the weights and the batch's buffers in `backend`, if the model
    /// has any there.
    fn free_device(&self, backend: &mut dyn GpuBackend) {
        if let Some(Err(e)) = self.device_batch.as_ref().map(|b| b.free(backend)) {
            tracing::warn!(error = %e, "freeing a model's batch buffers failed");
        }
        let device = self.device.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(Err(e)) = device.map(|d| d.unload(backend)) {
            tracing::warn!(error = %e, "freeing a model's device weights failed");
        }
    }

    /// A share of the device weights, if the model runs on the device.
    fn device_share(&self) -> Option<DeviceLlm> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(DeviceLlm::share)
    }
}

/// GGUF models held once for every session that loads them.
#[derive(Default)]
pub(crate) struct SharedLlms {
    /// Loaded models by name, with the number of shares out.
    entries: Mutex<HashMap<String, (Arc<ServedLlm>, usize)>>,
    bytes: AtomicU64,
}

impl std::fmt::Debug for SharedLlms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLlms").field("bytes", &self.bytes()).finish_non_exhaustive()
    }
}

impl SharedLlms {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Arc<ServedLlm>, usize)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of the GGUF models held now: the files in host memory and, on a device backend,
    /// their weights in the backend.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// A share of model `name` from `path`, loading it first if nobody holds it; on a backend
    /// other than the host backend, loading also uploads the weights into `backend`. Two
    /// sessions loading the same model at once may both load it; the first to finish is kept
    /// and the other's device weights are freed.
    pub(crate) fn acquire(
        &self,
        name: &str,
        path: &Path,
        backend: &mut dyn GpuBackend,
    ) -> Result<Arc<ServedLlm>, ModelError> {
        if let Some((llm, users)) = self.lock().get_mut(name) {
            *users += 1;
            return Ok(llm.clone());
        }
        // Loaded without the lock: other models load and other shares come and go meanwhile.
        let started = Instant::now();
        let loaded = Arc::new(LoadedLlm::open(path).map_err(load_error)?);
        let (batcher, device, device_batch) = if backend.info().backend == BackendKind::HOST {
            let batcher = Batcher::start(loaded.clone()).map_err(|e| {
                tracing::error!(error = %e, "no thread for a model's batcher");
                ModelError::OutOfMemory
            })?;
            (Some(batcher), None, None)
        } else {
            let device = DeviceLlm::load(backend, &loaded).map_err(device_load_error)?;
            match DeviceBatcher::new(backend, &device) {
                Ok(batch) => (None, Some(device), Some(batch)),
                Err(e) => {
                    if let Err(e) = device.unload(backend) {
                        tracing::warn!(error = %e, "freeing a model's device weights failed");
                    }
                    return Err(device_load_error(e));
                }
            }
        };
        let served = ServedLlm { llm: loaded, batcher, device: Mutex::new(device), device_batch };
        let mut entries = self.lock();
        if let Some((llm, users)) = entries.get_mut(name) {
            // Another session's load finished first: share it, free this one's device copy.
            *users += 1;
            let llm = llm.clone();
            drop(entries);
            served.free_device(backend);
            return Ok(llm);
        }
        let bytes = served.llm.bytes() + served.device_bytes();
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        tracing::info!(
            model = name,
            bytes,
            device = served.batcher.is_none(),
            ms = started.elapsed().as_millis() as u64,
            "GGUF model loaded"
        );
        let served = Arc::new(served);
        entries.insert(name.to_owned(), (served.clone(), 1));
        Ok(served)
    }

    /// Gives a share back; the last one drops the model, freeing (and so zeroing) its weights
    /// in `backend` if it had any there.
    pub(crate) fn release(&self, name: &str, backend: &mut dyn GpuBackend) {
        let removed = {
            let mut entries = self.lock();
            let last = match entries.get_mut(name) {
                Some((_, users)) => {
                    *users = users.saturating_sub(1);
                    *users == 0
                }
                None => false,
            };
            if last { entries.remove(name) } else { None }
        };
        if let Some((served, _)) = removed {
            self.bytes.fetch_sub(served.llm.bytes() + served.device_bytes(), Ordering::AcqRel);
            served.free_device(backend);
        }
    }
}

/// A model whose weights cannot go into the backend: a matrix type without a device kernel is
/// `UNSUPPORTED`; a backend failure (out of memory) is the backend's error.
fn device_load_error(e: DeviceError) -> ModelError {
    tracing::error!(error = %e, "GGUF model not loadable on the backend");
    match e {
        DeviceError::UnsupportedTensorType { .. } => ModelError::Unsupported(
            "a tensor's type has no kernel on this backend (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K do)",
        ),
        DeviceError::Backend(b) => ModelError::Backend(b),
        _ => {
            ModelError::BadModel("the model's tensors do not fit the backend's kernels (see the node's log)")
        }
    }
}

/// A device step's failure: the backend's error (`Unsupported` for a kernel it has not got), or
/// a token the model refused.
fn device_step_error(e: DeviceError) -> ModelError {
    match e {
        DeviceError::Backend(b) => ModelError::Backend(b),
        DeviceError::Forward(_) => ModelError::InvalidInput("the model refused a token"),
        other => {
            tracing::error!(error = %other, "a device generation step failed");
            ModelError::BadModel("the model's tensors do not fit the backend's kernels (see the node's log)")
        }
    }
}

/// A GGUF file the node cannot serve: an architecture or tensor type it does not support is
/// `UNSUPPORTED`, anything else about the file `INTERNAL` (as for a repository model's damaged
/// files); the reason names what is wrong (the node's log has the detail).
fn load_error(e: LoadError) -> ModelError {
    tracing::error!(error = %e, "GGUF model unusable");
    match e {
        LoadError::Model(rela_llm::ModelError::UnsupportedArchitecture(_)) => {
            ModelError::Unsupported("the model's architecture is not supported (llama is)")
        }
        LoadError::Model(rela_llm::ModelError::UnsupportedTensorType { .. }) => ModelError::Unsupported(
            "a tensor's type is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are)",
        ),
        LoadError::Tokenizer(rela_llm::TokenizerError::UnsupportedModel(_)) => ModelError::Unsupported(
            "the model's tokenizer is not supported (byte-level BPE, `gpt2`, and SentencePiece, `llama`, are)",
        ),
        LoadError::Tokenizer(rela_llm::TokenizerError::UnsupportedPreTokenizer(_)) => {
            ModelError::Unsupported(
                "the model's pre-tokenizer is not supported (smollm, gpt2 and llama-bpe are)",
            )
        }
        LoadError::Open(_) => ModelError::BadModel(
            "the model's .gguf file is unreadable or not a valid GGUF file (see the node's log)",
        ),
        LoadError::Model(_) => ModelError::BadModel(
            "the model's hyperparameters or tensors are not llama's (see the node's log)",
        ),
        LoadError::Tokenizer(_) => {
            ModelError::BadModel("the model's tokenizer metadata is unusable (see the node's log)")
        }
        LoadError::Chat(_) => {
            ModelError::BadModel("the model's chat template does not compile (see the node's log)")
        }
        _ => ModelError::BadModel("the model's .gguf file is unusable (see the node's log)"),
    }
}

fn prompt_error(e: PromptError) -> ModelError {
    ModelError::InvalidInput(match e {
        PromptError::Empty => "the prompt has no tokens",
        PromptError::BadTokenId(_) => "a token id is outside the vocabulary",
        PromptError::NoChatTemplate => "the model has no chat template",
        PromptError::Chat(_) => "the chat template failed on the messages",
        _ => "the prompt does not tokenize",
    })
}

/// Where a generation's TOKEN frames go, and what stops it.
pub(crate) struct TokenSink<'a> {
    pub(crate) replies: &'a ReplyTx,
    pub(crate) state: &'a ConnState,
    /// Set by the engine when the session is ending.
    pub(crate) abort: Option<&'a AtomicBool>,
    /// The session's payload cap (TOKEN frames with many prompt ids are split to fit it).
    pub(crate) max_payload: usize,
}

impl TokenSink<'_> {
    fn stopped(&self) -> bool {
        self.state.cancel_generation.load(Ordering::Acquire)
            || self.abort.is_some_and(|a| a.load(Ordering::Acquire))
    }

    fn send(&self, seq: u16, prompt: bool, ids: &[u32], text: &str) {
        let len = rela_core::config::HEADER_LEN + TokenMsg::encoded_len(ids.len(), text.len());
        let mut out =
            if len <= INLINE_OUT { OutBuf::Inline([0; INLINE_OUT]) } else { OutBuf::Heap(vec![0; len]) };
        let Ok(len) = TokenMsg::emit_frame::<FastCrc32>(seq, prompt, ids, text, out.as_mut_slice()) else {
            tracing::error!("a TOKEN frame did not encode");
            return;
        };
        // Counted as in flight like every reply, so the PING fast path keeps response order.
        self.state.inflight.fetch_add(1, Ordering::AcqRel);
        let outcome = Outcome { timeout: None, closed: false };
        let reply = Reply { out, len, outcome, data: None, _ticket: None };
        if self.replies.send(reply).is_err() {
            self.state.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The prompt's ids, in as many frames as the payload cap needs.
    fn send_prompt(&self, seq: u16, ids: &[u32]) {
        let per_frame = (self.max_payload.saturating_sub(TokenMsg::encoded_len(0, 0)) / 4)
            .clamp(1, usize::from(u16::MAX));
        for chunk in ids.chunks(per_frame) {
            self.send(seq, true, chunk, "");
        }
    }
}

/// Runs GENERATE `req` with `served` to its end, streaming TOKEN frames to `sink`: on the host
/// CPU through the batcher on the host backend, on `backend` (the job's turns) otherwise.
pub(crate) fn generate(
    served: &ServedLlm,
    req: &Generate<'_>,
    limits: GenerateLimits,
    budget: u64,
    seq: u16,
    sink: &TokenSink<'_>,
    backend: &mut dyn GpuBackend,
) -> Result<Generated, ModelError> {
    let started = Instant::now();
    let llm = &*served.llm;
    let input = match req.prompt_kind {
        PromptKind::TEXT => llm.text_ids(req.text().unwrap_or_default()),
        PromptKind::MESSAGES => {
            let messages: Vec<rela_llm::Message> =
                req.messages().map(|(role, content)| rela_llm::Message::new(role, content)).collect();
            llm.chat_ids(&messages)
        }
        PromptKind::TOKENS => llm.check_ids(req.token_ids().collect()),
        _ => return Err(ModelError::Unsupported("unknown prompt kind")),
    }
    .map_err(prompt_error)?;
    if req.max_tokens > limits.max_tokens {
        return Err(ModelError::LimitExceeded("max_tokens above the node's limit (--max-generate-tokens)"));
    }
    let context = (limits.max_context as usize).min(llm.config().context_length);
    if input.len() >= context {
        return Err(ModelError::LimitExceeded("the prompt leaves no room in the context (--max-context)"));
    }
    let positions = (input.len() + req.max_tokens as usize).min(context);
    let params = SamplingParams {
        temperature: req.sampling.temperature,
        top_k: req.sampling.top_k as usize,
        top_p: req.sampling.top_p,
        seed: req.sampling.seed,
    };
    let stops: Vec<String> = req.stops().map(str::to_owned).collect();
    let prompt_tokens = input.len() as u32;
    let max_tokens = req.max_tokens as usize;
    let mut first: Option<Instant> = None;
    let (finish, generated) = match served.device_share() {
        Some(device) => {
            let rows = input.len().min(rela_llm::stream::PREFILL_CHUNK);
            if DeviceKv::bytes_for(llm.config(), positions, rows) > budget {
                return Err(ModelError::QuotaExceeded);
            }
            let mut stream =
                DeviceStream::new(&device, llm.tokenizer(), input, max_tokens, positions, params, stops)
                    .map_err(|_| ModelError::InvalidInput("the prompt does not fit the context"))?;
            sink.send_prompt(seq, stream.input_ids());
            let batch = served.device_batch.as_ref().ok_or(ModelError::BadModel("the model has no batch"))?;
            // Taken at the first decode step (after the prompt), released when the generation
            // ends.
            let mut seat = None;
            let finish = drive(sink, seq, &mut first, || {
                // Decode steps go through the model's batch, with every other stream's.
                stream
                    .step_with(backend, |backend, id, kv, logits| {
                        seat.get_or_insert_with(|| batch.seat());
                        batch.step(&device, backend, id, kv, logits)
                    })
                    .map_err(device_step_error)
            });
            let generated = stream.generated() as u32;
            // Freed (and so zeroed) however the generation ended.
            let freed = stream.free(backend).map_err(device_step_error);
            (finish?, freed.map(|()| generated)?)
        }
        None => {
            if llm.kv_cache_bytes(positions) > budget {
                return Err(ModelError::QuotaExceeded);
            }
            let batcher = served.batcher.as_ref().ok_or(ModelError::BadModel("the model has no batcher"))?;
            let model = llm.model().map_err(|_| ModelError::BadModel("the model's tensors changed"))?;
            let mut stream =
                TokenStream::new(&model, llm.tokenizer(), input, max_tokens, positions, params, stops)
                    .map_err(|_| ModelError::InvalidInput("the prompt does not fit the context"))?;
            sink.send_prompt(seq, stream.input_ids());
            // Taken at the first decode step (after the prompt), released when the generation
            // ends.
            let mut seat = None;
            let finish = drive(sink, seq, &mut first, || {
                // Decode steps go through the model's batcher, with every other stream's.
                stream
                    .step_with(|id, cache, logits| {
                        seat.get_or_insert_with(|| batcher.seat());
                        batcher.step(id, cache, logits).unwrap_or(Err(ForwardError::CacheMismatch))
                    })
                    .map_err(|_| ModelError::InvalidInput("the model refused a token"))
            })?;
            (finish, stream.generated() as u32)
        }
    };
    let end = Instant::now();
    let first = first.unwrap_or(end);
    Ok(Generated {
        finish_reason: finish,
        prompt_tokens,
        generated_tokens: generated,
        prompt_us: first.duration_since(started).as_micros() as u64,
        generate_us: end.duration_since(first).as_micros() as u64,
    })
}

/// Runs `step` until the generation ends or is stopped, sending each token to `sink`; `first`
/// is when the first token came.
fn drive(
    sink: &TokenSink<'_>,
    seq: u16,
    first: &mut Option<Instant>,
    mut step: impl FnMut() -> Result<Step, ModelError>,
) -> Result<FinishReason, ModelError> {
    loop {
        if sink.stopped() {
            return Ok(FinishReason::CANCELLED);
        }
        match step()? {
            Step::Prefill { .. } => {}
            Step::Token { id, text, finish } => {
                first.get_or_insert_with(Instant::now);
                sink.send(seq, false, &[id], &text);
                match finish {
                    Some(Finish::Eos) => return Ok(FinishReason::EOS),
                    Some(Finish::Length) => return Ok(FinishReason::LENGTH),
                    Some(Finish::Stop) => return Ok(FinishReason::STOP),
                    None => {}
                }
            }
            Step::Done => return Ok(FinishReason::LENGTH),
        }
    }
}
