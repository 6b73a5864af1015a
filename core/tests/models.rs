//! MODEL_LOAD / MODEL_UNLOAD / INFER through the session, with a scripted model host: state and
//! capability checks, quota charging, isolation, output framing, and release on close.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Driver, MockBackend};
use rela_core::backend::{BufferId, GpuBackend};
use rela_core::model::{InferOutput, LoadedModel, ModelError, ModelHost};
use rela_core::session::SessionConfig;
use rela_core::wire::msg::*;
use rela_core::wire::{ErrorCode, Flags, Kind};

/// A model host whose "model" writes `[text length, index]` per text into a backend buffer.
#[derive(Default)]
struct Scripted {
    loaded: Vec<(u32, BufferId)>,
    next: u32,
    released: usize,
}

const WEIGHTS: u64 = 1000;

impl ModelHost<MockBackend> for Scripted {
    fn load(&mut self, b: &mut MockBackend, name: &str, budget: u64) -> Result<LoadedModel, ModelError> {
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
    fn infer(&mut self, b: &mut MockBackend, id: u32, req: &Infer<'_>) -> Result<InferOutput, ModelError> {
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
    fn release_all(&mut self, b: &mut MockBackend) {
        for (_, buf) in self.loaded.drain(..) {
            let _ = b.free(buf);
        }
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
