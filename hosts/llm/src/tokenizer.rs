//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), built as a [`tokenizers`] tokenizer.
//!
//! Supported:
//! - `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizers
//!   ([`PRE_TOKENIZERS`]) `smollm` (each digit alone, then GPT-2's split), `gpt2` (GPT-2's split)
//!   and `llama-bpe` (Llama 3's split: digit runs of at most three, case-insensitive
//!   contractions; whole-word vocabulary hits before merges);
//! - `tokenizer.ggml.model = "llama"`, SentencePiece pieces with scores and byte fallback
//!   (Llama 2, TinyLlama, Phi-3; see its `spm` module), with `tokenizer.ggml.add_space_prefix`.
//!
//! Other models (`bert`, `t5`, `rwkv`...) and other pre-tokenizers are refused with
//! [`TokenizerError`] naming them, since a wrong split gives wrong ids silently.
//!
//! Control tokens (`token_type` 3) are special: [`GgufTokenizer::encode`] matches them in the text
//! only with `parse_special` (as llama.cpp's `parse_special`), user-defined tokens (type 4) always.
//! BOS is prepended when `tokenizer.ggml.add_bos_token` says so (default: true for `llama-bpe`
//! and SentencePiece, false otherwise, as llama.cpp), EOS appended with
//! `tokenizer.ggml.add_eos_token`.

mod spm;

use std::fmt;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::{Array, Gguf, Value};

/// `tokenizer.ggml.pre` values this crate builds.
pub const PRE_TOKENIZERS: &[&str] = &["smollm", "gpt2", "llama-bpe"];

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Why a tokenizer could not be built from a GGUF file, or could not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    /// A required key is absent.
    MissingKey(&'static str),
    /// A key holds the wrong type, or arrays of different lengths, or an id outside the vocabulary.
    BadValue(&'static str),
    /// `tokenizer.ggml.model` is neither byte-level BPE (`gpt2`) nor SentencePiece (`llama`).
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer not in [`PRE_TOKENIZERS`].
    UnsupportedPreTokenizer(String),
    /// A merge that is not two space-separated tokens.
    BadMerge(String),
    /// The `tokenizers` crate refused the vocabulary or failed to encode or decode.
    Tokenizers(String),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingKey(k) => write!(f, "metadata key {k:?} is missing"),
            Self::BadValue(k) => write!(f, "metadata {k:?} has an unusable value"),
            Self::UnsupportedModel(m) => {
                write!(
                    f,
                    "tokenizer model {m:?} is not supported (byte-level BPE, \"gpt2\", and SentencePiece, \"llama\", are)"
                )
            }
            Self::UnsupportedPreTokenizer(p) => {
                write!(f, "pre-tokenizer {p:?} is not supported (supported: {})", PRE_TOKENIZERS.join(", "))
            }
            Self::BadMerge(m) => write!(f, "merge {m:?} is not two space-separated tokens"),
            Self::Tokenizers(e) => write!(f, "tokenizer: {e}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

fn tk_err(e: impl fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// How a vocabulary's pieces map to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pieces {
    /// GPT-2's byte-level alphabet (`Ġ` for a space): `tokenizer.ggml.model = "gpt2"`.
    ByteLevel,
    /// SentencePiece: UTF-8 text with `▁` for a space, and `<0xXX>` byte pieces:
    /// `tokenizer.ggml.model = "llama"`.
    SentencePiece,
}

/// A GGUF file's tokenizer.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// How pieces map to bytes.
    pieces: Pieces,
    /// Per token, whether it is a byte piece (`token_type` 6).
    byte_pieces: Vec<bool>,
    /// Matches control tokens in the text.
    special: Tokenizer,
    /// Treats control tokens' text as ordinary text.
    plain: Tokenizer,
    /// `tokenizer.ggml.pre`.
    pre: String,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    vocab_size: usize,
}

impl fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("pieces", &self.pieces)
            .field("pre", &self.pre)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

fn strings<'a>(g: &'a Gguf, key: &'static str) -> Result<&'a [String], TokenizerError> {
    match g.get(key) {
        None => Err(TokenizerError::MissingKey(key)),
        Some(Value::Array(Array::String(v))) => Ok(v),
        Some(_) => Err(TokenizerError::BadValue(key)),
    }
}

fn token_id(g: &Gguf, key: &'static str, n: usize) -> Result<Option<u32>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if id < n as u64 => Ok(Some(id as u32)),
            _ => Err(TokenizerError::BadValue(key)),
        },
    }
}

fn flag(g: &Gguf, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::BadValue(key)),
    }
}

/// The byte-level BPE model of `tokenizer.ggml.model = "gpt2"` with the pre-tokenizer `pre`.
fn byte_level(g: &Gguf, pre: &str, tokens: &[String]) -> Result<Tokenizer, TokenizerError> {
    let (pre_tokenizer, ignore_merges): (PreTokenizerWrapper, bool) = match pre {
        "smollm" => (
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, false, true).into()]).into(),
            false,
        ),
        "gpt2" => (ByteLevel::new(false, false, true).into(), false),
        "llama-bpe" => (
            Sequence::new(vec![
                Split::new(SplitPattern::Regex(LLAMA3_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(tk_err)?
                    .into(),
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
            true,
        ),
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
    };
    let merges = strings(g, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            // Byte-level tokens never hold a plain space; the first space after the first
            // character separates the pair.
            let cut = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
            match cut {
                Some(i) if i + 1 < m.len() => Ok((m[..i].to_owned(), m[i + 1..].to_owned())),
                _ => Err(TokenizerError::BadMerge(m.clone())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tk_err)?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevel::default()));
    Ok(tok)
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self, TokenizerError> {
        let model = match g.get("tokenizer.ggml.model") {
            None => return Err(TokenizerError::MissingKey("tokenizer.ggml.model")),
            Some(v) => v.as_str().ok_or(TokenizerError::BadValue("tokenizer.ggml.model"))?,
        };
        let pieces = match model {
            "gpt2" => Pieces::ByteLevel,
            "llama" => Pieces::SentencePiece,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let pre = match g.get("tokenizer.ggml.pre") {
            // llama.cpp reads a missing pre-tokenizer as "default", a split of its own.
            None => "default",
            Some(v) => v.as_str().ok_or(TokenizerError::BadValue("tokenizer.ggml.pre"))?,
        };
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(TokenizerError::BadValue("tokenizer.ggml.tokens"));
        }
        let types = match g.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(Value::Array(a)) => a
                .to_i64s()
                .filter(|t| t.len() == n)
                .ok_or(TokenizerError::BadValue("tokenizer.ggml.token_type"))?,
            Some(_) => return Err(TokenizerError::BadValue("tokenizer.ggml.token_type")),
        };
        let (mut tok, default_bos) = match pieces {
            Pieces::ByteLevel => (byte_level(g, pre, tokens)?, pre == "llama-bpe"),
            Pieces::SentencePiece => {
                let scores = match g.get("tokenizer.ggml.scores") {
                    None => return Err(TokenizerError::MissingKey("tokenizer.ggml.scores")),
                    Some(Value::Array(a)) => a
                        .to_f32s()
                        .filter(|s| s.len() == n)
                        .ok_or(TokenizerError::BadValue("tokenizer.ggml.scores"))?,
                    Some(_) => return Err(TokenizerError::BadValue("tokenizer.ggml.scores")),
                };
                let unk =
                    tokens.iter().zip(&types).find(|&(_, &t)| t == TYPE_UNKNOWN).map(|(s, _)| s.as_str());
                let space_prefix = flag(g, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                (spm::tokenizer(tokens, &scores, unk, space_prefix)?, true)
            }
        };
        let added = |want: &[i64], special: bool| {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| want.contains(t))
                .map(|(s, _)| AddedToken::from(s.clone(), special).normalized(false))
                .collect::<Vec<_>>()
        };
        tok.add_special_tokens(added(&[TYPE_CONTROL, TYPE_UNKNOWN], true)).map_err(tk_err)?;
        tok.add_tokens(added(&[TYPE_USER_DEFINED], false)).map_err(tk_err)?;
        let special = tok.clone();
        let mut plain = tok;
        plain.set_encode_special_tokens(true);

        let bos = token_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = token_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let add_bos = flag(g, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos) && bos.is_some();
        let add_eos = flag(g, "tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();
        let byte_pieces = types.iter().map(|&t| t == TYPE_BYTE).collect();
        Ok(Self {
            pieces,
            byte_pieces,
            special,
            plain,
            pre: pre.to_owned(),
            bos,
            eos,
            add_bos,
            add_eos,
            vocab_size: n,
        })
    }

    /// Token ids of `text`: BOS first and EOS last when the file asks for them; control tokens
    /// written in the text (`<|im_start|>`) become their ids only with `parse_special`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tok = if parse_special { &self.special } else { &self.plain };
        let enc = tok.encode_fast(text, false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if let (true, Some(b)) = (self.add_bos, self.bos) {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        if let (true, Some(e)) = (self.add_eos, self.eos) {
            ids.push(e);
        }
        Ok(ids)
    }

    /// The text of `ids`; control tokens are left out with `skip_special`. Bytes that do not form
    /// UTF-8 (a character cut between tokens) become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(TokenizerError::Tokenizers(format!("token id {bad} is outside the vocabulary")));
        }
        self.special.decode(ids, skip_special).map_err(tk_err)
    }

    /// The token's string as the vocabulary stores it (byte-level: `Ġ` for a space).
    pub fn token(&self, id: u32) -> Option<String> {
        self.special.id_to_token(id)
    }

    /// The id of a vocabulary string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.special.token_to_id(token)
    }

    /// How the vocabulary's pieces map to bytes.
    pub fn pieces(&self) -> Pieces {
        self.pieces
    }

    /// The byte a SentencePiece byte piece (`<0x0A>`, `token_type` 6) stands for.
    pub fn byte_piece(&self, id: u32) -> Option<u8> {
        if !*self.byte_pieces.get(id as usize)? {
            return None;
        }
        spm::byte_piece(&self.special.id_to_token(id)?)
    }

    /// The pre-tokenizer's name (`tokenizer.ggml.pre`).
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token (generation stops there).
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Self::encode`] prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`Self::encode`] appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
}
