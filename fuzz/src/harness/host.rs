//! The harness's model host: a [`ModelHost`] over the host-memory backend whose "models" are a
//! few fixed-size buffers, in the spirit of the scripted host in `core/tests/models.rs`.
//!
//! - [`spec`] lists the repository: `tiny` (one buffer, dim 2), `wide` (two buffers, dim 48)
//!   and `rogue` (one buffer, dim 1). Loading fills the buffers with [`WEIGHT_BYTE`] (or the
//!   uploaded bytes), so the end-of-run check that the arena is zero again also covers them.
//! - `load` checks the budget before touching the backend, except for `rogue`, which ignores
//!   it, and whose INFER reports one embedding more than it was given texts: deliberate
//!   breaches of the trait's contract, so the session's own defences (`adopt_model` refusing
//!   a model over budget and unloading it, INFER refusing an output of the wrong count) are
//!   reached.
//! - Uploads stage at most [`MAX_STAGED`] bytes (more is `OutOfMemory`); a commit takes the
//!   staged bytes whatever the outcome and loads the base model only if they start with
//!   [`UPLOAD_MAGIC`] (else `InvalidInput`).
//! - `infer` runs at most [`MAX_TEXTS`] texts and writes [`embedding`] values into one output
//!   buffer the host owns (reused while large enough, freed by `release_all`), like the node's
//!   host. That buffer is not charged to the session.
//!
//! Every call is logged in [`ScriptedHost::log`] so the harness can check what the session
//! passed (names, budgets, progress targets) and which backend call failed. Model ids are
//! drawn from a per-host range, so ids of different sessions never coincide.

use rela_backend_host::HostBackend;
use rela_core::backend::{BackendError, BufferId, GpuBackend};
use rela_core::crc32::SoftCrc32;
use rela_core::model::{InferOutput, LoadedModel, ModelError, ModelHost, ProgressTarget};
use rela_core::wire::msg::Infer;

/// What uploaded weights must start with for MODEL_COMMIT to load them.
pub const UPLOAD_MAGIC: &[u8] = b"RELW";
/// Most bytes the host stages for one upload.
pub const MAX_STAGED: u64 = 4096;
/// Most texts in one INFER.
pub const MAX_TEXTS: usize = 8;
/// The byte loaded weights are filled with.
pub const WEIGHT_BYTE: u8 = 0xA5;

/// A model of the scripted repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The name it loads by.
    pub name: &'static str,
    /// Sizes of the backend buffers its weights take.
    pub buffers: &'static [u64],
    /// Floats per embedding.
    pub dim: u16,
    /// Whether it keeps the contract: `load` checks the budget before touching the backend,
    /// and INFER returns one embedding per text.
    pub honest: bool,
}

impl Spec {
    /// Device bytes of its weights.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().sum()
    }
}

/// The repository entry for `name`.
pub fn spec(name: &str) -> Option<Spec> {
    const SPECS: [Spec; 3] = [
        Spec { name: "tiny", buffers: &[96], dim: 2, honest: true },
        Spec { name: "wide", buffers: &[512, 256], dim: 48, honest: true },
        Spec { name: "rogue", buffers: &[64], dim: 1, honest: false },
    ];
    SPECS.into_iter().find(|s| s.name == name)
}

/// Float `j` of the embedding of text `i` (of `len` bytes) by model `id`: small integers, so
/// exact in f32.
pub fn embedding(id: u32, i: usize, len: usize, j: usize) -> f32 {
    let v =
        id.wrapping_mul(13).wrapping_add(i as u32 * 7).wrapping_add(len as u32 * 31).wrapping_add(j as u32);
    (v & 0xFFFF) as f32
}

/// One call the session made, with what it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum HostCall {
    /// `load(name, budget, progress)`.
    Load { name: String, budget: u64, progress: Option<ProgressTarget> },
    /// `upload_begin(base, size)`.
    UploadBegin { base: String, size: u64 },
    /// `upload_chunk` with `len` bytes.
    UploadChunk { len: usize },
    /// `upload_commit(budget, progress)`.
    Commit { budget: u64, progress: Option<ProgressTarget> },
    /// `upload_cancel()`.
    Cancel,
    /// `unload(id)`.
    Unload { id: u32 },
    /// `infer(id)` with `count` texts.
    Infer { id: u32, count: usize },
    /// A backend call inside the previous call failed with this.
    BackendFailed(BackendError),
}

/// A model the host holds.
#[derive(Debug, Clone)]
pub struct HostModel {
    /// Its id.
    pub id: u32,
    /// Its repository entry.
    pub spec: Spec,
    /// Its weight buffers.
    pub buffers: Vec<(BufferId, u64)>,
}

/// An upload being staged.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The repository model it is for.
    pub base: Spec,
    /// The size MODEL_UPLOAD announced.
    pub size: u64,
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

/// One session's model host.
#[derive(Debug)]
pub struct ScriptedHost {
    /// The last id issued (ids are `base + 1`, `base + 2`, ...).
    last_id: u32,
    /// Loaded models.
    pub loaded: Vec<HostModel>,
    /// The staged upload.
    pub staged: Option<Staged>,
    /// The INFER output buffer and its size.
    pub output: Option<(BufferId, u64)>,
    /// Calls since the harness last took the log.
    pub log: Vec<HostCall>,
    /// PROGRESS frames the host "sent" since the harness last took them.
    pub progress_frames: Vec<Vec<u8>>,
}

impl ScriptedHost {
    /// A host whose model ids start after `id_base`.
    pub fn new(id_base: u32) -> Self {
        Self {
            last_id: id_base,
            loaded: Vec::new(),
            staged: None,
            output: None,
            log: Vec::new(),
            progress_frames: Vec::new(),
        }
    }

    /// Backend bytes the host holds (weights and the output buffer).
    pub fn device_bytes(&self) -> u64 {
        let weights: u64 = self.loaded.iter().map(|m| m.spec.bytes()).sum();
        weights + self.output.map_or(0, |(_, size)| size)
    }

    /// Backend buffers the host holds, with their sizes.
    pub fn buffers(&self) -> impl Iterator<Item = (BufferId, u64)> + '_ {
        self.loaded.iter().flat_map(|m| m.buffers.iter().copied()).chain(self.output)
    }

    /// Whether the host holds nothing (as after `release_all`).
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty() && self.staged.is_none() && self.output.is_none()
    }

    fn backend_failed(&mut self, e: BackendError) -> ModelError {
        self.log.push(HostCall::BackendFailed(e));
        ModelError::Backend(e)
    }

    fn free(backend: &mut HostBackend<'_>, id: BufferId) {
        backend.free(id).expect("the host frees a buffer it holds");
    }

    /// Places `spec`'s weights (the first buffer starting with `content`) and registers them.
    fn place(
        &mut self,
        backend: &mut HostBackend<'_>,
        spec: Spec,
        budget: u64,
        progress: Option<ProgressTarget>,
        content: &[u8],
    ) -> Result<LoadedModel, ModelError> {
        let total = spec.bytes();
        if spec.honest && total > budget {
            return Err(ModelError::QuotaExceeded);
        }
        let mut buffers = Vec::new();
        for &size in spec.buffers {
            let placed = backend.alloc(size).and_then(|id| {
                buffers.push((id, size));
                backend.fill(id, 0, size, WEIGHT_BYTE)?;
                let n = content.len().min(size as usize);
                backend.write(id, 0, &content[..n])
            });
            if let Err(e) = placed {
                for (id, _) in buffers {
                    Self::free(backend, id);
                }
                return Err(self.backend_failed(e));
            }
            if let Some(target) = progress {
                let done: u64 = buffers.iter().map(|b| b.1).sum();
                let mut frame = vec![0u8; ProgressTarget::FRAME_LEN];
                let n = target.emit::<SoftCrc32>(done, total, &mut frame).expect("a PROGRESS frame fits");
                frame.truncate(n);
                self.progress_frames.push(frame);
            }
        }
        self.last_id = self.last_id.wrapping_add(1);
        let id = self.last_id;
        self.loaded.push(HostModel { id, spec, buffers });
        Ok(LoadedModel { id, dim: u32::from(spec.dim), bytes: total })
    }
}

impl<'a> ModelHost<HostBackend<'a>> for ScriptedHost {
    fn load(
        &mut self,
        backend: &mut HostBackend<'a>,
        name: &str,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        self.log.push(HostCall::Load { name: name.into(), budget, progress });
        let spec = spec(name).ok_or(ModelError::NoSuchModel)?;
        self.place(backend, spec, budget, progress, &[])
    }

    fn upload_begin(&mut self, base: &str, size: u64) -> Result<(), ModelError> {
        self.log.push(HostCall::UploadBegin { base: base.into(), size });
        self.staged = None;
        let base = spec(base).ok_or(ModelError::NoSuchModel)?;
        if size > MAX_STAGED {
            return Err(ModelError::OutOfMemory);
        }
        self.staged = Some(Staged { base, size, bytes: Vec::with_capacity(size as usize) });
        Ok(())
    }

    fn upload_chunk(&mut self, data: &[u8]) -> Result<(), ModelError> {
        self.log.push(HostCall::UploadChunk { len: data.len() });
        let staged = self.staged.as_mut().expect("the session sent a chunk with no upload staged");
        assert!(
            (staged.bytes.len() + data.len()) as u64 <= staged.size,
            "the session let an upload grow past its announced size"
        );
        staged.bytes.extend_from_slice(data);
        Ok(())
    }

    fn upload_commit(
        &mut self,
        backend: &mut HostBackend<'a>,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        self.log.push(HostCall::Commit { budget, progress });
        let staged = self.staged.take().expect("the session committed with no upload staged");
        assert_eq!(staged.bytes.len() as u64, staged.size, "the session committed an incomplete upload");
        if !staged.bytes.starts_with(UPLOAD_MAGIC) {
            return Err(ModelError::InvalidInput("uploaded weights lack the magic"));
        }
        self.place(backend, staged.base, budget, progress, &staged.bytes)
    }

    fn upload_cancel(&mut self) {
        self.log.push(HostCall::Cancel);
        self.staged = None;
    }

    fn unload(&mut self, backend: &mut HostBackend<'a>, id: u32) -> Result<(), ModelError> {
        self.log.push(HostCall::Unload { id });
        let i = self.loaded.iter().position(|m| m.id == id).ok_or(ModelError::NoSuchModel)?;
        for (buf, _) in self.loaded.swap_remove(i).buffers {
            Self::free(backend, buf);
        }
        Ok(())
    }

    fn infer(
        &mut self,
        backend: &mut HostBackend<'a>,
        id: u32,
        request: &Infer<'_>,
        _budget: u64,
    ) -> Result<InferOutput, ModelError> {
        self.log.push(HostCall::Infer { id, count: request.count() });
        let Spec { dim, honest, .. } =
            self.loaded.iter().find(|m| m.id == id).ok_or(ModelError::NoSuchModel)?.spec;
        if request.count() > MAX_TEXTS {
            return Err(ModelError::InvalidInput("too many texts"));
        }
        let mut out = Vec::new();
        let mut count = 0u16;
        for (i, text) in request.texts().enumerate() {
            out.extend((0..usize::from(dim)).flat_map(|j| embedding(id, i, text.len(), j).to_le_bytes()));
            count += 1;
        }
        assert_eq!(usize::from(count), request.count(), "INFER texts do not match its count");
        if !honest {
            out.extend(
                (0..usize::from(dim)).flat_map(|j| embedding(id, usize::from(count), 0, j).to_le_bytes()),
            );
            count += 1;
        }
        let need = (out.len() as u64).max(4);
        let buffer = match self.output {
            Some((buf, size)) if size >= need => buf,
            old => {
                if let Some((buf, _)) = old {
                    self.output = None;
                    Self::free(backend, buf);
                }
                let buf = backend.alloc(need).map_err(|e| self.backend_failed(e))?;
                self.output = Some((buf, need));
                buf
            }
        };
        backend.write(buffer, 0, &out).map_err(|e| self.backend_failed(e))?;
        Ok(InferOutput { buffer, count, dim })
    }

    fn release_all(&mut self, backend: &mut HostBackend<'a>) {
        self.staged = None;
        for m in self.loaded.drain(..) {
            for (buf, _) in m.buffers {
                Self::free(backend, buf);
            }
        }
        if let Some((buf, _)) = self.output.take() {
            Self::free(backend, buf);
        }
    }
}
