//! A GGUF model ready to serve: the file, its tokenizer and its chat template, owned together so
//! a node can hold one copy in a shared registry (`Arc<LoadedLlm>`) and build a [`Model`] over
//! it for each generation.
//!
//! Loading checks everything a generation relies on before anything is served: the
//! architecture and every tensor's type and shape ([`Model::new`]), the tokenizer, and the chat
//! template when the file has one. A file that fails is refused with a typed [`LoadError`]
//! whose message names what is unsupported.

use std::fmt;
use std::path::Path;

use crate::chat::{ChatError, ChatTemplate, Message};
use crate::config::{LlamaConfig, ModelError};
use crate::forward::{Activations, Model};
use crate::gguf::{GgufFile, OpenError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};

/// Why a GGUF file cannot be served.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read, or is not a valid GGUF file.
    Open(OpenError),
    /// Its architecture, hyperparameters or a tensor is unsupported.
    Model(ModelError),
    /// Its tokenizer metadata is unusable.
    Tokenizer(TokenizerError),
    /// Its chat template does not compile.
    Chat(ChatError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "{e}"),
            Self::Model(e) => write!(f, "{e}"),
            Self::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Self::Chat(e) => write!(f, "chat template: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Why a prompt cannot be turned into token ids.
#[derive(Debug)]
#[non_exhaustive]
pub enum PromptError {
    /// The prompt has no tokens.
    Empty,
    /// A token id is outside the vocabulary.
    BadTokenId(u32),
    /// Chat messages were given but the file has no chat template.
    NoChatTemplate,
    /// The chat template failed on the messages.
    Chat(ChatError),
    /// The tokenizer failed on the text.
    Tokenizer(TokenizerError),
}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the prompt has no tokens"),
            Self::BadTokenId(id) => write!(f, "token id {id} is outside the vocabulary"),
            Self::NoChatTemplate => f.write_str("the model has no chat template"),
            Self::Chat(e) => write!(f, "chat template: {e}"),
            Self::Tokenizer(e) => write!(f, "tokenizer: {e}"),
        }
    }
}

impl std::error::Error for PromptError {}

/// A GGUF language model, checked and ready to generate.
pub struct LoadedLlm {
    file: GgufFile,
    config: LlamaConfig,
    tokenizer: GgufTokenizer,
    chat: Option<ChatTemplate>,
    activations: Activations,
}

impl fmt::Debug for LoadedLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedLlm")
            .field("bytes", &self.file.bytes().len())
            .field("layers", &self.config.n_layers)
            .field("chat", &self.chat.is_some())
            .finish_non_exhaustive()
    }
}

impl LoadedLlm {
    /// Reads, parses and checks the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::from_file(GgufFile::open(path).map_err(LoadError::Open)?)
    }

    /// Checks a parsed file: the model ([`Model::new`]), the tokenizer and the chat template.
    pub fn from_file(file: GgufFile) -> Result<Self, LoadError> {
        let config = Model::new(&file).map_err(LoadError::Model)?.config;
        let tokenizer = GgufTokenizer::from_gguf(&file.gguf).map_err(LoadError::Tokenizer)?;
        let chat = match file.gguf.get("tokenizer.chat_template") {
            Some(_) => Some(ChatTemplate::from_gguf(&file.gguf).map_err(LoadError::Chat)?),
            None => None,
        };
        Ok(Self { file, config, tokenizer, chat, activations: Activations::F32 })
    }

    /// The model with its forward passes run as `activations` says ([`Model::with_activations`];
    /// a new `LoadedLlm` runs [`Activations::F32`]).
    pub fn with_activations(self, activations: Activations) -> Self {
        Self { activations, ..self }
    }

    /// The forward pass over this file's tensors (cheap: the weights are borrowed; only the
    /// norm vectors are dequantized).
    pub fn model(&self) -> Result<Model<'_>, ModelError> {
        Ok(Model::new(&self.file)?.with_activations(self.activations))
    }

    /// The parsed file (its tensors, for a [`crate::device::DeviceLlm`]).
    pub(crate) fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The hyperparameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The chat template, if the file has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// Bytes of the file held in memory (the quantized weights and the metadata).
    pub fn bytes(&self) -> u64 {
        self.file.bytes().len() as u64
    }

    /// Bytes of the KV cache its model makes for `positions` positions
    /// ([`crate::forward::kv_cache_bytes`]: f16 with 8-bit activations, else f32).
    pub fn kv_cache_bytes(&self, positions: usize) -> u64 {
        crate::forward::kv_cache_bytes(&self.config, positions, self.activations)
    }

    /// Token ids of a raw text prompt (BOS as the file asks; control tokens in the text stay
    /// text).
    pub fn text_ids(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        non_empty(self.tokenizer.encode(text, false).map_err(PromptError::Tokenizer)?)
    }

    /// Token ids of chat `messages` rendered with the file's template, with the generation
    /// prompt (the assistant's turn) appended.
    pub fn chat_ids(&self, messages: &[Message]) -> Result<Vec<u32>, PromptError> {
        if messages.is_empty() {
            return Err(PromptError::Empty);
        }
        let chat = self.chat.as_ref().ok_or(PromptError::NoChatTemplate)?;
        let text = chat.render(messages, true).map_err(PromptError::Chat)?;
        non_empty(self.tokenizer.encode(&text, true).map_err(PromptError::Tokenizer)?)
    }

    /// Token ids given as such: each checked against the vocabulary.
    pub fn check_ids(&self, ids: Vec<u32>) -> Result<Vec<u32>, PromptError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(PromptError::BadTokenId(bad));
        }
        non_empty(ids)
    }
}

fn non_empty(ids: Vec<u32>) -> Result<Vec<u32>, PromptError> {
    if ids.is_empty() { Err(PromptError::Empty) } else { Ok(ids) }
}
