//! Tokenization on the node with the model's own `tokenizer.json`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::ModelError;

/// Largest `tokenizer.json` accepted.
pub(crate) const MAX_TOKENIZER_BYTES: usize = 64 << 20;

/// One tokenized text: token ids and token-type ids, `[CLS]`/`[SEP]` included, truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) ids: Vec<u32>,
    pub(crate) type_ids: Vec<u32>,
}

/// A Hugging Face tokenizer set up to truncate (right, longest-first) to `max_tokens` tokens
/// including special tokens, with no padding (the embedder pads batches itself).
#[derive(Clone)]
pub(crate) struct TextTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; overrides its truncation (to `max_tokens`) and padding (none).
    pub(crate) fn from_json(bytes: &[u8], max_tokens: usize) -> Result<Self, ModelError> {
        if bytes.len() > MAX_TOKENIZER_BYTES {
            return Err(ModelError::FileTooLarge {
                what: "tokenizer.json",
                bytes: bytes.len() as u64,
                max: MAX_TOKENIZER_BYTES as u64,
            });
        }
        let mut inner = catch_unwind(|| Tokenizer::from_bytes(bytes))
            .map_err(|p| ModelError::Tokenizer(panic_message(&*p)))?
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(Self { inner, max_tokens })
    }

    /// Tokenizes one text with special tokens, truncated to `max_tokens`.
    pub(crate) fn encode(&self, text: &str) -> Result<Tokens, ModelError> {
        let enc = catch_unwind(AssertUnwindSafe(|| self.inner.encode(text, true)))
            .map_err(|p| ModelError::Tokenizer(panic_message(&*p)))?
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        let type_ids = enc.get_type_ids().to_vec();
        if ids.is_empty() || ids.len() > self.max_tokens || type_ids.len() != ids.len() {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer produced {} ids and {} type ids (expected 1..={})",
                ids.len(),
                type_ids.len(),
                self.max_tokens
            )));
        }
        Ok(Tokens { ids, type_ids })
    }
}
