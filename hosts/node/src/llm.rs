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

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rela_client::FastCrc32;
use rela_core::backend::GpuBackend;
use rela_core::model::ModelError;
use rela_core::wire::generate::{FinishReason, Generate, Generated, PromptKind, TokenMsg};
use rela_llm::{
    DeviceError, DeviceKv, DeviceStream, Finish, ForwardError, PromptError, SamplingParams, Step, TokenStream,
};

pub(crate) use crate::llm_shared::{ServedLlm, SharedLlms};

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
