//! Text generation on the host: sampling, UTF-8 streaming of token bytes, and the decoding loop
//! over [`Model`].

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::forward::{ForwardError, Model, softmax};
use crate::tokenizer::{GgufTokenizer, Pieces, TokenizerError};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` (or less) means greedy (the highest logit, the lowest id on ties).
    pub temperature: f32,
    /// Keep only the `top_k` highest logits (`0`: all).
    pub top_k: usize,
    /// Keep the smallest set of highest-probability tokens whose probabilities sum to at least
    /// `top_p` (`1`: all).
    pub top_p: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding.
    pub const GREEDY: Self = Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::GREEDY
    }
}

/// The index of the highest value (the lowest index on ties); `0` for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// The highest value minus the second highest (`+∞` with fewer than two values).
pub fn top2_margin(x: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in x {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// Picks tokens from logits by [`SamplingParams`] with a seeded generator: the same seed and the
/// same logits give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Self { params, rng: StdRng::seed_from_u64(params.seed) }
    }

    /// The candidates `(id, probability)` the parameters allow, highest first, probabilities
    /// summing to 1: top-k on the logits, softmax at the temperature, then top-p. Greedy
    /// parameters leave the single argmax.
    pub fn candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = &self.params;
        if p.temperature <= 0.0 || logits.len() <= 1 {
            return vec![(argmax(logits) as u32, 1.0)];
        }
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        // Highest logit first, lowest id first on ties (a total order: NaN sorts last).
        ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if p.top_k > 0 {
            ids.truncate(p.top_k);
        }
        let mut probs: Vec<f32> = ids.iter().map(|&i| logits[i as usize] / p.temperature).collect();
        softmax(&mut probs);
        if p.top_p < 1.0 {
            let mut sum = 0f32;
            let mut keep = probs.len();
            for (i, &q) in probs.iter().enumerate() {
                sum += q;
                if sum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            ids.truncate(keep);
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            for q in &mut probs {
                *q /= total;
            }
        }
        ids.into_iter().zip(probs).collect()
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = self.candidates(logits);
        if c.len() == 1 {
            return c[0].0;
        }
        let r: f32 = self.rng.random();
        let mut sum = 0f32;
        for &(id, q) in &c {
            sum += q;
            if r < sum {
                return id;
            }
        }
        // Rounding left the sum just under r: the last candidate.
        c[c.len() - 1].0
    }
}

/// Turns token bytes into text without splitting a character: bytes are held until they complete
/// one; invalid bytes become U+FFFD.
#[derive(Debug, Clone, Default)]
pub struct Utf8Stream {
    buf: Vec<u8>,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns the text of every complete character now available.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.buf) {
                Ok(s) => {
                    out.push_str(s);
                    self.buf.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // The prefix up to `valid_up_to` is UTF-8 by definition.
                    out.push_str(std::str::from_utf8(&self.buf[..good]).expect("valid prefix"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.buf.drain(..good);
                            return out;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.buf.drain(..good + n);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: held bytes of an unfinished character become U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.buf.is_empty() {
            return String::new();
        }
        self.buf.clear();
        char::REPLACEMENT_CHARACTER.to_string()
    }
}

/// GPT-2's byte-level alphabet reversed: the byte each vocabulary character stands for.
fn byte_of_char(c: char) -> Option<u8> {
    let u = c as u32;
    let direct = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if u < 256 && direct(u) {
        return Some(u as u8);
    }
    // The other bytes map, in order, to U+0100 and up.
    let n = u.checked_sub(256)?;
    (0u32..256).filter(|&b| !direct(b)).nth(n as usize).map(|b| b as u8)
}

/// The bytes a token stands for. Byte-level vocabularies: characters mapped back to bytes, a
/// special token (`<|im_end|>`) or a character outside the alphabet as its UTF-8.
/// SentencePiece: a byte piece (`<0x0A>`) as its byte, other pieces as UTF-8 with `▁` as a
/// space.
pub fn token_bytes(tok: &GgufTokenizer, id: u32) -> Vec<u8> {
    if tok.pieces() == Pieces::SentencePiece {
        if let Some(b) = tok.byte_piece(id) {
            return vec![b];
        }
        return tok.token(id).map(|s| s.replace('\u{2581}', " ").into_bytes()).unwrap_or_default();
    }
    let Some(s) = tok.token(id) else { return Vec::new() };
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match byte_of_char(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// `max_tokens` were produced, or the context is full.
    Length,
}

impl FinishReason {
    /// `"eos"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
        }
    }
}

/// What [`generate_ids`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt's tokens.
    pub input_ids: Vec<u32>,
    /// The generated tokens (the EOS token included when it ended the generation).
    pub generated_ids: Vec<u32>,
    /// The generated text (EOS left out), decoded incrementally.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Per step, the highest logit minus the second highest.
    pub margins: Vec<f32>,
    /// The logits after the prompt (the first step's).
    pub first_logits: Vec<f32>,
}

/// Why a generation failed.
#[derive(Debug)]
pub enum GenerateError {
    /// The prompt did not tokenize.
    Tokenizer(TokenizerError),
    /// A forward step was refused.
    Forward(ForwardError),
    /// The prompt has no tokens.
    EmptyPrompt,
}

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Self::Forward(e) => write!(f, "forward: {e}"),
            Self::EmptyPrompt => write!(f, "the prompt has no tokens"),
        }
    }
}

impl std::error::Error for GenerateError {}

impl From<ForwardError> for GenerateError {
    fn from(e: ForwardError) -> Self {
        Self::Forward(e)
    }
}

impl From<TokenizerError> for GenerateError {
    fn from(e: TokenizerError) -> Self {
        Self::Tokenizer(e)
    }
}

/// Generates up to `max_tokens` tokens after `input_ids`, stopping at the tokenizer's EOS.
/// `on_text` receives each complete piece of text as it is produced, with the token id that
/// produced it. The KV cache holds the prompt plus `max_tokens`, capped at the context length.
pub fn generate_ids(
    model: &Model<'_>,
    tok: &GgufTokenizer,
    input_ids: &[u32],
    max_tokens: usize,
    params: SamplingParams,
    mut on_text: impl FnMut(u32, &str),
) -> Result<Generation, GenerateError> {
    if input_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut cache = model.new_cache(input_ids.len() + max_tokens);
    let mut logits = model.prefill(input_ids, &mut cache)?;
    let first_logits = logits.clone();
    let mut sampler = Sampler::new(params);
    let mut stream = Utf8Stream::new();
    let mut out = Generation {
        input_ids: input_ids.to_vec(),
        generated_ids: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        margins: Vec::new(),
        first_logits,
    };
    for step in 0..max_tokens {
        out.margins.push(top2_margin(&logits));
        let next = sampler.sample(&logits);
        out.generated_ids.push(next);
        if Some(next) == tok.eos() {
            out.finish_reason = FinishReason::Eos;
            break;
        }
        let piece = stream.push(&token_bytes(tok, next));
        if !piece.is_empty() {
            on_text(next, &piece);
            out.text.push_str(&piece);
        }
        if step + 1 == max_tokens || cache.len() == cache.capacity() {
            break;
        }
        model.forward(next, &mut cache, &mut logits)?;
    }
    let rest = stream.finish();
    if !rest.is_empty() {
        out.text.push_str(&rest);
    }
    Ok(out)
}

/// Tokenizes `prompt` (BOS/EOS as the file asks; control tokens written in the text parsed only
/// with `parse_special`, which a chat-rendered prompt needs) and runs [`generate_ids`].
pub fn generate(
    model: &Model<'_>,
    tok: &GgufTokenizer,
    prompt: &str,
    parse_special: bool,
    max_tokens: usize,
    params: SamplingParams,
    on_text: impl FnMut(u32, &str),
) -> Result<Generation, GenerateError> {
    let ids = tok.encode(prompt, parse_special)?;
    generate_ids(model, tok, &ids, max_tokens, params, on_text)
}
