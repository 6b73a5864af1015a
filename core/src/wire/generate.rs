//! Text generation messages: GENERATE (request), TOKEN (node → client, streamed), the
//! GENERATE answer ([`Generated`]) and CANCEL. All integers little-endian; every variable part
//! borrows the frame (zero copy) and is checked whole by `parse`.
//!
//! See `docs/PROTOCOL.md` §4 GENERATE for the byte layout.

use core::fmt;

use super::msg::Message;
use super::{DecodeError, EncodeError, Flags, Kind, Reader, Writer, emit_frame};
use crate::crc32::Crc32;

/// Most stop strings one GENERATE may carry.
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 64;
/// Longest chat role, in bytes.
pub const MAX_ROLE_LEN: usize = 32;
/// Length of GENERATE's fixed part, before the prompt.
pub const GENERATE_PREFIX_LEN: usize = 34;
/// Length of TOKEN's fixed part before the ids (flags, reserved, count).
pub const TOKEN_PREFIX_LEN: usize = 4;

/// How a GENERATE's prompt bytes are to be read: an open enum, so unknown values survive a
/// decode (a node answers them `UNSUPPORTED`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromptKind(pub u8);

impl PromptKind {
    /// UTF-8 text, tokenized as it is (BOS as the model's file asks).
    pub const TEXT: Self = Self(0);
    /// Chat messages, rendered with the model's chat template (the assistant's turn appended):
    /// `count u16`, then per message `role str8` and `content` (`u32` length, UTF-8).
    pub const MESSAGES: Self = Self(1);
    /// Token ids, `u32` each.
    pub const TOKENS: Self = Self(2);
}

impl fmt::Debug for PromptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TEXT => f.write_str("TEXT"),
            Self::MESSAGES => f.write_str("MESSAGES"),
            Self::TOKENS => f.write_str("TOKENS"),
            Self(v) => write!(f, "Unknown({v})"),
        }
    }
}

/// Why a generation ended: an open enum (unknown values are kept).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FinishReason(pub u8);

impl FinishReason {
    /// The model produced its end-of-sequence token.
    pub const EOS: Self = Self(1);
    /// `max_tokens` tokens were produced, or the context is full.
    pub const LENGTH: Self = Self(2);
    /// The text reached a stop string.
    pub const STOP: Self = Self(3);
    /// A CANCEL (or the session ending) stopped it.
    pub const CANCELLED: Self = Self(4);

    /// `eos`, `length`, `stop` or `cancelled`; `None` for an unknown value.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("eos"),
            2 => Some("length"),
            3 => Some("stop"),
            4 => Some("cancelled"),
            _ => None,
        }
    }
}

impl fmt::Debug for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Unknown({})", self.0),
        }
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 is greedy. Finite and ≥ 0.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: u32,
    /// Nucleus sampling threshold in (0, 1] (1: off).
    pub top_p: f32,
    /// Seed of the node's random generator for this request.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Self = Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };

    /// Whether every field is in its range (temperature finite and ≥ 0, top_p in (0, 1]).
    pub fn is_valid(&self) -> bool {
        self.temperature.is_finite() && self.temperature >= 0.0 && self.top_p > 0.0 && self.top_p <= 1.0
    }
}

/// A prompt to encode into a GENERATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt<'a> {
    /// Text.
    Text(&'a str),
    /// Chat messages as (role, content).
    Messages(&'a [(&'a str, &'a str)]),
    /// Token ids.
    Tokens(&'a [u32]),
}

/// GENERATE: generate text with a loaded model. The prompt and the stop strings borrow the
/// frame; `parse` checked them whole (UTF-8, lengths, structure), so the accessors never fail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generate<'a> {
    /// The model (a handle from MODEL_LOAD).
    pub model: u32,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: u32,
    /// Sampling settings.
    pub sampling: Sampling,
    /// How `prompt` is to be read.
    pub prompt_kind: PromptKind,
    stop_count: u8,
    prompt: &'a [u8],
    stops: &'a [u8],
}

impl<'a> Generate<'a> {
    /// The prompt's raw bytes.
    pub const fn prompt_bytes(&self) -> &'a [u8] {
        self.prompt
    }

    /// The prompt as text ([`PromptKind::TEXT`] only).
    pub fn text(&self) -> Option<&'a str> {
        if self.prompt_kind == PromptKind::TEXT { core::str::from_utf8(self.prompt).ok() } else { None }
    }

    /// The chat messages as (role, content) ([`PromptKind::MESSAGES`] only; empty otherwise).
    pub fn messages(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut r = Reader::new(self.prompt);
        let count = if self.prompt_kind == PromptKind::MESSAGES { r.u16().unwrap_or(0) } else { 0 };
        (0..count).map_while(move |_| read_message(&mut r).ok())
    }

    /// Number of chat messages ([`PromptKind::MESSAGES`] only; 0 otherwise).
    pub fn message_count(&self) -> usize {
        self.messages().count()
    }

    /// The token ids ([`PromptKind::TOKENS`] only; empty otherwise).
    pub fn token_ids(&self) -> impl Iterator<Item = u32> + 'a {
        let ids = if self.prompt_kind == PromptKind::TOKENS { self.prompt } else { &[] };
        ids.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The stop strings, in order.
    pub fn stops(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader::new(self.stops);
        (0..self.stop_count).map_while(move |_| r.str_u8(MAX_STOP_LEN, "stop").ok())
    }

    /// Encodes a GENERATE into `buf`, returning the payload length.
    pub fn emit_parts(
        model: u32,
        max_tokens: u32,
        sampling: &Sampling,
        prompt: Prompt<'_>,
        stops: &[&str],
        buf: &mut [u8],
    ) -> Result<usize, EncodeError> {
        if stops.len() > MAX_STOPS || stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(EncodeError::TooLarge);
        }
        let mut w = Writer::new(buf);
        w.u32(model)?;
        w.u32(max_tokens)?;
        w.f32(sampling.temperature)?;
        w.u32(sampling.top_k)?;
        w.f32(sampling.top_p)?;
        w.u64(sampling.seed)?;
        let (kind, len) = match prompt {
            Prompt::Text(t) => (PromptKind::TEXT, t.len()),
            Prompt::Messages(m) => {
                let len = m.iter().map(|(r, c)| 1 + r.len() + 4 + c.len()).sum::<usize>();
                (PromptKind::MESSAGES, 2 + len)
            }
            Prompt::Tokens(ids) => {
                (PromptKind::TOKENS, ids.len().checked_mul(4).ok_or(EncodeError::TooLarge)?)
            }
        };
        w.u8(kind.0)?;
        w.u8(stops.len() as u8)?;
        w.u32(u32::try_from(len).map_err(|_| EncodeError::TooLarge)?)?;
        match prompt {
            Prompt::Text(t) => w.bytes(t.as_bytes())?,
            Prompt::Messages(m) => {
                w.u16(u16::try_from(m.len()).map_err(|_| EncodeError::TooLarge)?)?;
                for (role, content) in m {
                    w.str_u8(role, MAX_ROLE_LEN)?;
                    w.u32(u32::try_from(content.len()).map_err(|_| EncodeError::TooLarge)?)?;
                    w.bytes(content.as_bytes())?;
                }
            }
            Prompt::Tokens(ids) => {
                for id in ids {
                    w.u32(*id)?;
                }
            }
        }
        for s in stops {
            w.str_u8(s, MAX_STOP_LEN)?;
        }
        Ok(w.len())
    }
}

/// One chat message: `role str8` (1–[`MAX_ROLE_LEN`] bytes), `content` (`u32` length, UTF-8).
fn read_message<'a>(r: &mut Reader<'a>) -> Result<(&'a str, &'a str), DecodeError> {
    let role = r.str_u8(MAX_ROLE_LEN, "generate.role")?;
    if role.is_empty() {
        return Err(DecodeError::InvalidField("generate.role"));
    }
    let n = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
    let content = core::str::from_utf8(r.bytes(n)?).map_err(|_| DecodeError::InvalidUtf8)?;
    Ok((role, content))
}

/// Checks a prompt's bytes for its kind (unknown kinds are kept as they are).
fn check_prompt(kind: PromptKind, prompt: &[u8]) -> Result<(), DecodeError> {
    match kind {
        PromptKind::TEXT => core::str::from_utf8(prompt).map(|_| ()).map_err(|_| DecodeError::InvalidUtf8),
        PromptKind::MESSAGES => {
            let mut r = Reader::new(prompt);
            for _ in 0..r.u16()? {
                read_message(&mut r)?;
            }
            r.finish()
        }
        PromptKind::TOKENS if !prompt.len().is_multiple_of(4) => {
            Err(DecodeError::InvalidField("generate.prompt"))
        }
        _ => Ok(()),
    }
}

impl<'a> Message<'a> for Generate<'a> {
    const KIND: Kind = Kind::GENERATE;
    const RESPONSE: bool = false;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let model = r.u32()?;
        let max_tokens = r.u32()?;
        let sampling = Sampling { temperature: r.f32()?, top_k: r.u32()?, top_p: r.f32()?, seed: r.u64()? };
        let prompt_kind = PromptKind(r.u8()?);
        let stop_count = r.u8()?;
        if stop_count as usize > MAX_STOPS {
            return Err(DecodeError::InvalidField("generate.stop_count"));
        }
        let len = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
        let prompt = r.bytes(len)?;
        check_prompt(prompt_kind, prompt)?;
        let stops = r.rest();
        let mut check = Reader::new(stops);
        for _ in 0..stop_count {
            if check.str_u8(MAX_STOP_LEN, "generate.stop")?.is_empty() {
                return Err(DecodeError::InvalidField("generate.stop"));
            }
        }
        check.finish()?;
        Ok(Self { model, max_tokens, sampling, prompt_kind, stop_count, prompt, stops })
    }

    fn buffer_len(&self) -> usize {
        GENERATE_PREFIX_LEN + self.prompt.len() + self.stops.len()
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u32(self.model)?;
        w.u32(self.max_tokens)?;
        w.f32(self.sampling.temperature)?;
        w.u32(self.sampling.top_k)?;
        w.f32(self.sampling.top_p)?;
        w.u64(self.sampling.seed)?;
        w.u8(self.prompt_kind.0)?;
        w.u8(self.stop_count)?;
        w.u32(u32::try_from(self.prompt.len()).map_err(|_| EncodeError::TooLarge)?)?;
        w.bytes(self.prompt)?;
        w.bytes(self.stops)?;
        Ok(w.len())
    }
}

/// TOKEN: streamed by the node before a GENERATE's answer, with its seq. `flags` bit 0
/// ([`TokenMsg::PROMPT`]): the ids are the prompt's, as the node tokenized it (sent first, text
/// empty). Otherwise: generated ids and the text they complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenMsg<'a> {
    /// Bit 0: [`PROMPT`](Self::PROMPT); other bits zero.
    pub flags: u8,
    ids: &'a [u8],
    /// Text completed by these ids: whole UTF-8 characters (possibly none).
    pub text: &'a str,
}

impl<'a> TokenMsg<'a> {
    /// `flags` bit: the ids are the prompt's.
    pub const PROMPT: u8 = 1;

    /// Number of ids.
    pub const fn count(&self) -> usize {
        self.ids.len() / 4
    }

    /// The ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + 'a {
        self.ids.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Whether the ids are the prompt's.
    pub const fn is_prompt(&self) -> bool {
        self.flags & Self::PROMPT != 0
    }

    /// Encoded payload length for `ids` and `text`.
    pub const fn encoded_len(ids: usize, text: usize) -> usize {
        TOKEN_PREFIX_LEN + 4 * ids + 2 + text
    }

    /// Encodes a TOKEN payload into `buf`, returning its length.
    pub fn emit_parts(prompt: bool, ids: &[u32], text: &str, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(if prompt { Self::PROMPT } else { 0 })?;
        w.u8(0)?;
        w.u16(u16::try_from(ids.len()).map_err(|_| EncodeError::TooLarge)?)?;
        for id in ids {
            w.u32(*id)?;
        }
        w.u16(u16::try_from(text.len()).map_err(|_| EncodeError::TooLarge)?)?;
        w.bytes(text.as_bytes())?;
        Ok(w.len())
    }

    /// Writes a whole TOKEN frame (flags RESPONSE, the GENERATE's `seq`) into `out`, returning
    /// its length.
    pub fn emit_frame<C: Crc32>(
        seq: u16,
        prompt: bool,
        ids: &[u32],
        text: &str,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let needed = crate::config::HEADER_LEN + Self::encoded_len(ids.len(), text.len());
        let payload =
            out.get_mut(crate::config::HEADER_LEN..).ok_or(EncodeError::BufferTooSmall { needed })?;
        let len = Self::emit_parts(prompt, ids, text, payload)?;
        emit_frame::<C>(out, Kind::TOKEN, Flags::RESPONSE, seq, len)
    }
}

impl<'a> Message<'a> for TokenMsg<'a> {
    const KIND: Kind = Kind::TOKEN;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        if flags & !Self::PROMPT != 0 || r.u8()? != 0 {
            return Err(DecodeError::InvalidField("token.flags"));
        }
        let count = r.u16()? as usize;
        let ids = r.bytes(count * 4)?;
        let n = r.u16()? as usize;
        let text = core::str::from_utf8(r.bytes(n)?).map_err(|_| DecodeError::InvalidUtf8)?;
        r.finish()?;
        Ok(Self { flags, ids, text })
    }

    fn buffer_len(&self) -> usize {
        Self::encoded_len(self.count(), self.text.len())
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(self.flags)?;
        w.u8(0)?;
        w.u16(u16::try_from(self.count()).map_err(|_| EncodeError::TooLarge)?)?;
        w.bytes(self.ids)?;
        w.u16(u16::try_from(self.text.len()).map_err(|_| EncodeError::TooLarge)?)?;
        w.bytes(self.text.as_bytes())?;
        Ok(w.len())
    }
}

/// The answer to GENERATE, after its TOKEN frames: why it ended, token counts and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    /// Why the generation ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (an EOS that ended it included).
    pub generated_tokens: u32,
    /// Microseconds from the start of the request to the first generated token (prompt
    /// processing).
    pub prompt_us: u64,
    /// Microseconds from the first generated token to the last.
    pub generate_us: u64,
}

impl Generated {
    /// Encoded payload length (fixed).
    pub const LEN: usize = 28;
}

impl<'a> Message<'a> for Generated {
    const KIND: Kind = Kind::GENERATE;
    const RESPONSE: bool = true;

    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let finish_reason = FinishReason(r.u8()?);
        if r.array::<3>()? != [0; 3] {
            return Err(DecodeError::InvalidField("generated.reserved"));
        }
        let msg = Self {
            finish_reason,
            prompt_tokens: r.u32()?,
            generated_tokens: r.u32()?,
            prompt_us: r.u64()?,
            generate_us: r.u64()?,
        };
        r.finish()?;
        Ok(msg)
    }

    fn buffer_len(&self) -> usize {
        Self::LEN
    }

    fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(self.finish_reason.0)?;
        w.bytes(&[0; 3])?;
        w.u32(self.prompt_tokens)?;
        w.u32(self.generated_tokens)?;
        w.u64(self.prompt_us)?;
        w.u64(self.generate_us)?;
        Ok(w.len())
    }
}
