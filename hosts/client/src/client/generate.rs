//! GENERATE and CANCEL: text generation with a language model the session loaded, streamed
//! token by token ([`TokenStream`]).

use rela_core::wire::generate::{FinishReason, GENERATE_PREFIX_LEN, Generate, Generated, Prompt, Sampling};
use rela_core::wire::msg::Response;
use rela_core::wire::{Flags, Kind, emit_frame};

use super::{Client, server_error, timed, unexpected, write_flush};
use crate::FastCrc32;
use crate::error::ClientError;

/// What to generate: see `docs/PROTOCOL.md` §4 GENERATE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateRequest<'a> {
    /// The model (from [`Client::model_load`]).
    pub model: u32,
    /// The prompt: text, chat messages (rendered with the model's chat template) or token ids.
    pub prompt: Prompt<'a>,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: u32,
    /// Sampling settings ([`Sampling::GREEDY`] for greedy decoding).
    pub sampling: Sampling,
    /// Stop strings (at most 4, each 1–64 bytes): the text ends before the first one.
    pub stops: &'a [&'a str],
}

/// One event of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerateEvent {
    /// The prompt's token ids as the node tokenized it (it may come in several events).
    Prompt(Vec<u32>),
    /// Generated token ids and the text they complete (whole characters; possibly empty).
    Token {
        /// The ids.
        ids: Vec<u32>,
        /// The text they complete.
        text: String,
    },
    /// The end: why, token counts and timings. The stream yields nothing after it.
    Finished(Generated),
}

/// Everything a generation produced ([`TokenStream::collect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOutcome {
    /// The prompt's token ids.
    pub input_ids: Vec<u32>,
    /// The generated ids (an EOS that ended it included).
    pub generated_ids: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// The node's summary.
    pub summary: Generated,
}

impl Default for GenerateOutcome {
    /// Nothing yet: no ids, no text, finish reason 0 (unknown) until [`GenerateEvent::Finished`].
    fn default() -> Self {
        Self {
            input_ids: Vec::new(),
            generated_ids: Vec::new(),
            text: String::new(),
            summary: Generated {
                finish_reason: FinishReason(0),
                prompt_tokens: 0,
                generated_tokens: 0,
                prompt_us: 0,
                generate_us: 0,
            },
        }
    }
}

impl GenerateOutcome {
    /// Adds what `event` carries: prompt ids, generated ids and their text, or the summary.
    pub fn record(&mut self, event: &GenerateEvent) {
        match event {
            GenerateEvent::Prompt(ids) => self.input_ids.extend(ids),
            GenerateEvent::Token { ids, text } => {
                self.generated_ids.extend(ids);
                self.text.push_str(text);
            }
            GenerateEvent::Finished(g) => self.summary = *g,
        }
    }

    /// `eos`, `length`, `stop`, `cancelled`, or `unknown`.
    pub fn finish_reason(&self) -> &'static str {
        self.summary.finish_reason.name().unwrap_or("unknown")
    }
}

/// A generation in progress: read its events with [`next`](Self::next) until
/// [`GenerateEvent::Finished`]; [`cancel`](Self::cancel) asks the node to stop it. It borrows the
/// client; dropping it before the end leaves the connection unusable (answers would be out of
/// step), so read it to the end.
#[derive(Debug)]
pub struct TokenStream<'c> {
    client: &'c mut Client,
    seq: u16,
    /// A CANCEL sent and not yet acknowledged.
    cancel: Option<u16>,
    finished: bool,
}

impl Client {
    /// GENERATE: starts a generation and returns its stream of events.
    pub async fn generate(&mut self, req: &GenerateRequest<'_>) -> Result<TokenStream<'_>, ClientError> {
        self.check_usable()?;
        let max = self.max_payload() as usize;
        let too_large = || {
            ClientError::InvalidArgument(
                "GENERATE does not encode (larger than the node's max_payload, or more than 4 stop strings or one empty or over 64 bytes)",
            )
        };
        let prompt_len = match req.prompt {
            Prompt::Text(t) => t.len(),
            Prompt::Messages(m) => 2 + m.iter().map(|(r, c)| 5 + r.len() + c.len()).sum::<usize>(),
            Prompt::Tokens(ids) => 4 * ids.len(),
        };
        let len = GENERATE_PREFIX_LEN + prompt_len + req.stops.iter().map(|s| 1 + s.len()).sum::<usize>();
        if len > max {
            return Err(too_large());
        }
        let mut frame = vec![0u8; super::HEADER_LEN + len];
        let len = Generate::emit_parts(
            req.model,
            req.max_tokens,
            &req.sampling,
            req.prompt,
            req.stops,
            &mut frame[super::HEADER_LEN..],
        )
        .map_err(|_| too_large())?;
        let seq = self.next_seq();
        let n = emit_frame::<FastCrc32>(&mut frame, Kind::GENERATE, Flags::NONE, seq, len)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        if let Err(e) = timed(self.step_timeout(), write_flush(&mut self.wr, &frame[..n])).await {
            return self.fail(e);
        }
        Ok(TokenStream { client: self, seq, cancel: None, finished: false })
    }

    /// Generates to the end, calling `on_text` with each piece of text as it arrives.
    pub async fn generate_text(
        &mut self,
        req: &GenerateRequest<'_>,
        on_text: impl FnMut(&str),
    ) -> Result<GenerateOutcome, ClientError> {
        self.generate(req).await?.collect(on_text).await
    }
}

impl TokenStream<'_> {
    /// The next event; `Ok(None)` once [`GenerateEvent::Finished`] has been returned.
    pub async fn next(&mut self) -> Result<Option<GenerateEvent>, ClientError> {
        if self.finished {
            if let Some(seq) = self.cancel.take() {
                self.client.expect_ack(seq, Kind::CANCEL).await?;
            }
            return Ok(None);
        }
        let (header, mut crc) = self.client.read_header().await?;
        let mut payload = vec![0u8; header.len as usize];
        self.client.read_payload_into(&mut payload, &mut crc).await?;
        if let Err(e) = crc.verify(&header) {
            return self.client.fail(e);
        }
        let unsolicited = header.seq == 0 && header.kind == Kind::ERROR;
        if header.seq != self.seq && !unsolicited {
            return self.client.fail(ClientError::Protocol(format!(
                "answer to seq {} while waiting for GENERATE seq {}",
                header.seq, self.seq
            )));
        }
        let response = match Response::parse(header.kind, header.flags, &payload) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .client
                    .fail(ClientError::Protocol(format!("{} frame does not decode: {e}", header.kind)));
            }
        };
        match response {
            Response::Token(t) => {
                let ids = t.ids().collect();
                if t.is_prompt() {
                    Ok(Some(GenerateEvent::Prompt(ids)))
                } else {
                    Ok(Some(GenerateEvent::Token { ids, text: t.text.to_owned() }))
                }
            }
            Response::Generated(g) => {
                self.finished = true;
                Ok(Some(GenerateEvent::Finished(g)))
            }
            Response::Error(e) => {
                // The GENERATE's answer: the stream ends (a CANCEL sent meanwhile is still
                // acknowledged by the next call).
                self.finished = true;
                let fatal = unsolicited || e.code.closes_session();
                let err = server_error(&e, if unsolicited { e.request_kind } else { Kind::GENERATE });
                if fatal {
                    self.client.broken = true;
                }
                if let Some(seq) = self.cancel.take().filter(|_| !fatal) {
                    self.client.expect_ack(seq, Kind::CANCEL).await?;
                }
                Err(err)
            }
            other => {
                let e = unexpected(&other);
                Err(self.client.broke(e))
            }
        }
    }

    /// Sends CANCEL: the node stops the generation at its next step, and the stream ends with
    /// [`FinishReason::CANCELLED`] (or the reason it ended by itself, if it was already done).
    /// The acknowledgement is read after the end.
    pub async fn cancel(&mut self) -> Result<(), ClientError> {
        if self.finished || self.cancel.is_some() {
            return Ok(());
        }
        self.cancel = Some(self.client.send_empty(Kind::CANCEL).await?);
        Ok(())
    }

    /// Reads the stream to its end, calling `on_text` with each piece of text.
    pub async fn collect(mut self, mut on_text: impl FnMut(&str)) -> Result<GenerateOutcome, ClientError> {
        let mut out = GenerateOutcome::default();
        while let Some(event) = self.next().await? {
            if let GenerateEvent::Token { text, .. } = &event
                && !text.is_empty()
            {
                on_text(text);
            }
            out.record(&event);
        }
        Ok(out)
    }
}

impl Drop for TokenStream<'_> {
    /// A stream left before its end leaves frames the client would misread as answers to later
    /// requests: the connection is marked unusable.
    fn drop(&mut self) {
        if !self.finished || self.cancel.is_some() {
            self.client.broken = true;
        }
    }
}
