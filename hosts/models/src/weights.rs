//! Checking a safetensors file against a [`BertConfig`] before anything touches the device.

use safetensors::{Dtype, SafeTensors};

use crate::{BertConfig, ModelError};

/// Largest safetensors file accepted (4 GiB).
pub(crate) const MAX_SAFETENSORS_BYTES: u64 = 4 << 30;

/// Tensors of one encoder layer, in upload order.
pub(crate) const LAYER_TENSORS: usize = 16;
/// Tensors before the first layer, in upload order.
pub(crate) const EMBEDDING_TENSORS: usize = 5;

/// One tensor the forward pass needs: its name in the file and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorSpec {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
}

impl TensorSpec {
    pub(crate) fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor the forward pass needs, in the order [`crate::embedder`] expects them:
/// word, position, token-type embeddings, embedding LayerNorm gamma/beta, then per layer
/// Q w/b, K w/b, V w/b, attention-output w/b, LayerNorm 1 gamma/beta, FFN-in w/b, FFN-out w/b,
/// LayerNorm 2 gamma/beta. `prefix` is `""` or `"bert."`.
pub(crate) fn specs(c: &BertConfig, prefix: &str) -> Vec<TensorSpec> {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let mut out = Vec::with_capacity(EMBEDDING_TENSORS + LAYER_TENSORS * c.num_hidden_layers);
    let mut push = |name: String, shape: &[usize]| out.push(TensorSpec { name, shape: shape.to_vec() });
    push(format!("{prefix}embeddings.word_embeddings.weight"), &[c.vocab_size, h]);
    push(format!("{prefix}embeddings.position_embeddings.weight"), &[c.max_position_embeddings, h]);
    push(format!("{prefix}embeddings.token_type_embeddings.weight"), &[c.type_vocab_size, h]);
    push(format!("{prefix}embeddings.LayerNorm.weight"), &[h]);
    push(format!("{prefix}embeddings.LayerNorm.bias"), &[h]);
    for l in 0..c.num_hidden_layers {
        let p = format!("{prefix}encoder.layer.{l}.");
        for (name, shape) in [
            ("attention.self.query.weight", &[h, h][..]),
            ("attention.self.query.bias", &[h]),
            ("attention.self.key.weight", &[h, h]),
            ("attention.self.key.bias", &[h]),
            ("attention.self.value.weight", &[h, h]),
            ("attention.self.value.bias", &[h]),
            ("attention.output.dense.weight", &[h, h]),
            ("attention.output.dense.bias", &[h]),
            ("attention.output.LayerNorm.weight", &[h]),
            ("attention.output.LayerNorm.bias", &[h]),
            ("intermediate.dense.weight", &[f, h]),
            ("intermediate.dense.bias", &[f]),
            ("output.dense.weight", &[h, f]),
            ("output.dense.bias", &[h]),
            ("output.LayerNorm.weight", &[h]),
            ("output.LayerNorm.bias", &[h]),
        ] {
            push(format!("{p}{name}"), shape);
        }
    }
    out
}

/// Storage type of a tensor in the file; all are uploaded as f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    F32,
    F16,
    Bf16,
}

impl Stored {
    pub(crate) const fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// A checked tensor: spec, storage type and its raw little-endian bytes in the file.
pub(crate) struct Checked<'a> {
    pub(crate) spec: TensorSpec,
    pub(crate) stored: Stored,
    pub(crate) data: &'a [u8],
}

impl Checked<'_> {
    /// Bytes this tensor takes on the device (as f32).
    pub(crate) fn device_bytes(&self) -> u64 {
        self.spec.elements() as u64 * 4
    }
}

/// Parses `bytes` and checks every needed tensor: present, exact shape, F32/F16/BF16, data
/// length matching the shape. Extra tensors are ignored. Touches no device.
pub(crate) fn check<'a>(bytes: &'a [u8], config: &BertConfig) -> Result<Vec<Checked<'a>>, ModelError> {
    if bytes.len() as u64 > MAX_SAFETENSORS_BYTES {
        return Err(ModelError::FileTooLarge {
            what: "model.safetensors",
            bytes: bytes.len() as u64,
            max: MAX_SAFETENSORS_BYTES,
        });
    }
    // The crate checks the header, that offsets are contiguous, lie in the file, and match
    // shape × dtype size.
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors(e.to_string()))?;
    let names = tensors.names();
    let has = |n: &str| names.contains(&n);
    let prefix = if !has("embeddings.word_embeddings.weight") && has("bert.embeddings.word_embeddings.weight")
    {
        "bert."
    } else {
        ""
    };
    let mut out = Vec::new();
    for spec in specs(config, prefix) {
        let view = tensors.tensor(&spec.name).map_err(|_| ModelError::MissingTensor(spec.name.clone()))?;
        let stored = match view.dtype() {
            Dtype::F32 => Stored::F32,
            Dtype::F16 => Stored::F16,
            Dtype::BF16 => Stored::Bf16,
            other => return Err(ModelError::Dtype { tensor: spec.name, found: format!("{other:?}") }),
        };
        if view.shape() != spec.shape.as_slice() {
            return Err(ModelError::Shape {
                tensor: spec.name,
                expected: spec.shape,
                found: view.shape().to_vec(),
            });
        }
        // Our own check on top of the crate's: the bytes are exactly what the shape needs.
        let want = spec.elements().checked_mul(stored.size());
        if want != Some(view.data().len()) {
            return Err(ModelError::Safetensors(format!(
                "tensor {:?} holds {} bytes, its shape needs {:?}",
                spec.name,
                view.data().len(),
                want
            )));
        }
        out.push(Checked { spec, stored, data: view.data() });
    }
    Ok(out)
}

/// Appends `src` (elements stored as `stored`, little-endian) to `out` as little-endian f32.
pub(crate) fn to_f32_le(stored: Stored, src: &[u8], out: &mut Vec<u8>) {
    match stored {
        Stored::F32 => out.extend_from_slice(src),
        Stored::F16 => {
            for c in src.chunks_exact(2) {
                let v = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Stored::Bf16 => {
            for c in src.chunks_exact(2) {
                let v = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_halves() {
        let mut out = Vec::new();
        let h = half::f16::from_f32(1.5).to_le_bytes();
        let b = half::bf16::from_f32(-2.0).to_le_bytes();
        to_f32_le(Stored::F16, &h, &mut out);
        to_f32_le(Stored::Bf16, &b, &mut out);
        assert_eq!(out, [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
    }
}
