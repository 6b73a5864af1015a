//! `config.json` of a Hugging Face BERT model: the fields the forward pass needs, checked.

use serde::Deserialize;

use crate::ModelError;

/// Largest `config.json` accepted.
pub(crate) const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The shape of a BERT encoder, from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Width of the hidden states (384 for all-MiniLM-L6-v2).
    pub hidden_size: usize,
    /// Attention heads (12).
    pub num_attention_heads: usize,
    /// Encoder layers (6).
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer (1536).
    pub intermediate_size: usize,
    /// Rows of the word embedding table (30522).
    pub vocab_size: usize,
    /// Rows of the position embedding table (512).
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table (2).
    pub type_vocab_size: usize,
    /// Layer norm epsilon (1e-12).
    pub layer_norm_eps: f32,
}

#[derive(Deserialize)]
struct Raw {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

const fn two() -> usize {
    2
}
const fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".to_owned()
}

impl BertConfig {
    /// Parses and checks `config.json`: a BERT with exact-GELU activations and absolute position
    /// embeddings, with dimensions in sane ranges (so no later size computation can overflow).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ModelError::FileTooLarge {
                what: "config.json",
                bytes: bytes.len() as u64,
                max: MAX_CONFIG_BYTES as u64,
            });
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ModelError::Config(e.to_string()))?;
        let bad = |msg: String| Err(ModelError::Config(msg));
        if let Some(t) = &raw.model_type
            && t != "bert"
        {
            return bad(format!("model_type {t:?} is not supported (only \"bert\")"));
        }
        if raw.hidden_act != "gelu" {
            return bad(format!("hidden_act {:?} is not supported (only exact \"gelu\")", raw.hidden_act));
        }
        if let Some(p) = &raw.position_embedding_type
            && p != "absolute"
        {
            return bad(format!("position_embedding_type {p:?} is not supported (only \"absolute\")"));
        }
        let ranges: [(&str, usize, usize); 7] = [
            ("hidden_size", raw.hidden_size, 8192),
            ("num_attention_heads", raw.num_attention_heads, 256),
            ("num_hidden_layers", raw.num_hidden_layers, 128),
            ("intermediate_size", raw.intermediate_size, 65536),
            ("vocab_size", raw.vocab_size, 1 << 20),
            ("max_position_embeddings", raw.max_position_embeddings, 1 << 16),
            ("type_vocab_size", raw.type_vocab_size, 1024),
        ];
        for (name, value, max) in ranges {
            if value == 0 || value > max {
                return bad(format!("{name} = {value} is outside 1..={max}"));
            }
        }
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            ));
        }
        let eps = raw.layer_norm_eps as f32;
        if !(eps.is_finite() && eps > 0.0) {
            return bad(format!("layer_norm_eps {} is not a positive f32", raw.layer_norm_eps));
        }
        Ok(Self {
            hidden_size: raw.hidden_size,
            num_attention_heads: raw.num_attention_heads,
            num_hidden_layers: raw.num_hidden_layers,
            intermediate_size: raw.intermediate_size,
            vocab_size: raw.vocab_size,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: eps,
        })
    }

    /// Width of one attention head.
    pub const fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"hidden_size":384,"num_attention_heads":12,"num_hidden_layers":6,
        "intermediate_size":1536,"vocab_size":30522,"max_position_embeddings":512,
        "type_vocab_size":2,"layer_norm_eps":1e-12,"hidden_act":"gelu","model_type":"bert"}"#;

    #[test]
    fn parses_minilm() {
        let c = BertConfig::from_json(MINILM.as_bytes()).unwrap();
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.num_hidden_layers, 6);
    }

    #[test]
    fn rejects_bad_configs() {
        for (from, to) in [
            ("\"gelu\"", "\"relu\""),
            ("\"bert\"", "\"gpt2\""),
            ("\"num_attention_heads\":12", "\"num_attention_heads\":7"),
            ("\"hidden_size\":384", "\"hidden_size\":0"),
            ("\"vocab_size\":30522", "\"vocab_size\":99999999999"),
            ("1e-12", "-1.0"),
            ("\"intermediate_size\":1536,", ""),
        ] {
            let json = MINILM.replace(from, to);
            assert!(matches!(BertConfig::from_json(json.as_bytes()), Err(ModelError::Config(_))), "{to}");
        }
        assert!(BertConfig::from_json(b"not json").is_err());
    }
}
