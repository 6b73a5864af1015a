//! GENERATE: text generation with a language model, token by token through a callback.

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;

use rela_client::{GenerateEvent, GenerateRequest};
use rela_core::wire::generate::{Prompt, Sampling};

use crate::boundary::{Failure, run, text};
use crate::clients::{self, RelaClient};

/// Generation ended at the model's end-of-sequence token.
pub const RELA_FINISH_EOS: u8 = 1;
/// Generation produced `max_tokens` tokens, or filled the model's context.
pub const RELA_FINISH_LENGTH: u8 = 2;
/// The text reached a stop string.
pub const RELA_FINISH_STOP: u8 = 3;
/// The callback asked to stop (the node was sent CANCEL).
pub const RELA_FINISH_CANCELLED: u8 = 4;

/// Called for each piece of generated text, in order: `text_len` bytes of UTF-8 at `text`
/// (whole characters, not NUL-terminated, possibly empty while a character is incomplete) and
/// the `ids_len` token ids that complete it. Both pointers are valid only during the call.
/// Return 0 to go on; anything else cancels the generation (the call still returns normally,
/// with [`RELA_FINISH_CANCELLED`]). The callback must not call back into this client.
pub type RelaTokenCallback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        text: *const c_char,
        text_len: usize,
        ids: *const u32,
        ids_len: usize,
    ) -> i32,
>;

/// Settings for [`rela_generate`]; a null pointer means greedy decoding of at most 64 tokens
/// of a plain-text prompt.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelaGenerateOptions {
    /// Most tokens to generate (at least 1).
    pub max_tokens: u32,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: u32,
    /// Nucleus sampling threshold in (0, 1] (1: off).
    pub top_p: f32,
    /// Seed of the node's random generator for this request.
    pub seed: u64,
    /// Send the prompt as one user message, rendered with the model's chat template (for
    /// instruction-tuned models), instead of as plain text.
    pub chat: bool,
}

impl Default for RelaGenerateOptions {
    fn default() -> Self {
        let g = Sampling::GREEDY;
        Self {
            max_tokens: 64,
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            seed: g.seed,
            chat: false,
        }
    }
}

/// How a generation ended, as the node reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaGenerateResult {
    /// One of `RELA_FINISH_*` (others may appear).
    pub finish_reason: u8,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (an end-of-sequence token included).
    pub generated_tokens: u32,
    /// Microseconds of prompt processing.
    pub prompt_us: u64,
    /// Microseconds from the first generated token to the last.
    pub generate_us: u64,
}

/// Generates text from `prompt` with `model` (a language model from [`crate::rela_model_load`],
/// a `.gguf` file on the node), calling `on_token` with each piece as it arrives, and writes
/// the summary to `*out_result` (which may be null). `options` may be null (greedy, 64 tokens).
///
/// # Safety
/// `prompt` must be a NUL-terminated string; `options`, when not null, must point to a
/// `RelaGenerateOptions`; `on_token`, when not null, must be safe to call with `user`;
/// `out_result`, when not null, must point to a writable `RelaGenerateResult`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_generate(
    client: RelaClient,
    model: u32,
    prompt: *const c_char,
    options: *const RelaGenerateOptions,
    on_token: RelaTokenCallback,
    user: *mut c_void,
    out_result: *mut RelaGenerateResult,
) -> i32 {
    run(|| {
        // SAFETY: the caller's contract, for each pointer.
        let (prompt, options) =
            unsafe { (text(prompt, "prompt")?, options.as_ref().copied().unwrap_or_default()) };
        let messages = [("user", prompt)];
        let req = GenerateRequest {
            model,
            prompt: if options.chat { Prompt::Messages(&messages) } else { Prompt::Text(prompt) },
            max_tokens: options.max_tokens,
            sampling: Sampling {
                temperature: options.temperature,
                top_k: options.top_k,
                top_p: options.top_p,
                seed: options.seed,
            },
            stops: &[],
        };
        if !req.sampling.is_valid() {
            return Err(Failure::invalid("sampling: temperature must be finite and >= 0, top_p in (0, 1]"));
        }
        let outcome = clients::with_client(client, |c| {
            Ok(c.generate(&req, |event| {
                let (GenerateEvent::Token { ids, text }, Some(f)) = (event, on_token) else {
                    return ControlFlow::Continue(());
                };
                // SAFETY: the caller's contract for `on_token` and `user`; the pointers are
                // valid for the call.
                let stop = unsafe { f(user, text.as_ptr().cast(), text.len(), ids.as_ptr(), ids.len()) };
                if stop == 0 { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
            })?)
        })?;
        // SAFETY: the caller's contract.
        if let Some(out) = unsafe { out_result.as_mut() } {
            let s = outcome.summary;
            *out = RelaGenerateResult {
                finish_reason: s.finish_reason.0,
                prompt_tokens: s.prompt_tokens,
                generated_tokens: s.generated_tokens,
                prompt_us: s.prompt_us,
                generate_us: s.generate_us,
            };
        }
        Ok(())
    })
}
