//! Generation one step at a time on a [`GpuBackend`]: [`crate::stream`]'s steps (prompt
//! chunks of at most [`PREFILL_CHUNK`] tokens, then one token per step, with stop strings and
//! whole characters), run by a [`DeviceLlm`] with a [`DeviceKv`] of its own.
//!
//! The stream allocates its cache in the backend at its first step and holds it until
//! [`DeviceStream::free`], which the caller must call on every path (dropping the stream cannot
//! reach the backend). Greedy steps give the ids [`crate::TokenStream`] gives on the host, up
//! to the kernels' rounding: the logits are read back and sampled by the same
//! [`crate::Sampler`].

use rela_core::backend::GpuBackend;

use crate::device::{DeviceError, DeviceKv, DeviceLlm};
use crate::generate::SamplingParams;
use crate::stream::{Emitter, Next, PREFILL_CHUNK, Step, StreamError};
use crate::tokenizer::GgufTokenizer;

/// A generation in progress on a backend. See the [module docs](self).
#[derive(Debug)]
pub struct DeviceStream<'m> {
    model: &'m DeviceLlm,
    input: Vec<u32>,
    prefilled: usize,
    capacity: usize,
    kv: Option<DeviceKv>,
    logits: Vec<f32>,
    emitter: Emitter<'m>,
}

impl<'m> DeviceStream<'m> {
    /// A generation of at most `max_tokens` tokens after `input` in a cache of `capacity`
    /// positions (capped at the model's context length), ending early at EOS or at any of
    /// `stops` (empty strings are ignored). Touches no backend.
    pub fn new(
        model: &'m DeviceLlm,
        tok: &'m GgufTokenizer,
        input: Vec<u32>,
        max_tokens: usize,
        capacity: usize,
        params: SamplingParams,
        stops: Vec<String>,
    ) -> Result<Self, StreamError> {
        if input.is_empty() {
            return Err(StreamError::EmptyPrompt);
        }
        if max_tokens == 0 {
            return Err(StreamError::NoTokens);
        }
        let capacity = capacity.min(model.config().context_length);
        if capacity <= input.len() {
            return Err(StreamError::PromptTooLong);
        }
        Ok(Self {
            model,
            input,
            prefilled: 0,
            capacity,
            kv: None,
            logits: Vec::new(),
            emitter: Emitter::new(tok, max_tokens, params, stops),
        })
    }

    /// The prompt's token ids.
    pub fn input_ids(&self) -> &[u32] {
        &self.input
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.emitter.generated()
    }

    /// Whether the generation has ended.
    pub fn is_finished(&self) -> bool {
        self.emitter.is_finished()
    }

    /// Device bytes the stream holds at most: its cache and the buffers of a prompt chunk.
    pub fn device_bytes(&self) -> u64 {
        DeviceKv::bytes_for(self.model.config(), self.capacity, self.input.len().min(PREFILL_CHUNK))
    }

    /// The logits the next token is sampled from (empty before the prompt has run).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Runs the next step on `backend` (the one the model was loaded into): a chunk of the
    /// prompt, or one token. The first step allocates the cache.
    pub fn step(&mut self, backend: &mut dyn GpuBackend) -> Result<Step, DeviceError> {
        let model = self.model;
        self.step_with(backend, |backend, id, kv, logits| model.forward(backend, id, kv, logits))
    }

    /// [`step`](Self::step), with the one-token steps run by `forward` (given the backend, the
    /// token, the cache and the logits buffer to fill): a server batches them across
    /// generations there ([`DeviceLlm::forward_batch`]). Prompt chunks run here, on `backend`.
    pub fn step_with(
        &mut self,
        backend: &mut dyn GpuBackend,
        forward: impl FnOnce(&mut dyn GpuBackend, u32, &mut DeviceKv, &mut Vec<f32>) -> Result<(), DeviceError>,
    ) -> Result<Step, DeviceError> {
        if self.emitter.is_finished() {
            return Ok(Step::Done);
        }
        let kv = match &mut self.kv {
            Some(kv) => kv,
            empty => empty.insert(self.model.new_kv(backend, self.capacity)?),
        };
        if self.prefilled < self.input.len() {
            let end = (self.prefilled + PREFILL_CHUNK).min(self.input.len());
            self.model.prefill(backend, &self.input[self.prefilled..end], kv, &mut self.logits)?;
            self.prefilled = end;
            return Ok(Step::Prefill { done: end, total: self.input.len() });
        }
        match self.emitter.next(&self.logits, kv.len() == kv.capacity()) {
            Next::Last(step) => Ok(step),
            Next::Run(id, step) => {
                forward(backend, id, kv, &mut self.logits)?;
                Ok(step)
            }
        }
    }

    /// Frees (and so zeroes) the stream's device buffers, if it made any.
    pub fn free(self, backend: &mut dyn GpuBackend) -> Result<(), DeviceError> {
        match self.kv {
            Some(kv) => kv.free(backend),
            None => Ok(()),
        }
    }
}
