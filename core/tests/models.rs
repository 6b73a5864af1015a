//! MODEL_LOAD / MODEL_UNLOAD / INFER through the session, with a scripted model host: state and
//! capability checks, quota charging, isolation, output framing, and release on close.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Driver, MockBackend};
use rela_core::backend::{BufferId, GpuBackend};
use rela_core::crc32::SoftCrc32;
use rela_core::model::{InferOutput, LoadedModel, ModelEntry, ModelError, ModelHost, ProgressTarget};
use rela_core::session::SessionConfig;
use rela_core::wire::model_list::{ModelKind, ModelList, ModelListed};
use rela_core::wire::msg::*;
use rela_core::wire::{ErrorCode, Flags, Kind};

/// A model host whose "model" writes `[text length, index]` per text into a backend buffer.
#[derive(Default)]
struct Scripted {
    loaded: Vec<(u32, BufferId)>,
    next: u32,
    released: usize,
    /// The staged upload, if any.
    staged: Option<Vec<u8>>,
    /// The progress target of the last load or commit.
    progress: Option<ProgressTarget>,
    /// Lists a name MODEL_LOAD would refuse (a host breaking its contract).
    bad_list: bool,
}

const WEIGHTS: u64 = 1000;

impl ModelHost<MockBackend> for Scripted {
    fn load(
        &mut self,
        b: &mut MockBackend,
        name: &str,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        self.progress = progress;
        if name != "tiny" {
            return Err(ModelError::NoSuchModel);
        }
        if WEIGHTS > budget {
            return Err(ModelError::QuotaExceeded);
        }
        let id = b.alloc(WEIGHTS)?;
        self.next += 1;
        self.loaded.push((self.next, id));
        Ok(LoadedModel { id: self.next, dim: 2, bytes: WEIGHTS })
    }
    fn unload(&mut self, b: &mut MockBackend, id: u32) -> Result<(), ModelError> {
        let i = self.loaded.iter().position(|m| m.0 == id).ok_or(ModelError::NoSuchModel)?;
        let (_, buf) = self.loaded.remove(i);
        b.free(buf)?;
        Ok(())
    }
    fn infer(
        &mut self,
        b: &mut MockBackend,
        id: u32,
        req: &Infer<'_>,
        _: u64,
    ) -> Result<InferOutput, ModelError> {
        let (_, buf) = *self.loaded.iter().find(|m| m.0 == id).ok_or(ModelError::NoSuchModel)?;
        if req.count() > 8 {
            return Err(ModelError::InvalidInput("too many texts"));
        }
        let mut out = Vec::new();
        for (i, t) in req.texts().enumerate() {
            out.extend_from_slice(&(t.len() as f32).to_le_bytes());
            out.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b.write(buf, 0, &out)?;
        Ok(InferOutput { buffer: buf, count: req.count() as u16, dim: 2 })
    }
    fn upload_begin(&mut self, base: &str, size: u64) -> Result<(), ModelError> {
        self.staged = None;
        if base != "tiny" {
            return Err(ModelError::NoSuchModel);
        }
        self.staged = Some(Vec::with_capacity(size as usize));
        Ok(())
    }
    fn upload_chunk(&mut self, data: &[u8]) -> Result<(), ModelError> {
        self.staged
            .as_mut()
            .expect("the session only sends chunks of a staged upload")
            .extend_from_slice(data);
        Ok(())
    }
    fn upload_commit(
        &mut self,
        b: &mut MockBackend,
        budget: u64,
        progress: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        let staged = self.staged.take().expect("the session only commits a staged upload");
        // The scripted "format": weights start with TINY.
        if !staged.starts_with(b"TINY") {
            return Err(ModelError::InvalidInput("not a tiny model"));
        }
        self.load(b, "tiny", budget, progress)
    }
    fn upload_cancel(&mut self) {
        self.staged = None;
    }
    fn list(&self, index: u16) -> ModelEntry {
        let listed = [(ModelKind::EMBEDDING, "tiny"), (ModelKind::GENERATION, "tiny-lm")];
        let mut e = ModelEntry { count: listed.len() as u16, ..ModelEntry::default() };
        if self.bad_list {
            e.kind = ModelKind::EMBEDDING;
            e.name.push_str("../etc").unwrap();
        } else if let Some((kind, name)) = listed.get(usize::from(index)) {
            e.kind = *kind;
            e.name.push_str(name).unwrap();
        }
        e
    }
    fn release_all(&mut self, b: &mut MockBackend) {
        for (_, buf) in self.loaded.drain(..) {
            let _ = b.free(buf);
        }
        self.staged = None;
        self.released += 1;
    }
}

fn config(quota: u64) -> SessionConfig {
    SessionConfig { quota, models: true, ..SessionConfig::default() }
}

fn send<'a, M: Message<'a>>(
    d: &mut Driver,
    b: &mut MockBackend,
    host: &mut Scripted,
    msg: &M,
) -> common::Out {
    let mut payload = vec![0u8; msg.buffer_len()];
    msg.emit(&mut payload).unwrap();
    d.raw_with(b, host, M::KIND, M::flags(), &payload).remove(0)
}

fn infer(
    d: &mut Driver,
    b: &mut MockBackend,
    host: &mut Scripted,
    model: u32,
    texts: &[&str],
) -> common::Out {
    let mut payload = vec![0u8; Infer::encoded_len(texts)];
    Infer::emit_texts(model, texts, &mut payload).unwrap();
    d.raw_with(b, host, Kind::INFER, Flags::NONE, &payload).remove(0)
}

fn code(o: &common::Out) -> ErrorCode {
    ErrorCode(o.error_code().unwrap_or_else(|| panic!("expected ERROR, got {:?}", o.response())))
}

fn ready(b: &mut MockBackend, host: &mut Scripted, quota: u64, nonce: u8) -> Driver {
    let mut d = Driver::new(config(quota), [nonce; 32]);
    let w = send(&mut d, b, host, &Hello { min_version: 1, max_version: 1, caps: Caps::MODELS });
    let Response::Welcome(w) = w.response() else { panic!() };
    assert!(w.caps.contains(Caps::MODELS), "a node with models advertises them");
    d
}

#[test]
fn load_infer_unload() {
    let mut b = MockBackend::new(1 << 20);
    let mut host = Scripted::default();
    let mut d = ready(&mut b, &mut host, 4096, 1);
    let o = send(&mut d, &mut b, &mut host, &ModelLoad { name: "tiny" });
    let Response::ModelLoaded(m) = o.response() else { panic!("{:?}", o.response()) };
    assert_eq!((m.dim, m.bytes), (2, WEIGHTS));
    assert_eq!(d.session.stats().used, WEIGHTS, "model bytes are charged to the session quota");

    let o = infer(&mut d, &mut b, &mut host, m.model, &["héllo", "", "abc"]);
    assert_eq!(o.seq, d.last_seq());
    let Response::Embeddings(e) = o.response() else { panic!("{:?}", o.response()) };
    assert_eq!((e.count, e.dim), (3, 2));
    let floats: Vec<f32> = (0..6).map(|i| e.get(i).unwrap()).collect();
    assert_eq!(floats, [6.0, 0.0, 0.0, 1.0, 3.0, 2.0]);

    assert_eq!(code(&infer(&mut d, &mut b, &mut host, m.model, &["x"; 9])), ErrorCode::INVALID_INPUT);
    assert_eq!(code(&infer(&mut d, &mut b, &mut host, m.model + 1, &["x"])), ErrorCode::NO_SUCH_MODEL);

    let o = send(&mut d, &mut b, &mut host, &ModelUnload { model: m.model });
    assert!(matches!(o.response(), Response::Ack(Kind::MODEL_UNLOAD)));
    assert_eq!(d.session.stats().used, 0);
    assert!(b.bufs.is_empty(), "unload freed the weights");
    assert!(b.freed.iter().all(|(_, zeroed)| *zeroed));
    assert_eq!(code(&infer(&mut d, &mut b, &mut host, m.model, &["x"])), ErrorCode::NO_SUCH_MODEL);
}

#[test]
fn quota_names_state_and_isolation() {
    let mut b = MockBackend::new(1 << 20);
    let mut host = Scripted::default();
    // Quota smaller than the weights: refused before the device is touched.
    let mut d = ready(&mut b, &mut host, 999, 1);
    assert_eq!(
        code(&send(&mut d, &mut b, &mut host, &ModelLoad { name: "tiny" })),
        ErrorCode::QUOTA_EXCEEDED
    );
    assert!(b.bufs.is_empty());
    assert_eq!(code(&send(&mut d, &mut b, &mut host, &ModelLoad { name: "huge" })), ErrorCode::NO_SUCH_MODEL);
    // Names that could be paths never reach the host.
    for bad in ["../etc", "a/b", ".hidden", ""] {
        let mut p = vec![bad.len() as u8];
        p.extend_from_slice(bad.as_bytes());
        assert_eq!(
            code(&d.raw_with(&mut b, &mut host, Kind::MODEL_LOAD, Flags::NONE, &p)[0]),
            ErrorCode::MALFORMED
        );
    }
    // Invalid UTF-8 in INFER is malformed.
    assert_eq!(
        code(&d.raw_with(&mut b, &mut host, Kind::INFER, Flags::NONE, &[1, 0, 0, 0, 1, 0, 1, 0, 0xFF])[0]),
        ErrorCode::MALFORMED
    );

    // Before HELLO, model requests are refused.
    let mut fresh = Driver::new(config(1 << 20), [2; 32]);
    assert_eq!(
        code(&send(&mut fresh, &mut b, &mut host, &ModelLoad { name: "tiny" })),
        ErrorCode::WRONG_STATE
    );

    // Another session cannot use this session's model id.
    let mut host_a = Scripted::default();
    let mut a = ready(&mut b, &mut host_a, 1 << 20, 3);
    let Response::ModelLoaded(m) = send(&mut a, &mut b, &mut host_a, &ModelLoad { name: "tiny" }).response()
    else {
        panic!()
    };
    let mut host_c = Scripted::default();
    let mut c = ready(&mut b, &mut host_c, 1 << 20, 4);
    assert_eq!(code(&infer(&mut c, &mut b, &mut host_c, m.model, &["x"])), ErrorCode::NO_SUCH_MODEL);
    assert_eq!(
        code(&send(&mut c, &mut b, &mut host_c, &ModelUnload { model: m.model })),
        ErrorCode::NO_SUCH_MODEL
    );

    // Closing forgets the model; the host's release_all frees it.
    let _ = a.raw_with(&mut b, &mut host_a, Kind::BYE, Flags::NONE, &[]);
    assert!(a.session.is_closed());
    assert_eq!(a.session.stats().used, 0);
    host_a.release_all(&mut b);
    assert!(b.bufs.is_empty());
}

fn chunk(d: &mut Driver, b: &mut MockBackend, host: &mut Scripted, offset: u64, data: &[u8]) -> common::Out {
    send(d, b, host, &ModelChunk { offset, data })
}

fn commit(d: &mut Driver, b: &mut MockBackend, host: &mut Scripted) -> common::Out {
    d.raw_with(b, host, Kind::MODEL_COMMIT, Flags::NONE, &[]).remove(0)
}

#[test]
fn upload_in_order_chunks_then_commit() {
    let mut b = MockBackend::new(1 << 20);
    let mut host = Scripted::default();
    let mut d = ready(&mut b, &mut host, 4096, 1);
    // Nothing staged: chunks and commits are out of place.
    assert_eq!(code(&chunk(&mut d, &mut b, &mut host, 0, b"TINY")), ErrorCode::WRONG_STATE);
    assert_eq!(code(&commit(&mut d, &mut b, &mut host)), ErrorCode::WRONG_STATE);
    assert_eq!(
        code(&send(&mut d, &mut b, &mut host, &ModelUpload { size: 0, base: "tiny" })),
        ErrorCode::INVALID_ARGUMENT
    );

    let o = send(&mut d, &mut b, &mut host, &ModelUpload { size: 10, base: "tiny" });
    assert!(matches!(o.response(), Response::Ack(Kind::MODEL_UPLOAD)), "{:?}", o.response());
    assert_eq!(d.session.stats().used, 10, "staged bytes count against the quota");
    assert!(matches!(
        chunk(&mut d, &mut b, &mut host, 0, b"TINY1").response(),
        Response::Ack(Kind::MODEL_CHUNK)
    ));
    // A gap, a resend and an overrun are refused and leave the upload as it was.
    assert_eq!(code(&chunk(&mut d, &mut b, &mut host, 6, b"x")), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(&chunk(&mut d, &mut b, &mut host, 0, b"TINY1")), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(code(&chunk(&mut d, &mut b, &mut host, 5, b"234567")), ErrorCode::OUT_OF_BOUNDS);
    assert_eq!(code(&commit(&mut d, &mut b, &mut host)), ErrorCode::INVALID_ARGUMENT, "incomplete");
    assert!(matches!(
        chunk(&mut d, &mut b, &mut host, 5, b"23456").response(),
        Response::Ack(Kind::MODEL_CHUNK)
    ));
    assert_eq!(host.staged.as_deref(), Some(&b"TINY123456"[..]));

    let o = commit(&mut d, &mut b, &mut host);
    assert_eq!(o.kind, Kind::MODEL_COMMIT);
    let Response::ModelLoaded(m) = o.response() else { panic!("{:?}", o.response()) };
    assert_eq!(m.bytes, WEIGHTS);
    assert_eq!(d.session.stats().used, WEIGHTS, "the staged bytes were released, the weights charged");
    assert!(host.staged.is_none());
    assert_eq!(code(&commit(&mut d, &mut b, &mut host)), ErrorCode::WRONG_STATE, "nothing staged any more");
    let o = infer(&mut d, &mut b, &mut host, m.model, &["ok"]);
    assert!(matches!(o.response(), Response::Embeddings(_)));
}

#[test]
fn upload_rejections_release_everything() {
    let mut b = MockBackend::new(1 << 20);
    let mut host = Scripted::default();
    let mut d = ready(&mut b, &mut host, 100, 1);
    assert_eq!(
        code(&send(&mut d, &mut b, &mut host, &ModelUpload { size: 101, base: "tiny" })),
        ErrorCode::QUOTA_EXCEEDED
    );
    assert_eq!(
        code(&send(&mut d, &mut b, &mut host, &ModelUpload { size: 4, base: "huge" })),
        ErrorCode::NO_SUCH_MODEL
    );
    assert_eq!(d.session.stats().used, 0);

    // A second upload replaces the first: only its size is charged.
    send(&mut d, &mut b, &mut host, &ModelUpload { size: 90, base: "tiny" });
    send(&mut d, &mut b, &mut host, &ModelUpload { size: 60, base: "tiny" });
    assert_eq!(d.session.stats().used, 60);

    // Bad weights: refused with a typed error, the staging and its charge are gone.
    let mut d = ready(&mut b, &mut host, 4096, 2);
    send(&mut d, &mut b, &mut host, &ModelUpload { size: 4, base: "tiny" });
    chunk(&mut d, &mut b, &mut host, 0, b"JUNK");
    assert_eq!(code(&commit(&mut d, &mut b, &mut host)), ErrorCode::INVALID_INPUT);
    assert_eq!(d.session.stats().used, 0);
    assert!(b.bufs.is_empty(), "nothing reached the device");
    assert_eq!(code(&chunk(&mut d, &mut b, &mut host, 4, b"x")), ErrorCode::WRONG_STATE);

    // Closing with an upload staged releases it.
    send(&mut d, &mut b, &mut host, &ModelUpload { size: 8, base: "tiny" });
    chunk(&mut d, &mut b, &mut host, 0, b"TINY");
    let released = host.released;
    d.raw_with(&mut b, &mut host, Kind::BYE, Flags::NONE, &[]);
    assert_eq!(d.session.stats().used, 0);
    host.release_all(&mut b);
    assert_eq!(host.released, released + 1);
    assert!(host.staged.is_none());
}

#[test]
fn progress_only_when_the_client_asks() {
    let mut b = MockBackend::new(1 << 20);
    let mut host = Scripted::default();
    let mut d = ready(&mut b, &mut host, 4096, 1);
    send(&mut d, &mut b, &mut host, &ModelLoad { name: "tiny" });
    assert_eq!(host.progress, None, "HELLO did not ask for PROGRESS");

    let mut d = Driver::new(config(4096), [2; 32]);
    let caps = Caps(Caps::MODELS.0 | Caps::PROGRESS.0);
    let w = send(&mut d, &mut b, &mut host, &Hello { min_version: 1, max_version: 1, caps });
    let Response::Welcome(w) = w.response() else { panic!() };
    assert!(w.caps.contains(Caps::PROGRESS), "a node with models sends PROGRESS");
    send(&mut d, &mut b, &mut host, &ModelLoad { name: "tiny" });
    let target = host.progress.expect("a progress target for MODEL_LOAD");
    assert_eq!(target, ProgressTarget { kind: Kind::MODEL_LOAD, seq: d.last_seq() });

    // The frame the host sends is a valid PROGRESS response with the request's seq.
    let mut buf = [0u8; ProgressTarget::FRAME_LEN];
    let n = target.emit::<SoftCrc32>(5, 9, &mut buf).unwrap();
    let f = rela_core::wire::Frame::parse::<SoftCrc32>(&buf[..n], u32::MAX).unwrap();
    assert_eq!((f.kind(), f.seq()), (Kind::PROGRESS, d.last_seq()));
    let r = Response::parse(f.kind(), f.header.flags, f.payload).unwrap();
    assert_eq!(r, Response::Progress(Progress { done: 5, total: 9 }));

    send(&mut d, &mut b, &mut host, &ModelUpload { size: 4, base: "tiny" });
    chunk(&mut d, &mut b, &mut host, 0, b"TINY");
    commit(&mut d, &mut b, &mut host);
    assert_eq!(host.progress, Some(ProgressTarget { kind: Kind::MODEL_COMMIT, seq: d.last_seq() }));
}

#[test]
fn model_list_by_index() {
    let mut b = MockBackend::new(1 << 20);
    let mut host = Scripted::default();
    let mut d = ready(&mut b, &mut host, 4096, 9);
    let mut list = |d: &mut Driver, host: &mut Scripted, index: u16| {
        let o = send(d, &mut b, host, &ModelList { index });
        match o.response() {
            Response::ModelListed(m) => Ok((m.count, m.kind, m.name.to_owned())),
            _ => Err(code(&o)),
        }
    };
    assert_eq!(list(&mut d, &mut host, 0), Ok((2, ModelKind::EMBEDDING, "tiny".into())));
    assert_eq!(list(&mut d, &mut host, 1), Ok((2, ModelKind::GENERATION, "tiny-lm".into())));
    for past in [2, u16::MAX] {
        assert_eq!(list(&mut d, &mut host, past), Ok((2, ModelKind::NONE, String::new())));
    }
    // A host that lists a name MODEL_LOAD would refuse gets INTERNAL, not a bad frame.
    host.bad_list = true;
    assert_eq!(list(&mut d, &mut host, 0), Err(ErrorCode::INTERNAL));
    // A node without models says so.
    let mut bare = Driver::new(SessionConfig::default(), [3; 32]);
    let w = send(&mut bare, &mut b, &mut host, &Hello { min_version: 1, max_version: 1, caps: Caps(0) });
    assert!(matches!(w.response(), Response::Welcome(_)));
    let o = send(&mut bare, &mut b, &mut host, &ModelList { index: 0 });
    assert_eq!(code(&o), ErrorCode::UNSUPPORTED);
    // The entry's encoding: count, kind, str8 name.
    let mut buf = [0u8; 8];
    let n = ModelListed { count: 2, kind: ModelKind::EMBEDDING, name: "ab" }.emit(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[2, 0, 1, 2, b'a', b'b']);
}
