//! MODEL_LOAD, MODEL_UNLOAD, INFER and uploads of the client's own weights (MODEL_UPLOAD,
//! MODEL_CHUNK, MODEL_COMMIT), on nodes that advertise the MODELS capability.

use rela_core::config::HEADER_LEN;
use rela_core::wire::model_list::{ModelKind, ModelList};
use rela_core::wire::msg::{self, Caps, EMBEDDINGS_PREFIX_LEN, Infer, MODEL_CHUNK_PREFIX_LEN, Response};
use rela_core::wire::{Flags, Kind, emit_frame};

use super::{Client, unexpected};
use crate::FastCrc32;
use crate::error::ClientError;

/// Largest MODEL_CHUNK payload the client sends (the node's `max_payload` may lower it).
const UPLOAD_CHUNK: usize = 8 << 20;

/// Which part of a model load a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadStage {
    /// Bytes of the client's weights file sent and acknowledged by the node.
    Upload,
    /// Bytes of weights the node has placed in device memory (PROGRESS frames).
    Device,
}

/// A progress callback for model loads: `(stage, done, total)`.
pub type LoadProgress<'a> = &'a mut (dyn FnMut(LoadStage, u64, u64) + Send);

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

/// One model a node serves (MODEL_LIST).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListedModel {
    /// Its name, as [`Client::model_load`] takes it.
    pub name: String,
    /// What it does: [`ModelKind::EMBEDDING`] (INFER) or [`ModelKind::GENERATION`] (GENERATE);
    /// a node of a later version may send kinds this client does not know.
    pub kind: ModelKind,
}

impl Client {
    /// MODEL_LIST: every model the node serves, in name order (one request per model; a node
    /// whose folder changes meanwhile may skip or repeat one).
    pub async fn list_models(&mut self) -> Result<Vec<ListedModel>, ClientError> {
        let mut out = Vec::new();
        for index in 0..=u16::MAX {
            let seq = self.send_msg(&ModelList { index }).await?;
            match self.expect(seq, Kind::MODEL_LIST).await? {
                Response::ModelListed(m) if m.kind == ModelKind::NONE || index >= m.count => break,
                Response::ModelListed(m) => out.push(ListedModel { name: m.name.to_owned(), kind: m.kind }),
                other => {
                    let e = unexpected(&other);
                    return Err(self.broke(e));
                }
            }
        }
        Ok(out)
    }

    /// Whether the node serves models (WELCOME advertised MODELS).
    pub fn serves_models(&self) -> bool {
        self.welcome().caps.contains(Caps::MODELS)
    }

    /// MODEL_LOAD: loads a model from the node's repository by name.
    pub async fn model_load(&mut self, name: &str) -> Result<RemoteModel, ClientError> {
        self.model_load_with_progress(name, None).await
    }

    /// [`model_load`](Self::model_load), reporting the node's PROGRESS frames to `progress`
    /// ([`LoadStage::Device`]).
    pub async fn model_load_with_progress(
        &mut self,
        name: &str,
        progress: Option<LoadProgress<'_>>,
    ) -> Result<RemoteModel, ClientError> {
        check_name(name)?;
        let seq = self.send_msg(&msg::ModelLoad { name }).await?;
        self.expect_model(seq, Kind::MODEL_LOAD, progress).await
    }

    /// Loads the client's own weights: `weights` is a safetensors file for a model of the
    /// architecture and tokenizer of `base`, a model in the node's repository (for example
    /// fine-tuned all-MiniLM-L6-v2 weights). The file is sent in chunks of at most 8 MiB
    /// (MODEL_UPLOAD, MODEL_CHUNK), then checked and loaded on the node (MODEL_COMMIT).
    /// `progress` hears about both stages.
    pub async fn model_upload(
        &mut self,
        base: &str,
        weights: &[u8],
        mut progress: Option<LoadProgress<'_>>,
    ) -> Result<RemoteModel, ClientError> {
        check_name(base)?;
        if weights.is_empty() {
            return Err(ClientError::InvalidArgument("no weights to upload"));
        }
        let total = weights.len() as u64;
        let seq = self.send_msg(&msg::ModelUpload { size: total, base }).await?;
        self.expect_ack(seq, Kind::MODEL_UPLOAD).await?;
        let chunk =
            (self.max_payload() as usize).saturating_sub(MODEL_CHUNK_PREFIX_LEN).clamp(1, UPLOAD_CHUNK);
        let mut offset = 0u64;
        if let Some(p) = progress.as_deref_mut() {
            p(LoadStage::Upload, 0, total);
        }
        // With LZ4, the chunks after the one on the wire are compressed meanwhile.
        let mut deflater = self.compressing().then(|| std::mem::take(&mut self.deflater));
        if let Some(d) = deflater.as_mut() {
            d.begin(chunk);
        }
        let mut pieces = weights.chunks(chunk);
        loop {
            let prefix = offset.to_le_bytes();
            let (seq, len) = match deflater.as_mut() {
                Some(d) => {
                    let Some(frame) = d.next(weights).await else { break };
                    let seq = self.send_deflated(Kind::MODEL_CHUNK, &prefix, weights, &frame).await;
                    let len = frame.len;
                    d.recycle(frame);
                    (seq?, len)
                }
                None => {
                    let Some(piece) = pieces.next() else { break };
                    (self.send_prefixed(Kind::MODEL_CHUNK, &prefix, piece).await?, piece.len())
                }
            };
            self.expect_ack(seq, Kind::MODEL_CHUNK).await?;
            offset += len as u64;
            if let Some(p) = progress.as_deref_mut() {
                p(LoadStage::Upload, offset, total);
            }
        }
        if let Some(d) = deflater {
            self.deflater = d;
        }
        let seq = self.send_empty(Kind::MODEL_COMMIT).await?;
        self.expect_model(seq, Kind::MODEL_COMMIT, progress).await
    }

    /// Reads the answer to a MODEL_LOAD or MODEL_COMMIT, passing PROGRESS frames on the way
    /// to `progress`.
    async fn expect_model(
        &mut self,
        seq: u16,
        request: Kind,
        mut progress: Option<LoadProgress<'_>>,
    ) -> Result<RemoteModel, ClientError> {
        loop {
            let (header, crc) = self.read_header().await?;
            match self.finish_small(header, crc, seq, request).await? {
                Response::Progress(p) => {
                    if let Some(report) = progress.as_deref_mut() {
                        report(LoadStage::Device, p.done, p.total);
                    }
                }
                Response::ModelLoaded(m) if header.kind == request => {
                    return Ok(RemoteModel { id: m.model, dim: m.dim, bytes: m.bytes });
                }
                other => {
                    let e = unexpected(&other);
                    return Err(self.broke(e));
                }
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
        // The answer is `count × dim` floats; `dim` is the node's word, and on a 32-bit client
        // the product can overflow usize.
        let answer = embeddings_len(texts.len(), model.dim).ok_or(ClientError::InvalidArgument(
            "the embeddings of this many texts do not fit in memory (count × dim × 4 overflows)",
        ))?;
        if self.tx.len() < HEADER_LEN + len {
            self.tx.resize(HEADER_LEN + len, 0);
        }
        let seq = self.next_seq();
        Infer::emit_texts(model.id, texts, &mut self.tx[HEADER_LEN..])
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        let n = emit_frame::<FastCrc32>(&mut self.tx, Kind::INFER, Flags::NONE, seq, len)
            .map_err(|_| ClientError::InvalidArgument("request does not encode"))?;
        let limit = self.step_timeout();
        let write = super::write_flush(&mut self.wr, &self.tx[..n]);
        if let Err(e) = super::timed(limit, write).await {
            return self.fail(e);
        }
        // Make room for the answer in the small-response buffer, up to what one frame can hold
        // (a larger answer is refused by the node, or by the frame reader).
        let answer = answer.min(self.max_payload() as usize);
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

/// Bytes of an INFER answer for `count` texts of a model with `dim` floats per embedding, or
/// `None` when that does not fit a `usize`.
fn embeddings_len(count: usize, dim: u32) -> Option<usize> {
    let floats = u64::try_from(count).ok()?.checked_mul(u64::from(dim))?;
    let bytes = floats.checked_mul(4)?.checked_add(EMBEDDINGS_PREFIX_LEN as u64)?;
    usize::try_from(bytes).ok()
}

fn check_name(name: &str) -> Result<(), ClientError> {
    if msg::valid_model_name(name) {
        Ok(())
    } else {
        Err(ClientError::InvalidArgument("model names are 1-64 bytes of [A-Za-z0-9._-], no leading dot"))
    }
}

#[cfg(test)]
mod tests {
    use super::embeddings_len;

    #[test]
    fn embeddings_len_is_checked() {
        assert_eq!(embeddings_len(0, 384), Some(4));
        assert_eq!(embeddings_len(64, 384), Some(4 + 64 * 384 * 4));
        // 65535 × (2³² − 1) × 4 needs 50 bits: past a 32-bit usize, within a 64-bit one.
        let big = embeddings_len(65_535, u32::MAX);
        if usize::BITS < 64 {
            assert_eq!(big, None);
        } else {
            assert_eq!(big, Some(4 + 65_535 * (u32::MAX as usize) * 4));
        }
        assert_eq!(embeddings_len(usize::MAX, u32::MAX), None);
    }
}
