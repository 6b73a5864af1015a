//! MODEL_LOAD, MODEL_UNLOAD and INFER (nodes that advertise the MODELS capability).

use rela_core::config::HEADER_LEN;
use rela_core::wire::msg::{self, Caps, EMBEDDINGS_PREFIX_LEN, Infer, Response};
use rela_core::wire::{Flags, Kind, emit_frame};

use super::{Client, unexpected};
use crate::FastCrc32;
use crate::error::ClientError;

/// A model loaded on the node for this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteModel {
    /// The model's id in this session.
    pub id: u32,
    /// Floats per embedding.
    pub dim: u32,
    /// Device bytes its weights hold (charged to the session's quota).
    pub bytes: u64,
}

impl Client {
    /// Whether the node serves models (WELCOME advertised MODELS).
    pub fn serves_models(&self) -> bool {
        self.welcome().caps.contains(Caps::MODELS)
    }

    /// MODEL_LOAD: loads a model from the node's repository by name.
    pub async fn model_load(&mut self, name: &str) -> Result<RemoteModel, ClientError> {
        if !msg::valid_model_name(name) {
            return Err(ClientError::InvalidArgument(
                "model names are 1-64 bytes of [A-Za-z0-9._-], no leading dot",
            ));
        }
        let seq = self.send_msg(&msg::ModelLoad { name }).await?;
        match self.expect(seq, Kind::MODEL_LOAD).await? {
            Response::ModelLoaded(m) => Ok(RemoteModel { id: m.model, dim: m.dim, bytes: m.bytes }),
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }

    /// MODEL_UNLOAD: frees and zeroes every byte of the model on the node.
    pub async fn model_unload(&mut self, model: RemoteModel) -> Result<(), ClientError> {
        let seq = self.send_msg(&msg::ModelUnload { model: model.id }).await?;
        self.expect_ack(seq, Kind::MODEL_UNLOAD).await
    }

    /// INFER: one L2-normalized embedding per text, in order.
    pub async fn infer(&mut self, model: RemoteModel, texts: &[&str]) -> Result<Vec<Vec<f32>>, ClientError> {
        self.check_usable()?;
        if texts.iter().any(|t| t.len() > u16::MAX as usize) || texts.len() > u16::MAX as usize {
            return Err(ClientError::InvalidArgument("too many texts, or a text longer than 65535 bytes"));
        }
        let len = Infer::encoded_len(texts);
        if len > self.max_payload() as usize {
            return Err(ClientError::InvalidArgument("the texts do not fit one frame"));
        }
        if self.tx.len() < HEADER_LEN + len {
            self.tx.resize(HEADER_LEN + len, 0);
        }
        let seq = self.next_seq();
        Infer::emit_texts(model.id, texts, &mut self.tx[HEADER_LEN..])
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        let n = emit_frame::<FastCrc32>(&mut self.tx, Kind::INFER, Flags::NONE, seq, len)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut self.wr, &self.tx[..n]).await {
            return self.fail(e);
        }
        // The answer is `count × dim` floats: make room for it in the small-response buffer.
        let answer = EMBEDDINGS_PREFIX_LEN + texts.len() * model.dim as usize * 4;
        if self.rx.len() < answer {
            self.rx.resize(answer, 0);
        }
        match self.expect(seq, Kind::INFER).await? {
            Response::Embeddings(e) if e.count as usize == texts.len() && u32::from(e.dim) == model.dim => {
                let dim = e.dim as usize;
                Ok((0..e.count as usize)
                    .map(|i| (0..dim).map(|j| e.get(i * dim + j).unwrap_or(f32::NAN)).collect())
                    .collect())
            }
            other => {
                let e = unexpected(&other);
                Err(self.broke(e))
            }
        }
    }
}
