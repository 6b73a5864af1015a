//! Generation one step at a time, so a server can interleave sessions and stop a generation
//! between any two steps (a client's CANCEL, a session that ends).
//!
//! A [`TokenStream`] first runs the prompt through the model in chunks of at most
//! [`PREFILL_CHUNK`] tokens (one [`Step::Prefill`] each), then yields one [`Step::Token`] per
//! generated token: its id and the text it completes. The text never splits a character
//! ([`Utf8Stream`]), and text that could be the start of a stop string is held back until it
//! is known not to be one, so a stop string never reaches the client. The last token's step
//! carries the [`Finish`] reason. Greedy steps give exactly the ids of
//! [`generate_ids`](crate::generate::generate_ids).

use crate::forward::{ForwardError, KvCache, Model};
use crate::generate::{Sampler, SamplingParams, Utf8Stream, token_bytes};
use crate::tokenizer::GgufTokenizer;

/// Prompt tokens run per [`Step::Prefill`]: a prompt runs as batches (each weight dequantized
/// once per batch), so larger chunks are faster; 64 keeps a step to a fraction of a second on
/// one CPU core (SmolLM2-135M: about 0.3 s), which bounds how long a CANCEL waits.
pub const PREFILL_CHUNK: usize = 64;

/// Why a generation ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced its end-of-sequence token (which is the last id).
    Eos,
    /// `max_tokens` were produced, or the KV cache is full.
    Length,
    /// The text reached a stop string (left out of the text, as is everything after it).
    Stop,
}

/// What one [`TokenStream::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ran prompt tokens: `done` of `total` are in the cache.
    Prefill {
        /// Prompt tokens run so far.
        done: usize,
        /// Prompt tokens in all.
        total: usize,
    },
    /// Produced a token.
    Token {
        /// Its id.
        id: u32,
        /// Text released by this step: whole characters, none of them part of a stop string.
        text: String,
        /// Set on the last token.
        finish: Option<Finish>,
    },
    /// The generation had already ended; nothing was done.
    Done,
}

/// Why a stream could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The prompt has no tokens.
    EmptyPrompt,
    /// `max_tokens` is 0.
    NoTokens,
    /// The cache cannot hold the prompt and one more token.
    PromptTooLong,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EmptyPrompt => "the prompt has no tokens",
            Self::NoTokens => "max_tokens is 0",
            Self::PromptTooLong => "the prompt does not fit the context",
        })
    }
}

impl std::error::Error for StreamError {}

/// A generation in progress. See the [module docs](self).
#[derive(Debug)]
pub struct TokenStream<'m> {
    model: &'m Model<'m>,
    input: Vec<u32>,
    prefilled: usize,
    cache: KvCache,
    logits: Vec<f32>,
    emitter: Emitter<'m>,
}

/// The token side of a generation, whatever runs the model: sampling, UTF-8, stop strings,
/// `max_tokens` and the finish ([`TokenStream`] on the host, [`crate::DeviceStream`] on a
/// backend).
#[derive(Debug)]
pub(crate) struct Emitter<'t> {
    tok: &'t GgufTokenizer,
    sampler: Sampler,
    utf8: Utf8Stream,
    /// Text produced but not released (it may begin a stop string).
    held: String,
    stops: Vec<String>,
    max_tokens: usize,
    generated: usize,
    finished: bool,
}

/// What the next token of an [`Emitter`] asks of the model.
pub(crate) enum Next {
    /// The generation ended with this step: nothing more to run.
    Last(Step),
    /// The step's token must run at the next position before the step is returned.
    Run(u32, Step),
}

impl<'t> Emitter<'t> {
    /// At most `max_tokens` tokens, ending early at EOS or at any of `stops` (empty strings are
    /// ignored).
    pub(crate) fn new(
        tok: &'t GgufTokenizer,
        max_tokens: usize,
        params: SamplingParams,
        stops: Vec<String>,
    ) -> Self {
        Self {
            tok,
            sampler: Sampler::new(params),
            utf8: Utf8Stream::new(),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            max_tokens,
            generated: 0,
            finished: false,
        }
    }

    /// Tokens generated so far.
    pub(crate) fn generated(&self) -> usize {
        self.generated
    }

    /// Whether the generation has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next token, sampled from `logits`; `full` when the cache can take no more positions.
    pub(crate) fn next(&mut self, logits: &[f32], full: bool) -> Next {
        let id = self.sampler.sample(logits);
        self.generated += 1;
        if Some(id) == self.tok.eos() {
            return Next::Last(self.end(id, String::new(), Finish::Eos));
        }
        let piece = self.utf8.push(&token_bytes(self.tok, id));
        self.held.push_str(&piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            self.finished = true;
            return Next::Last(Step::Token { id, text, finish: Some(Finish::Stop) });
        }
        if self.generated == self.max_tokens || full {
            let rest = self.utf8.finish();
            return Next::Last(self.end(id, rest, Finish::Length));
        }
        let keep = stop_prefix_len(&self.held, &self.stops);
        let text = self.held.drain(..self.held.len() - keep).collect();
        Next::Run(id, Step::Token { id, text, finish: None })
    }

    /// The last step: releases everything held plus `rest`.
    fn end(&mut self, id: u32, rest: String, finish: Finish) -> Step {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&rest);
        self.finished = true;
        Step::Token { id, text, finish: Some(finish) }
    }
}

impl<'m> TokenStream<'m> {
    /// A generation of at most `max_tokens` tokens after `input` in a cache of `capacity`
    /// positions (capped at the model's context length), ending early at EOS or at any of
    /// `stops` (empty strings are ignored).
    pub fn new(
        model: &'m Model<'m>,
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
        let cache = model.new_cache(capacity);
        if cache.capacity() <= input.len() {
            return Err(StreamError::PromptTooLong);
        }
        Ok(Self {
            model,
            input,
            prefilled: 0,
            cache,
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

    /// Whether the prompt has been run.
    pub fn prefilled(&self) -> bool {
        self.prefilled == self.input.len()
    }

    /// Whether the generation has ended.
    pub fn is_finished(&self) -> bool {
        self.emitter.is_finished()
    }

    /// Runs the next step: a chunk of the prompt, or one token.
    pub fn step(&mut self) -> Result<Step, ForwardError> {
        let model = self.model;
        self.step_with(|id, cache, logits| model.forward(id, cache, logits))
    }

    /// [`step`](Self::step), with the one-token forward pass of a generated token run by
    /// `forward(token, cache, logits)` instead of this stream's model directly: a server that
    /// batches the steps of several streams ([`Model::forward_batch`]) passes its own. It must
    /// do what [`Model::forward`] does for this stream's model, leaving `vocab_size` logits in
    /// the vector (which it may move elsewhere and back, as the cache).
    pub fn step_with(
        &mut self,
        forward: impl FnOnce(u32, &mut KvCache, &mut Vec<f32>) -> Result<(), ForwardError>,
    ) -> Result<Step, ForwardError> {
        if self.emitter.is_finished() {
            return Ok(Step::Done);
        }
        if self.prefilled < self.input.len() {
            let end = (self.prefilled + PREFILL_CHUNK).min(self.input.len());
            self.logits = self.model.prefill(&self.input[self.prefilled..end], &mut self.cache)?;
            self.prefilled = end;
            return Ok(Step::Prefill { done: end, total: self.input.len() });
        }
        match self.emitter.next(&self.logits, self.cache.len() == self.cache.capacity()) {
            Next::Last(step) => Ok(step),
            Next::Run(id, step) => {
                forward(id, &mut self.cache, &mut self.logits)?;
                Ok(step)
            }
        }
    }
}

/// Bytes at the end of `held` that begin some stop string (the longest such suffix, on a
/// character boundary): text that must wait for the next token.
fn stop_prefix_len(held: &str, stops: &[String]) -> usize {
    held.char_indices()
        .map(|(i, _)| i)
        .find(|&i| stops.iter().any(|s| s.starts_with(&held[i..])))
        .map_or(0, |i| held.len() - i)
}

#[cfg(test)]
mod tests {
    use super::stop_prefix_len;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn only_a_suffix_that_begins_a_stop_is_held() {
        assert_eq!(stop_prefix_len("hello wo", &stops(&["world"])), 2);
        assert_eq!(stop_prefix_len("hello", &stops(&["world"])), 0);
        assert_eq!(stop_prefix_len("abc\n", &stops(&["\n\n", "x"])), 1);
        assert_eq!(stop_prefix_len("aé", &stops(&["éa"])), 2);
        assert_eq!(stop_prefix_len("anything", &[]), 0);
    }
}
