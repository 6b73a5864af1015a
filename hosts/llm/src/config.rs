//! The llama architecture's hyperparameters and tensors, read from GGUF metadata and checked.
//!
//! Supported: `general.architecture = "llama"` (Llama 1/2/3, TinyLlama, SmolLM, Mistral 7B and
//! others that llama.cpp's converter writes as `llama`). Every other architecture (`qwen2`,
//! `gemma`, `phi3`, `mistral3`...) is refused with [`ModelError::UnsupportedArchitecture`] naming
//! it; tensors of types without host dequantization ([`GgmlType::is_supported`]: F32, F16, BF16,
//! Q8_0, Q4_0, Q4_1, Q4_K and Q6_K are) are refused with [`ModelError::UnsupportedTensorType`].

use std::fmt;

use crate::gguf::{GgmlType, Gguf, Value};

/// Architectures this crate runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Why a GGUF file's model was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// `general.architecture` names an architecture not in [`SUPPORTED_ARCHITECTURES`].
    UnsupportedArchitecture(String),
    /// A required metadata key is absent.
    MissingKey(String),
    /// A metadata key holds a value of the wrong type or out of range.
    BadValue {
        /// The key.
        key: String,
        /// What was expected of it.
        expected: &'static str,
    },
    /// A required tensor is absent.
    MissingTensor(String),
    /// A tensor's shape is not what the hyperparameters imply.
    BadTensorShape {
        /// The tensor.
        name: String,
        /// Its dimensions (innermost first).
        dims: Vec<u64>,
        /// The dimensions expected.
        expected: Vec<u64>,
    },
    /// A tensor of a type without host dequantization.
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedArchitecture(a) => write!(
                f,
                "architecture {a:?} is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
            Self::MissingKey(k) => write!(f, "metadata key {k:?} is missing"),
            Self::BadValue { key, expected } => write!(f, "metadata {key:?} is not {expected}"),
            Self::MissingTensor(n) => write!(f, "tensor {n:?} is missing"),
            Self::BadTensorShape { name, dims, expected } => {
                write!(f, "tensor {name:?} has shape {dims:?}, expected {expected:?}")
            }
            Self::UnsupportedTensorType { name, ty } => write!(
                f,
                "tensor {name:?} has type {ty:?}, which is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are)"
            ),
        }
    }
}

impl std::error::Error for ModelError {}

/// Hyperparameters of a llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Hidden size (`llama.embedding_length`).
    pub dim: usize,
    /// MLP inner size (`llama.feed_forward_length`).
    pub ffn_dim: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`llama.attention.head_count_kv`, default: `n_heads`).
    pub n_kv_heads: usize,
    /// Per-head size: `dim / n_heads` (or `llama.attention.key_length` when given).
    pub head_dim: usize,
    /// Dimensions RoPE rotates per head (`llama.rope.dimension_count`, default: `head_dim`).
    pub rope_dim: usize,
    /// RoPE base frequency (`llama.rope.freq_base`, default 10000).
    pub rope_freq_base: f32,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_norm_eps: f32,
    /// Trained context length (`llama.context_length`).
    pub context_length: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab_size: usize,
    /// Whether the output projection is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
}

fn key_u(g: &Gguf, key: &str) -> Result<Option<usize>, ModelError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x > 0)
            .map(Some)
            .ok_or(ModelError::BadValue { key: key.to_owned(), expected: "a positive integer" }),
    }
}

fn req_u(g: &Gguf, key: &str) -> Result<usize, ModelError> {
    key_u(g, key)?.ok_or_else(|| ModelError::MissingKey(key.to_owned()))
}

fn key_f(g: &Gguf, key: &str) -> Result<Option<f32>, ModelError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite() && *x > 0.0)
            .map(Some)
            .ok_or(ModelError::BadValue { key: key.to_owned(), expected: "a positive float" }),
    }
}

/// The model's architecture (`general.architecture`).
pub fn architecture(g: &Gguf) -> Result<&str, ModelError> {
    match g.get("general.architecture") {
        None => Err(ModelError::MissingKey("general.architecture".into())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ModelError::BadValue { key: "general.architecture".into(), expected: "a string" }),
    }
}

impl LlamaConfig {
    /// Reads the hyperparameters and checks every tensor a forward pass needs: present, of a
    /// supported type, of the shape the hyperparameters imply.
    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let arch = architecture(g)?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(ModelError::UnsupportedArchitecture(arch.to_owned()));
        }
        let n_layers = req_u(g, "llama.block_count")?;
        // Each layer reads nine tensors: a count the file cannot hold is refused before anything
        // is built per layer.
        if n_layers > g.tensors.len() / 9 {
            return Err(ModelError::BadValue {
                key: "llama.block_count".into(),
                expected: "no more layers than the file has tensors for",
            });
        }
        let dim = req_u(g, "llama.embedding_length")?;
        let ffn_dim = req_u(g, "llama.feed_forward_length")?;
        let n_heads = req_u(g, "llama.attention.head_count")?;
        let n_kv_heads = key_u(g, "llama.attention.head_count_kv")?.unwrap_or(n_heads);
        let context_length = req_u(g, "llama.context_length")?;
        let rms_norm_eps = key_f(g, "llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| ModelError::MissingKey("llama.attention.layer_norm_rms_epsilon".into()))?;
        let rope_freq_base = key_f(g, "llama.rope.freq_base")?.unwrap_or(10_000.0);
        let head_dim = match key_u(g, "llama.attention.key_length")? {
            Some(h) => h,
            None if dim % n_heads == 0 => dim / n_heads,
            None => {
                return Err(ModelError::BadValue {
                    key: "llama.attention.head_count".into(),
                    expected: "a divisor of llama.embedding_length",
                });
            }
        };
        if n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadValue {
                key: "llama.attention.head_count_kv".into(),
                expected: "a divisor of llama.attention.head_count",
            });
        }
        // Products of untrusted counts are formed once here, checked; every shape below uses
        // them.
        if n_heads.checked_mul(head_dim).and_then(|q| q.checked_mul(n_layers)).is_none() {
            return Err(ModelError::BadValue {
                key: "llama.attention.head_count".into(),
                expected: "heads × head size × layers within the address space",
            });
        }
        let rope_dim = key_u(g, "llama.rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::BadValue {
                key: "llama.rope.dimension_count".into(),
                expected: "an even number no larger than the head size",
            });
        }

        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = match embd.dims[..] {
            [d, v] if d == dim as u64 => usize::try_from(v).ok(),
            _ => None,
        }
        .ok_or_else(|| ModelError::BadTensorShape {
            name: embd.name.clone(),
            dims: embd.dims.clone(),
            expected: vec![dim as u64, embd.dims.get(1).copied().unwrap_or(0)],
        })?;
        let tied_embeddings = g.tensor("output.weight").is_none();
        let cfg = Self {
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            rope_freq_base,
            rms_norm_eps,
            context_length,
            vocab_size,
            tied_embeddings,
        };
        for (name, shape) in cfg.tensor_shapes() {
            let t = g.tensor(&name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            if t.dims != shape {
                return Err(ModelError::BadTensorShape { name, dims: t.dims.clone(), expected: shape });
            }
            if !t.ty.is_supported() {
                return Err(ModelError::UnsupportedTensorType { name, ty: t.ty });
            }
        }
        Ok(cfg)
    }

    /// Every tensor a forward pass reads, with its shape innermost first (a weight applied as
    /// `y = W·x` with `x` of size `n` and `y` of size `m` is `[n, m]`).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<u64>)> {
        let d = self.dim as u64;
        let q = (self.n_heads * self.head_dim) as u64;
        let kv = (self.n_kv_heads * self.head_dim) as u64;
        let ff = self.ffn_dim as u64;
        let mut out = vec![
            ("token_embd.weight".to_owned(), vec![d, self.vocab_size as u64]),
            ("output_norm.weight".to_owned(), vec![d]),
        ];
        if !self.tied_embeddings {
            out.push(("output.weight".to_owned(), vec![d, self.vocab_size as u64]));
        }
        for i in 0..self.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            out.extend([
                (p("attn_norm"), vec![d]),
                (p("attn_q"), vec![d, q]),
                (p("attn_k"), vec![d, kv]),
                (p("attn_v"), vec![d, kv]),
                (p("attn_output"), vec![q, d]),
                (p("ffn_norm"), vec![d]),
                (p("ffn_gate"), vec![d, ff]),
                (p("ffn_up"), vec![d, ff]),
                (p("ffn_down"), vec![ff, d]),
            ]);
        }
        out
    }
}
